"""A worker process: one data plane on the supervisor's listening sockets.

A worker never reads a config file, resolves a name or probes a backend: its
supervisor (``fastpause.workers``) sends it everything as plain values over the
command channel (``fastpause.wire``) and waits for the answer to each message.
What it holds is its own: held requests, client and upstream connections, the
counters the supervisor sums for ``/status`` and ``/metrics``.

It dies with its supervisor (PR_SET_PDEATHSIG to SIGTERM, the graceful drain),
so a killed supervisor leaves no process holding the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from fastpause import _core
from fastpause.accesslog import AccessLog
from fastpause.commands import (
    Install,
    LameDuck,
    Snapshot,
    UnknownRoute,
    Verdict,
    apply,
    route_state,
)
from fastpause.config import Config
from fastpause.console import complain
from fastpause.control import retire
from fastpause.listeners import Listeners
from fastpause.relay import Relays
from fastpause.router import build_table, retired
from fastpause.server import drain, say_shutting_down, stop_accepting
from fastpause.shared_counts import attach
from fastpause.stats import Stats, collect
from fastpause.tls import CertificateError, Certificates, ServerTls
from fastpause.upgrade import (
    FDS_PER_FRAME,
    Connection,
    adopt_connections,
    hand_over_engine,
    pack_connections,
    unpack_connections,
)
from fastpause.wire import Channel, WireError, decode

_PR_SET_PDEATHSIG = 1
PARENT_POLL = 1.0
# At exit, how long what is still being sent to the supervisor may take.
FLUSH_TIMEOUT = 5.0


class Worker:
    """The data plane of one worker process and the answers to its supervisor."""

    def __init__(self, channel_socket: socket.socket, index: int, parent: int) -> None:
        self.index = index
        self._parent = parent
        self._channel_socket = channel_socket
        self._channel: Channel | None = None
        self._engine: _core.Engine | None = None
        self._config: Config | None = None
        self._listeners: Listeners | None = None
        self._access_log: AccessLog | None = None
        self._shared: _core.SharedCounts | None = None
        self._tls: ServerTls | None = None
        self._relays = Relays()  # TLS connections given to a successor
        self._stop = asyncio.Event()
        self._cut = asyncio.Event()
        self._signals = 0
        self._told_to_stop = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[bool]] = set()
        self._handlers: dict[str, Callable[[dict[str, Any], list[int]], Any]] = {
            "start": self._start,
            "command": self._command,
            "drain": self._drain,
            "retired": self._retired,
            "stats": self._stats,
            "listen": self._listen,
            "upstream_up": self._upstream_up,
            "upstream_down": self._upstream_down,
            "cut": self._cut_now,
            "stop_accepting": self._stop_accepting,
            "hand_over": self._hand_over,
            "adopt": self._adopt_connections,
        }

    async def serve(self) -> int:
        """Answer the supervisor until told to stop (a signal or the channel closing)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        # A terminal's ^C reaches the whole process group; the supervisor answers it
        # by sending SIGTERM, so the first ^C drains here too instead of cutting.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor reloads
        self._channel = Channel(self._channel_socket, self._on_frame, self._stop.set)
        await self._stop.wait()
        if self._engine is not None and self._config is not None:
            grace = self._config.shutdown_timeout
            if not self._told_to_stop:  # a signal
                left = self._close_listeners()
                if os.getppid() != self._parent:  # the supervisor is gone: say it here
                    say_shutting_down(left, grace)
            await drain(self._engine, grace, self._cut)
            self._tell({"event": "drained"})
            await self._relays.wait_closed(self._cut)
            for task in self._retiring:
                task.cancel()
        if self._access_log is not None:
            self._access_log.close()
        if self._tasks:  # answers and connections still on their way to the supervisor
            await asyncio.wait(list(self._tasks), timeout=FLUSH_TIMEOUT)
        self._channel.close()
        return 0

    def _stop_accepting(self, args: dict[str, Any], fds: list[int]) -> dict[str, int]:
        """The supervisor stops: close the listeners now, answer how many connections
        are left, then drain them (the supervisor says one line for every worker)."""
        self._told_to_stop = True
        self._stop.set()
        return {"connections": self._close_listeners()}

    def _close_listeners(self) -> int:
        if self._engine is None or self._listeners is None:
            return 0  # not started yet: nothing to close
        return stop_accepting(self._engine, self._listeners)

    def _cut_now(self, args: dict[str, Any], fds: list[int]) -> None:
        """The supervisor's second stop signal: close what is left, do not wait for it."""
        self._stop.set()
        self._cut.set()

    def _on_stop_signal(self) -> None:
        """First signal: graceful shutdown. Second: cut what is left."""
        self._signals += 1
        (self._stop if self._signals == 1 else self._cut).set()

    # ------------------------------------------------------------ messages

    def _on_frame(self, message: dict[str, Any], fds: list[int]) -> None:
        """Apply a message in arrival order; an answer that must wait runs as a task."""
        handler = self._handlers.get(message.get("op", ""))
        try:
            if handler is None:
                raise WireError(f"unknown operation {message.get('op')!r}")
            result = handler(message.get("args", {}), fds)
        except (WireError, UnknownRoute, ValueError) as error:
            self._reply(message, {"error": str(error)})
            return
        if isinstance(result, Awaitable):
            self._spawn(self._reply_later(message, result))
        else:
            self._reply(message, {"ok": result})

    async def _reply_later(self, message: dict[str, Any], result: Awaitable[Any]) -> None:
        try:
            value = {"ok": await result}
        except (WireError, UnknownRoute, ValueError) as error:
            value = {"error": str(error)}
        await self._send(message, value)

    def _reply(self, message: dict[str, Any], value: dict[str, Any]) -> None:
        self._spawn(self._send(message, value))

    async def _send(self, message: dict[str, Any], value: dict[str, Any]) -> None:
        if "id" not in message:
            return  # told, not asked
        assert self._channel is not None
        with contextlib.suppress(ConnectionError):  # the supervisor is gone: we stop too
            await self._channel.send({"id": message.get("id"), **value})

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ operations

    def _start(self, args: dict[str, Any], fds: list[int]) -> Awaitable[dict[str, Any]]:
        """The first snapshot, the route modes and the listening sockets."""
        snapshot: Snapshot = decode(args["snapshot"])
        config = snapshot.config
        table = build_table(config, resolved=snapshot.resolved)
        loop = asyncio.get_running_loop()
        if config.access_log is not None:
            self._access_log = AccessLog.open(config.access_log, config.access_log_format)
            self._access_log.start(loop)
        self._engine = _core.Engine(
            loop,
            table,
            self._access_log,
            max_held_bytes=config.max_held_bytes,
            max_connections=config.max_connections,
        )
        self._config = config
        *listening, counts = fds
        self._shared = attach(counts, args["workers"], self.index)
        self._engine.share_counts(self._shared)
        self._share_route_counts(snapshot)
        self._set_health(snapshot.unhealthy)
        for command in decode(args["modes"]):
            apply(command, table)
        self._tls = ServerTls(config)
        self._listeners = Listeners(self._engine.protocol_factory, self._tls)
        self._engine.on_capacity = self._on_capacity
        self._engine.on_upstream_up = self._tell_upstream_up
        self._engine.on_upstream_down = self._tell_upstream_down
        return self._adopt(listening, args["tls"])

    async def _adopt(self, fds: list[int], tls: list[bool]) -> dict[str, Any]:
        assert self._listeners is not None
        sockets = [socket.socket(fileno=fd) for fd in fds]
        await self._listeners.adopt(sockets, tls)
        return {"pid": os.getpid()}

    def _listen(self, args: dict[str, Any], fds: list[int]) -> Awaitable[dict[str, Any]]:
        """The supervisor's listeners after a reload: serve these, close the others."""
        return self._adopt(fds, args["tls"])

    def _command(self, args: dict[str, Any], fds: list[int]) -> Any:
        """Apply a command of ``fastpause.commands``: to a route, or to the data plane."""
        engine, _ = self._running()
        command = decode(args["command"])
        if isinstance(command, Install):
            return self._install(command)
        if isinstance(command, Verdict | LameDuck):
            return command.apply(engine)
        return apply(command, engine.table)

    def _install(self, command: Install) -> dict[str, Any]:
        """A new routing snapshot (reload, deploy): swap, then drain what left it.
        Answers the exchanges left on retired upstreams and, per route, the held
        requests the swap released."""
        engine, previous = self._running()
        snapshot = command.snapshot
        config = snapshot.config
        old = engine.table
        # what the swap releases: requests held in running routes, routed again
        held = {r.name: r.state.held for r in old.routes if r.state.mode_name == "running"}
        table = build_table(config, previous=old, resolved=snapshot.resolved)
        engine.table = table
        engine.max_held_bytes = config.max_held_bytes
        engine.max_connections = config.max_connections
        self._switch_access_log(previous, config)
        self._switch_certificates(config)
        self._config = config
        self._share_route_counts(snapshot)
        self._set_health(snapshot.unhealthy)
        leaving = retired(old, table)
        if command.close_tunnels:
            for upstream in leaving:
                upstream.close_tunnels()
        in_flight = sum(upstream.active for upstream in leaving)
        if leaving:
            task = asyncio.ensure_future(retire(leaving, config.drain_timeout))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return {"in_flight": in_flight, "held": held}

    def _upstream_up(self, args: dict[str, Any], fds: list[int]) -> None:
        """Another worker reached an upstream: what waits for it here goes now."""
        for upstream in self._upstreams(args["address"]):
            self._running()[0].upstream_reachable(upstream)

    def _upstream_down(self, args: dict[str, Any], fds: list[int]) -> None:
        """Another worker failed to reach an upstream: keep away from it here too."""
        for upstream in self._upstreams(args["address"]):
            self._running()[0].upstream_unreachable(upstream, args["fail_duration"])

    def _tell_upstream_up(self, address: str) -> None:
        """This worker reached an upstream that may have been down: the supervisor tells
        the others, whose held requests may be waiting for it (their own probes may be
        a ``try_interval`` away)."""
        self._tell({"event": "upstream_up", "address": address})

    def _tell_upstream_down(self, address: str, fail_duration: float) -> None:
        """This worker failed to reach an upstream (passive health): the others avoid it
        too, as one proxy would."""
        self._tell({"event": "upstream_down", "address": address, "fail_duration": fail_duration})

    def _tell(self, event: dict[str, Any]) -> None:
        self._spawn(self._tell_with_fds(event, []))

    async def _drain(self, args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Wait (bounded) until nothing of a route is in flight here."""
        engine, _ = self._running()
        state = route_state(engine.table, args["route"])
        drained = True
        if state.in_flight:
            try:
                await asyncio.wait_for(state.wait_drained(), args["timeout"])
            except TimeoutError:
                drained = False
        return {"drained": drained, "in_flight": state.in_flight}

    async def _retired(self, args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Wait for the upstreams earlier snapshots retired; True if all drained in time."""
        results = await asyncio.gather(*self._retiring) if self._retiring else []
        return {"drained": all(results)}

    def _stats(self, args: dict[str, Any], fds: list[int]) -> Stats:
        engine, _ = self._running()
        return collect(engine)

    # ------------------------------------------------------------ helpers

    def _hand_over(self, args: dict[str, Any], fds: list[int]) -> dict[str, int]:
        """An upgrade: stop accepting (the new process serves the sockets) and give
        away every connection the successor can take, as ``connections`` events with
        their descriptors (before this answer, in order); those that go idle here
        later follow the same way. Answers how many went, and how many held stay."""
        engine, _ = self._running()
        assert self._listeners is not None
        self._listeners.close()
        held, idle, stay = hand_over_engine(engine, self._relays, self._give, self.index)
        return {"held": held, "idle": idle, "stay": stay}

    def _give(self, connections: list[Connection]) -> None:
        """Send connections to the supervisor, at most ``FDS_PER_FRAME`` a frame;
        the channel's lock keeps the frames in the order of these calls."""
        for start in range(0, len(connections), FDS_PER_FRAME):
            entries, fds = pack_connections(connections[start : start + FDS_PER_FRAME])
            event = {"event": "connections", "connections": entries}
            self._spawn(self._tell_with_fds(event, fds))

    async def _tell_with_fds(self, event: dict[str, Any], fds: list[int]) -> None:
        """Send an event; a supervisor that is gone hears nothing (we stop too)."""
        assert self._channel is not None
        try:
            with contextlib.suppress(ConnectionError):
                await self._channel.send(event, fds)
        finally:
            for fd in fds:
                os.close(fd)

    async def _adopt_connections(self, args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Connections the process this one replaces gave away: serve them."""
        engine, _ = self._running()
        connections = unpack_connections(args["connections"], fds)
        await adopt_connections(engine, connections)
        return {"adopted": len(connections)}

    def _running(self) -> tuple[_core.Engine, Config]:
        if self._engine is None or self._config is None:
            raise WireError("the worker has not started")
        return self._engine, self._config

    def _upstreams(self, address: str) -> list[_core.Upstream]:
        """The upstreams of the current table at ``address`` (once each)."""
        engine, _ = self._running()
        found = {
            id(upstream): upstream
            for route in engine.table.routes
            for upstream in route.upstreams
            if upstream.address == address
        }
        return list(found.values())

    def _share_route_counts(self, snapshot: Snapshot) -> None:
        """Each route's held count goes to its column: ``max_held`` is the proxy's."""
        engine, _ = self._running()
        assert self._shared is not None
        for route in engine.table.routes:
            route.state.share_counts(self._shared, snapshot.columns[route.name])

    def _set_health(self, unhealthy: tuple[tuple[str, str], ...]) -> None:
        """Match the supervisor's health verdicts (it alone probes the backends)."""
        engine, _ = self._running()
        down = {(route, address) for route, address in unhealthy}
        for route in engine.table.routes:
            for upstream in route.upstreams:
                healthy = (route.name, upstream.address) not in down
                if upstream.healthy != healthy:
                    engine.set_upstream_health(upstream, healthy)

    def _switch_certificates(self, config: Config) -> None:
        """Read the certificates again: a reload may name renewed files."""
        assert self._tls is not None
        try:
            self._tls.install(Certificates(config), config)
        except CertificateError as error:  # the supervisor loaded them a moment ago
            complain(f"worker {self.index}: certificates: {error}")

    def _switch_access_log(self, previous: Config, config: Config) -> None:
        target = (config.access_log, config.access_log_format)
        if target == (previous.access_log, previous.access_log_format):
            return
        engine, _ = self._running()
        old, self._access_log = self._access_log, None
        if config.access_log is not None:
            try:
                self._access_log = AccessLog.open(config.access_log, config.access_log_format)
                self._access_log.start(asyncio.get_running_loop())
            except OSError as error:  # the supervisor opened it a moment ago
                complain(f"worker {self.index}: cannot open access log: {error}")
        engine.access_log = self._access_log
        if old is not None:
            old.close()

    def _on_capacity(self, at_capacity: bool) -> None:
        """This worker's share of ``max_connections``: the others go on accepting
        from the shared socket meanwhile."""
        assert self._listeners is not None
        if at_capacity:
            self._listeners.stop_accepting()
        else:
            self._listeners.accept_again()


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the supervisor dies (however it dies), so no worker is orphaned.

    Linux's PR_SET_PDEATHSIG; elsewhere ``_watch_parent`` polls for it instead.
    """
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is not None and prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        complain(f"worker: prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # it died before the prctl
        sys.exit(0)


def _watch_parent(loop: asyncio.AbstractEventLoop, parent: int) -> None:
    """Without PR_SET_PDEATHSIG: once a second, stop when the supervisor is gone."""
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
        return
    loop.call_later(PARENT_POLL, _watch_parent, loop, parent)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastpause.worker CHANNEL_FD SUPERVISOR_PID INDEX`` (the supervisor's
    command line for it, never a user's)."""
    channel_fd, parent, index = (int(arg) for arg in (argv or sys.argv)[1:4])
    _die_with_parent(parent)
    channel = socket.socket(fileno=channel_fd)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if not sys.platform.startswith("linux"):
            _watch_parent(runner.get_loop(), parent)
        return runner.run(Worker(channel, index, parent).serve())


if __name__ == "__main__":
    sys.exit(main())
