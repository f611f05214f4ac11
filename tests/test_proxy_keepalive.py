"""Connection handling: client keep-alive, HTTP/1.0 clients, pipelining, the upstream
keep-alive pool, idle timeouts, many concurrent connections."""

from __future__ import annotations

import resource
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from helpers import RawConn, build_request, payload, sha256, wait_for


def test_1000_sequential_keepalive_requests_use_few_upstream_connections(proxy, backend):
    with proxy.conn() as conn:
        for i in range(1000):
            conn.send(build_request("GET", f"/status/200?i={i}"))
            resp = conn.read_response()
            assert resp.status == 200, (i, resp)
            assert not resp.closes
    stats = backend.stats()
    assert stats["heads"] == 1000
    assert stats["connections"] <= 2, stats


def test_upstream_pool_reused_across_client_connections(proxy, backend):
    """Clients that close after each request still share pooled upstream connections."""
    for i in range(50):
        resp = proxy.request(build_request("GET", f"/inspect?i={i}", [("Connection", "close")]))
        assert resp.status == 200
        assert resp.closes
    stats = backend.stats()
    assert stats["heads"] == 50
    assert stats["connections"] <= 2, stats


def test_sequential_requests_reuse_the_same_upstream_connection(proxy):
    first = proxy.get("/inspect").json()
    second = proxy.get("/inspect").json()
    assert second["connection_id"] == first["connection_id"]
    assert second["request_index"] == first["request_index"] + 1


def test_upstream_keepalive_zero_disables_pooling(proxy_factory, backend):
    proxy = proxy_factory(route={"upstream_keepalive": 0})
    with proxy.conn() as conn:
        for i in range(10):
            conn.send(build_request("GET", f"/status/200?i={i}"))
            assert conn.read_response().status == 200
    assert backend.stats()["connections"] == 10


def test_client_keepalive_http11_default(proxy):
    with proxy.conn() as conn:
        for i in range(5):
            body = payload(100 * i)
            conn.send(build_request("POST", "/echo", body=body, content_length=True))
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.body == body
            assert not resp.closes


def test_client_connection_close_is_honoured(proxy, backend):
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/inspect", [("Connection", "close")]))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.closes
        assert conn.is_closed_by_peer()
    # the upstream connection stays pooled: the client's Connection: close is hop-by-hop
    info = proxy.get("/inspect").json()
    assert info["request_index"] == 2


