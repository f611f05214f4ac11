"""Errors the proxy generates or passes on: unreachable, broken and slow upstreams,
body and URI limits, client timeouts, clients that go away."""

from __future__ import annotations

import time

import pytest
from helpers import (
    IncompleteResponse,
    RawConn,
    build_request,
    chunked,
    free_port,
    payload,
    sha256,
    wait_for,
)


def assert_error_response(resp, status: int) -> None:
    """What a user expects of a proxy-made error: the status, a short plain-text
    explanation, and no internals."""
    assert resp.status == status, resp
    assert (resp.get("content-type") or "").lower().startswith("text/plain"), resp
    assert 0 < len(resp.body) < 1024, resp
    text = resp.body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text, text


def assert_connection_consistent(conn: RawConn, resp, follow_status: int = 200) -> None:
    """If the proxy said Connection: close it closes; otherwise the connection still works
    and the next request on it gets ``follow_status``."""
    if resp.closes:
        assert conn.is_closed_by_peer()
    else:
        conn.send(build_request("GET", "/status/200"))
        follow = conn.read_response()
        assert follow.status == follow_status, follow


# ----------------------------------------------------------------------------- 502


# Holding (try_duration, 30 s by default) would keep these requests waiting for an
# upstream; with holding off, a refused connection is answered 502 at once.
NO_HOLD = {"try_duration": "0s"}


def test_upstream_refused_gives_502(proxy_factory):
    proxy = proxy_factory(route=NO_HOLD, upstreams=[f"127.0.0.1:{free_port()}"])
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/inspect"))
        resp = conn.read_response()
        assert_error_response(resp, 502)
        assert_connection_consistent(conn, resp, follow_status=502)


def test_upstream_refused_with_body_gives_502(proxy_factory):
    proxy = proxy_factory(route=NO_HOLD, upstreams=[f"127.0.0.1:{free_port()}"])
    with proxy.conn() as conn:
        conn.send(build_request("POST", "/echo", body=payload(10_000)))
        resp = conn.read_response()
        assert_error_response(resp, 502)


@pytest.mark.parametrize(
    "kind",
    [
        "junk",
        "bad-status",
        "bad-version",
        "no-colon",
        "bad-content-length",
        "conflicting-content-length",
        "nul-in-header",
    ],
)
def test_invalid_upstream_response_gives_502(proxy, backend, kind):
    with proxy.conn() as conn:
        conn.send(build_request("GET", f"/garbage?kind={kind}"))
        resp = conn.read_response()
        assert_error_response(resp, 502)
        assert_connection_consistent(conn, resp)
    # the proxy is fine afterwards
    assert proxy.get("/status/200").status == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_reset_before_response_gives_502(proxy, method):
    with proxy.conn() as conn:
        conn.send(build_request(method, "/reset-before", body=b"data" if method == "POST" else b""))
        resp = conn.read_response()
        assert_error_response(resp, 502)
    assert proxy.get("/status/200").status == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upstream_reset_mid_response_cuts_client(proxy, backend, framing):
    size = 20000
    key = f"mid-{framing}"
    target = f"/reset-during?size={size}&key={key}" + ("&chunked=1" if framing == "chunked" else "")
    with proxy.conn() as conn:
        conn.send(build_request("GET", target))
        backend.wait_held(key)  # head and half the body are written; now the upstream resets
        backend.release(key)
        with pytest.raises(IncompleteResponse) as info:
            resp = conn.read_response()
            pytest.fail(f"client got a complete response although the upstream reset: {resp!r}")
    cut = info.value
    assert cut.status == 200, "the response head had already been relayed"
    assert len(cut.body) < size
    assert cut.body == payload(size)[: len(cut.body)]
    assert proxy.get("/status/200").status == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_body_cut_mid_way_reaches_the_client_as_a_reset(proxy, backend, framing, version):
    """The client sees a TCP reset, never a clean close, when the upstream dies mid-body:
    an HTTP/1.0 client reads a chunked upstream body unwrapped, without a length, so a
    clean close would look like the body's end."""
    size = 20000
    key = f"rst-{framing}-{version}"
    target = f"/reset-during?size={size}&key={key}" + ("&chunked=1" if framing == "chunked" else "")
    with proxy.conn() as conn:
        conn.send(build_request("GET", target, version=version))
        backend.wait_held(key)
        backend.release(key)
        data = conn.read_until_close()
        assert conn.reset, f"a cut body ended with a clean close: {data[:200]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head  # the proxy speaks HTTP/1.1 to both
    assert len(body) < size
    assert proxy.get("/status/200").status == 200


