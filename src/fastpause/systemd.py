"""systemd integration: state notifications (``Type=notify``) and socket activation.

Both are a few lines of protocol, so no library: a notification is one datagram
of ``KEY=VALUE`` lines to the Unix socket ``$NOTIFY_SOCKET`` names (``@`` for the
abstract namespace); activated sockets are descriptors 3 and up, ``$LISTEN_FDS``
of them, meant for this process when ``$LISTEN_PID`` is its pid, named in
``$LISTEN_FDNAMES`` (sd_notify(3), sd_listen_fds(3)). A listen entry takes the
activated socket of its address: an address says which socket is meant as
precisely as a name would, and the config stays the same with and without
systemd; the names serve the messages. Without those variables nothing happens.
"""

from __future__ import annotations

import os
import socket
import time

from fastpause.console import complain

LISTEN_FDS_START = 3


def notify(*fields: str) -> None:
    """Tell the service manager ``fields`` (``READY=1``, ``STATUS=...``)."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as error:
        complain(f"cannot notify systemd at {target}: {os.strerror(error.errno or 0)}")


def ready(status: str) -> None:
    notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def reloading() -> None:
    """``Type=notify-reload`` wants the monotonic time with it (systemd 253 and later)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> None:
    notify("STOPPING=1", "STATUS=shutting down")


def activated_sockets() -> list[tuple[str, socket.socket]]:
    """The listening sockets systemd passed to this process (none when it did not),
    each with its name (the socket unit's ``FileDescriptorName=``, in
    ``$LISTEN_FDNAMES``; the unit's name by default), taken once: the variables are
    removed so that no child takes them too."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for index, fd in enumerate(range(LISTEN_FDS_START, LISTEN_FDS_START + count)):
        os.set_inheritable(fd, False)
        name = names[index] if index < len(names) and names[index] else f"fd {fd}"
        sockets.append((name, socket.socket(fileno=fd)))
    return sockets
