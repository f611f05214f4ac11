"""Message framing through the proxy: HEAD/204/304, chunked with extensions and
trailers both ways, close-delimited responses, 1xx interim responses, 100-continue."""

from __future__ import annotations

import hashlib

import pytest
from fault_support import RawUpstream, Script, Stack
from helpers import RawConn, build_request, chunked, payload, sha256

# ----------------------------------------------------------------------------- no body


def test_head_response_has_length_but_no_body(proxy):
    with proxy.conn() as conn:
        conn.send(build_request("HEAD", "/download?size=123456"))
        resp = conn.read_response("HEAD")
        assert resp.status == 200
        assert resp.get("content-length") == "123456"
        assert resp.body == b""
        # the connection is still in sync: the next response is read correctly
        conn.send(build_request("GET", "/download?size=10"))
        assert conn.read_response().body == payload(10)


def test_head_of_chunked_resource(proxy):
    with proxy.conn() as conn:
        conn.send(build_request("HEAD", "/chunked?size=5000"))
        resp = conn.read_response("HEAD")
        assert resp.status == 200
        assert resp.body == b""
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().body == b"status 200\n"


def test_head_of_close_delimited_resource(proxy):
    with proxy.conn() as conn:
        conn.send(build_request("HEAD", "/close-delimited?size=5000"))
        resp = conn.read_response("HEAD")
        assert resp.status == 200
        assert resp.body == b""
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().body == b"status 200\n"


def test_204_has_no_body_and_keeps_connection(proxy):
    with proxy.conn() as conn:
        for _ in range(3):
            conn.send(build_request("DELETE", "/status/204"))
            resp = conn.read_response()
            assert resp.status == 204
            assert not resp.has("content-length") and not resp.has("transfer-encoding")
            assert resp.body == b""


@pytest.mark.parametrize("cl", [None, "0", "1234"])
def test_304_has_no_body_even_with_content_length(proxy, cl):
    target = "/status/304" + (f"?cl={cl}" if cl is not None else "")
    with proxy.conn() as conn:
        conn.send(build_request("GET", target, [("If-None-Match", '"v1"')]))
        resp = conn.read_response()
        assert resp.status == 304
        assert resp.get("etag") == '"v1"'
        assert resp.body == b""
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().body == b"status 200\n"


# ----------------------------------------------------------------------------- chunked


def test_chunked_request_with_extensions_and_trailers(proxy):
    raw = build_request(
        "POST", "/inspect", [("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")]
    ) + (
        b"5;name=value\r\nhello\r\n"
        b'1;a;b="quoted;\\"str"\r\n \r\n'
        b"5 ; ws=1\r\nworld\r\n"
        b"0;last=1\r\nX-Checksum: abc123\r\nX-Other: two\r\n\r\n"
    )
    resp = proxy.request(raw)
    assert resp.status == 200, resp
    info = resp.json()
    assert info["body_length"] == 11
    assert info["body_sha256"] == sha256(b"hello world")
    assert info["chunk_extensions"] == []  # extensions are not forwarded
    assert info["trailers"] == [["X-Checksum", "abc123"], ["X-Other", "two"]]


def test_chunked_request_uppercase_hex_and_leading_zeros(proxy):
    body = payload(300)
    raw = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + (
        b"001E\r\n" + body[:30] + b"\r\n" + b"10e\r\n" + body[30:] + b"\r\n0000\r\n\r\n"
    )
    resp = proxy.request(raw)
    assert resp.status == 200
    assert resp.body == body


def test_chunk_size_with_sixteen_hex_digits_is_valid(proxy):
    raw = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + (
        b"000000000000000a\r\n0123456789\r\n0\r\n\r\n"
    )
    resp = proxy.request(raw)
    assert resp.status == 200, resp
    assert resp.body == b"0123456789"


def test_many_one_byte_chunks(proxy):
    body = payload(20_000)
    raw = build_request("POST", "/inspect", [("Transfer-Encoding", "chunked")]) + chunked(
        *(body[i : i + 1] for i in range(len(body)))
    )
    resp = proxy.request(raw)
    assert resp.status == 200, resp
    assert resp.json()["body_sha256"] == sha256(body)


def test_transfer_encoding_is_case_insensitive(proxy):
    raw = build_request("POST", "/echo", [("Transfer-Encoding", "Chunked")]) + chunked(b"abc")
    resp = proxy.request(raw)
    assert resp.status == 200
    assert resp.body == b"abc"


def test_empty_chunked_request_body(proxy):
    raw = build_request("POST", "/inspect", [("Transfer-Encoding", "chunked")]) + b"0\r\n\r\n"
    resp = proxy.request(raw)
    assert resp.status == 200
    assert resp.json()["body_length"] == 0


