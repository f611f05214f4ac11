"""Active health checks: ``GET <health_path>`` against upstreams, on an interval.

The data plane only learns verdicts (``Engine.set_upstream_health``); a passing
check on an upstream that was down releases the requests held for it at once,
so recovery is event-driven, not polled per request (invariant 3).
Healthy means a 2xx or 3xx status, as with Caddy, kamal-proxy and NGINX Plus.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastpause import _core
from fastpause.config import Address
from fastpause.tls import client_context

USER_AGENT = "fastpause-health-check"
# A status line longer than this is not an HTTP server talking.
MAX_STATUS_LINE = 8192


@dataclass(frozen=True)
class CheckSettings:
    """How to check one route's upstreams (its ``health_*`` config keys)."""

    path: str
    interval: float = 1.0
    timeout: float = 2.0
    passes: int = 1
    fails: int = 2
    host_header: str | None = None  # the route's host_header; None sends the upstream address
    # how the route dials https:// upstreams (its ``ca``, ``tls_verify``, ``tls_server_name``)
    ca: str | None = None
    tls_verify: bool = True
    tls_server_name: str | None = None


# How to reach an https:// upstream: its client context and the name it is checked for.
Tls = tuple[ssl.SSLContext, str]


@dataclass(frozen=True, eq=False)
class Check:
    """One upstream of one route to watch; the route name is for the messages."""

    route: str
    upstream: _core.Upstream
    settings: CheckSettings


# Called when a check flips its upstream's verdict: (check, healthy, problem or None).
Report = Callable[[Check, bool, str | None], None]


async def probe(
    host: str, port: int, path: str, host_header: str, timeout: float, tls: Tls | None = None
) -> str | None:
    """One check: None when healthy, else a short reason (for logs and deploy errors)."""
    dial: dict[str, Any] = {}
    if tls is not None:
        dial = {"ssl": tls[0], "server_hostname": tls[1]}
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, limit=MAX_STATUS_LINE, **dial
            )
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
    except asyncio.LimitOverrunError:
        return "not an HTTP response"
    except (OSError, asyncio.IncompleteReadError) as exc:
        return _describe(exc)
    return _verdict(line)


def _verdict(status_line: bytes) -> str | None:
    """2xx and 3xx are healthy; anything else names the status or says it is not HTTP."""
    parts = status_line.split(None, 2)
    if (
        len(parts) < 2
        or not parts[0].startswith(b"HTTP/")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
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

    def __init__(self, check: Check, report: Report) -> None:
        self.check = check
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
        upstream, settings = self.check.upstream, self.check.settings
        host_header = settings.host_header or upstream.authority
        tls = (upstream.ssl, upstream.server_hostname) if upstream.ssl is not None else None
        while True:
            problem = await probe(
                upstream.host, upstream.port, settings.path, host_header, settings.timeout, tls
            )
            self.record(problem)
            await asyncio.sleep(settings.interval)

    def record(self, problem: str | None) -> None:
        """Flip the verdict only after ``passes`` successes or ``fails`` failures in a row."""
        upstream, settings = self.check.upstream, self.check.settings
        if problem is None:
            self._streak = self._streak + 1 if self._streak > 0 else 1
            if not upstream.healthy and self._streak >= settings.passes:
                self._report(self.check, True, None)
        else:
            self._streak = self._streak - 1 if self._streak < 0 else -1
            if upstream.healthy and -self._streak >= settings.fails:
                self._report(self.check, False, problem)


class HealthChecks:
    """The monitors for a routing table: one per (route, upstream, check settings).

    Updated on every snapshot swap; monitors for upstreams that stay keep running,
    so a reload neither resets streaks nor skips a beat.
    """

    def __init__(self, report: Report) -> None:
        self._report = report
        self._monitors: dict[tuple[str, int, CheckSettings], UpstreamMonitor] = {}

    def update(self, checks: Iterable[Check]) -> None:
        """Start monitors for new checks and stop those no longer wanted.

        Keys hold ``id(upstream)``: the monitor keeps its upstream alive, so the id
        cannot be reused by another upstream while the key exists.
        """
        wanted = {(check.route, id(check.upstream), check.settings): check for check in checks}
        for key in list(self._monitors):
            if key not in wanted:
                self._monitors.pop(key).stop()
        for key, check in wanted.items():
            if key not in self._monitors:
                monitor = UpstreamMonitor(check, self._report)
                self._monitors[key] = monitor
                monitor.start()

    def stop(self) -> None:
        for monitor in self._monitors.values():
            monitor.stop()
        self._monitors.clear()


async def wait_until_healthy(
    address: Address,
    host: str,
    settings: CheckSettings,
    deadline: float,
) -> str | None:
    """Check a deploy target until it passes ``settings.passes`` times in a row.

    Returns None once healthy, or the last problem when ``deadline`` (loop time)
    passes first; a target that passed, but not often enough in a row, says so.
    A check cut short by the deadline does not count: its "no answer" would hide
    the real problem of the checks before it.
    """
    host_header = settings.host_header or address.authority
    tls = None
    if address.tls:
        context = client_context(settings.ca, settings.tls_verify)
        tls = (context, settings.tls_server_name or address.host)
    port = address.port
    streak = 0
    problem: str | None = "no answer before the deploy timeout"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            while True:
                problem = await probe(host, port, settings.path, host_header, settings.timeout, tls)
                streak = streak + 1 if problem is None else 0
                if streak >= settings.passes:
                    return None
                await asyncio.sleep(settings.interval)
    return problem or f"passed {streak} of {settings.passes} checks in a row"
