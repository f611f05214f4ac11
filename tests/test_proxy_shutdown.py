"""Graceful shutdown on SIGTERM: in-flight requests complete, idle connections close,
new connections are refused, the process exits 0 and says so."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    IncompleteResponse,
    build_request,
    free_port,
    payload,
    payload_sha256,
    wait_for,
)


def connection_refused(port: int) -> bool:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


def assert_stopped_cleanly(proxy) -> None:
    rc = proxy.wait(60)
    assert rc == 0, f"exit status {rc}\n{proxy.describe()}"
    assert proxy.output.wait_for(lambda s: s == "fastpause: stopped", timeout=10), proxy.describe()


def test_sigterm_when_idle_exits_zero(proxy):
    assert proxy.get("/status/200").status == 200
    proxy.terminate()
    assert_stopped_cleanly(proxy)
    assert connection_refused(proxy.port)


def test_graceful_shutdown_completes_in_flight_request(proxy, backend):
    idle = proxy.conn()
    idle.send(build_request("GET", "/status/200"))
    assert idle.read_response().status == 200

    busy = proxy.conn(timeout=60)
    busy.send(build_request("GET", "/hold?key=inflight"))
    backend.wait_held("inflight")

    proxy.terminate()
    wait_for(
        lambda: connection_refused(proxy.port),
        timeout=30,
        what="the proxy to stop accepting connections",
    )
    assert idle.is_closed_by_peer(), "idle keep-alive connection not closed at shutdown"
    assert proxy.proc.poll() is None, "the proxy exited with a request in flight"

    backend.release("inflight")
    resp = busy.read_response()
    assert resp.status == 200
    assert resp.body == b"released inflight\n"
    assert resp.closes
    assert busy.is_closed_by_peer()
    idle.close()
    busy.close()
    assert_stopped_cleanly(proxy)


def test_graceful_shutdown_completes_several_in_flight_requests(proxy, backend):
    conns = []
    for i in range(8):
        conn = proxy.conn(timeout=60)
        conn.send(build_request("POST", f"/hold?key=many{i}", body=b"x" * i))
        conns.append(conn)
    for i in range(8):
        backend.wait_held(f"many{i}")
    proxy.terminate()
    wait_for(
        lambda: connection_refused(proxy.port),
        timeout=30,
        what="the proxy to stop accepting connections",
    )
    for i, conn in enumerate(conns):
        backend.release(f"many{i}")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == f"released many{i}\n".encode()
        conn.close()
    assert_stopped_cleanly(proxy)


def test_graceful_shutdown_completes_request_body_upload(proxy, backend):
    body = payload(2_000_000)
    conn = proxy.conn(timeout=60)
    conn.send(
        build_request("POST", "/echo", [("Content-Length", str(len(body)))], content_length=False)
    )
    conn.send(body[:1_000_000])
    wait_for(
        lambda: backend.stats()["heads"] == 1, timeout=30, what="the upload to reach the backend"
    )
    proxy.terminate()
    conn.send(body[1_000_000:])
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == body
    conn.close()
    assert_stopped_cleanly(proxy)


def test_graceful_shutdown_completes_streaming_response(proxy):
    size = 60_000_000
    conn = proxy.conn(timeout=60)
    conn.send(build_request("GET", f"/download?size={size}"))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.sock.recv(65536)
        assert data
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")

    proxy.terminate()  # most of the body is still to come
    digest = hashlib.sha256(rest)
    received = len(rest)
    while received < size:
        data = conn.sock.recv(262144)
        assert data, f"connection closed after {received} of {size} body bytes"
        digest.update(data)
        received += len(data)
    assert received == size
    assert digest.hexdigest() == payload_sha256(size)
    conn.close()
    assert_stopped_cleanly(proxy)


def test_shutdown_timeout_cuts_stuck_request(proxy_factory, backend):
    proxy = proxy_factory(top={"shutdown_timeout": "1s"})
    busy = proxy.conn(timeout=60)
    busy.send(build_request("GET", "/hold?key=stuck"))
    backend.wait_held("stuck")
    proxy.terminate()
    assert_stopped_cleanly(proxy)
    try:
        resp = busy.read_response()
    except IncompleteResponse:
        pass
    else:
        assert resp.status >= 500, f"a request cut at shutdown must not look successful: {resp!r}"
    busy.close()


def test_shutdown_is_graceful_when_the_reader_of_its_output_is_gone(tmp_path, backend):
    """A supervisor that stops reading the proxy's stdout (closed pipe) must not turn
    the next status line - "shutting down: ..." - into a traceback and exit 1."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastpause",
            "run",
            "--listen",
            f"127.0.0.1:{port}",
            "--to",
            backend.address,
            "--admin",
            f"unix:{tmp_path}/admin.sock",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        while b"listening on" not in proc.stdout.readline():
            assert proc.poll() is None, proc.stderr.read()
        proc.stdout.close()  # the reader is gone: the next status line meets EPIPE
        proc.stderr.close()
        with socket.create_connection(("127.0.0.1", port)) as sock:  # still serving
            sock.sendall(build_request("GET", "/inspect"))
            assert sock.recv(12) == b"HTTP/1.1 200"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("proxy_workers", [1, 2], ids=["1worker", "2workers"])
def test_shutdown_delay_fails_health_checks_and_serves_the_rest(proxy_factory, proxy_workers):
    """``shutdown_delay``: after SIGTERM the route's health_path answers 503 (so an
    outer load balancer takes the proxy out) while every other request is served and
    new connections are accepted; a second signal ends the delay."""
    proxy = proxy_factory(
        route={"health_path": "/inspect", "health_interval": "1h"},
        top={"shutdown_delay": "10m"},
    )
    assert proxy.get("/inspect").status == 200  # running: the backend answers it
    proxy.terminate()
    assert proxy.output.wait_for(
        lambda s: s == "fastpause: shutting down in 600s; health checks answer 503 until then"
    ), proxy.describe()
    for _ in range(4):  # new connections, whichever worker takes them
        with proxy.conn() as conn:
            conn.send(build_request("GET", "/inspect?from=lb"))
            resp = conn.read_response()
            assert resp.status == 503, resp
            assert "shutting down" in resp.text and resp.closes, resp
            assert conn.is_closed_by_peer()
        resp = proxy.get("/inspect/app")
        assert resp.status == 200 and resp.json()["target"] == "/inspect/app", resp
    proxy.terminate()
    assert_stopped_cleanly(proxy)
    assert connection_refused(proxy.port)


def test_a_connection_without_a_request_yet_is_served_through_a_shutdown(proxy_factory, tmp_path):
    """Accepted but silent when SIGTERM comes: its request may already be on the wire,
    so the proxy answers it (with Connection: close) instead of closing the socket
    under it, as a worker being replaced or an old process after an upgrade would."""
    proxy = proxy_factory(top={"admin": f"unix:{tmp_path}/quiet.sock"})
    quiet = proxy.conn()
    wait_for(lambda: b'"connections": 1' in _status(tmp_path / "quiet.sock"), what="accept")
    proxy.terminate()
    assert proxy.output.wait_for(lambda s: s.startswith("fastpause: shutting down: 1 open"))
    quiet.send(build_request("GET", "/status/200"))
    resp = quiet.read_response()
    assert resp.status == 200 and resp.closes, resp
    assert_stopped_cleanly(proxy)


def _status(admin: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(admin))
        s.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        return b"".join(iter(lambda: s.recv(65536), b""))