def test_upstream_body_timeout_cuts_client(proxy_factory, backend):
    proxy = proxy_factory(route={"upstream_body_timeout": "1s"})
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/stall-body?size=20000"))
        with pytest.raises(IncompleteResponse) as info:
            conn.read_response()
    assert info.value.status == 200
    assert info.value.body == payload(20000)[: len(info.value.body)]
    wait_for(
        lambda: backend.stats()["open_connections"] == 0,
        timeout=30,
        what="the proxy to drop the stalled upstream connection",
    )


def test_upstream_reset_after_interim_response_gives_502(proxy):
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/interim?count=1&then=reset"))
        resp = conn.read_response()
        assert resp.interim and all(r.status == 103 for r in resp.interim), resp.interim
        assert_error_response(resp, 502)


def test_upstream_extra_bytes_after_response_are_not_relayed(proxy):
    """An upstream that sends more than its Content-Length must not desynchronize the
    client's connection or the pool: the extra bytes never reach any client."""
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/overlong"))
        first = conn.read_response()
        assert first.status == 200
        assert first.body == b"hello"
        for i in range(3):
            conn.send(build_request("GET", f"/inspect?after={i}"))
            resp = conn.read_response()
            assert resp.status == 200, resp
            assert resp.json()["target"] == f"/inspect?after={i}"
    for i in range(3):
        assert proxy.get(f"/inspect?fresh={i}").json()["target"] == f"/inspect?fresh={i}"


def test_upstream_body_on_head_response_is_not_relayed(proxy):
    with proxy.conn() as conn:
        conn.send(build_request("HEAD", "/head-with-body"))
        first = conn.read_response("HEAD")
        assert first.status == 200
        assert first.get("content-length") == "5"
        for i in range(3):
            conn.send(build_request("GET", f"/inspect?after={i}"))
            resp = conn.read_response()
            assert resp.status == 200, resp
            assert resp.json()["target"] == f"/inspect?after={i}"


# ----------------------------------------------------------------------------- 504


def test_response_header_timeout_gives_504(proxy_factory, backend):
    proxy = proxy_factory(route={"response_header_timeout": "1s"})
    with proxy.conn(timeout=60) as conn:
        conn.send(build_request("GET", "/no-response"))
        resp = conn.read_response()
        assert_error_response(resp, 504)
        assert_connection_consistent(conn, resp)
    # the upstream connection that never answered is discarded, not pooled
    wait_for(
        lambda: backend.stats()["open_connections"] <= 1,
        timeout=30,
        what="the proxy to close the timed-out upstream connection",
    )
    assert backend.stats()["paths"].get("/no-response") == 1
    assert proxy.get("/status/200").status == 200


def test_response_header_timeout_starts_after_request_is_sent(proxy_factory):
    """A slow upload is not a slow upstream: the upstream answers as soon as the body is
    complete, which is long after response_header_timeout measured from the start."""
    proxy = proxy_factory(route={"response_header_timeout": "2s"})
    pieces = [payload(50_000)[i : i + 5000] for i in range(0, 50_000, 5000)]
    with proxy.conn(timeout=60) as conn:
        conn.send(
            build_request("POST", "/inspect", [("Content-Length", "50000")], content_length=False)
        )
        for piece in pieces:
            conn.send(piece)
            time.sleep(0.4)  # the workload: a slowly-sending client (4 s in all)
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json()["body_sha256"] == sha256(payload(50_000))


# ----------------------------------------------------------------------------- limits


def test_body_over_limit_by_content_length_gives_413(proxy_factory, backend):
    proxy = proxy_factory(route={"max_body_size": "1KiB"})
    with proxy.conn() as conn:
        conn.send(build_request("POST", "/echo", body=payload(2048)))
        resp = conn.read_response()
        assert_error_response(resp, 413)
        if resp.closes:
            assert conn.is_closed_by_peer()
    assert backend.stats()["heads"] == 0


def test_body_over_limit_chunked_gives_413(proxy_factory, backend):
    proxy = proxy_factory(route={"max_body_size": "1KiB"})
    body = payload(3000)
    raw = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + chunked(
        body[:1000], body[1000:2000], body[2000:]
    )
    with proxy.conn() as conn:
        conn.send(raw)
        resp = conn.read_response()
        assert_error_response(resp, 413)
        assert resp.closes
        assert conn.is_closed_by_peer()
    assert backend.stats()["completed"] == 0


def test_body_exactly_at_limit_is_accepted(proxy_factory):
    proxy = proxy_factory(route={"max_body_size": "1KiB"})
    body = payload(1024)
    resp = proxy.post("/echo", body)
    assert resp.status == 200
    assert resp.body == body
    raw = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + chunked(
        body[:500], body[500:]
    )
    resp = proxy.request(raw)
    assert resp.status == 200
    assert resp.body == body


