"""Active health checks, unit level: ``probe`` and ``wait_until_healthy`` against a tiny
asyncio server in this process, the pass/fail thresholds of ``UpstreamMonitor``, and
``HealthChecks`` reporting verdicts as they change.

Waits are events set by the server or by the report callback; nothing sleeps to
synchronize.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable

import pytest

from fastpause import _core
from fastpause.config import Address
from fastpause.health import (
    Check,
    CheckSettings,
    HealthChecks,
    UpstreamMonitor,
    probe,
    wait_until_healthy,
)

# What the tiny server does with a connection: write these bytes, or hang (None).
Answer = bytes | None


class TinyServer:
    """Answers the n-th connection with ``answers[n]`` (the last one again after that)
    and records the request heads."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TinyServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = self.answers[min(len(self.requests), len(self.answers) - 1)]
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if answer is None:
                await reader.read()  # hang until the client gives up
            else:
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(coroutine_function: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(coroutine_function())


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def probe_answer(answer: Answer, timeout: float = 5.0) -> str | None:
    async with TinyServer(answer) as server:
        return await probe("127.0.0.1", server.port, "/up", "app.test", timeout)


# ---------------------------------------------------------------- probe


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 301 Moved Permanently\r\nLocation: /x\r\n\r\n",
        b"HTTP/1.1 399 Whatever\r\n\r\n",
    ],
)
def test_2xx_and_3xx_are_healthy(answer: bytes) -> None:
    assert run(lambda: probe_answer(answer)) is None


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"HTTP/1.1 500 Internal Server Error\r\n\r\n", "status 500"),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", "status 503"),
        (b"HTTP/1.1 404 Not Found\r\n\r\n", "status 404"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "status 101"),
        (b"hello there\r\n", "not an HTTP response"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 OK\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 200 OK" + b"x" * 10_000, "not an HTTP response"),
        (b"", "connection closed before a status line"),
        (b"HTTP/1.1 200 OK", "connection closed before a status line"),
    ],
)
def test_other_answers_are_unhealthy(answer: bytes, problem: str) -> None:
    assert run(lambda: probe_answer(answer)) == problem


def test_refused_connection_is_unhealthy() -> None:
    port = closed_port()
    problem = run(lambda: probe("127.0.0.1", port, "/up", "app.test", 5.0))
    assert problem == "connection refused"


def test_no_answer_within_the_timeout_is_unhealthy() -> None:
    assert run(lambda: probe_answer(None, timeout=0.05)) == "no answer within 0.05s"


def test_probe_sends_a_plain_get() -> None:
    async def scenario() -> list[bytes]:
        async with TinyServer(b"HTTP/1.1 200 OK\r\n\r\n") as server:
            await probe("127.0.0.1", server.port, "/health/ready", "app.test:8080", 5.0)
            return server.requests

    [head] = run(scenario)
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /health/ready HTTP/1.1"
    assert set(lines[1:-2]) == {
        "Host: app.test:8080",
        "User-Agent: fastpause-health-check",
        "Connection: close",
    }


# ---------------------------------------------------------------- thresholds


