"""TLS connections across ``fastpause upgrade``: this process decrypts, the successor
serves.

A plain connection goes to the successor as its socket. A TLS connection cannot:
its session (keys, sequence numbers) lives in this process's memory. So at the
handover this process keeps the TLS side and gives the successor one end of a
socket pair instead; a ``Relay`` carries the decrypted bytes between the client
and the other end, both ways, with flow control, until either side closes. The
successor reads the connection as an HTTPS one: its held request waits there,
is released by the successor's ``resume``, and its answer comes back through the
relay. This process exits once its last relay has closed (a second stop signal
cuts them), as NGINX's old workers do after a binary upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

from fastpause.console import plural, say


class _Side(asyncio.Protocol):
    """One end of a relay: what it reads goes to the other end's transport."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.peer: asyncio.Transport | None = None  # where this side's bytes go
        self.early: list[bytes] = []  # read before the peer was connected

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.write(data)

    def eof_received(self) -> bool:
        self.relay.close()  # a TLS transport cannot half-close: the exchange is over
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()

    def pause_writing(self) -> None:  # this side's reader is slow: stop reading the other
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class Relay:
    """A TLS client's transport joined to a local socket, the successor's end."""

    def __init__(self, relays: Relays, client: asyncio.Transport) -> None:
        self._relays = relays
        self.client = client
        self.inner: asyncio.Transport | None = None
        self._from_client = _Side(self)  # reads the client, writes the inner socket
        self._from_inner = _Side(self)
        self._from_inner.peer = client
        self._closed = False

    def take_over(self) -> None:
        self.client.set_protocol(self._from_client)
        self.client.resume_reading()  # the protocol it had may have paused it

    async def connect(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            inner, _ = await loop.connect_accepted_socket(lambda: self._from_inner, sock)
        except OSError:
            sock.close()
            self.close()
            return
        if self._closed:
            inner.close()
            return
        self.inner = inner
        self._from_client.peer = inner
        for data in self._from_client.early:
            inner.write(data)
        self._from_client.early.clear()

    def close(self) -> None:
        """Either side ended: close both, after what each still has to send."""
        if self._closed:
            return
        self._closed = True
        self.client.close()
        if self.inner is not None:
            self.inner.close()
        self._relays.closed(self)

    def abort(self) -> None:
        self._closed = True
        self.client.abort()
        if self.inner is not None:
            self.inner.abort()
        self._relays.closed(self)


class Relays:
    """The relays of one process, for ``Engine.relay_tls``."""

    def __init__(self) -> None:
        self._open: set[Relay] = set()
        self._none_open = asyncio.Event()
        self._none_open.set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def take(self, client: asyncio.Transport) -> int:
        """Relay ``client`` from now on; returns the descriptor for the successor."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        relay = Relay(self, client)
        relay.take_over()
        self._open.add(relay)
        self._none_open.clear()
        task = asyncio.get_running_loop().create_task(relay.connect(ours))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        fd = os.dup(theirs.fileno())
        theirs.close()
        return fd

    def closed(self, relay: Relay) -> None:
        self._open.discard(relay)
        if not self._open:
            self._none_open.set()

    async def wait_closed(self, cut: asyncio.Event) -> None:
        """Until every relay has closed, or ``cut`` is set (then they are cut)."""
        if not self._open:
            return
        say(f"relaying {plural(len(self._open), 'TLS connection')} to the new process")
        cutting = asyncio.ensure_future(cut.wait())
        closed = asyncio.ensure_future(self._none_open.wait())
        await asyncio.wait([cutting, closed], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (cutting, closed):
            waiter.cancel()
        for relay in list(self._open):
            with contextlib.suppress(Exception):
                relay.abort()