def test_chunked_response_with_extensions_and_trailers(proxy):
    raw = build_request(
        "GET", "/chunked?size=10000&chunk=999&ext=1&trailers=1", [("TE", "trailers")]
    )
    resp = proxy.request(raw)
    assert resp.status == 200
    assert resp.framing == "chunked"
    assert resp.body == payload(10000)
    assert dict(resp.trailers) == {
        "X-Checksum": hashlib.sha256(payload(10000)).hexdigest(),
        "X-Trailer-Two": "two",
    }


def test_chunked_response_body_exact_large(proxy):
    resp = proxy.get("/chunked?size=3000000&chunk=65000")
    assert resp.status == 200
    assert resp.body == payload(3_000_000)


def test_chunked_echo_with_trailers_both_ways(proxy):
    body = payload(200_000)
    raw = build_request(
        "POST", "/echo-chunked?trailers=1", [("Transfer-Encoding", "chunked"), ("TE", "trailers")]
    ) + chunked(body[:1], body[1:50_000], body[50_000:], trailers=[("X-Req", "1")])
    resp = proxy.request(raw)
    assert resp.status == 200
    assert resp.body == body
    assert dict(resp.trailers) == {"X-Body-Sha256": sha256(body)}


# ----------------------------------------------------------------------------- close-delimited