def test_body_limit_zero_means_unlimited(proxy_factory):
    proxy = proxy_factory(route={"max_body_size": 0})
    body = payload(3_000_000)
    resp = proxy.post("/inspect", body)
    assert resp.status == 200
    assert resp.json()["body_sha256"] == sha256(body)


def test_uri_exactly_at_limit_accepted_and_one_over_rejected(proxy_factory, backend):
    proxy = proxy_factory(top={"max_uri_size": "1KiB"})
    base = "/inspect?pad="
    at_limit = base + "a" * (1024 - len(base))
    resp = proxy.get(at_limit)
    assert resp.status == 200, resp
    assert resp.json()["target"] == at_limit
    with proxy.conn() as conn:
        conn.send(build_request("GET", at_limit + "a"))
        resp = conn.read_response()
        assert_error_response(resp, 414)
        assert resp.closes
        assert conn.is_closed_by_peer()
    assert backend.stats()["heads"] == 1


def test_head_size_limit_is_configurable(proxy_factory, backend):
    proxy = proxy_factory(top={"max_head_size": "4KiB"})
    assert proxy.get("/inspect", [("X-Pad", "p" * 3000)]).status == 200
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/inspect", [("X-Pad", "p" * 5000)]))
        resp = conn.read_response()
        assert_error_response(resp, 431)
        assert resp.closes
    assert backend.stats()["heads"] == 1


def test_header_count_limit_is_configurable(proxy_factory, backend):
    proxy = proxy_factory(top={"max_headers": 10})
    assert proxy.get("/inspect", [(f"X-{i}", "v") for i in range(9)]).status == 200
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/inspect", [(f"X-{i}", "v") for i in range(10)]))
        resp = conn.read_response()
        assert_error_response(resp, 431)
        assert resp.closes
    assert backend.stats()["heads"] == 1


# ----------------------------------------------------------------------------- client timeouts


def _closed_with_optional(conn: RawConn, status: int) -> None:
    """The proxy closes the connection, optionally after an error response of ``status``."""
    data = conn.read_until_close(timeout=60)
    if data:
        assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]


def test_client_head_timeout_closes_connection(proxy_factory, backend):
    proxy = proxy_factory(top={"client_head_timeout": "1s"})
    with proxy.conn() as conn:
        conn.send(b"GET /inspect HTTP/1.1\r\nHost: example.test\r\n")  # never finished
        _closed_with_optional(conn, 408)
    assert backend.stats()["heads"] == 0


def test_client_body_timeout_closes_connection(proxy_factory, backend):
    proxy = proxy_factory(top={"client_body_timeout": "1s"})
    with proxy.conn() as conn:
        conn.send(
            b"POST /echo HTTP/1.1\r\nHost: example.test\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        _closed_with_optional(conn, 408)
    assert backend.stats()["completed"] == 0
    assert proxy.get("/status/200").status == 200


def test_send_timeout_drops_client_that_stops_reading(proxy_factory, backend):
    proxy = proxy_factory(top={"send_timeout": "1s"})
    conn = proxy.conn()
    try:
        conn.send(build_request("GET", "/download?size=200000000"))

        # the client reads nothing; the proxy gives up on it and frees the upstream side
        def upstream_dropped():
            stats = backend.stats()
            return stats["paths"].get("/download") == 1 and stats["open_connections"] == 0

        wait_for(
            upstream_dropped,
            timeout=60,
            what="the proxy to drop the download of a client that stopped reading",
        )
        with pytest.raises(IncompleteResponse):
            conn.read_response()
    finally:
        conn.close()
    assert proxy.get("/status/200").status == 200


# ----------------------------------------------------------------------------- clients leaving


def test_client_reset_closes_its_upstream_request(proxy, backend):
    """A client that resets its connection while waiting for the response is gone: the
    proxy drops the upstream request instead of keeping it open."""
    conn = proxy.conn()
    conn.send(build_request("GET", "/hold?key=leaver"))
    backend.wait_held("leaver")
    conn.abort()
    backend.wait_closed("leaver")
    assert proxy.get("/status/200").status == 200


def test_client_leaving_mid_download_leaves_proxy_healthy(proxy):
    conn = proxy.conn()
    conn.send(build_request("GET", "/download?size=50000000"))
    conn.sock.recv(65536)
    conn.close()
    resp = proxy.get("/download?size=100000")
    assert resp.status == 200
    assert resp.body == payload(100_000)


def test_client_leaving_mid_upload_leaves_proxy_healthy(proxy, backend):
    conn = proxy.conn()
    conn.send(
        build_request("POST", "/echo", [("Content-Length", "10000000")], content_length=False)
    )
    conn.send(payload(100_000))
    conn.close()
    resp = proxy.post("/echo", b"after")
    assert resp.status == 200
    assert resp.body == b"after"
    assert backend.stats()["completed"] == 1
