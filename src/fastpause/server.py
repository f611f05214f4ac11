"""Run the proxy: bind the listeners, serve, and shut down gracefully on a signal.

Output on stdout is a contract: the route lines, the ``admin on`` line, then one
``listening on`` line per bound socket, printed only once every listener is
bound and the admin API answers, so a supervisor or test that waits for
"listening on" knows the proxy accepts connections and commands.
"""

import asyncio
import os
import signal
import socket
import sys

import uvloop

from fastpause import _core
from fastpause.accesslog import AccessLog
from fastpause.admin import AdminApi, AdminServer, BindError
from fastpause.config import Address, Config
from fastpause.router import build_table

EXIT_OK = 0
EXIT_FAILURE = 1
# After the grace period the remaining connections are cut; this bounds the wait
# for their close callbacks, so the process never hangs on its way out.
CUT_WAIT = 1.0


class StartupError(Exception):
    """The proxy could not start (a port in use, an unwritable log): exit status 1."""


class Server:
    """One proxy process serving one ``Config`` until SIGTERM or SIGINT."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop_signals = 0
        self._stop_requested: asyncio.Event | None = None
        self._cut: asyncio.Event | None = None

    def run(self) -> int:
        """Serve until stopped; return the process exit status.

        The routing table is built before the loop starts, so a ``ConfigError``
        (such as an unresolvable upstream) reaches the caller before any socket
        is bound.
        """
        table = build_table(self.config)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            try:
                runner.run(self._serve(table))
            except StartupError as error:
                _complain(str(error))
                return EXIT_FAILURE
        _say("stopped")
        return EXIT_OK

    async def _serve(self, table: _core.RoutingTable) -> None:
        """Signal handlers first, so a SIGTERM during startup still stops cleanly."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._cut = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal)
        access_log = self._open_access_log()
        admin = AdminServer(self.config.admin) if self.config.admin is not None else None
        try:
            engine = _core.Engine(
                loop, table, access_log, max_held_bytes=self.config.max_held_bytes
            )
            if admin is not None:
                await _bind_admin(admin)
            listeners = await self._listen(loop, engine)
            urls = _listener_urls(listeners)
            if admin is not None:
                await admin.serve(AdminApi(engine, token=self.config.admin_token, listeners=urls))
            if access_log is not None:
                access_log.start(loop)
            self._announce(table, admin, urls)
            await self._stop_requested.wait()
            await self._shut_down(engine, listeners, admin)
        finally:
            if admin is not None:
                admin.close()
            if access_log is not None:
                access_log.close()

    def _on_stop_signal(self) -> None:
        """First signal: graceful shutdown. Second: stop waiting for connections."""
        assert self._stop_requested is not None and self._cut is not None
        self._stop_signals += 1
        if self._stop_signals == 1:
            self._stop_requested.set()
        else:
            self._cut.set()

    def _open_access_log(self) -> AccessLog | None:
        """The configured access log, or None when it is off."""
        target = self.config.access_log
        if target is None:
            return None
        try:
            return AccessLog.open(target, self.config.access_log_format)
        except OSError as error:
            raise StartupError(f"cannot open access log {target}: {_reason(error)}") from None

    async def _listen(
        self, loop: asyncio.AbstractEventLoop, engine: _core.Engine
    ) -> list[asyncio.Server]:
        """Bind every listener, or close those already bound and report the failure."""
        listeners: list[asyncio.Server] = []
        for address in self.config.listen:
            try:
                listener = await loop.create_server(
                    engine.protocol_factory("http"),
                    address.host,
                    address.port,
                    reuse_address=True,
                    backlog=2048,
                )
            except OSError as error:
                for bound in listeners:
                    bound.close()
                raise StartupError(f"cannot listen on {address}: {_reason(error)}") from None
            listeners.append(listener)
        return listeners

    def _announce(
        self, table: _core.RoutingTable, admin: AdminServer | None, urls: list[str]
    ) -> None:
        """Print the routes, the admin address, then the bound addresses (real ports)."""
        for route in table.routes:
            targets = ", ".join(_describe_upstream(upstream) for upstream in route.upstreams)
            _say(f"route {route.name} -> {targets}")
        if admin is not None:
            _say(f"admin on {admin.describe()}")
        for url in urls:
            _say(f"listening on {url}")

    async def _shut_down(
        self, engine: _core.Engine, listeners: list[asyncio.Server], admin: AdminServer | None
    ) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then cut.

        The admin listener closes with the public ones, so a replacement proxy can
        take over the socket while this one drains.
        """
        assert self._cut is not None
        for listener in listeners:
            listener.close()
        if admin is not None:
            admin.close()
        engine.shutdown()
        grace = self.config.shutdown_timeout
        open_connections = engine.connections()
        plural = "" if open_connections == 1 else "s"
        _say(f"shutting down: {open_connections} open connection{plural}, waiting up to {grace:g}s")
        drained = engine.wait_drained()
        cut = asyncio.ensure_future(self._cut.wait())
        await asyncio.wait(
            [drained, cut],
            timeout=grace,
            return_when=asyncio.FIRST_COMPLETED,
        )
        cut.cancel()
        engine.close_all()
        await asyncio.wait([drained], timeout=CUT_WAIT)


async def _bind_admin(admin: AdminServer) -> None:
    """Bind the admin listener; a socket in use or a port taken stops the start."""
    try:
        await admin.bind()
    except BindError as error:
        raise StartupError(str(error)) from None


def _listener_urls(listeners: list[asyncio.Server]) -> list[str]:
    """``http://HOST:PORT`` per bound socket, with the real port even for port 0."""
    urls = []
    for listener in listeners:
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
            urls.append(f"http://{Address(host, port)}")
    return urls


def _describe_upstream(upstream: _core.Upstream) -> str:
    """``127.0.0.1:8003``, or ``localhost:8003 (127.0.0.1)`` when a name was resolved."""
    dialed = str(Address(upstream.host, upstream.port))
    return (
        upstream.address if upstream.address == dialed else f"{upstream.address} ({upstream.host})"
    )


def _reason(error: OSError) -> str:
    """The short OS reason ("Address already in use"), not uvloop's long wrapper text."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return str(error.strerror or error)
    return os.strerror(error.errno)


def _say(message: str) -> None:
    """A status line on stdout, flushed at once: supervisors and tests wait for these."""
    print(f"fastpause: {message}", flush=True)


def _complain(message: str) -> None:
    """An error line on stderr."""
    print(f"fastpause: {message}", file=sys.stderr, flush=True)
