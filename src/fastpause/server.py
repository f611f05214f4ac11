"""Run the proxy: bind the listeners, serve, reload on SIGHUP, and shut down
gracefully on SIGTERM or SIGINT.

Output on stdout is a contract: the route lines, the ``admin on`` line, then one
``listening on`` line per bound socket, printed only once every listener is
bound and the admin API answers, so a supervisor or test that waits for
"listening on" knows the proxy accepts connections and commands.
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from fastpause import _core, systemd
from fastpause.accesslog import AccessLog
from fastpause.admin import AdminApi, AdminServer, BindError
from fastpause.commands import LameDuck
from fastpause.config import Address, Config, ConfigError, Overrides, unverified_upstreams
from fastpause.console import complain, say
from fastpause.control import ControlPlane, ReloadError, Startup, start_table
from fastpause.listeners import BIND_ONLY, ListenError, Listeners, reason
from fastpause.relay import Relays
from fastpause.router import describe_match, path_prefix
from fastpause.tls import CertificateError, ServerTls
from fastpause.upgrade import (
    Connection,
    Event,
    Handover,
    Inherited,
    Successor,
    UpgradeFailed,
    adopt_connections,
    hand_over_engine,
    start_successor,
)
from fastpause.wire import WireError
from fastpause.workers import WorkerLost, WorkerPool

EXIT_OK = 0
EXIT_FAILURE = 1
# After the grace period the remaining connections are cut; this bounds the wait
# for their close callbacks, so the process never hangs on its way out.
CUT_WAIT = 1.0
# After an upgrade, how long the old process waits for its caller to read "done".
UPGRADE_GOODBYE = 5.0


def _say_event(event: Event) -> None:
    """An upgrade's progress when nobody asked through the admin API (SIGUSR2)."""
    details = ", ".join(f"{key} {value}" for key, value in event.items() if key != "event")
    say(f"upgrade: {event['event']}" + (f": {details}" if details else ""))


class StartupError(Exception):
    """The proxy could not start (a port in use, an unwritable log): exit status 1."""


