"""Messages between fastpause processes: plain values in length-prefixed frames.

The supervisor and its workers talk over a Unix socketpair (docs/ARCHITECTURE.md, "Process
model"). A frame is a 4-byte big-endian length and a JSON document; file
descriptors (listening sockets) ride along as SCM_RIGHTS ancillary data on the
frame's first bytes. JSON rather than pickle: a message is data, never code, so
the same frames can later cross to a successor process of another version or to
a fleet.

Config and commands are frozen dataclasses of plain values. ``encode`` turns
them into JSON values tagged with their class name, ``decode`` rebuilds them,
and only the classes registered with ``plain`` can be rebuilt.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from fastpause.console import complain

HEADER = struct.Struct(">I")
# A frame carries a routing snapshot at most (a config with thousands of routes is
# well under this); anything longer is a broken peer.
MAX_FRAME = 64 << 20
MAX_FDS = 256
_TAG = "__plain__"
_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


class WireError(Exception):
    """A frame that cannot be read or rebuilt: the peer is broken or gone."""


def plain(cls: T) -> T:
    """Register a frozen dataclass of plain values so ``decode`` may rebuild it."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _REGISTRY[cls.__name__] = cls
    return cls


def encode(value: Any) -> Any:
    """A JSON value for ``value``: registered dataclasses, tuples, lists, dicts with
    string keys, str, int, float, bool and None."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple | list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode(item) for key, item in value.items()}
    name = type(value).__name__
    if _REGISTRY.get(name) is type(value):
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_TAG: name, **fields}
    raise TypeError(f"cannot send a {name} between processes")


def decode(value: Any) -> Any:
    """The value ``encode`` made ``value`` from; lists come back as tuples (dataclass
    fields hold tuples), which is what every receiver here wants."""
    if isinstance(value, list):
        return tuple(decode(item) for item in value)
    if isinstance(value, dict):
        name = value.get(_TAG)
        if name is None:
            return {key: decode(item) for key, item in value.items()}
        cls = _REGISTRY.get(name)
        if cls is None:
            raise WireError(f"unknown message type {name!r}")
        fields = {key: decode(item) for key, item in value.items() if key != _TAG}
        try:
            return cls(**fields)
        except TypeError as error:
            raise WireError(f"malformed {name}: {error}") from None
    return value


def pack(message: dict[str, Any]) -> bytes:
    """One frame: the length, then the JSON text of ``message`` (already encoded)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise WireError(f"message of {len(body)} bytes is over the {MAX_FRAME}-byte frame limit")
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Reassembles frames from a non-blocking stream socket, with the fds sent along.

    ``feed`` is called when the socket is readable; it returns the complete frames
    read so far, each with the file descriptors that arrived with it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._fds: list[int] = []

    def feed(self) -> tuple[list[tuple[dict[str, Any], list[int]]], bool]:
        """Read what is available: (frames, closed). ``closed`` means the peer is gone."""
        closed = False
        while True:
            try:
                data, fds = _receive(self._sock)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionError:
                closed = True
                break
            self._fds += fds
            if not data:
                closed = True
                break
            self._buffer += data
        return self._frames(), closed

    def next_frame(self, timeout: float) -> tuple[dict[str, Any], list[int]]:
        """Block (at most ``timeout`` for each read) until one whole frame is in; for a
        process whose event loop does not run yet. ``ConnectionError`` at EOF."""
        self._sock.settimeout(timeout)
        while not (frames := self._frames()):
            data, fds = _receive(self._sock)
            self._fds += fds
            if not data:
                raise ConnectionResetError("the peer closed the channel")
            self._buffer += data
        [frame, *rest] = frames
        if rest:
            raise WireError("more than one frame where one was expected")
        return frame

    def _frames(self) -> list[tuple[dict[str, Any], list[int]]]:
        frames = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise WireError(f"frame of {length} bytes is over the limit")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            try:
                message = json.loads(self._buffer[HEADER.size : end])
            except ValueError as error:
                raise WireError(f"frame is not JSON: {error}") from None
            del self._buffer[:end]
            fds, self._fds = self._fds[: message.get("fds", 0)], self._fds[message.get("fds", 0) :]
            frames.append((message, fds))
        return frames

    def close(self) -> None:
        """Close descriptors received for frames that never completed."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def send_frame(sock: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:
    """Send one frame on a blocking socket (before or without an event loop)."""
    if fds:
        message = {**message, "fds": len(fds)}
    data = pack(message)
    if fds:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sock.sendmsg([data[:1]], rights)
        data = data[1:]
    sock.sendall(data)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One recvmsg: the bytes and any descriptors (closed-on-exec, as Python makes fds)."""
    space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    data, ancillary, flags, _ = sock.recvmsg(65536, space, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds += received.tolist()
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise WireError("file descriptors were cut (MSG_CTRUNC)")
    return data, fds


Handler = Callable[[dict[str, Any], list[int]], None]


class Channel:
    """One end of a process's command channel on the running loop.

    Frames are sent whole and in order (a lock keeps two senders from
    interleaving); each received frame goes to ``on_frame``, and ``on_close``
    runs once when the peer is gone.
    """

    def __init__(
        self, sock: socket.socket, on_frame: Handler, on_close: Callable[[], None]
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._reader = FrameReader(sock)
        self._on_frame = on_frame
        self._on_close = on_close
        self._lock = asyncio.Lock()
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    async def send(self, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send one frame; ``fds`` ride on its first byte. ``ConnectionError`` if the
        peer is gone."""
        if fds:
            message = {**message, "fds": len(fds)}
        data = pack(message)
        async with self._lock:
            if self.closed:
                raise ConnectionResetError("the channel is closed")
            if fds:
                await self._send_fds(data[:1], fds)
                data = data[1:]
            await self._loop.sock_sendall(self._sock, data)

    async def _send_fds(self, first: bytes, fds: list[int] | tuple[int, ...]) -> None:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        while True:
            try:
                self._sock.sendmsg([first], rights)
                return
            except (BlockingIOError, InterruptedError):
                await self._writable()

    async def _writable(self) -> None:
        ready = self._loop.create_future()
        self._loop.add_writer(self._sock.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._sock.fileno())

    def _readable(self) -> None:
        try:
            frames, closed = self._reader.feed()
        except WireError as error:
            complain(f"command channel: {error}")
            frames, closed = [], True
        for message, fds in frames:
            self._on_frame(message, fds)
        if closed:
            self.close()

    def close(self) -> None:
        """Stop reading, close the socket, tell the owner (once)."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._reader.close()
        self._sock.close()
        self._on_close()
