"""The public listening sockets, and pausing accept() at the connection limit.

fastpause creates, binds and keeps each listening socket itself (a ``listen``
entry such as ``localhost:8080`` may stand for several addresses) and serves a
*duplicate* of it with an ``asyncio.Server``. asyncio and uvloop servers cannot
pause accept(); this split can: closing the server closes only the duplicate,
the kept socket goes on listening, and the kernel queues new connections in its
backlog until a server over a fresh duplicate accepts them. A client that
arrives at the limit waits instead of being refused.

A reload binds the entries that are new before it changes anything, and closes
the ones that were removed only once the new routing table is in place: a bind
that fails leaves the proxy exactly as it was. A closed listener stops accepting;
the connections it accepted carry on.
"""

import asyncio
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastpause.config import Address
from fastpause.console import complain
from fastpause.tls import ServerTls

# A listen entry: the address as written, and which of several equal entries it is
# (each "127.0.0.1:0" is its own free port, so equal entries are distinct sockets).
ListenKey = tuple[Address, int]
ProtocolFactory = Callable[[], asyncio.Protocol]
# The data plane's protocol factory for a scheme (``Engine.protocol_factory``).
Protocols = Callable[[str], ProtocolFactory]
# The supervisor of worker processes binds listeners without serving them: the
# workers accept on the sockets it sends them.
BIND_ONLY = None
# Connections the kernel queues per socket while nothing accepts (capped by
# net.core.somaxconn); beyond it, clients retry their SYN.
BACKLOG = 2048


class ListenError(Exception):
    """A listener could not be bound; the message names the address and the reason."""