@pytest.mark.parametrize("conn_header", ["1", "0"])
def test_close_delimited_response_rechunked_for_http11_client(proxy, conn_header):
    with proxy.conn() as conn:
        conn.send(build_request("GET", f"/close-delimited?size=300000&conn={conn_header}"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.framing == "chunked", resp
        assert resp.body == payload(300_000)
        assert not resp.closes
        # the client connection survives the upstream close
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().body == b"status 200\n"


def test_pipelined_request_after_close_delimited_response(proxy):
    with proxy.conn() as conn:
        conn.send(
            build_request("GET", "/close-delimited?size=70000")
            + build_request("GET", "/inspect?next")
        )
        first = conn.read_response()
        second = conn.read_response()
    assert first.body == payload(70_000)
    assert second.json()["target"] == "/inspect?next"


def test_close_delimited_response_to_http10_client_is_raw_then_close(proxy):
    with proxy.conn() as conn:
        conn.send(b"GET /close-delimited?size=200000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.framing in ("close", "length")
        assert not resp.has("transfer-encoding")
        assert resp.body == payload(200_000)
        if resp.framing == "close":
            assert conn.eof


def test_empty_close_delimited_response(proxy):
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/close-delimited?size=0"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b""
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().status == 200


# ----------------------------------------------------------------------------- 1xx


@pytest.mark.parametrize("count", [1, 3])
def test_103_early_hints_relayed_to_http11_client(proxy, count):
    with proxy.conn() as conn:
        conn.send(build_request("GET", f"/interim?count={count}"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"final body\n"
        assert [r.status for r in resp.interim] == [103] * count
        for r in resp.interim:
            assert r.get("link") == "</style.css>; rel=preload; as=style"
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().status == 200


def test_1xx_not_sent_to_http10_client(proxy):
    with proxy.conn() as conn:
        conn.send(b"GET /interim?count=2 HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.interim == []
        assert resp.status == 200
        assert resp.body == b"final body\n"


# ----------------------------------------------------------------------------- 100-continue


def test_expect_100_continue_answered_by_proxy(proxy, backend):
    body = payload(50_000)
    head = build_request(
        "POST", "/inspect", [("Expect", "100-continue"), ("Content-Length", str(len(body)))]
    )
    with proxy.conn() as conn:
        conn.send(head)
        interim = conn.read_interim()
        assert interim.status == 100
        assert interim.version == "HTTP/1.1"
        conn.send(body)
        resp = conn.read_response()
    assert resp.status == 200
    info = resp.json()
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == sha256(body)
    assert "expect" not in {k.lower() for k, _ in info["headers"]}


def test_expect_100_continue_from_http10_client_gets_no_interim(proxy):
    raw = b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody"
    with proxy.conn() as conn:
        conn.send(raw)
        resp = conn.read_response()
    assert resp.interim == []
    assert resp.status == 200
    assert resp.body == b"body"


def test_expect_100_continue_with_chunked_body(proxy):
    head = build_request(
        "PUT", "/echo", [("Expect", "100-continue"), ("Transfer-Encoding", "chunked")]
    )
    with proxy.conn() as conn:
        conn.send(head)
        assert conn.read_interim().status == 100
        conn.send(chunked(b"after ", b"continue"))
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"after continue"


def test_expect_100_continue_rejected_early_when_body_too_large(proxy_factory, backend):
    proxy = proxy_factory(route={"max_body_size": "1KiB"})
    head = build_request("POST", "/echo", [("Expect", "100-continue"), ("Content-Length", "5000")])
    with proxy.conn() as conn:
        conn.send(head)
        resp = conn.read_response()  # no body sent: the proxy must answer without it
        assert resp.interim == []
        assert resp.status == 413
    assert backend.stats()["heads"] == 0


def test_expect_100_continue_client_sends_body_without_waiting(proxy):
    """Clients may send the body right away; nothing is lost or duplicated."""
    body = b"eager body"
    raw = build_request("POST", "/echo", [("Expect", "100-continue")], body=body)
    with proxy.conn() as conn:
        conn.send(raw)
        resp = conn.read_response()
        assert resp.status == 200
        assert [r.status for r in resp.interim] in ([], [100])
        assert resp.body == body
        conn.send(build_request("GET", "/status/200"))
        assert conn.read_response().body == b"status 200\n"


# Trailer fields the proxy drops (README, "Trailers"): hop-by-hop and forwarding
# fields, request modifiers, credentials, response controls and content format
# (RFC 9110 6.5.1), and every name with an '_'.
DROPPED_TRAILERS = [
    ("X-Forwarded-For", "203.0.113.66"),
    ("X-Forwarded-Host", "admin.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Prefix", "/admin"),
    ("Forwarded", "for=203.0.113.66"),
    ("X-Real-IP", "203.0.113.66"),
    ("Via", "1.1 evil"),
    ("X-Request-ID", "forged"),
    ("Authorization", "Bearer stolen"),
    ("Proxy-Authorization", "Basic eDp5"),
    ("Cookie", "session=forged"),
    ("Set-Cookie", "injected=1"),
    ("Connection", "close"),
    ("Keep-Alive", "timeout=1"),
    ("Proxy-Connection", "close"),
    ("Upgrade", "h2c"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Expect", "100-continue"),
    ("Max-Forwards", "0"),
    ("Cache-Control", "no-cache"),
    ("Pragma", "no-cache"),
    ("Range", "bytes=0-1"),
    ("If-Match", '"x"'),
    ("If-None-Match", '"x"'),
    ("Content-Type", "text/html"),
    ("Content-Encoding", "gzip"),
    ("Content-Range", "bytes 0-1/2"),
    ("Location", "http://evil.example/"),
    ("Retry-After", "1"),
    ("X_Forwarded_For", "203.0.113.66"),
    ("X_Custom", "a"),
]
KEPT_TRAILERS = [("X-Checksum", "abc123"), ("Server-Timing", "db;dur=53"), ("ETag", '"t"')]


def test_request_trailers_keep_only_end_to_end_fields(proxy):
    """The backend receives the kept trailer fields, in order, and none of the dropped
    ones; the body is intact and the connection carries on."""
    sent = [KEPT_TRAILERS[0], *DROPPED_TRAILERS, *KEPT_TRAILERS[1:]]
    raw = build_request("POST", "/inspect", [("Transfer-Encoding", "chunked")]) + chunked(
        b"hello", trailers=sent
    )
    with proxy.conn() as conn:
        conn.send(raw)
        resp = conn.read_response()
        assert resp.status == 200, resp
        info = resp.json()
        assert info["body_sha256"] == sha256(b"hello")
        assert [tuple(t) for t in info["trailers"]] == KEPT_TRAILERS
        assert not resp.closes, "a Connection trailer must not close anything"
        conn.send(build_request("GET", "/inspect"))
        assert conn.read_response().status == 200


def test_request_with_only_dropped_trailers(proxy):
    raw = build_request("POST", "/inspect", [("Transfer-Encoding", "chunked")]) + chunked(
        b"hello", trailers=DROPPED_TRAILERS
    )
    resp = proxy.request(raw)
    assert resp.status == 200, resp
    assert resp.json()["trailers"] == []


def test_dropped_trailers_count_towards_the_trailer_cap(proxy):
    """Dropped trailer lines still count against the 16 KiB trailer section cap: an
    endless trailer section is refused, not read forever."""
    dropped = [("Cookie", "c" * 1000)] * 20
    raw = build_request("POST", "/inspect", [("Transfer-Encoding", "chunked")]) + chunked(
        b"hello", trailers=dropped
    )
    resp = proxy.request(raw)
    assert resp.status == 400, resp
    assert b"trailer section too large" in resp.body, resp


def test_response_trailers_keep_only_end_to_end_fields(tmp_path):
    """The same rule for the trailers of a chunked response relayed to the client."""
    trailers = b"".join(f"{k}: {v}\r\n".encode() for k, v in [KEPT_TRAILERS[0], *DROPPED_TRAILERS])
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with RawUpstream(
        {"/t": Script.reply(head + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n")}
    ) as up:
        stack = Stack(tmp_path, upstreams=[up.address], with_backend=False)
        try:
            with RawConn(stack.port) as conn:
                conn.send(build_request("GET", "/t", [("TE", "trailers")]))
                resp = conn.read_response()
                assert resp.status == 200, resp
                assert resp.body == b"hello"
                assert resp.trailers == [KEPT_TRAILERS[0]], resp.trailers
                assert not resp.closes
                conn.send(build_request("GET", "/t"))
                assert conn.read_response().body == b"hello"
        finally:
            problems = stack.stop()
    assert not problems, problems