def test_http10_client_without_keepalive_gets_response_then_close(proxy, backend):
    with proxy.conn() as conn:
        conn.send(b"GET /inspect HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert conn.is_closed_by_peer()
    info = resp.json()
    # upstream is always HTTP/1.1, and an HTTP/1.1 request needs a Host
    assert info["version"] == "HTTP/1.1"
    assert len([v for k, v in info["headers"] if k.lower() == "host"]) == 1


def test_http10_client_with_keepalive(proxy):
    with proxy.conn() as conn:
        for i in range(3):
            head = f"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {i}\r\n"
            conn.send(head.encode() + b"\r\n" + b"z" * i)
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.body == b"z" * i
            assert "keep-alive" in resp.connection_tokens, resp
            assert resp.has("content-length")


def test_http10_client_gets_chunked_upstream_response_without_chunking(proxy):
    data = payload(5000)
    with proxy.conn() as conn:
        conn.send(b"GET /chunked?size=5000&chunk=700 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.framing != "chunked"
        assert resp.body == data
        if resp.framing == "close":
            assert conn.eof


def test_http10_request_with_host_is_forwarded_with_that_host(proxy):
    resp = proxy.request(b"GET /inspect HTTP/1.0\r\nHost: old.example\r\n\r\n")
    assert resp.status == 200
    info = resp.json()
    assert [v for k, v in info["headers"] if k.lower() == "host"] == ["old.example"]


def test_pipelined_requests_answered_in_order(proxy, backend):
    reqs = (
        build_request("GET", "/inspect?n=1")
        + build_request("POST", "/echo", body=b"second")
        + build_request("POST", "/inspect?n=3", [("Transfer-Encoding", "chunked")])
        + b"3\r\nabc\r\n0\r\n\r\n"
        + build_request("GET", "/chunked?size=500&chunk=50")
        + build_request("GET", "/inspect?n=5")
    )
    with proxy.conn() as conn:
        conn.send(reqs)
        r1 = conn.read_response()
        r2 = conn.read_response()
        r3 = conn.read_response()
        r4 = conn.read_response()
        r5 = conn.read_response()
    assert r1.json()["target"] == "/inspect?n=1"
    assert r2.body == b"second"
    assert r3.json()["target"] == "/inspect?n=3"
    assert r3.json()["body_length"] == 3
    assert r4.body == payload(500)
    assert r5.json()["target"] == "/inspect?n=5"
    assert backend.stats()["heads"] == 5


def test_200_pipelined_requests_in_one_write(proxy, backend):
    raw = b"".join(build_request("GET", f"/inspect?n={i}") for i in range(200))
    with proxy.conn() as conn:
        conn.send(raw)
        for i in range(200):
            resp = conn.read_response()
            assert resp.status == 200, (i, resp)
            assert resp.json()["target"] == f"/inspect?n={i}"
    assert backend.stats()["heads"] == 200


def test_20000_pipelined_requests_the_proxy_answers_itself_in_one_write(proxy_factory):
    """Requests the proxy answers without an upstream (here 404s, no route for the
    host) are read one after another, not by a call per request: the next one was
    read from inside the answer to the previous one, about 700 bytes of C stack per
    pipelined request, and a read of 10,000 of them could overflow the stack (SIGSEGV,
    every connection dropped). The proxy's stack is cut to 1 MiB so that the test
    does not depend on how many requests one read brings (it crashed at 1,452)."""
    proxy = proxy_factory(route={"hosts": ["app.test"]})
    hard = resource.prlimit(proxy.pid, resource.RLIMIT_STACK)[1]
    resource.prlimit(proxy.pid, resource.RLIMIT_STACK, (1 << 20, hard))
    n = 20_000
    received = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as sock:

        def read_all() -> None:  # read while sending, so the proxy never stops writing
            while chunk := sock.recv(1 << 20):
                received.extend(chunk)

        reader = threading.Thread(target=read_all)
        reader.start()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n" * n)
        sock.shutdown(socket.SHUT_WR)
        reader.join(60)
    assert received.count(b"HTTP/1.1 404 ") == n, (len(received), proxy.describe())
    assert proxy.proc.poll() is None, proxy.describe()
    assert proxy.request(build_request("GET", "/inspect", host="app.test")).status == 200


def test_pipelined_posts_with_bodies_in_one_write(proxy):
    bodies = [payload(i * 3001) for i in range(40)]
    raw = b"".join(
        build_request("POST", f"/echo?n={i}", body=b, content_length=True)
        for i, b in enumerate(bodies)
    )
    with proxy.conn() as conn:
        conn.send(raw)
        for i, body in enumerate(bodies):
            resp = conn.read_response()
            assert resp.status == 200, (i, resp)
            assert resp.body == body, i


def test_pipelined_head_and_get(proxy):
    with proxy.conn() as conn:
        conn.send(
            build_request("HEAD", "/download?size=1000") + build_request("GET", "/download?size=10")
        )
        r1 = conn.read_response("HEAD")
        r2 = conn.read_response()
    assert r1.status == 200 and r1.get("content-length") == "1000" and r1.body == b""
    assert r2.body == payload(10)


def test_pipelined_requests_after_close_are_not_served(proxy, backend):
    with proxy.conn() as conn:
        conn.send(
            build_request("GET", "/inspect?n=1", [("Connection", "close")])
            + build_request("GET", "/inspect?n=2")
        )
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.closes
        assert conn.read_until_close() == b""
    assert backend.stats()["paths"] == {"/inspect": 1}


def test_backend_connection_close_is_not_reused(proxy, backend):
    """The backend closes after its response; the next request must still succeed."""
    with proxy.conn() as conn:
        for i in range(5):
            conn.send(build_request("GET", f"/status/200?close=1&i={i}"))
            resp = conn.read_response()
            assert resp.status == 200, (i, resp)
            assert not resp.closes  # the backend's close is hop-by-hop
    assert backend.stats()["connections"] == 5


def test_http10_upstream_response(proxy):
    with proxy.conn() as conn:
        for _ in range(3):
            conn.send(build_request("GET", "/http10?size=3000"))
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.body == payload(3000)


def test_stale_pooled_connection_closed_by_backend_is_not_an_error(proxy, backend):
    assert proxy.get("/status/200").status == 200
    assert backend.call("/__close-idle").body == b"closed 1\n"
    for i in range(3):
        resp = proxy.get(f"/inspect?i={i}")
        assert resp.status == 200, resp


def test_client_keepalive_timeout_closes_idle_connection(proxy_factory):
    proxy = proxy_factory(top={"keepalive_timeout": "1s"})
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().status == 200
        assert conn.is_closed_by_peer(timeout=30)


def test_upstream_keepalive_timeout_closes_idle_upstream(proxy_factory, backend):
    proxy = proxy_factory(route={"upstream_keepalive_timeout": "1s"})
    assert proxy.get("/status/200").status == 200
    wait_for(
        lambda: backend.stats()["open_connections"] == 0,
        timeout=30,
        what="the proxy to close its idle upstream connection",
    )
    assert proxy.get("/status/200").status == 200


def _worker(port: int, worker: int, n: int) -> list[str]:
    errors = []
    with RawConn(port) as conn:
        for i in range(n):
            body = payload((worker * 7919 + i * 104729) % 200_000)
            if i % 2:
                conn.send(
                    build_request("POST", f"/echo?w={worker}&i={i}", body=body, content_length=True)
                )
                resp = conn.read_response()
                if resp.status != 200 or resp.body != body:
                    errors.append(f"worker {worker} request {i}: {resp!r}")
            else:
                conn.send(
                    build_request(
                        "PUT", f"/inspect?w={worker}&i={i}", body=body, content_length=True
                    )
                )
                resp = conn.read_response()
                info = resp.json()
                if info["target"] != f"/inspect?w={worker}&i={i}" or info["body_sha256"] != sha256(
                    body
                ):
                    errors.append(f"worker {worker} request {i}: {info!r}")
    return errors


def test_many_concurrent_keepalive_connections(proxy, backend):
    workers, per = 20, 25
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda w: _worker(proxy.port, w, per), range(workers)))
    errors = [e for r in results for e in r]
    assert errors == []
    stats = backend.stats()
    assert stats["completed"] == workers * per
    assert stats["connections"] <= workers, stats


def test_many_short_connections(proxy):
    def one(i):
        resp = proxy.request(build_request("GET", f"/inspect?i={i}", [("Connection", "close")]))
        return resp.status, resp.json()["target"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert results == [(200, f"/inspect?i={i}") for i in range(200)]