class Listener:
    """One bound, listening socket, and the server accepting on it when allowed.

    For a supervisor of N workers, ``group`` is N sockets on the same address in
    one SO_REUSEPORT group: worker i accepts on socket i, so the kernel spreads
    connections evenly, and since the supervisor keeps them open, connections
    queued for a worker that dies wait for its replacement instead of being reset.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: ProtocolFactory | None,
        group: list[socket.socket] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.socket = sock
        self.group = group or [sock]
        self._protocol_factory = protocol_factory
        self.tls = tls  # set for an https:// listener
        self._server: asyncio.Server | None = None
        self._opening = False
        self._wanted = False  # whether a server should be accepting now
        host, port = sock.getsockname()[:2]
        self.url = f"{'https' if tls else 'http'}://{Address(host, port)}"

    @property
    def serving(self) -> bool:
        return self._server is not None or self._opening

    async def accept(self) -> None:
        """Accept connections (those queued meanwhile first) until ``stop``."""
        self._wanted = True
        if self.serving or self._protocol_factory is None:
            return
        self._opening = True
        try:
            duplicate = socket.socket(fileno=os.dup(self.socket.fileno()))
            tls: dict[str, Any] = {}
            if self.tls is not None:
                tls = {
                    "ssl": self.tls.context,
                    "ssl_handshake_timeout": self.tls.handshake_timeout,
                }
            server = await asyncio.get_running_loop().create_server(
                self._protocol_factory, sock=duplicate, backlog=BACKLOG, **tls
            )
        finally:
            self._opening = False
        self._server = server
        if not self._wanted:  # stopped while the server was being created
            self.stop()

    def stop(self) -> None:
        """Stop accepting; the socket keeps listening and queueing new connections."""
        self._wanted = False
        if self._server is not None:
            self._server.close()
            self._server = None

    def close(self) -> None:
        """Stop listening: new connections are refused, queued ones reset."""
        self.stop()
        for sock in self.group:
            sock.close()


@dataclass
class ListenChange:
    """A new set of listen entries, bound but not yet in force."""

    wanted: list[ListenKey]
    opened: dict[ListenKey, list[Listener]] = field(default_factory=dict)


class Listeners:
    """The proxy's public listeners, by listen entry, accepting or paused together."""

    def __init__(
        self,
        protocols: Protocols | None,
        tls: ServerTls | None = None,
        group_size: int = 1,
        activated: Sequence[tuple[str, socket.socket]] = (),
        inherited: dict[ListenKey, list[list[socket.socket]]] | None = None,
    ) -> None:
        self._protocols = protocols
        self.tls = tls  # the certificates of every https:// listener
        self._group_size = group_size  # sockets per address (one per worker)
        # Listening sockets systemd passed (socket activation), by address: a listen
        # entry for that address serves the socket instead of binding its own.
        self._activated = {_address_of(sock): (name, sock) for name, sock in activated}
        # A predecessor's listening sockets (``fastpause upgrade``), by listen entry.
        self._inherited = inherited or {}
        self._bound: dict[ListenKey, list[Listener]] = {}
        self._adopted: dict[str, Listener] = {}  # a worker's, by URL
        self._live: set[Listener] = set()  # bound, or prepared by a reload in progress
        self.accepting = True
        self._resuming: asyncio.Task[None] | None = None

    async def prepare(self, addresses: Sequence[Address]) -> ListenChange:
        """Bind the entries of ``addresses`` that are not bound yet (and accept on them
        unless the proxy is at its connection limit).

        On failure the sockets just bound are closed and ``ListenError`` raised,
        so nothing changed.
        """
        change = ListenChange(_keys(addresses))
        for key in change.wanted:
            if key in self._bound:
                continue
            address = key[0]
            try:
                if key in self._inherited:
                    change.opened[key] = await self._take_over(
                        self._inherited.pop(key), address.tls
                    )
                    continue
                change.opened[key] = await self._open(address)
            except OSError as error:
                self.abandon(change)
                raise ListenError(f"cannot listen on {address}: {reason(error)}") from None
        return change

    async def _open(self, address: Address) -> list[Listener]:
        """A listener for each address a listen entry stands for."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        opened: list[Listener] = []
        try:
            for family, sockaddr in _distinct(infos):
                activated = self._activated.pop((family, sockaddr), None)
                if activated is not None:  # one socket, shared by the workers if any
                    group = [activated[1]] * self._group_size
                else:
                    group = _bind_group(family, sockaddr, self._group_size)
                listener = self._listener(group, address.tls)
                opened.append(listener)
                if self.accepting:
                    await listener.accept()
        except OSError:
            for listener in opened:
                listener.close()
            raise
        self._live.update(opened)
        return opened

    def _listener(self, group: list[socket.socket], tls: bool) -> Listener:
        if tls and self.tls is None:
            raise ValueError("an https:// listener without certificates")
        factory = self._protocols("https" if tls else "http") if self._protocols else None
        return Listener(group[0], factory, group, self.tls if tls else None)

    async def _take_over(self, groups: list[list[socket.socket]], tls: bool) -> list[Listener]:
        """Serve a predecessor's sockets: its SO_REUSEPORT groups resized to ours."""
        opened = [self._listener(_resize(group, self._group_size), tls) for group in groups]
        self._live.update(opened)
        if self.accepting:
            for listener in opened:
                await listener.accept()
        return opened

    def close_unused_inherited(self) -> list[str]:
        """Close the predecessor's sockets that no listen entry names any more."""
        urls = []
        for (address, _), groups in self._inherited.items():
            for group in groups:
                urls.append(f"{address.scheme}://{Address(*group[0].getsockname()[:2])}")
                for sock in group:
                    sock.close()
        self._inherited.clear()
        return urls

    def handover(self) -> list[tuple[ListenKey, list[socket.socket]]]:
        """Every bound socket, by listen entry, for a successor (``fastpause upgrade``)."""
        return [
            (key, listener.group)
            for key, listeners in self._bound.items()
            for listener in listeners
        ]

    def commit(self, change: ListenChange) -> tuple[list[str], list[str]]:
        """Put ``change`` in force; return the URLs opened and the URLs closed."""
        bound = {**self._bound, **change.opened}
        closed: list[str] = []
        for key, listeners in bound.items():
            if key not in change.wanted:
                closed += [listener.url for listener in listeners]
                self._close(listeners)
        self._bound = {key: bound[key] for key in change.wanted}
        opened = [listener.url for listeners in change.opened.values() for listener in listeners]
        return opened, closed

    def abandon(self, change: ListenChange) -> None:
        """Close what ``prepare`` bound for a change that will not happen."""
        for listeners in change.opened.values():
            self._close(listeners)
        change.opened.clear()

    async def adopt(self, sockets: Sequence[socket.socket], tls: Sequence[bool]) -> None:
        """Serve listening sockets bound by another process (a worker's supervisor),
        ``tls`` saying which are https://; adopted listeners not in ``sockets`` any
        more are closed."""
        adopted: dict[str, Listener] = {}
        for sock, secure in zip(sockets, tls, strict=True):
            listener = self._listener([sock], secure)
            known = self._adopted.pop(listener.url, None)
            if known is not None:
                sock.close()  # a duplicate of one already served
                adopted[listener.url] = known
                continue
            adopted[listener.url] = listener
            self._live.add(listener)
            if self.accepting:
                await listener.accept()
        self._close(self._adopted.values())
        self._adopted = adopted

    def close_unused_activated(self) -> list[str]:
        """Close the sockets systemd passed that no listen entry names; for each, its
        name and address."""
        unused = []
        for (_, sockaddr), (name, sock) in self._activated.items():
            unused.append(f"'{name}' on {Address(*sockaddr[:2])}")
            sock.close()
        self._activated.clear()
        return unused

    def sockets(self, index: int) -> list[tuple[socket.socket, bool]]:
        """Worker ``index``'s socket of every bound address, in config order, and
        whether it is an https:// one."""
        return [
            (listener.group[index], listener.tls is not None)
            for listeners in self._bound.values()
            for listener in listeners
        ]

    def urls(self) -> list[str]:
        """``http(s)://HOST:PORT`` per bound socket, in config order, with the real port."""
        return [listener.url for listeners in self._bound.values() for listener in listeners]

    def close(self) -> None:
        """Stop listening on every socket (shutdown): new connections are refused."""
        self._close(list(self._live))

    def stop_accepting(self) -> None:
        """The connection limit is reached: new connections wait in the listen backlog."""
        self.accepting = False
        for listener in self._live:
            listener.stop()

    def accept_again(self) -> None:
        """Below the limit again: accept, starting with the connections that waited."""
        self.accepting = True
        if self._resuming is None or self._resuming.done():
            self._resuming = asyncio.get_running_loop().create_task(self._accept_all())

    async def _accept_all(self) -> None:
        """Start every listener that is not accepting, until all are or a pause comes."""
        while self.accepting and (idle := [one for one in self._live if not one.serving]):
            try:
                await idle[0].accept()
            except OSError as error:  # no file descriptor left for the duplicate, say
                complain(f"cannot accept on {idle[0].url} again: {reason(error)}")
                return

    def _close(self, listeners: Iterable[Listener]) -> None:
        for listener in listeners:
            listener.close()
            self._live.discard(listener)