class Verdicts:
    """A report callback that applies verdicts as the engine would and records them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, str | None]] = []
        self.changed = asyncio.Event()

    def __call__(self, check: Check, healthy: bool, problem: str | None) -> None:
        check.upstream.healthy = healthy
        self.seen.append((check.upstream.address, healthy, problem))
        self.changed.set()


def upstream(port: int = 9) -> _core.Upstream:
    return _core.Upstream(f"127.0.0.1:{port}", "127.0.0.1", port)


def monitor(passes: int, fails: int) -> tuple[UpstreamMonitor, Verdicts]:
    verdicts = Verdicts()
    settings = CheckSettings("/up", passes=passes, fails=fails)
    return UpstreamMonitor(Check("app", upstream(), settings), verdicts), verdicts


def test_down_only_after_fails_failures_in_a_row() -> None:
    watched, verdicts = monitor(passes=1, fails=3)
    for problem in ("status 500", "status 500", None, "status 500", "status 502"):
        watched.record(problem)
    assert verdicts.seen == []
    watched.record("connection refused")
    assert verdicts.seen == [("127.0.0.1:9", False, "connection refused")]
    watched.record("connection refused")  # still down: no second report
    assert len(verdicts.seen) == 1


def test_up_again_only_after_passes_successes_in_a_row() -> None:
    watched, verdicts = monitor(passes=3, fails=1)
    watched.record("status 503")
    assert verdicts.seen == [("127.0.0.1:9", False, "status 503")]
    for problem in (None, None, "status 503", None, None):
        watched.record(problem)
    assert len(verdicts.seen) == 1
    watched.record(None)
    assert verdicts.seen[-1] == ("127.0.0.1:9", True, None)
    watched.record(None)  # still up: no second report
    assert len(verdicts.seen) == 2


def test_passing_checks_on_a_healthy_upstream_report_nothing() -> None:
    watched, verdicts = monitor(passes=1, fails=2)
    for _ in range(5):
        watched.record(None)
    assert verdicts.seen == []


# ---------------------------------------------------------------- monitors


def test_health_checks_report_down_then_up() -> None:
    """A monitor reports its upstream down, then up once the server answers 2xx."""

    async def scenario() -> list[tuple[str, bool, str | None]]:
        verdicts = Verdicts()
        checks = HealthChecks(verdicts)
        async with TinyServer(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") as server:
            up = upstream(server.port)
            checks.update([Check("app", up, CheckSettings("/up", interval=0.01, fails=1))])
            await asyncio.wait_for(verdicts.changed.wait(), 10)
            verdicts.changed.clear()
            server.answers = [b"HTTP/1.1 200 OK\r\n\r\n"]
            await asyncio.wait_for(verdicts.changed.wait(), 10)
            checks.stop()
        return verdicts.seen

    seen = run(scenario)
    assert [(healthy, problem) for _, healthy, problem in seen] == [
        (False, "status 503"),
        (True, None),
    ]


def test_update_keeps_monitors_that_stay_and_stops_the_others() -> None:
    async def scenario() -> None:
        checks = HealthChecks(Verdicts())
        settings = CheckSettings("/up", interval=60.0)
        first, second = upstream(closed_port()), upstream(closed_port())
        checks.update([Check("app", first, settings), Check("app", second, settings)])
        kept = dict(checks._monitors)
        checks.update([Check("app", first, settings)])
        assert list(checks._monitors.values()) == [
            monitor for monitor in kept.values() if monitor.check.upstream is first
        ]
        checks.update([Check("app", first, CheckSettings("/other", interval=60.0))])
        [replaced] = checks._monitors.values()
        assert replaced.check.settings.path == "/other"
        checks.stop()
        assert not checks._monitors

    run(scenario)


# ---------------------------------------------------------------- deploy targets


def test_wait_until_healthy_returns_none_once_passes_are_met() -> None:
    async def scenario() -> tuple[str | None, int]:
        async with TinyServer(b"HTTP/1.1 200 OK\r\n\r\n") as server:
            settings = CheckSettings("/up", interval=0.001, passes=3)
            deadline = asyncio.get_running_loop().time() + 30
            target = Address("127.0.0.1", server.port)
            problem = await wait_until_healthy(target, "127.0.0.1", settings, deadline)
            return problem, len(server.requests)

    assert run(scenario) == (None, 3)


def test_wait_until_healthy_reports_the_last_problem_at_the_deadline() -> None:
    async def scenario() -> str | None:
        async with TinyServer(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") as server:
            settings = CheckSettings("/up", interval=0.01)
            deadline = asyncio.get_running_loop().time() + 0.1
            target = Address("127.0.0.1", server.port)
            return await wait_until_healthy(target, "127.0.0.1", settings, deadline)

    assert run(scenario) == "status 503"


def test_passing_too_few_times_in_a_row_is_not_healthy() -> None:
    async def scenario() -> str | None:
        async with TinyServer(b"HTTP/1.1 200 OK\r\n\r\n") as server:
            settings = CheckSettings("/up", interval=0.01, passes=1_000_000)
            deadline = asyncio.get_running_loop().time() + 0.1
            target = Address("127.0.0.1", server.port)
            return await wait_until_healthy(target, "127.0.0.1", settings, deadline)

    problem = run(scenario)
    assert isinstance(problem, str)
    assert re.fullmatch(r"passed \d+ of 1000000 checks in a row", problem), problem


def test_a_deadline_already_past_checks_nothing() -> None:
    async def scenario() -> str | None:
        deadline = asyncio.get_running_loop().time() - 1
        target = Address("127.0.0.1", 9)
        return await wait_until_healthy(target, "127.0.0.1", CheckSettings("/up"), deadline)

    assert run(scenario) == "no answer before the deploy timeout"


def test_a_check_cut_short_by_the_deadline_keeps_the_problem_before_it() -> None:
    """The first check finds a 503; the second hangs until the deadline passes."""

    async def scenario() -> str | None:
        async with TinyServer(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", None) as server:
            settings = CheckSettings("/up", interval=0.001, timeout=60.0)
            deadline = asyncio.get_running_loop().time() + 0.2
            target = Address("127.0.0.1", server.port)
            return await wait_until_healthy(target, "127.0.0.1", settings, deadline)

    assert run(scenario) == "status 503"
