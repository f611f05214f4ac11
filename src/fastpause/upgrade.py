"""``fastpause upgrade``: a successor process takes over without a refused connection.

The running process (the *predecessor*) starts the installed program again with
its own command line and a channel to it (a socketpair whose end the successor
finds in ``$FASTPAUSE_UPGRADE_FD``), then, in frames of ``fastpause.wire``:

1. predecessor -> successor ``state``: the runtime state (route modes, deployed
   targets) the successor starts from instead of a state file;
2. successor -> predecessor ``loaded``, once its config is read and its routing
   table built - or ``failed`` with the reason, and the predecessor serves on as
   if nothing had happened;
3. predecessor -> successor ``sockets``: every listening socket by listen entry,
   and the admin socket (SCM_RIGHTS): the kernel never stops listening, so no
   connection is refused;
4. successor -> predecessor ``serving``: it accepts on them. The predecessor stops
   accepting and gives away its connections (``Engine.hand_over``: held requests
   in arrival order with what was read of them, deadlines and ages; idle
   keep-alive connections), in ``connections`` frames with their sockets;
5. successor -> predecessor ``adopted``: it read them again as if just arrived.
   The predecessor closes its admin listener (leaving the socket file to the
   successor), finishes its requests in flight (``shutdown_timeout``) and exits.

While an upgrade runs, the predecessor refuses other changes (409), so none is
lost between the state it sent and the end of the handover. With workers, each
old worker gives its connections to its supervisor, which passes them on; the new
supervisor gives each old worker's connections to one of its own workers, so each
held queue keeps its order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fastpause import _core
from fastpause.config import Address
from fastpause.console import complain
from fastpause.listeners import ListenKey
from fastpause.relay import Relays
from fastpause.statefile import RuntimeState, StateFileError, from_json
from fastpause.wire import Channel, FrameReader, WireError, send_frame

UPGRADE_ENV = "FASTPAUSE_UPGRADE_FD"
# The kernel passes at most 253 descriptors in one message (SCM_MAX_FD).
FDS_PER_FRAME = 200
# Interpreter start, imports, config, names resolved: what a successor may take.
LOAD_TIMEOUT = 60.0

Event = dict[str, Any]


class Connection(NamedTuple):
    """A connection given away (``Engine.hand_over``), and the old worker it comes
    from (0 without workers)."""

    fd: int
    replay: bytes  # what was read of it, to be read again
    hold_left: float  # seconds its held request may still wait (0: not held)
    held_age: float  # how long that request has been held
    https: bool  # its client speaks TLS to the old process, which relays (``relay``)
    group: int = 0

    @classmethod
    def given(cls, one: tuple[int, bytes, float, float, bool], group: int) -> Connection:
        return cls(*one, group=group)


class UpgradeFailed(Exception):
    """The successor did not take over; the predecessor serves on."""


# ---------------------------------------------------------------- the successor


@dataclass
class Inherited:
    """What the successor takes over: the listening sockets of each listen entry (a
    group per address it stands for), the admin socket."""

    listeners: dict[ListenKey, list[list[socket.socket]]] = field(default_factory=dict)
    admin: socket.socket | None = None


class Successor:
    """The new process's end of the channel; blocking, used before its loop runs."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = FrameReader(sock)

    @classmethod
    def from_environment(cls) -> Successor | None:
        """The channel when this process was started by ``upgrade``, else None."""
        value = os.environ.pop(UPGRADE_ENV, None)
        if value is None:
            return None
        return cls(socket.socket(fileno=int(value)))

    def receive_state(self) -> RuntimeState:
        message = self._expect("state")
        try:
            return from_json(message["state"], "the running process's state")
        except StateFileError as error:
            raise WireError(str(error)) from None

    def loaded(self, routes: int) -> None:
        """Config read and table built."""
        send_frame(self._sock, {"op": "loaded", "routes": routes})

    def receive_sockets(self) -> Inherited:
        message, fds = self._reader.next_frame(LOAD_TIMEOUT)
        if message.get("op") != "sockets":
            raise WireError(f"expected sockets, got {message.get('op')!r}")
        sockets = [socket.socket(fileno=fd) for fd in fds]
        inherited = Inherited()
        for host, port, tls, index, count in message["listeners"]:
            groups = inherited.listeners.setdefault((Address(host, port, tls), index), [])
            groups.append(sockets[:count])
            sockets = sockets[count:]
        if message["admin"]:
            [inherited.admin] = sockets
        return inherited

    def serving(self, listeners: list[str]) -> None:
        send_frame(self._sock, {"op": "serving", "pid": os.getpid(), "listeners": listeners})

    async def adopt(self, receive: Callable[[list[Connection]], Awaitable[None]]) -> None:
        """Take over the connections the predecessor gives - its held requests in
        arrival order and idle connections at once, then each connection that goes
        idle there while it finishes its requests - until it exits; ``receive``
        serves them (here, or in the workers)."""
        frames: asyncio.Queue[tuple[dict[str, Any], list[int]] | None] = asyncio.Queue()
        channel = Channel(
            self._sock,
            lambda message, fds: frames.put_nowait((message, fds)),
            lambda: frames.put_nowait(None),
        )
        try:
            while (frame := await frames.get()) is not None:
                message, fds = frame
                await receive(unpack_connections(message["connections"], fds))
        except (OSError, WireError, KeyError, ValueError) as error:
            complain(f"taking over the old process's connections failed: {error}")
        finally:
            channel.close()

    def fail(self, error: str) -> None:
        """Tell the predecessor why this process will not take over (it serves on)."""
        with contextlib.suppress(OSError):  # gone or gave up: the error is on stderr too
            send_frame(self._sock, {"op": "failed", "error": error})
        self._sock.close()

    def _expect(self, op: str) -> dict[str, Any]:
        message, fds = self._reader.next_frame(LOAD_TIMEOUT)
        for fd in fds:
            os.close(fd)
        if message.get("op") != op:
            raise WireError(f"expected {op}, got {message.get('op')!r}")
        return message


