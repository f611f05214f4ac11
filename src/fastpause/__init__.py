"""fastpause: an HTTP/1.1 reverse proxy that holds traffic during deploys."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastpause")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
