"""systemd: state notifications on $NOTIFY_SOCKET (Type=notify) and socket activation
($LISTEN_FDS), end to end with a real fastpause process and real sockets."""

from __future__ import annotations

import signal
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Process
from helpers import build_request, render_config

# Puts the socket it is given on descriptor 3 and execs fastpause as systemd would:
# LISTEN_PID is the pid of the process that runs fastpause (exec keeps it).
ACTIVATE = textwrap.dedent(
    """
    import os, sys
    fds = [int(fd) for fd in sys.argv[1].split(",")]
    for target, fd in enumerate(fds, start=3):
        os.dup2(fd, target)
    for fd in set(fds) - set(range(3, 3 + len(fds))):
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_FDNAMES"] = "web:spare"
    os.execv(sys.executable, [sys.executable, "-m", "fastpause", *sys.argv[2:]])
    """
)


def notifications(sock: socket.socket, until: str) -> list[dict[str, str]]:
    """The datagrams received until one has ``until`` (``READY=1``), parsed."""
    got = []
    while True:
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        got.append(fields)
        key, value = until.split("=", 1)
        if fields.get(key) == value:
            return got


@pytest.mark.parametrize("proxy_workers", [1, 2], ids=["1worker", "2workers"])
def test_notify_ready_reloading_stopping(tmp_path, monkeypatch, proxy_factory, proxy_workers):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        proxy = proxy_factory()
        [ready] = notifications(listener, "READY=1")
        assert ready["MAINPID"] == str(proxy.pid), ready
        assert ready["STATUS"] == f"serving on {proxy.url}", ready

        proxy.proc.send_signal(signal.SIGHUP)
        reloading, ready = notifications(listener, "READY=1")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert ready["MAINPID"] == str(proxy.pid), ready

        proxy.terminate()
        assert notifications(listener, "STOPPING=1")[-1]["STATUS"] == "shutting down"
        assert proxy.wait(60) == 0, proxy.describe()


def _listening(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_serves_the_socket_systemd_passed(tmp_path: Path, backend, workers):
    """The listen entry for the passed socket's address serves it (binding the port
    itself would fail: the socket listens on it), a connection queued before the proxy
    started is answered, and a passed socket no entry names is closed and reported."""
    named, unnamed = _listening(), _listening()
    port, unnamed_port = named.getsockname()[1], unnamed.getsockname()[1]
    config = tmp_path / "fastpause.toml"
    config.write_text(
        render_config(
            {"listen": [f"127.0.0.1:{port}"], "admin": "off", "workers": workers},
            [{"name": "app", "upstreams": [backend.address]}],
        )
    )
    early = socket.create_connection(("127.0.0.1", port), timeout=30)
    early.sendall(build_request("GET", "/inspect?early"))
    proxy = Process(
        [
            sys.executable,
            "-c",
            ACTIVATE,
            f"{named.fileno()},{unnamed.fileno()}",
            "run",
            "--config",
            str(config),
        ],
        tmp_path / "activated.stderr",
        tmp_path,
        pass_fds=(named.fileno(), unnamed.fileno()),
    )
    named.close()
    unnamed.close()
    try:
        line = proxy.output.wait_for(lambda s: s.startswith("fastpause: listening on "))
        assert line == f"fastpause: listening on http://127.0.0.1:{port}", proxy.describe()
        reply = early.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert b'"target": "/inspect?early"' in reply, reply
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", unnamed_port), timeout=30)
        assert (
            f"systemd passed a socket 'spare' on 127.0.0.1:{unnamed_port} that no listen "
            "entry names" in proxy.stderr()
        ), proxy.describe()
    finally:
        early.close()
        proxy.stop()
