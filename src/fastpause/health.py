"""Active health checks: ``GET <health_path>`` against upstreams, on an interval.

The data plane only learns verdicts (``Engine.set_upstream_health``); a passing
check on an upstream that was down releases the requests held for it at once,
so recovery is event-driven, not polled per request (DESIGN invariant 3).
Healthy means a 2xx or 3xx status, as with Caddy, kamal-proxy and NGINX Plus.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastpause import _core

USER_AGENT = "fastpause-health-check"
MAX_STATUS_LINE = 8192


@dataclass(frozen=True)
class CheckSettings:
    """How to check one route's upstreams (its ``health_*`` config keys)."""

    path: str
    interval: float = 1.0
    timeout: float = 2.0
    passes: int = 1
    fails: int = 2


async def probe(host: str, port: int, path: str, host_header: str, timeout: float) -> str | None:
    """One check: None when healthy, else a short reason (for logs and deploy errors)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                    f"User-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n".encode("latin-1")
                )
                line = await reader.readuntil(b"\n")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        return _describe(exc)
    return _verdict(line)


def _verdict(status_line: bytes) -> str | None:
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return "not an HTTP response"
    status = int(parts[1])
    return None if 200 <= status < 400 else f"status {status}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed before a status line"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


class UpstreamMonitor:
    """Checks one upstream on an interval and reports state changes past thresholds."""

    def __init__(
        self,
        upstream: _core.Upstream,
        settings: CheckSettings,
        report: Callable[[_core.Upstream, bool, str | None], None],
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self._report = report
        self._streak = 0  # > 0: consecutive passes, < 0: consecutive failures
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            problem = await probe(
                self.upstream.host,
                self.upstream.port,
                self.settings.path,
                self.upstream.address,
                self.settings.timeout,
            )
            self._record(problem)
            await asyncio.sleep(self.settings.interval)

    def _record(self, problem: str | None) -> None:
        """Flip the verdict only after ``passes`` successes or ``fails`` failures in a row."""
        if problem is None:
            self._streak = self._streak + 1 if self._streak > 0 else 1
            if not self.upstream.healthy and self._streak >= self.settings.passes:
                self._report(self.upstream, True, None)
        else:
            self._streak = self._streak - 1 if self._streak < 0 else -1
            if self.upstream.healthy and -self._streak >= self.settings.fails:
                self._report(self.upstream, False, problem)


class HealthChecks:
    """The monitors for a routing table: one per (upstream, check settings) pair.

    Rebuilt on every snapshot swap; monitors for upstreams that stay keep running,
    so a reload neither resets streaks nor skips a beat.
    """

    def __init__(self, report: Callable[[_core.Upstream, bool, str | None], None]) -> None:
        self._report = report
        self._monitors: dict[tuple[int, CheckSettings], UpstreamMonitor] = {}

    def update(self, checks: Iterable[tuple[_core.Upstream, CheckSettings]]) -> None:
        wanted = {(id(up), settings): (up, settings) for up, settings in checks}
        for key in list(self._monitors):
            if key not in wanted:
                self._monitors.pop(key).stop()
        for key, (up, settings) in wanted.items():
            if key not in self._monitors:
                monitor = UpstreamMonitor(up, settings, self._report)
                self._monitors[key] = monitor
                monitor.start()

    def stop(self) -> None:
        for monitor in self._monitors.values():
            monitor.stop()
        self._monitors.clear()


async def wait_until_healthy(
    address: str,
    host: str,
    port: int,
    settings: CheckSettings,
    deadline: float,
) -> str | None:
    """Check a deploy target until it passes ``settings.passes`` times in a row.

    Returns None once healthy, or the last problem when ``deadline`` (loop time)
    passes first.
    """
    loop = asyncio.get_running_loop()
    streak = 0
    problem: str | None = "not checked yet"
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return problem
        problem = await probe(host, port, settings.path, address, min(settings.timeout, left))
        streak = streak + 1 if problem is None else 0
        if streak >= settings.passes:
            return None
        left = deadline - loop.time()
        if left <= 0:
            return problem
        await asyncio.sleep(min(settings.interval, left))
