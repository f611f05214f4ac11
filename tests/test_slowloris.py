"""Slow clients (slowloris, slow POST, idle keep-alive) cannot hold the proxy hostage.

* A head sent one byte per second is cut at ``client_head_timeout`` (408, close),
  whether it is the first request on the connection or a later one.
* A body that pauses longer than ``client_body_timeout`` is cut (408 or a reset),
  and the backend never receives a complete request.
* An idle keep-alive connection is closed at ``keepalive_timeout``, a connection
  that never sends anything at ``client_head_timeout``, both without a byte.
* 5,000 slowloris connections open at once do not stop normal traffic on the same
  proxy (correctness, not latency), and all of them are cut in the end, after which
  the proxy's fd count is back to where it started.

The slow clients pace themselves by waiting for the proxy (``select`` with a one
second timeout): the wait ends early as soon as the proxy answers or closes.
"""

from __future__ import annotations

import select
import socket
import threading

import pytest
from fault_support import Stack, fd_count, poll_until
from helpers import RawConn, build_request, raise_fd_limit

SLOW_HEAD = (
    b"GET /inspect/slow HTTP/1.1\r\nHost: example.test\r\nX-Slow: " + b"s" * 60 + b"\r\n\r\n"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(
        tmp_path_factory.mktemp("slow"),
        top={"client_head_timeout": "2s", "client_body_timeout": "2s", "keepalive_timeout": "2s"},
    )
    yield s
    problems = s.stop()
    assert not problems, "\n".join(problems)


def trickle(sock: socket.socket, data: bytes, per_byte: float = 1.0) -> int:
    """Send ``data`` one byte per ``per_byte`` seconds until the peer answers or closes;
    returns how many bytes went out."""
    for i in range(len(data)):
        readable, _, _ = select.select([sock], [], [], per_byte)
        if readable:
            return i
        try:
            sock.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return i
    return len(data)


def expect_408_or_close(conn: RawConn) -> None:
    data = conn.read_until_close(60)
    if data:
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"\r\nConnection: close\r\n" in data, data[:300]


def test_slow_head_is_cut_at_head_timeout(stack):
    before = stack.stats()["paths"].get("/inspect/slow", 0)
    with RawConn(stack.port, timeout=60) as conn:
        sent = trickle(conn.sock, SLOW_HEAD)
        assert sent < len(SLOW_HEAD), "the proxy waited for the whole slow head"
        expect_408_or_close(conn)
    assert stack.stats()["paths"].get("/inspect/slow", 0) == before


def test_slow_second_head_on_keepalive_connection_is_cut(stack):
    with RawConn(stack.port, timeout=60) as conn:
        conn.send(build_request("GET", "/inspect/first"))
        assert conn.read_response().status == 200
        sent = trickle(conn.sock, SLOW_HEAD)
        assert sent < len(SLOW_HEAD), "the proxy waited for the whole slow head"
        expect_408_or_close(conn)


def test_body_that_stalls_is_cut(stack):
    before = stack.stats()
    with RawConn(stack.port, timeout=60) as conn:
        conn.send(
            build_request(
                "POST", "/echo", headers=[("Content-Length", "1000")], content_length=False
            )
            + b"x" * 10
        )
        data = conn.read_until_close(60)  # nothing more is sent: the body stalls
        if data:
            assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    after = stack.stats()
    assert after["completed"] == before["completed"], "an incomplete body was completed"


def test_chunked_body_that_stalls_mid_chunk_is_cut(stack):
    before = stack.stats()
    with RawConn(stack.port, timeout=60) as conn:
        conn.send(
            build_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")])
            + b"100\r\n"
            + b"y" * 10
        )
        data = conn.read_until_close(60)
        if data:
            assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert stack.stats()["completed"] == before["completed"]


def test_idle_keepalive_connection_is_closed(stack):
    with RawConn(stack.port, timeout=60) as conn:
        conn.send(build_request("GET", "/inspect/idle"))
        resp = conn.read_response()
        assert resp.status == 200 and not resp.closes
        assert conn.is_closed_by_peer(timeout=60)  # closed at keepalive_timeout, silently


def test_connection_that_never_sends_is_closed(stack):
    with RawConn(stack.port, timeout=60) as conn:
        assert conn.is_closed_by_peer(timeout=60)


SLOW_CONNECTIONS = 5000


def test_5000_slowloris_connections_do_not_stop_normal_traffic(tmp_path):
    if raise_fd_limit(SLOW_CONNECTIONS + 1000) < SLOW_CONNECTIONS + 1000:
        pytest.skip("needs more open files than ulimit -n allows")
    stack = Stack(
        tmp_path,
        top={"client_head_timeout": "8s", "keepalive_timeout": "2s"},
        route={"upstream_keepalive_timeout": "1s"},
    )
    pid = stack.proxy.pid
    socks: list[socket.socket] = []
    problems: list[str] = []
    try:
        base = fd_count(pid)
        partial = b"GET /inspect/loris HTTP/1.1\r\nHost: example.test\r\nX-Slow: "
        for _ in range(SLOW_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", stack.port), timeout=60)
            s.sendall(partial)
            socks.append(s)
        poll_until(
            lambda: fd_count(pid) >= base + SLOW_CONNECTIONS,
            60,
            "the proxy to hold all the slow connections",
        )

        # normal traffic while they are all open: every request answered, correctly
        def normal(n: int, tag: str) -> None:
            try:
                with RawConn(stack.port, timeout=60) as conn:
                    for i in range(n):
                        target = f"/inspect/{tag}/{i}"
                        conn.send(build_request("GET", target))
                        resp = conn.read_response()
                        if resp.status != 200 or resp.json()["target"] != target:
                            problems.append(f"{target}: {resp!r}")
                            return
            except Exception as e:
                problems.append(f"{tag}: {e!r}")

        threads = [threading.Thread(target=normal, args=(25, f"n{k}")) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not problems, "\n".join(problems[:20])
        for k in range(50):  # fresh connections too
            normal(1, f"fresh{k}")
        assert not problems, "\n".join(problems[:20])
        open_now = fd_count(pid)

        # then the head timeout cuts every slow connection (408); traffic goes on meanwhile
        stop = threading.Event()

        def steady() -> None:
            k = 0
            while not stop.is_set():
                normal(5, f"during{k}")
                k += 1

        runner = threading.Thread(target=steady)
        runner.start()
        pending = set(socks)
        answers = {"408": 0, "closed": 0}
        bufs = {s: b"" for s in socks}
        poller = select.poll()
        by_fd = {s.fileno(): s for s in socks}
        for s in socks:
            poller.register(s, select.POLLIN)
        deadline_polls = 0
        while pending and deadline_polls < 600:
            events = poller.poll(100)
            if not events:
                deadline_polls += 1
                continue
            for fd, _ in events:
                s = by_fd[fd]
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    bufs[s] += data
                    continue
                poller.unregister(fd)
                pending.discard(s)
                if bufs[s].startswith(b"HTTP/1.1 408 "):
                    answers["408"] += 1
                else:
                    answers["closed"] += 1
                    if bufs[s]:
                        problems.append(f"unexpected answer {bufs[s][:100]!r}")
        stop.set()
        runner.join(120)
        assert not pending, f"{len(pending)} slow connections were never cut (of {open_now})"
        assert not problems, "\n".join(problems[:20])
        assert answers["408"] + answers["closed"] == SLOW_CONNECTIONS
        print(
            f"\nslowloris: {SLOW_CONNECTIONS} open at once (proxy fds {open_now}), cut with "
            f"408: {answers['408']}, closed silently: {answers['closed']}"
        )
        for s in socks:
            s.close()
        socks.clear()
        poll_until(lambda: fd_count(pid) == base, 60, f"the proxy's fds to return to {base}")
        assert stack.stats()["paths"].get("/inspect/loris", 0) == 0
    finally:
        for s in socks:
            s.close()
        stack_problems = stack.stop()
    assert not stack_problems, stack_problems