class Server:
    """One proxy process serving one ``Config`` until SIGTERM or SIGINT; SIGHUP reloads.

    ``config_path`` is the file a reload reads again (None for the built-in and
    command-line configs); ``overrides`` are ``run``'s options that override the
    file's values at start and at every reload (``--admin``, ``--workers``).
    With ``workers`` > 1 this process is the supervisor of that many worker
    processes, which serve (``fastpause.workers``).
    """

    def __init__(
        self, config: Config, *, config_path: str | None = None, overrides: Overrides | None = None
    ) -> None:
        self.config = config
        self._config_path = config_path
        self._overrides = overrides or Overrides()
        self._stop_signals = 0
        self._stop_requested: asyncio.Event | None = None
        self._cut: asyncio.Event | None = None
        self._control: ControlPlane | None = None
        self._reloads: set[asyncio.Task[object]] = set()
        self._admin: AdminServer | None = None
        self._successor = Successor.from_environment()  # started by an upgrade
        self._inherited = Inherited()
        self._upgrade: asyncio.Task[None] | None = None
        self._handed_over = False
        self._drained: asyncio.Event | None = None
        self._adopting: asyncio.Task[None] | None = None  # connections from the predecessor
        self._relays = Relays()  # TLS connections given to a successor (one process)

    def run(self) -> int:
        """Serve until stopped; return the process exit status.

        The routing table is built before the loop starts, so a ``ConfigError``
        (such as an unresolvable upstream) reaches the caller before any socket
        is bound. A successor (``fastpause upgrade``) starts from its predecessor's
        runtime state and sockets, and tells it whether it could.
        """
        try:
            startup = self._start_table()
        except (WireError, OSError) as error:
            complain(f"cannot take over from the running process: {error}")
            return EXIT_FAILURE
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            try:
                runner.run(self._serve(startup))
            except StartupError as error:
                complain(str(error))
                if self._successor is not None:
                    self._successor.fail(str(error))
                return EXIT_FAILURE
        say("stopped")
        return EXIT_OK

    def _start_table(self) -> Startup:
        if self._successor is None:
            return start_table(self.config)
        try:
            startup = start_table(self.config, self._successor.receive_state())
        except ConfigError as error:
            self._successor.fail(str(error))
            raise
        self._successor.loaded(len(startup.table.routes))
        self._inherited = self._successor.receive_sockets()
        return startup

    async def _serve(self, startup: Startup) -> None:
        """Signal handlers first, so a SIGTERM during startup still stops cleanly."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._cut = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        loop.add_signal_handler(signal.SIGUSR2, self._on_upgrade_signal)
        access_log = self._open_access_log()
        admin = AdminServer(self.config.admin) if self.config.admin is not None else None
        control: ControlPlane | None = None
        try:
            engine = _core.Engine(
                loop,
                startup.table,
                access_log,
                max_held_bytes=self.config.max_held_bytes,
                max_connections=self.config.max_connections,
            )
            if admin is not None and self._inherited.admin is not None:
                await admin.adopt(self._inherited.admin)
            elif admin is not None:
                await _bind_admin(admin)
            self._admin = admin
            serving = self.config.workers == 1
            listeners = Listeners(
                engine.protocol_factory if serving else BIND_ONLY,
                self._server_tls(),
                group_size=self.config.workers,
                activated=systemd.activated_sockets(),
                inherited=self._inherited.listeners,
            )
            control = ControlPlane(
                engine,
                self.config,
                config_path=self._config_path,
                overrides=self._overrides,
                listeners=listeners,
                access_log=access_log,
                deployments=startup.deployments,
            )
            engine.on_capacity = control.on_capacity
            await self._listen(listeners)
            for unused in listeners.close_unused_activated():
                complain(f"systemd passed a socket {unused} that no listen entry names")
            for url in listeners.close_unused_inherited():
                say(f"no longer listening on {url} (not in the config any more)")
            if not serving:
                await self._start_workers(control)
            if admin is not None:
                await admin.serve(AdminApi(control, token=self.config.admin_token))
            if access_log is not None:
                access_log.start(loop)
            control.start()
            self._announce(control, admin)
            self._control = control
            control.upgrader = self._run_upgrade
            if self._successor is not None:
                self._successor.serving(control.listeners.urls())
                self._adopting = asyncio.get_running_loop().create_task(
                    self._successor.adopt(self._adopter(control))
                )
                self._successor = None
            systemd.ready(f"serving on {', '.join(control.listeners.urls())}")
            await self._stop_requested.wait()
            await self._lame_duck(control)
            await self._shut_down(control, admin)
        finally:
            if admin is not None:
                admin.close()
            current_log = control.access_log if control is not None else access_log
            if current_log is not None:
                current_log.close()

    async def _start_workers(self, control: ControlPlane) -> None:
        """Start the worker processes on the bound listeners (``workers`` > 1)."""
        pool = WorkerPool(
            self.config.workers,
            control.start_state,
            control.listeners.sockets,
            self.config.worker_timeout,
        )
        control.workers = pool
        try:
            await pool.start()
        except WorkerLost as error:
            await pool.terminate()
            raise StartupError(str(error)) from None
        say(f"{self.config.workers} workers serving: pids {', '.join(map(str, pool.pids()))}")

    def _on_stop_signal(self) -> None:
        """First signal: graceful shutdown. Second: stop waiting for connections."""
        assert self._stop_requested is not None and self._cut is not None
        self._stop_signals += 1
        if self._stop_signals == 1:
            systemd.stopping()
            self._stop_requested.set()
        else:
            self._cut.set()
            if self._control is not None and self._control.workers is not None:
                self._control.workers.cut()

    def _on_reload_signal(self) -> None:
        """SIGHUP: reload the config file; the outcome is printed by the reload itself."""
        if self._control is None or self._stop_signals:
            complain("reload ignored: the proxy is starting or stopping")
            return
        task = asyncio.get_running_loop().create_task(self._reload(self._control))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _on_upgrade_signal(self) -> None:
        """SIGUSR2: ``fastpause upgrade``, its progress said on stdout."""
        control = self._control
        if control is None or self._stop_signals or control.upgrading:
            complain("upgrade ignored: the proxy is starting, stopping or upgrading")
            return
        task = asyncio.get_running_loop().create_task(self._run_upgrade(_say_event))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _run_upgrade(self, emit: Callable[[Event], None]) -> None:
        """Hand everything to a new process, then shut down; a failure changes nothing."""
        control = self._control
        assert control is not None and self._stop_requested is not None
        self._upgrade = asyncio.current_task()
        control.upgrading = True
        try:
            async with control.exclusive():  # a deploy switching now finishes first
                handover = Handover(
                    state=control.runtime_state(),
                    listeners=control.listeners.handover(),
                    admin=self._admin.socket if self._admin is not None else None,
                    stop_accepting=control.listeners.close,
                    take=self._taker(control),
                    retire=self._retire,
                )
                giver = await start_successor(handover, emit)
        except UpgradeFailed as error:
            complain(f"upgrade failed: {error}; still serving")
            emit({"event": "failed", "error": str(error)})
            control.upgrading = False
            self._upgrade = None
            return
        in_flight = (await control.stats())["engine"]["in_flight"]
        emit({"event": "draining", "in_flight": in_flight})
        self._drained = asyncio.Event()
        await self._drained.wait()
        await giver.flush()  # the connections that went idle while draining
        emit({"event": "done", "finished": in_flight, "pid": os.getpid()})

    def _taker(
        self,
        control: ControlPlane,
    ) -> Callable[[Callable[[list[Connection]], None]], Awaitable[tuple[int, int, int]]]:
        """How this process gives its connections away: its own engine's, or each
        worker's (``WorkerPool.hand_over``)."""
        pool = control.workers
        if pool is not None:

            async def from_workers(
                late: Callable[[list[Connection]], None],
            ) -> tuple[int, int, int]:
                pool.on_connections = late
                return await pool.hand_over()

            return from_workers
        engine, relays = control.engine, self._relays

        async def from_engine(
            late: Callable[[list[Connection]], None],
        ) -> tuple[int, int, int]:
            return hand_over_engine(engine, relays, late, 0)

        return from_engine

    @staticmethod
    def _adopter(control: ControlPlane) -> Callable[[list[Connection]], Awaitable[None]]:
        """Where connections from the process this one replaces are served."""
        pool = control.workers
        if pool is not None:
            return pool.adopt
        return lambda connections: adopt_connections(control.engine, connections)

    def _retire(self) -> None:
        """The successor serves: stop as SIGTERM would, leaving it the sockets."""
        assert self._stop_requested is not None
        self._handed_over = True
        self._stop_requested.set()

    @staticmethod
    async def _reload(control: ControlPlane) -> None:
        """A SIGHUP reload: nobody waits for its outcome, so every failure is said here."""
        try:
            await control.reload()
        except ReloadError:
            pass  # reported by the reload; the previous config keeps running
        except Exception as error:  # a bug: one line, and the proxy keeps serving
            complain(f"reload failed: internal error: {error!r}; still serving the previous config")

    def _open_access_log(self) -> AccessLog | None:
        """The configured access log, or None when it is off."""
        target = self.config.access_log
        if target is None:
            return None
        try:
            return AccessLog.open(target, self.config.access_log_format)
        except OSError as error:
            raise StartupError(f"cannot open access log {target}: {reason(error)}") from None

    def _server_tls(self) -> ServerTls:
        """The certificates of the https:// listeners (checked when the config was
        read; a file changed since then stops the start here)."""
        try:
            return ServerTls(self.config)
        except CertificateError as error:
            raise StartupError(f"{self.config.source}: certificates: {error}") from None

    async def _listen(self, listeners: Listeners) -> None:
        """Bind every listener, or close those already bound and report the failure."""
        try:
            listeners.commit(await listeners.prepare(self.config.listen))
        except ListenError as error:
            raise StartupError(str(error)) from None

    def _announce(self, control: ControlPlane, admin: AdminServer | None) -> None:
        """Print the routes, the admin address, then the bound addresses (real ports)."""
        for route in control.engine.table.routes:
            say(_describe_route(route, control.upstream_weights(route.name)))
        for warning in unverified_upstreams(control.config):
            complain(warning)
        if admin is not None:
            say(f"admin on {admin.describe()}")
        for url in control.listeners.urls():
            say(f"listening on {url}")

    async def _lame_duck(self, control: ControlPlane) -> None:
        """``shutdown_delay``: serve on, but answer health checks with 503, so an outer
        load balancer takes this proxy out before it stops accepting (kamal-proxy's
        lame duck). A second stop signal ends it and cuts."""
        delay = control.config.shutdown_delay
        if not delay:
            return
        assert self._cut is not None
        LameDuck().apply(control.engine)
        if control.workers is not None:
            await control.workers.send(LameDuck())
        # said once every worker applied it: from this line on, health checks fail
        say(f"shutting down in {delay:g}s; health checks answer 503 until then")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cut.wait(), delay)

    async def _shut_down(self, control: ControlPlane, admin: AdminServer | None) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then cut.

        The admin listener closes with the public ones, so a replacement proxy can
        take over the socket while this one drains.
        """
        assert self._cut is not None
        if admin is not None:
            admin.close(handed_over=self._handed_over)
        grace = control.config.shutdown_timeout
        if control.workers is not None:
            # every worker has closed its copies of the listeners before the line
            # is said: from then on, a connect is refused
            control.listeners.close()
            say_shutting_down(await control.workers.stop_accepting(), grace)
            await control.workers.wait_drained()
        else:
            say_shutting_down(stop_accepting(control.engine, control.listeners), grace)
            await drain(control.engine, grace, self._cut)
        control.close()
        if self._drained is not None and self._upgrade is not None:
            self._drained.set()  # the upgrade's caller hears "done" before we exit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._upgrade), UPGRADE_GOODBYE)
        if control.workers is not None:
            await control.workers.wait_stopped()  # they may relay TLS connections a while
        await self._relays.wait_closed(self._cut)
        if admin is not None:
            await admin.finish()


def stop_accepting(engine: _core.Engine, listeners: Listeners) -> int:
    """The first step of a graceful end: close the listeners, close idle keep-alive
    connections, and say how many connections are left to finish."""
    engine.on_capacity = None  # connections closing now must not start accepting again
    listeners.close()
    return engine.shutdown()


def say_shutting_down(open_connections: int, grace: float) -> None:
    plural = "" if open_connections == 1 else "s"
    say(f"shutting down: {open_connections} open connection{plural}, waiting up to {grace:g}s")


async def drain(engine: _core.Engine, grace: float, cut: asyncio.Event) -> None:
    """The rest of a graceful end: let in-flight requests finish within ``grace`` (or
    until ``cut`` is set), then cut what is left."""
    drained = engine.wait_drained()
    cutting: asyncio.Future[Any] = asyncio.ensure_future(cut.wait())
    await asyncio.wait([drained, cutting], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    cutting.cancel()
    engine.close_all()
    await asyncio.wait([drained], timeout=CUT_WAIT)


async def _bind_admin(admin: AdminServer) -> None:
    """Bind the admin listener; a socket in use or a port taken stops the start."""
    try:
        await admin.bind()
    except BindError as error:
        raise StartupError(str(error)) from None


def _describe_route(route: _core.Route, weights: list[int]) -> str:
    """``route api for api.example.com/v2 (least_conn) -> 127.0.0.1:3000 weight 3, ...``;
    the match and the policy only when they are not the defaults (any request, round
    robin)."""
    match = describe_match(route.hosts, path_prefix(route), route.strip_path_prefix)
    scope = "" if match == "*" else f" for {match}"
    policy = "" if route.lb == "round_robin" else f" ({route.lb})"
    targets = ", ".join(
        _describe_upstream(upstream, weight)
        for upstream, weight in zip(route.upstreams, weights, strict=True)
    )
    return f"route {route.name}{scope}{policy} -> {targets}"


def _describe_upstream(upstream: _core.Upstream, weight: int) -> str:
    """``127.0.0.1:8003``, or ``localhost:8003 (127.0.0.1)`` when a name was resolved,
    then its weight unless it is 1."""
    dialed = str(Address(upstream.host, upstream.port))
    text = (
        upstream.address if upstream.address == dialed else f"{upstream.address} ({upstream.host})"
    )
    return text if weight == 1 else f"{text} weight {weight}"
