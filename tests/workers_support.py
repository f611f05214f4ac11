"""Which worker process of a proxy serves which client connection.

The kernel knows: the proxy's end of a client connection is a socket in
``/proc/net/tcp`` (found by the two addresses), and exactly one worker holds that
socket's inode among its file descriptors. Tests that check what each worker
does with its own connections (release order, pause) use this instead of
guessing from timing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _hex_address(host: str, port: int) -> str:
    """``/proc/net/tcp``'s spelling of an IPv4 address: little-endian hex, then port."""
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def _inodes() -> dict[tuple[str, str], int]:
    """Every IPv4 TCP socket's inode, by (local, remote) address in ``/proc/net/tcp``."""
    inodes = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        inodes[(fields[1], fields[2])] = int(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def serving_workers(worker_pids: list[int], clients: list[socket.socket]) -> list[int]:
    """The pid of the worker holding the proxy's end of each client connection."""
    inodes = _inodes()
    held_by = {pid: _socket_inodes(pid) for pid in worker_pids}
    found = []
    for client in clients:
        here, there = client.getsockname()[:2], client.getpeername()[:2]
        inode = inodes.get((_hex_address(*there), _hex_address(*here)))
        assert inode is not None, f"no proxy socket is connected to {here}"
        holders = [pid for pid, owned in held_by.items() if inode in owned]
        assert len(holders) == 1, f"the connection from {here} is held by workers {holders}"
        found.append(holders[0])
    return found