def _bind_group(family: int, sockaddr: tuple[object, ...], size: int) -> list[socket.socket]:
    """``size`` listening sockets on one address: one plain socket, or an SO_REUSEPORT
    group (port 0 picks a free port for the first; the others join it)."""
    if size == 1:
        return [_bind(family, sockaddr)]
    group = [_bind(family, sockaddr, reuse_port=True)]
    port = group[0].getsockname()[1]
    try:
        while len(group) < size:
            group.append(_bind(family, (sockaddr[0], port, *sockaddr[2:]), reuse_port=True))
    except OSError:
        for sock in group:
            sock.close()
        raise
    return group


def _resize(group: list[socket.socket], size: int) -> list[socket.socket]:
    """``group`` made ``size`` sockets: extra ones closed (connections queued on them are
    lost), missing ones bound into its SO_REUSEPORT group, or, if it is not one, the
    first socket shared."""
    for sock in group[size:]:
        sock.close()
    group = group[:size]
    first = group[0]
    reuse_port = first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    while len(group) < size:
        group.append(
            _bind(first.family, first.getsockname(), reuse_port=True) if reuse_port else first
        )
    return group


def _bind(family: int, sockaddr: tuple[object, ...], reuse_port: bool = False) -> socket.socket:
    """A listening socket, as ``loop.create_server`` would make it."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # "[::]:80" takes IPv6 only; IPv4 is its own entry
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _address_of(sock: socket.socket) -> tuple[int, tuple[object, ...]]:
    """(family, socket address), as ``getaddrinfo`` gives them for a listen entry."""
    return sock.family, sock.getsockname()


def _distinct(
    infos: Iterable[tuple[int, int, int, str, tuple[object, ...]]],
) -> list[tuple[int, tuple[object, ...]]]:
    """(family, socket address) of each address ``getaddrinfo`` found, once each."""
    found: list[tuple[int, tuple[object, ...]]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if (family, sockaddr) not in found:
            found.append((family, sockaddr))
    return found


def reason(error: OSError) -> str:
    """The short OS reason ("Address already in use"), not uvloop's long wrapper text."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return str(error.strerror or error)
    return os.strerror(error.errno)


def _keys(addresses: Sequence[Address]) -> list[ListenKey]:
    seen: dict[Address, int] = {}
    keys = []
    for address in addresses:
        keys.append((address, seen.get(address, 0)))
        seen[address] = seen.get(address, 0) + 1
    return keys
