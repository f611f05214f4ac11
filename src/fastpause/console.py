"""The proxy's own status and error lines (not the access log).

They go to stdout and stderr, which are often pipes to a supervisor (systemd, a
container runtime, a test): if the reader goes away, a write fails with EPIPE.
That must never stop the proxy - it once turned a graceful shutdown into a
traceback - so a stream that cannot be written is pointed at /dev/null and the
proxy carries on without its lines.
"""

import os
import sys
from typing import TextIO


def say(message: str) -> None:
    """A status line on stdout, flushed at once: supervisors and tests wait for these."""
    _write(sys.stdout, message)


def complain(message: str) -> None:
    """An error line on stderr."""
    _write(sys.stderr, message)


def plural(number: int, noun: str) -> str:
    """``1 route``, ``2 routes``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _write(stream: TextIO, message: str) -> None:
    try:  # one write: the lines of workers sharing the stream do not interleave
        stream.write(f"fastpause: {message}\n")
        stream.flush()
    except OSError:  # EPIPE, EIO: whoever read our output is gone
        _silence(stream)


def _silence(stream: TextIO) -> None:
    """Send ``stream``'s descriptor to /dev/null, so nothing written later (nor the
    flush at exit) fails again; what was buffered is dropped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
