"""The access log: one line per finished request, written in batches.

The engine calls the log once per response from its protocol callbacks, so a
call only formats a line and appends it to a buffer; the buffer is written when
it grows past a threshold, on a one-second loop timer and at close. A slow or
failing log destination never stalls the proxy: write errors are reported once
and the lines dropped.
"""

import asyncio
import json
import os
import select
import stat
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from fastpause.config import AccessLogFormat
from fastpause.console import complain

if TYPE_CHECKING:
    from fastpause._core import AccessRecord

FLUSH_INTERVAL = 1.0
FLUSH_THRESHOLD = 64 * 1024  # characters buffered before writing without waiting for the timer

# Client-controlled text in a Common Log Format line is escaped the way Apache
# does it, so a request target can neither end the quoted field nor forge a line.
_CLF_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0x100))}
_CLF_ESCAPES |= {ord('"'): '\\"', ord("\\"): "\\\\"}


class AccessLog:
    """A buffered access log; call it with the engine's ``AccessRecord`` tuples."""

    def __init__(self, stream: TextIO, log_format: AccessLogFormat, *, owns_stream: bool) -> None:
        self._stream = stream
        self._owns_stream = owns_stream
        self._whole_writes = _is_regular_file(stream)
        self._format = self._json if log_format == "json" else self._common
        self._lines: list[str] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False
        self._clf_second = -1
        self._clf_time = ""

    @classmethod
    def open(cls, target: str, log_format: AccessLogFormat) -> "AccessLog":
        """Open ``"stdout"`` or a file path (appending); raises ``OSError`` if it cannot."""
        if target == "stdout":
            return cls(sys.stdout, log_format, owns_stream=False)
        stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        return cls(stream, log_format, owns_stream=True)

    def __call__(self, record: "AccessRecord") -> None:
        line = self._format(record, time.time())
        self._lines.append(line)
        self._buffered += len(line)
        if self._buffered >= FLUSH_THRESHOLD:
            self.flush()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush on a timer so lines appear within a second even when traffic is light."""
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.flush()
        self.start(loop)

    def flush(self) -> None:
        """Write out the buffered lines; on failure report once and drop them."""
        if not self._lines:
            return
        chunk = "".join(self._lines)
        self._lines.clear()
        self._buffered = 0
        try:
            for piece in self._pieces(chunk):
                self._stream.write(piece)
                self._stream.flush()
        except (OSError, ValueError) as error:  # ValueError: the stream was closed
            if not self._failed:
                self._failed = True
                complain(f"access log write failed: {error}")

    def _pieces(self, chunk: str) -> list[str]:
        """``chunk`` as written at once: whole to a file (opened for appending, each
        write lands whole at the end, even with several workers writing), in runs of
        whole lines of at most ``PIPE_BUF`` bytes to a pipe, the most a pipe takes
        without interleaving another writer's bytes (lines are ASCII: both formats
        escape everything else, so characters are bytes)."""
        if self._whole_writes:
            return [chunk]
        pieces: list[str] = []
        start = 0
        while start < len(chunk):
            end = chunk.rfind("\n", start, start + select.PIPE_BUF)
            end = len(chunk) if end < 0 else end + 1
            pieces.append(chunk[start:end])
            start = end
        return pieces

    def close(self) -> None:
        """Stop the timer, write what is left and close the file if this log opened it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._owns_stream:
            self._stream.close()

    def _common(self, record: "AccessRecord", now: float) -> str:
        """``127.0.0.1 - - [26/Nov/2026:23:59:01 +0000] "GET / HTTP/1.1" 200 12``."""
        client, method, target, version, status, size, _seconds, _upstream = record
        second = int(now)
        if second != self._clf_second:  # strftime once per second, not per request
            self._clf_second = second
            self._clf_time = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        request = f"{method} {target} {version}".translate(_CLF_ESCAPES)
        return f'{client or "-"} - - [{self._clf_time}] "{request}" {status} {size or "-"}\n'

    @staticmethod
    def _json(record: "AccessRecord", now: float) -> str:
        """One JSON object per line, for log pipelines."""
        client, method, target, version, status, size, seconds, upstream = record
        entry = {
            "ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "client": client,
            "method": method,
            "target": target,
            "version": version,
            "status": status,
            "bytes": size,
            "duration_ms": round(seconds * 1000, 3),
            "upstream": upstream or None,
        }
        return json.dumps(entry, separators=(",", ":")) + "\n"


def _is_regular_file(stream: TextIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):  # no descriptor (a test's StringIO): write whole
        return True
