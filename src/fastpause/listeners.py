"""The public listening sockets, one ``asyncio.Server`` per ``listen`` entry.

A reload binds the entries that are new before it changes anything, and closes
the ones that were removed only once the new routing table is in place: a bind
that fails leaves the proxy exactly as it was. A closed listener stops accepting;
the connections it accepted carry on.
"""

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fastpause.config import Address

# A listen entry: the address as written, and which of several equal entries it is
# (each "127.0.0.1:0" is its own free port, so equal entries are distinct sockets).
ListenKey = tuple[Address, int]


class ListenError(Exception):
    """A listener could not be bound; the message names the address and the reason."""


@dataclass
class ListenChange:
    """A new set of listen entries, bound but not yet in force."""

    wanted: list[ListenKey]
    opened: dict[ListenKey, asyncio.Server] = field(default_factory=dict)


class Listeners:
    """The proxy's public listeners, by listen entry."""

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        self._protocol_factory = protocol_factory
        self._bound: dict[ListenKey, asyncio.Server] = {}

    async def prepare(self, addresses: Sequence[Address]) -> ListenChange:
        """Bind the entries of ``addresses`` that are not bound yet.

        On failure the sockets just bound are closed and ``ListenError`` raised,
        so nothing changed.
        """
        change = ListenChange(_keys(addresses))
        loop = asyncio.get_running_loop()
        for key in change.wanted:
            if key in self._bound:
                continue
            address = key[0]
            try:
                change.opened[key] = await loop.create_server(
                    self._protocol_factory,
                    address.host,
                    address.port,
                    reuse_address=True,
                    backlog=2048,
                )
            except OSError as error:
                self.abandon(change)
                raise ListenError(f"cannot listen on {address}: {reason(error)}") from None
        return change

    def commit(self, change: ListenChange) -> tuple[list[str], list[str]]:
        """Put ``change`` in force; return the URLs opened and the URLs closed."""
        bound = {**self._bound, **change.opened}
        closed: list[str] = []
        for key, server in bound.items():
            if key not in change.wanted:
                closed += urls(server)
                server.close()
        self._bound = {key: bound[key] for key in change.wanted}
        opened = [url for server in change.opened.values() for url in urls(server)]
        return opened, closed

    def abandon(self, change: ListenChange) -> None:
        """Close what ``prepare`` bound for a change that will not happen."""
        for server in change.opened.values():
            server.close()
        change.opened.clear()

    def urls(self) -> list[str]:
        """``http://HOST:PORT`` per bound socket, in config order."""
        return [url for server in self._bound.values() for url in urls(server)]

    def close(self) -> None:
        """Stop accepting on every listener (shutdown)."""
        for server in self._bound.values():
            server.close()


def urls(server: asyncio.Server) -> list[str]:
    """``http://HOST:PORT`` per socket of ``server``, with the real port even for port 0."""
    found = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        found.append(f"http://{Address(host, port)}")
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