def report_failure(error: str) -> None:
    """A successor that cannot even load its config says so to its predecessor."""
    successor = Successor.from_environment()
    if successor is not None:
        successor.fail(error)


# ---------------------------------------------------------------- the predecessor


@dataclass
class Handover:
    """What the predecessor gives away, and what it does once the successor serves."""

    state: RuntimeState
    listeners: list[tuple[ListenKey, list[socket.socket]]]  # a group per listener
    admin: socket.socket | None
    stop_accepting: Callable[[], None]
    # Gives every connection the successor can take to the callback, now and as they
    # go idle later; returns (held requests given, idle connections given, held stay).
    take: Callable[[Callable[[list[Connection]], None]], Awaitable[tuple[int, int, int]]]
    retire: Callable[[], None]  # leave the admin socket, finish in-flight requests, exit


class Giver:
    """Sends connections to the successor in order, over the channel that stays open
    while the predecessor finishes: those that go idle there go over too."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._sending: set[asyncio.Task[None]] = set()

    def give(self, connections: list[Connection]) -> None:
        for start in range(0, len(connections), FDS_PER_FRAME):
            task = asyncio.get_running_loop().create_task(
                self._send(connections[start : start + FDS_PER_FRAME])
            )
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def flush(self) -> None:
        """Wait until every connection given so far is sent."""
        if self._sending:
            await asyncio.wait(list(self._sending))

    async def _send(self, part: list[Connection]) -> None:
        """One frame (the lock of ``Channel.send`` keeps frames in call order); the
        descriptors are closed here once the kernel holds them for the successor."""
        entries, fds = pack_connections(part)
        try:
            await self._channel.send({"op": "connections", "connections": entries}, fds)
        except (ConnectionError, OSError) as error:
            complain(f"{len(part)} connections could not go to the new process: {error}")
        finally:
            for fd in fds:
                os.close(fd)


def hand_over_engine(
    engine: _core.Engine, relays: Relays, give: Callable[[list[Connection]], None], group: int
) -> tuple[int, int, int]:
    """Give away every connection of ``engine`` a successor can take, now and as more
    go idle, to ``give``, TLS ones through ``relays``; the caller stopped accepting.
    Returns how many held requests and idle connections went, and how many held
    requests stay (their chunked bodies cut inside a size line or a chunk's CRLF)."""
    engine.relay_tls = relays.take
    given, stay = engine.hand_over()
    engine.on_idle = lambda one: give([Connection.given(one, group)])
    connections = [Connection.given(one, group) for one in given]
    give(connections)
    held = sum(1 for one in connections if one.hold_left > 0)
    return held, len(connections) - held, stay


def pack_connections(connections: list[Connection]) -> tuple[list[list[Any]], list[int]]:
    """Connections as plain values for a frame, and the descriptors to send with it."""
    entries = [
        [
            base64.b64encode(one.replay).decode("ascii"),
            one.hold_left,
            one.held_age,
            one.https,
            one.group,
        ]
        for one in connections
    ]
    return entries, [one.fd for one in connections]


def unpack_connections(entries: list[list[Any]], fds: list[int]) -> list[Connection]:
    return [
        Connection(fd, base64.b64decode(replay), float(left), float(age), bool(https), int(group))
        for fd, (replay, left, age, https, group) in zip(fds, entries, strict=True)
    ]


async def adopt_connections(engine: _core.Engine, connections: list[Connection]) -> None:
    """Serve connections another process gave away, in order, reading again what it
    had read of them (``ClientProtocol.replay``)."""
    loop = asyncio.get_running_loop()
    factories = {https: engine.protocol_factory("https" if https else "http") for https in (0, 1)}
    for one in connections:
        factory = factories[one.https]
        _, protocol = await loop.connect_accepted_socket(factory, socket.socket(fileno=one.fd))
        protocol.replay(one.replay, one.hold_left, one.held_age)


async def start_successor(handover: Handover, emit: Callable[[Event], None]) -> Giver:
    """Run the handover with a new process; ``UpgradeFailed`` leaves this process as
    it was. Returns what gives connections to it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Not asyncio's subprocess: its transport kills the child when this process's
        # loop closes, and the new process must outlive this one.
        process = subprocess.Popen(
            [sys.executable, "-m", "fastpause", *sys.argv[1:]],
            pass_fds=[theirs.fileno()],
            env={**os.environ, UPGRADE_ENV: str(theirs.fileno())},
            stdin=subprocess.DEVNULL,
        )
    finally:
        theirs.close()
    emit({"event": "started", "pid": process.pid})
    frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    channel = Channel(
        ours, lambda message, fds: frames.put_nowait(message), lambda: frames.put_nowait(None)
    )
    try:
        await channel.send({"op": "state", "state": handover.state.to_json()})
        loaded = await _answer(frames, "loaded", process)
        emit({"event": "loaded", "routes": loaded["routes"]})
        fds = [sock.fileno() for _, group in handover.listeners for sock in group]
        if handover.admin is not None:
            fds.append(handover.admin.fileno())
        keys = [
            [key[0].host, key[0].port, key[0].tls, key[1], len(group)]
            for key, group in handover.listeners
        ]
        await channel.send(
            {"op": "sockets", "listeners": keys, "admin": handover.admin is not None}, fds
        )
        serving = await _answer(frames, "serving", process)
    except (UpgradeFailed, ConnectionError, WireError) as error:
        channel.close()
        if process.poll() is None:
            process.kill()
        await asyncio.get_running_loop().run_in_executor(None, process.wait)
        raise UpgradeFailed(str(error)) from None
    # From here on the new process serves: whatever happens, this one retires.
    handover.stop_accepting()
    giver = Giver(channel)
    held, idle, stay = await handover.take(giver.give)
    handover.retire()
    emit(
        {
            "event": "handed_over",
            "pid": process.pid,
            "listeners": len(serving["listeners"]),
            "held": held,
            "idle": idle,
            "held_staying": stay,
        }
    )
    return giver


async def _answer(
    frames: asyncio.Queue[dict[str, Any] | None], op: str, process: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """The successor's next frame, which must be ``op``; its failure or exit raises."""
    try:
        message = await asyncio.wait_for(frames.get(), LOAD_TIMEOUT)
    except TimeoutError:
        raise UpgradeFailed(f"the new process did not answer within {LOAD_TIMEOUT:g}s") from None
    if message is None:
        status = await asyncio.get_running_loop().run_in_executor(None, process.wait)
        raise UpgradeFailed(f"the new process exited with status {status} before taking over")
    if message.get("op") == "failed":
        raise UpgradeFailed(f"the new process refused to start: {message['error']}")
    if message.get("op") != op:
        raise UpgradeFailed(f"the new process sent {message.get('op')!r}, expected {op!r}")
    return message
