"""The access log's formats and its buffering (what reaches the stream, and when)."""

import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastpause.accesslog import FLUSH_INTERVAL, FLUSH_THRESHOLD, AccessLog
from fastpause.config import AccessLogFormat

RECORD = ("127.0.0.1", "GET", "/index.html?q=1", "HTTP/1.1", 200, 1234, 0.0125, "127.0.0.1:8003")


def logged(log_format: AccessLogFormat, record: tuple[Any, ...] = RECORD) -> str:
    stream = io.StringIO()
    log = AccessLog(stream, log_format, owns_stream=False)
    log(record)
    log.close()
    return stream.getvalue()


def test_common_log_format() -> None:
    line = logged("common")
    assert re.fullmatch(
        r"127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /index\.html\?q=1 HTTP/1\.1" 200 1234\n',
        line,
    ), line


def test_common_log_format_shows_no_body_as_dash() -> None:
    record = ("10.0.0.1", "HEAD", "/", "HTTP/1.0", 304, 0, 0.001, "")
    assert logged("common", record).endswith('"HEAD / HTTP/1.0" 304 -\n')


def test_common_log_format_escapes_client_controlled_text() -> None:
    record = ("::1", "GET", '/a"b\\c\x1b\n\xe9', "HTTP/1.1", 400, 10, 0.0, "")
    assert '"GET /a\\"b\\\\c\\x1b\\x0a\\xe9 HTTP/1.1" 400 10\n' in logged("common", record)


def test_json_lines() -> None:
    line = logged("json")
    assert line.endswith("\n") and line.count("\n") == 1
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry.pop("ts"))
    assert entry == {
        "client": "127.0.0.1",
        "method": "GET",
        "target": "/index.html?q=1",
        "version": "HTTP/1.1",
        "status": 200,
        "bytes": 1234,
        "duration_ms": 12.5,
        "upstream": "127.0.0.1:8003",
    }


def test_json_without_upstream_is_null() -> None:
    record = ("127.0.0.1", "GET", "/", "HTTP/1.1", 400, 11, 0.0, "")
    assert json.loads(logged("json", record))["upstream"] is None


def test_lines_are_buffered_until_flush() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, "common", owns_stream=False)
    log(RECORD)
    assert stream.getvalue() == ""
    log.flush()
    assert stream.getvalue().count("\n") == 1


def test_a_full_buffer_is_written_without_waiting() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, "common", owns_stream=False)
    long_target = "/" + "x" * 1000
    for _ in range(FLUSH_THRESHOLD // 1000 + 1):
        log(("127.0.0.1", "GET", long_target, "HTTP/1.1", 200, 1, 0.0, ""))
    assert len(stream.getvalue()) >= FLUSH_THRESHOLD


class TimerLoop:
    """Records ``call_later`` so the timer can be fired without waiting for it."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> "TimerLoop":
        self.timers.append((delay, callback, args))
        return self

    def cancel(self) -> None:
        self.timers.clear()

    def fire(self) -> None:
        _, callback, args = self.timers.pop(0)
        callback(*args)


def test_timer_flushes_every_interval_until_closed() -> None:
    stream, loop = io.StringIO(), TimerLoop()
    log = AccessLog(stream, "common", owns_stream=False)
    log.start(loop)  # type: ignore[arg-type]
    assert [delay for delay, _, _ in loop.timers] == [FLUSH_INTERVAL]
    log(RECORD)
    loop.fire()
    assert stream.getvalue().count("\n") == 1
    assert [delay for delay, _, _ in loop.timers] == [FLUSH_INTERVAL]  # re-armed
    log.close()
    assert loop.timers == []


def test_file_is_appended_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    log = AccessLog.open(str(path), "json")
    log(RECORD)
    log.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier"
    assert json.loads(lines[1])["target"] == "/index.html?q=1"


def test_stdout_is_not_closed(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog.open("stdout", "common")
    log(RECORD)
    log.close()
    assert not sys.stdout.closed
    assert '"GET /index.html?q=1 HTTP/1.1" 200 1234' in capsys.readouterr().out


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_write_failure_is_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog(BrokenStream(), "common", owns_stream=False)
    for _ in range(3):
        log(RECORD)
        log.flush()
    assert capsys.readouterr().err == "fastpause: access log write failed: [Errno 32] Broken pipe\n"
