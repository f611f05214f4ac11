"""The proxy's own status and error lines (not the access log)."""

import sys


def say(message: str) -> None:
    """A status line on stdout, flushed at once: supervisors and tests wait for these."""
    print(f"fastpause: {message}", flush=True)


def complain(message: str) -> None:
    """An error line on stderr."""
    print(f"fastpause: {message}", file=sys.stderr, flush=True)
