"""Malformed and unacceptable requests (RFC 9110/9112 and the proxy's limits).

Each case is sent as the first request on a fresh connection. The proxy must answer
with the exact status, say ``Connection: close``, close the connection, and never let
the request reach the backend: for problems in the head, the backend sees no request
at all; for problems in a chunked body (found only after the head may already have
been forwarded), the backend never receives a complete request.
"""

from __future__ import annotations

import pytest
from helpers import RawConn

HEAD = "head"  # the backend must not see the request at all
BODY = "body"  # the backend must not see a complete request

H = b"Host: example.test\r\n"


def post_chunked(body: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body


def post_cl(value: bytes, body: bytes = b"hello") -> bytes:
    return b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: " + value + b"\r\n\r\n" + body


def get_with(*lines: bytes) -> bytes:
    return b"GET /inspect HTTP/1.1\r\n" + H + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def request_line(line: bytes) -> bytes:
    return line + b"\r\n" + H + b"\r\n"


# fmt: off
CASES = [
    # --- message framing (RFC 9112 section 6)
    ("cl-and-te", b"POST /echo HTTP/1.1\r\n" + H
     + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, HEAD),  # noqa: E501
    ("te-and-cl", b"POST /echo HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\nContent-Length: 15\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, HEAD),  # noqa: E501
    ("cl-duplicate-different", b"POST /echo HTTP/1.1\r\n" + H
     + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, HEAD),
    ("cl-list-different", post_cl(b"5, 6", b"hello!"), 400, HEAD),
    ("cl-plus-sign", post_cl(b"+5"), 400, HEAD),
    ("cl-minus-sign", post_cl(b"-5"), 400, HEAD),
    ("cl-letters", post_cl(b"5a"), 400, HEAD),
    ("cl-hex", post_cl(b"0x5"), 400, HEAD),
    ("cl-inner-space", post_cl(b"1 0", b"helloworld"), 400, HEAD),
    ("cl-empty", post_cl(b""), 400, HEAD),
    ("cl-overflow", post_cl(b"99999999999999999999999999"), 400, HEAD),
    ("te-gzip-only", b"POST /echo HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: gzip\r\n\r\nhello", 400, HEAD),
    ("te-chunked-then-gzip", b"POST /echo HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, HEAD),
    ("te-in-http10", b"POST /echo HTTP/1.0\r\n"
     + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, HEAD),
    # --- chunked body
    ("chunk-size-not-hex", post_chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400, BODY),
    ("chunk-size-overflow-17-digits", post_chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"), 400, BODY),  # noqa: E501
    ("chunk-size-negative", post_chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, BODY),
    ("chunk-size-empty", post_chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, BODY),
    ("chunk-size-0x-prefix", post_chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, BODY),
    ("chunk-data-longer-than-size", post_chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"), 400, BODY),
    ("chunk-bare-lf", post_chunked(b"5\nhello\n0\n\n"), 400, BODY),
    ("chunk-size-bare-cr", post_chunked(b"5\rhello\r\n0\r\n\r\n"), 400, BODY),
    ("trailer-without-colon", post_chunked(b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n"), 400, BODY),
    ("trailer-obs-fold", post_chunked(b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"), 400, BODY),
    ("trailer-nul", post_chunked(b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n"), 400, BODY),
    # --- line endings and whitespace (RFC 9112 sections 2.2, 5.1, 5.2)
    ("bare-cr-in-request-line", b"GET /inspect HTTP/1.1\rHost: example.test\r\n\r\n", 400, HEAD),
    ("bare-cr-in-header-value", get_with(b"X-A: a\rb"), 400, HEAD),
    ("bare-lf-line-endings", b"GET /inspect HTTP/1.1\nHost: example.test\n\n", 400, HEAD),
    ("bare-lf-mixed", b"GET /inspect HTTP/1.1\r\nHost: example.test\nX-A: b\r\n\r\n", 400, HEAD),
    ("obs-fold-space", get_with(b"X-A: a", b" folded"), 400, HEAD),
    ("obs-fold-tab", get_with(b"X-A: a", b"\tfolded"), 400, HEAD),
    ("whitespace-before-first-header", b"GET /inspect HTTP/1.1\r\n Host: example.test\r\n\r\n", 400, HEAD),  # noqa: E501
    ("space-before-colon", b"GET /inspect HTTP/1.1\r\nHost : example.test\r\n\r\n", 400, HEAD),
    ("tab-before-colon", get_with(b"X-A\t: b"), 400, HEAD),
    # --- header field syntax
    ("space-in-header-name", get_with(b"X Bad: 1"), 400, HEAD),
    ("invalid-char-in-header-name", get_with(b"X-B@d: 1"), 400, HEAD),
    ("non-ascii-in-header-name", get_with(b"X-Caf\xe9: 1"), 400, HEAD),
    ("empty-header-name", get_with(b": value"), 400, HEAD),
    ("header-without-colon", get_with(b"NoColonHere"), 400, HEAD),
    ("nul-in-header-name", get_with(b"X-A\x00B: 1"), 400, HEAD),
    ("nul-in-header-value", get_with(b"X-A: a\x00b"), 400, HEAD),
    ("ctl-in-header-value", get_with(b"X-A: a\x01b"), 400, HEAD),
    ("del-in-header-value", get_with(b"X-A: a\x7fb"), 400, HEAD),
    ("esc-in-header-value", get_with(b"X-A: \x1b[31mred"), 400, HEAD),
    # --- Host (RFC 9112 section 3.2)
    ("missing-host-http11", b"GET /inspect HTTP/1.1\r\nX-A: 1\r\n\r\n", 400, HEAD),
    ("two-host-headers", get_with(b"Host: other.example"), 400, HEAD),
    ("invalid-host-value", b"GET /inspect HTTP/1.1\r\nHost: exa mple.test\r\n\r\n", 400, HEAD),
    # --- request line
    ("invalid-char-in-method", request_line(b"GE(T /inspect HTTP/1.1"), 400, HEAD),
    ("nul-in-method", request_line(b"GE\x00T /inspect HTTP/1.1"), 400, HEAD),
    ("nul-in-target", request_line(b"GET /insp\x00ect HTTP/1.1"), 400, HEAD),
    ("ctl-in-target", request_line(b"GET /insp\x01ect HTTP/1.1"), 400, HEAD),
    ("space-in-target", request_line(b"GET /ins pect HTTP/1.1"), 400, HEAD),
    ("non-ascii-in-target", request_line(b"GET /caf\xe9 HTTP/1.1"), 400, HEAD),
    ("double-space-in-request-line", request_line(b"GET  /inspect HTTP/1.1"), 400, HEAD),
    ("leading-space-request-line", request_line(b" GET /inspect HTTP/1.1"), 400, HEAD),
    ("trailing-space-request-line", request_line(b"GET /inspect HTTP/1.1 "), 400, HEAD),
    ("tab-separated-request-line", request_line(b"GET\t/inspect\tHTTP/1.1"), 400, HEAD),
    ("method-only", request_line(b"GET"), 400, HEAD),
    ("http09-request-line", b"GET /inspect\r\n\r\n", 400, HEAD),
    ("garbage-target", request_line(b"GET foo HTTP/1.1"), 400, HEAD),
    ("asterisk-target-with-get", request_line(b"GET * HTTP/1.1"), 400, HEAD),
    ("binary-garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400, HEAD),  # noqa: E501
    # --- versions
    ("version-lowercase", request_line(b"GET /inspect http/1.1"), 400, HEAD),
    ("version-no-minor", request_line(b"GET /inspect HTTP/1"), 400, HEAD),
    ("version-three-parts", request_line(b"GET /inspect HTTP/1.1.1"), 400, HEAD),
    ("version-letters", request_line(b"GET /inspect HTTP/x.y"), 400, HEAD),
    ("version-2.0", request_line(b"GET /inspect HTTP/2.0"), 505, HEAD),
    ("version-1.2", request_line(b"GET /inspect HTTP/1.2"), 505, HEAD),
    ("version-3.0", request_line(b"GET /inspect HTTP/3.0"), 505, HEAD),
    ("version-0.9", request_line(b"GET /inspect HTTP/0.9"), 505, HEAD),
    # --- methods
    ("connect", b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n", 405, HEAD),
    # --- limits (defaults: 32 KiB head, 100 headers, 8 KiB URI)
    ("oversized-head", get_with(b"X-Big: " + b"b" * 40000), 431, HEAD),
    ("oversized-head-many-lines", get_with(*(b"X-P%d: " % i + b"p" * 1000 for i in range(40))), 431, HEAD),  # noqa: E501
    ("too-many-headers", get_with(*(b"X-N%d: v" % i for i in range(100))), 431, HEAD),
    ("long-uri", request_line(b"GET /inspect?q=" + b"u" * 9000 + b" HTTP/1.1"), 414, HEAD),
]
# fmt: on

assert len(CASES) >= 30
assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("raw", "status", "kind"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_request_rejected(proxy, backend, raw, status, kind):
    with RawConn(proxy.port) as conn:
        conn.send(raw)
        resp = conn.read_response()
        assert resp.status == status, resp
        assert resp.closes, f"no Connection: close on {resp!r}"
        body = resp.body.decode("utf-8", "replace")
        assert resp.body and "Traceback" not in body, resp
        assert conn.is_closed_by_peer(), "the proxy left the connection open"
    stats = backend.stats()
    if kind == HEAD:
        assert stats["heads"] == 0, f"the backend saw the request: {stats}"
    else:
        assert stats["completed"] == 0, f"the backend received a complete request: {stats}"
    assert stats["parse_errors"] == 0


def test_malformed_request_after_good_one_on_same_connection(proxy, backend):
    """A bad request in the middle of a keep-alive connection: the good one is answered,
    the bad one gets 400 and the connection closes."""
    with RawConn(proxy.port) as conn:
        conn.send(get_with())
        assert conn.read_response().status == 200
        conn.send(
            b"GET /inspect HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        )
        resp = conn.read_response()
        assert resp.status == 400
        assert resp.closes
        assert conn.is_closed_by_peer()
    assert backend.stats()["heads"] == 1


def test_smuggling_attempt_is_not_forwarded(proxy, backend):
    """CL.TE smuggling: the bytes after the first request must never become a second
    request at the backend."""
    smuggled = b"GET /status/200?smuggled=1 HTTP/1.1\r\n" + H + b"\r\n"
    body = b"0\r\n\r\n" + smuggled
    raw = (
        b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\n" % len(body)
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + body
    )
    with RawConn(proxy.port) as conn:
        conn.send(raw)
        resp = conn.read_response()
        assert resp.status == 400
        assert conn.is_closed_by_peer()
    stats = backend.stats()
    assert stats["heads"] == 0
    assert "/status/200" not in stats["paths"]
