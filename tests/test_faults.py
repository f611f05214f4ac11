"""Fault injection: misbehaving upstreams, vanishing peers, restarts, and a leak check.

Response side (invariant 7): an upstream that sends an invalid status line,
conflicting framing, a short body, or bytes after its response gets the client a
``502`` (before the response head went out) or a cut connection (after), the
upstream connection is discarded, and the next request (on the same client
connection when it was kept, and on a new one) gets a correct, un-desynced answer.
The misbehaving upstream is ``fault_support.RawUpstream`` (raw sockets, scripted
per request path).

Then: upstreams killed, silent, reset or half-closed; clients that vanish mid-upload
or mid-download; a backend restarted under pipelined keep-alive traffic; and about
10,000 mixed faulty requests after which the proxy's fds return exactly to their
baseline and its RSS to near it, while every correct request interleaved succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest
import smuggling_corpus as sc
from conftest import Process
from fault_support import (
    CALL,
    CLOSE,
    HALF_CLOSE,
    HANG,
    KEEP,
    LATER,
    RST,
    SEND,
    RawUpstream,
    Script,
    Stack,
    fd_count,
    poll_until,
    read_or_cut,
    rss_kib,
)
from helpers import (
    IncompleteResponse,
    RawConn,
    build_request,
    free_port,
    payload,
    payload_sha256,
    sha256,
)

OK_BODY = b"ok\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n" + OK_BODY


def ok_after(conn: RawConn, target: str = "/ok") -> None:
    conn.send(build_request("GET", target))
    resp = conn.read_response()
    assert resp.status == 200 and resp.body == OK_BODY, f"desynced follow-up: {resp!r}"


# --------------------------------------------------------------------------- response side

BAD_502 = "502"  # rejected before the head went out
CUT = "cut"  # the head went out; the client connection is cut
RELAYED = "relayed"  # a valid response is relayed, the leftovers are not

H200 = b"HTTP/1.1 200 OK\r\n"
CHUNKED_HEAD = H200 + b"Transfer-Encoding: chunked\r\n\r\n"
SECOND = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

# (id, bytes the upstream sends, then, expectation, body the client gets when relayed)
# fmt: off
RESPONSES = [
    # -- status line
    ("status-letters", b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("status-two-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("status-four-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("status-below-100", b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("status-leading-space", b" HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),  # noqa: E501
    ("status-double-space", b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("version-lowercase", b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("version-2", b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("version-2.0", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("icy", b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("junk", b"this is not HTTP\r\n\r\n", CLOSE, BAD_502, None),
    ("status-bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("status-bare-cr", b"HTTP/1.1 200 OK\rX: y\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("reason-nul", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    ("reason-esc", b"HTTP/1.1 200 \x1b[2JOK\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),
    # -- framing
    ("cl-and-te", H200 + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", KEEP, BAD_502, None),  # noqa: E501
    ("te-and-cl", H200 + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", KEEP, BAD_502, None),  # noqa: E501
    ("two-cls", H200 + b"Content-Length: 5\r\nContent-Length: 13\r\n\r\nhello" + SECOND[:8], KEEP, BAD_502, None),  # noqa: E501
    ("cl-list-different", H200 + b"Content-Length: 5, 13\r\n\r\nhello", KEEP, BAD_502, None),
    ("cl-plus", H200 + b"Content-Length: +5\r\n\r\nhello", KEEP, BAD_502, None),
    ("cl-negative", H200 + b"Content-Length: -1\r\n\r\nhello", KEEP, BAD_502, None),
    ("cl-hex", H200 + b"Content-Length: 0x5\r\n\r\nhello", KEEP, BAD_502, None),
    ("cl-empty", H200 + b"Content-Length: \r\n\r\nhello", KEEP, BAD_502, None),
    ("cl-overflow", H200 + b"Content-Length: 18446744073709551621\r\n\r\nhello", KEEP, BAD_502, None),  # noqa: E501
    ("cl-2p63", H200 + b"Content-Length: 9223372036854775808\r\n\r\nhello", KEEP, BAD_502, None),
    ("cl-19-digits", H200 + b"Content-Length: 1000000000000000000\r\n\r\nhello", KEEP, BAD_502, None),  # noqa: E501
    ("te-gzip-only", H200 + b"Transfer-Encoding: gzip\r\n\r\nhello", CLOSE, BAD_502, None),
    ("te-chunked-twice", H200 + b"Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", KEEP, BAD_502, None),  # noqa: E501
    ("te-chunked-then-gzip", H200 + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", KEEP, BAD_502, None),  # noqa: E501
    ("te-xchunked", H200 + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", CLOSE, BAD_502, None),
    # -- header syntax
    ("header-obs-fold", H200 + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", KEEP, BAD_502, None),
    ("header-space-before-colon", H200 + b"Content-Length : 0\r\n\r\n", KEEP, BAD_502, None),
    ("header-no-colon", H200 + b"Content-Length 0\r\n\r\n", KEEP, BAD_502, None),
    ("header-nul", H200 + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", KEEP, BAD_502, None),
    ("header-bare-cr", H200 + b"X-A: a\rContent-Length: 8\r\nContent-Length: 0\r\n\r\n", KEEP, BAD_502, None),  # noqa: E501
    ("header-bare-lf", H200 + b"X-A: a\nContent-Length: 8\r\nContent-Length: 0\r\n\r\n", KEEP, BAD_502, None),  # noqa: E501
    ("head-too-large", H200 + b"X-Big: " + b"b" * 70000 + b"\r\nContent-Length: 0\r\n\r\n", CLOSE, BAD_502, None),  # noqa: E501
    ("101-unasked", b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n", KEEP, BAD_502, None),  # noqa: E501
    ("103-then-junk", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\njunk\r\n\r\n", CLOSE, BAD_502, None),  # noqa: E501
    # -- the connection ends too early
    ("eof-mid-head", H200 + b"Content-Le", CLOSE, BAD_502, None),
    ("rst-mid-head", H200 + b"Content-Le", RST, BAD_502, None),
    ("short-body-then-close", H200 + b"Content-Length: 10\r\n\r\nhello", CLOSE, CUT, None),
    ("short-body-then-rst", H200 + b"Content-Length: 10\r\n\r\nhello", RST, CUT, None),
    ("short-big-body-then-close", H200 + b"Content-Length: 100000\r\n\r\n" + b"x" * 50000, CLOSE, CUT, None),  # noqa: E501
    ("chunked-eof-mid-chunk", CHUNKED_HEAD + b"a\r\nhello", CLOSE, CUT, None),
    ("chunked-eof-before-last", CHUNKED_HEAD + b"5\r\nhello\r\n", CLOSE, CUT, None),
    ("chunked-eof-in-trailers", CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-T: 1\r\n", CLOSE, CUT, None),
    # -- broken chunked bodies
    ("chunked-bad-size", CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n", KEEP, CUT, None),
    ("chunked-0x-size", CHUNKED_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n", KEEP, CUT, None),
    ("chunked-size-overflow", CHUNKED_HEAD + b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", KEEP, CUT, None),  # noqa: E501
    # issue 17: 2**63 (+ up to 15) wrapped to a negative size, read as the last chunk
    ("chunked-size-2p63", CHUNKED_HEAD + b"8000000000000000\r\nSet-Cookie: injected=1\r\n\r\n", KEEP, CUT, None),  # noqa: E501
    ("chunked-size-2p63-plus-15", CHUNKED_HEAD + b"800000000000000f\r\n\r\n" + SECOND, KEEP, CUT, None),  # noqa: E501
    ("chunked-size-2p63-leading-zeros", CHUNKED_HEAD + b"0" * 30 + b"8000000000000000\r\n\r\n", KEEP, CUT, None),  # noqa: E501
    ("chunked-size-2p63-second-chunk", CHUNKED_HEAD + b"5\r\nhello\r\n8000000000000000\r\n\r\n", KEEP, CUT, None),  # noqa: E501
    ("chunked-size-2p60", CHUNKED_HEAD + b"1000000000000000\r\nhello\r\n0\r\n\r\n", KEEP, CUT, None),  # noqa: E501
    ("chunked-lf-only", CHUNKED_HEAD + b"5\nhello\n0\n\n", KEEP, CUT, None),
    ("chunked-data-too-long", CHUNKED_HEAD + b"3\r\nhello\r\n0\r\n\r\n", KEEP, CUT, None),
    ("chunked-ext-bare-cr", CHUNKED_HEAD + b"5;a\rb\r\nhello\r\n0\r\n\r\n", KEEP, CUT, None),
    ("chunked-trailer-cl", CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nContent-Length: 8\r\n\r\n", KEEP, CUT, None),  # noqa: E501
    ("chunked-trailer-obs-fold", CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n", KEEP, CUT, None),  # noqa: E501
    # -- valid responses followed by more bytes: relayed, the rest never is
    ("extra-after-cl", H200 + b"Content-Length: 5\r\n\r\nhello" + SECOND, KEEP, RELAYED, b"hello"),
    ("extra-after-chunked", CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n" + SECOND, KEEP, RELAYED, b"hello"),  # noqa: E501
    ("extra-after-empty-cl", H200 + b"Content-Length: 0\r\n\r\n" + SECOND, KEEP, RELAYED, b""),
    ("204-with-body", b"HTTP/1.1 204 No Content\r\n\r\n" + SECOND, KEEP, RELAYED, b""),
    ("304-with-body", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\nsmuggled", KEEP, RELAYED, b""),  # noqa: E501
    ("1xx-then-extra", b"HTTP/1.1 103 Early Hints\r\n\r\n" + H200 + b"Content-Length: 2\r\n\r\nhi" + SECOND, KEEP, RELAYED, b"hi"),  # noqa: E501
    ("cl-same-list", H200 + b"Content-Length: 5, 5\r\n\r\nhello", KEEP, RELAYED, b"hello"),
    ("cl-30-leading-zeros", H200 + b"Content-Length: " + b"0" * 30 + b"5\r\n\r\nhello", KEEP, RELAYED, b"hello"),  # noqa: E501
    ("chunked-size-30-leading-zeros", CHUNKED_HEAD + b"0" * 30 + b"5\r\nhello\r\n" + b"0" * 30 + b"\r\n\r\n", KEEP, RELAYED, b"hello"),  # noqa: E501
    ("close-delimited", H200 + b"\r\nhello, till close", CLOSE, RELAYED, b"hello, till close"),
    ("http10-close-delimited", b"HTTP/1.0 200 OK\r\n\r\nold", CLOSE, RELAYED, b"old"),
]
# fmt: on

# Cases that found product bugs (fixed in the core; see RELIABILITY.md, findings 1-3).
# fmt: off
RESPONSES += [
    ("status-no-space", b"HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello", KEEP, RELAYED, b"hello"),
    ("http10-te-chunked", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", CLOSE, BAD_502, None),  # noqa: E501
]
# fmt: on


# valid responses with nothing after them: their connection may be reused
CLEAN = {"cl-same-list", "status-no-space", "cl-30-leading-zeros", "chunked-size-30-leading-zeros"}


@pytest.fixture(scope="module")
def raw_stack(tmp_path_factory):
    scripts = {f"/r/{rid}": Script([(SEND, data), then]) for rid, data, then, _, _ in RESPONSES}
    scripts["/ok"] = Script.reply(OK)
    up = RawUpstream(scripts)
    stack = Stack(
        tmp_path_factory.mktemp("raw"),
        route={"response_header_timeout": "10s", "upstream_body_timeout": "10s"},
        upstreams=[up.address],
        with_backend=False,
    )
    yield stack, up
    problems = stack.stop()
    up.close()
    assert not up.errors, up.errors
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("rid", "data", "then", "expect", "body"),
    [pytest.param(*case, id=case[0]) for case in RESPONSES],
)
def test_malformed_upstream_response(raw_stack, rid, data, then, expect, body):
    stack, up = raw_stack
    target = f"/r/{rid}"
    seen = len(up.requests)
    with RawConn(stack.port) as conn:
        conn.send(build_request("GET", target))
        resp = read_or_cut(conn)
        if expect == BAD_502:
            assert resp is not None, "the client was cut instead of getting a 502"
            assert resp.status == 502, resp
            assert (resp.get("content-type") or "").startswith("text/plain"), resp
            assert b"smuggled" not in resp.body
        elif expect == CUT:
            assert resp is None, f"the client got a complete response from a broken one: {resp!r}"
            assert conn.reset, "a cut response ended with a clean close, not a reset"
        else:
            assert resp is not None, "a valid response was not relayed"
            assert resp.body == body, resp
            assert b"smuggled" not in conn.buf
        if resp is not None and not resp.closes:
            ok_after(conn)  # the same client connection is still in sync
        elif resp is not None:
            assert conn.is_closed_by_peer()
    # and a new connection gets the right answer too
    with RawConn(stack.port) as conn2:
        ok_after(conn2)
    conns = up.conns_of(target)
    assert conns, "the request never reached the upstream"
    assert len(conns) == 1, f"a request that got response bytes was replayed: {conns}"
    if rid not in CLEAN:
        # the connection that misbehaved is never used again, and the proxy closes it
        later = {c for c, t in up.requests[seen:] if t == "/ok"}
        assert not later & set(conns), f"a broken upstream connection was reused: {up.requests}"
        if then == KEEP:
            up.wait_closed_by_peer(conns[-1])


def test_head_request_with_body_in_response_is_not_relayed(raw_stack):
    """HEAD: the upstream sends a body anyway; the client gets none, and the connection
    the body came on is not reused."""
    stack, up = raw_stack
    up.scripts["/r/head-body"] = Script.reply(H200 + b"Content-Length: 8\r\n\r\nsmuggled")
    with RawConn(stack.port) as conn:
        conn.send(build_request("HEAD", "/r/head-body"))
        resp = conn.read_response("HEAD")
        assert resp.status == 200 and resp.body == b"", resp
        ok_after(conn)
        assert b"smuggled" not in conn.buf
    bad = up.conns_of("/r/head-body")[-1]
    assert up.requests[-1][0] != bad
    up.wait_closed_by_peer(bad)


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (``T``: stopped by a signal)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# (id, method, the complete response, the bytes the upstream sends later on its own)
LATE_BYTES = [
    ("head-body", "HEAD", H200 + b"Content-Length: 8\r\n\r\n", b"smuggled"),
    ("204-body", "GET", b"HTTP/1.1 204 No Content\r\n\r\n", SECOND),
    ("304-body", "GET", b"HTTP/1.1 304 Not Modified\r\n\r\n", SECOND),
    ("after-length", "GET", H200 + b"Content-Length: 2\r\n\r\nok", SECOND),
    ("after-chunked", "GET", CHUNKED_HEAD + b"2\r\nok\r\n0\r\n\r\n", SECOND),
]


@pytest.mark.parametrize(
    ("rid", "method", "response", "late"), [pytest.param(*c, id=c[0]) for c in LATE_BYTES]
)
def test_late_bytes_from_an_upstream_never_reach_the_next_request(
    raw_stack, rid, method, response, late
):
    """An upstream sends a complete response, then, on its own, more bytes (a body for
    a HEAD/204/304, bytes after the declared body). The proxy is stopped (SIGSTOP) while
    they arrive together with another client's request, so when it runs again the
    pooled connection is due to carry that request with the late bytes still unread:
    it must see them and not reuse the connection, so the other client gets its own
    answer, not the late bytes read as a response."""
    stack, up = raw_stack
    go, sent = threading.Event(), threading.Event()

    def send_late(sock: socket.socket) -> None:
        go.wait(30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # on the wire at once
        sock.sendall(late)
        sent.set()

    target = f"/late/{rid}"
    up.scripts[target] = Script([(SEND, response), (CALL, send_late), KEEP])
    with RawConn(stack.port) as other, RawConn(stack.port) as first:
        ok_after(other)  # the other client's connection is open and idle
        first.send(build_request(method, target))
        resp = first.read_response(method)
        assert resp.status in (200, 204, 304) and b"smuggled" not in resp.body, resp
        stack.proxy.proc.send_signal(signal.SIGSTOP)
        try:
            poll_until(lambda: process_state(stack.proxy.pid) == "T", 30, "the proxy to stop")
            other.send(build_request("GET", "/ok"))  # queued at the stopped proxy first
            go.set()
            assert sent.wait(30), "the upstream did not send its late bytes"
        finally:
            stack.proxy.proc.send_signal(signal.SIGCONT)
        resp = other.read_response()
        assert resp.status == 200 and resp.body == OK_BODY, (
            f"late bytes became a response: {resp!r}"
        )
        ok_after(first)
    bad = up.conns_of(target)[-1]
    carried = [t for c, t in up.requests if c == bad]
    assert carried[-1] == target, f"the connection that sent late bytes was reused: {carried}"
    up.wait_closed_by_peer(bad)


def test_pipelined_requests_after_a_broken_response_stay_in_order(raw_stack):
    """Three pipelined requests, the middle one's upstream breaks the framing: the
    first gets its answer, the second a 502, the third its own answer."""
    stack, _ = raw_stack
    with RawConn(stack.port) as conn:
        conn.send(
            build_request("GET", "/ok?1")
            + build_request("GET", "/r/cl-and-te")
            + build_request("GET", "/ok?3")
        )
        first = conn.read_response()
        assert first.status == 200 and first.body == OK_BODY
        second = conn.read_response()
        assert second.status == 502, second
        if not second.closes:
            third = conn.read_response()
            assert third.status == 200 and third.body == OK_BODY, third
        else:
            assert conn.is_closed_by_peer()


def test_wrapping_chunk_size_never_hands_the_rest_to_another_client(raw_stack):
    """Issue 17, finding 2 (response side). The upstream sends a chunk size of 2**63,
    which a signed 64-bit parser wrapped to a negative size and took for the last
    chunk: the attacker's client got a "complete" body, the connection went back to
    the pool, and the bytes the upstream sent next were read as the answer to the next
    client's request. Now: the attacker's client is cut, that upstream connection is
    closed and never reused, and the next client gets its own answer."""
    stack, up = raw_stack
    rest = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nSet-Cookie: injected=1\r\n\r\nattacker"
    up.scripts["/r/wrap"] = Script(
        [(SEND, CHUNKED_HEAD + b"8000000000000000\r\n\r\n"), (LATER, rest), KEEP]
    )
    with RawConn(stack.port) as attacker:
        attacker.send(build_request("GET", "/r/wrap"))
        assert read_or_cut(attacker) is None, "a wrapped chunk size ended the response"
    (bad,) = up.conns_of("/r/wrap")
    seen = len(up.requests)
    with RawConn(stack.port) as victim:
        victim.send(build_request("GET", "/ok"))
        resp = victim.read_response()
        assert resp.status == 200 and resp.body == OK_BODY, resp
        assert resp.get("set-cookie") is None, resp
        assert b"attacker" not in victim.buf
    assert bad not in {c for c, _ in up.requests[seen:]}, "the broken connection was reused"
    up.wait_closed_by_peer(bad)


# --------------------------------------------------------------------------- faults


def test_upstream_accepts_and_never_answers_gets_504(tmp_path):
    with RawUpstream({"/silent": Script([HANG])}) as up:
        stack = Stack(
            tmp_path,
            route={"response_header_timeout": "1s"},
            upstreams=[up.address],
            with_backend=False,
        )
        try:
            with RawConn(stack.port) as conn:
                conn.send(build_request("GET", "/silent"))
                resp = conn.read_response()
                assert resp.status == 504, resp
                if not resp.closes:
                    ok_after(conn)
            for c in up.conns_of("/silent"):
                up.wait_closed_by_peer(c)
            assert up.count("/silent") == 1, "a timed-out request must not be replayed"
        finally:
            problems = stack.stop()
        assert not problems, problems


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_reset_before_answer(tmp_path, method):
    """RST with no response byte: 502. Invariant 2: only the idempotent GET may be
    replayed (a bounded number of times, each on a new connection); the POST with a
    body reached the upstream exactly once. Holding is off: with ``try_duration`` the
    GET would wait for an upstream that takes it (see the next test)."""
    with RawUpstream({"/rst": Script([RST])}) as up:
        stack = Stack(
            tmp_path, route={"try_duration": "0s"}, upstreams=[up.address], with_backend=False
        )
        try:
            with RawConn(stack.port) as conn:
                body = b"data" if method == "POST" else b""
                conn.send(build_request(method, "/rst", body=body))
                resp = conn.read_response()
                assert resp.status == 502, resp
                if not resp.closes:
                    ok_after(conn)
            if method == "POST":
                assert up.count("/rst") == 1, "a non-idempotent request was replayed"
            else:
                assert 1 <= up.count("/rst") <= 10, f"unbounded replays: {up.count('/rst')}"
            conns = [c for c, t in up.requests if t == "/rst"]
            assert len(set(conns)) == len(conns), "a reset connection was used again"
        finally:
            problems = stack.stop()
        assert not problems, problems


def _get_past_closing_upstream(tmp_path, closed: int, route: dict | None = None, pooled=True):
    """GET /flaky with holding on, through an upstream that closes the first ``closed``
    sends of it unanswered (the first on a pooled connection, if ``pooled``), then
    answers 200. Returns the response and the upstream connections that carried it."""
    sent = iter(range(1_000_000))

    def flaky(path: str, query: str) -> Script:
        return Script([CLOSE]) if next(sent) < closed else Script.reply(OK)

    with RawUpstream({"/flaky": flaky}) as up:
        stack = Stack(
            tmp_path,
            route={"try_duration": "30s", "try_interval": "50ms", **(route or {})},
            upstreams=[up.address],
            with_backend=False,
        )
        try:
            with RawConn(stack.port) as conn:
                if pooled:
                    ok_after(conn)  # leaves a pooled upstream connection behind
                conn.send(build_request("GET", "/flaky"))
                resp = conn.read_response()
            conns = up.conns_of("/flaky")
            assert len(set(conns)) == len(conns), "a closed connection was used again"
        finally:
            problems = stack.stop()
        assert not problems, problems
    return resp, conns


def test_replayable_request_that_no_upstream_takes_is_held_not_failed(tmp_path):
    """A backend restarting gracefully closes pooled connections under in-flight GETs
    and resets the connections still queued on its closing listener. With
    ``try_duration`` such a GET (idempotent, no body, no response byte) is replayed,
    and once the upstream has failed it, waits like a request that found no upstream
    and goes out again when the upstream takes connections: the client never sees the
    restart as a 502. (Before, four unanswered sends in a row meant 502.)"""
    resp, conns = _get_past_closing_upstream(tmp_path, closed=4)
    assert resp.status == 200 and resp.body == OK_BODY, resp
    assert len(conns) == 5


def test_replayable_request_is_sent_a_bounded_number_of_times_while_held(tmp_path):
    """An upstream that takes connections but closes every request unanswered: with
    holding on, the GET still ends (502) after a bounded number of sends, and the
    upstream is not hammered in a loop for the whole ``try_duration``: the stale pooled
    connection, then 4 fresh ones (the probes' new connections among them)."""
    resp, conns = _get_past_closing_upstream(tmp_path, closed=1_000_000)
    assert resp.status == 502, resp
    assert len(conns) == 5, conns


def test_replayable_request_is_not_refused_for_a_queue_it_did_not_need(tmp_path):
    """With ``max_held = 0`` nothing is held: a GET its upstream closed unanswered is
    replayed at once (and answered), not refused as if a queue were full."""
    resp, conns = _get_past_closing_upstream(tmp_path, closed=1, route={"max_held": 0})
    assert resp.status == 200 and resp.body == OK_BODY, resp
    assert len(conns) == 2, conns


def test_upstream_half_closes_after_response(tmp_path):
    """The upstream answers, then half-closes (FIN, still reading): the response is
    delivered, and that connection is not reused."""
    scripts = {
        "/fin": Script([(SEND, OK), HALF_CLOSE]),
        "/fin-first": Script([HALF_CLOSE]),
        "/ok": Script.reply(OK),
    }
    with RawUpstream(scripts) as up:
        stack = Stack(
            tmp_path, route={"try_duration": "0s"}, upstreams=[up.address], with_backend=False
        )
        try:
            with RawConn(stack.port) as conn:
                ok_after(conn, "/fin")
                ok_after(conn, "/ok")
                assert up.conns_of("/ok")[-1] != up.conns_of("/fin")[-1]
                up.wait_closed_by_peer(up.conns_of("/fin")[-1])
                # a FIN before any answer: 502 with holding off (the GET may be tried
                # again first)
                conn.send(build_request("GET", "/fin-first"))
                resp = conn.read_response()
                assert resp.status == 502, resp
                if not resp.closes:
                    ok_after(conn)
        finally:
            problems = stack.stop()
        assert not problems, problems


def test_client_half_close_still_gets_response(tmp_path):
    with RawUpstream({"/ok": Script.reply(OK)}) as up:
        stack = Stack(tmp_path, upstreams=[up.address], with_backend=False)
        try:
            with RawConn(stack.port) as conn:
                conn.send(build_request("GET", "/ok"))
                conn.sock.shutdown(socket.SHUT_WR)
                resp = conn.read_response()
                assert resp.status == 200 and resp.body == OK_BODY
                assert conn.is_closed_by_peer()
        finally:
            problems = stack.stop()
        assert not problems, problems


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upstream_answers_before_the_request_body_is_complete(tmp_path, framing):
    """The upstream refuses a large upload right after its head (413, close) while the
    client is still sending. The client gets that 413 whole, then the connection ends
    (the rest of its body cannot be framed any more); the proxy serves the next client."""
    early = (
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
    )
    scripts = {"/early": Script([(SEND, early), CLOSE], early=True), "/ok": Script.reply(OK)}
    with RawUpstream(scripts) as up:
        stack = Stack(tmp_path, upstreams=[up.address], with_backend=False)
        try:
            with RawConn(stack.port, timeout=60) as conn:
                if framing == "length":
                    head = build_request(
                        "POST",
                        "/early",
                        headers=[("Content-Length", str(50 << 20))],
                        content_length=False,
                    )
                else:
                    head = build_request(
                        "POST", "/early", headers=[("Transfer-Encoding", "chunked")]
                    )
                chunk = (
                    b"x" * 65536 if framing == "length" else b"10000\r\n" + b"x" * 65536 + b"\r\n"
                )
                stop = threading.Event()

                def pump() -> None:
                    try:
                        conn.sock.sendall(head)
                        for _ in range(800):  # 50 MB, unless the proxy stops reading
                            if stop.is_set():
                                return
                            conn.sock.sendall(chunk)
                    except OSError:
                        pass

                sender = threading.Thread(target=pump, daemon=True)
                sender.start()
                resp = conn.read_response("POST")
                stop.set()
                assert resp.status == 413 and resp.body == b"too large", resp
                assert resp.closes, resp
                conn.read_until_close(60)  # and then the connection ends
                sender.join(60)
            with RawConn(stack.port) as conn:
                ok_after(conn)
        finally:
            problems = stack.stop()
        assert not problems, problems


def _start_backend_on(tmp: Path, port: int, name: str) -> Process:
    """The suite's backend on a fixed port (to restart one where the proxy expects it)."""
    proc = Process(
        [sys.executable, str(Path(__file__).with_name("backend.py")), "--port", str(port)],
        tmp / f"{name}.stderr",
        tmp,
    )
    line = proc.output.wait_for(lambda s: s.startswith("backend: listening on "))
    assert line is not None, proc.describe()
    return proc


def test_upstream_killed_mid_response_then_restarted(tmp_path):
    port = free_port()
    backend = _start_backend_on(tmp_path, port, "b1")
    stack = Stack(
        tmp_path, route={"try_duration": "0s"}, upstreams=[f"127.0.0.1:{port}"], with_backend=False
    )
    try:
        size = 200 << 20
        with RawConn(stack.port) as conn:
            conn.send(build_request("GET", f"/download?size={size}"))
            # the head and some of the body have arrived ...
            while len(conn.buf) < 300_000:
                assert conn._recv()
            backend.proc.kill()  # ... when the backend dies
            backend.proc.wait(30)
            with pytest.raises(IncompleteResponse) as info:
                conn.read_response()
            assert info.value.status == 200
            got = info.value.body
            assert 0 < len(got) < size
            assert got[:100_000] == payload(100_000)
        # nothing listens: 502 at once (holding is off)
        with RawConn(stack.port) as conn:
            conn.send(build_request("GET", "/inspect"))
            assert conn.read_response().status == 502
        backend = _start_backend_on(tmp_path, port, "b2")
        with RawConn(stack.port) as conn:
            conn.send(build_request("GET", "/inspect/after"))
            resp = conn.read_response()
            assert resp.status == 200 and resp.json()["target"] == "/inspect/after"
    finally:
        problems = stack.stop()
        backend.kill()
    assert not problems, problems


def test_backend_restart_during_pipelined_keepalive_traffic(tmp_path):
    """Clients pipeline batches of requests on keep-alive connections while the backend
    is killed and started again on the same port. Every answer is the answer to its own
    request (200 with its target) or a proxy error for a request caught in flight
    (502); nothing is answered out of order, and after the restart all succeed."""
    port = free_port()
    backend = _start_backend_on(tmp_path, port, "b1")
    stack = Stack(
        tmp_path,
        route={"try_duration": "20s", "try_interval": "100ms"},
        upstreams=[f"127.0.0.1:{port}"],
        with_backend=False,
    )
    problems: list[str] = []
    counts = {"ok": 0, "error": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def client(cid: int) -> None:
        seq = 0
        while not stop.is_set():
            try:
                with RawConn(stack.port, timeout=60) as conn:
                    for _ in range(20):
                        batch = [f"/inspect/{cid}/{seq + i}" for i in range(5)]
                        seq += 5
                        conn.send(b"".join(build_request("GET", t) for t in batch))
                        for t in batch:
                            try:
                                resp = read_or_cut(conn)
                            except AssertionError as e:  # garbage reached the client
                                problems.append(f"{t}: {e}")
                                raise ConnectionError from None
                            if resp is None:
                                with lock:
                                    counts["error"] += 1
                                raise ConnectionError
                            if resp.status == 200:
                                if resp.json()["target"] != t:
                                    problems.append(f"{t} answered with {resp.json()['target']}")
                                with lock:
                                    counts["ok"] += 1
                            else:
                                with lock:
                                    counts["error"] += 1
                                if resp.status not in (502, 503):
                                    problems.append(f"{t}: {resp!r}")
                            if resp.closes:
                                raise ConnectionError
            except (ConnectionError, OSError):
                continue

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in threads:
            t.start()
        poll_until(lambda: counts["ok"] > 300, 60, "traffic before the restart")
        backend.proc.send_signal(signal.SIGKILL)
        backend.proc.wait(30)
        backend = _start_backend_on(tmp_path, port, "b2")
        before = counts["ok"]
        poll_until(lambda: counts["ok"] > before + 600, 90, "traffic after the restart")
        # after the restart has settled: a fresh batch all succeeds
        with RawConn(stack.port) as conn:
            batch = [f"/inspect/final/{i}" for i in range(10)]
            conn.send(b"".join(build_request("GET", t) for t in batch))
            for t in batch:
                resp = conn.read_response()
                assert resp.status == 200 and resp.json()["target"] == t, resp
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        problems += stack.stop()
        backend.kill()
    assert not problems, "\n".join(problems[:20])


def _abort(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_vanishing_mid_upload_and_mid_download(tmp_path):
    stack = Stack(
        tmp_path, top={"keepalive_timeout": "1s"}, route={"upstream_keepalive_timeout": "1s"}
    )
    try:
        base = fd_count(stack.proxy.pid)
        for _ in range(20):
            # upload: the head and part of a 10 MB body, then a reset
            s = socket.create_connection(("127.0.0.1", stack.port))
            s.sendall(
                build_request(
                    "POST",
                    "/echo",
                    headers=[("Content-Length", str(10 << 20))],
                    content_length=False,
                )
                + b"x" * 300_000
            )
            _abort(s)
            # download: read a little of a large body, then a reset
            s = socket.create_connection(("127.0.0.1", stack.port))
            s.sendall(build_request("GET", f"/download?size={100 << 20}"))
            got = 0
            while got < 200_000:
                chunk = s.recv(65536)
                assert chunk
                got += len(chunk)
            _abort(s)
            # and one that closes politely in the middle of the download
            s = socket.create_connection(("127.0.0.1", stack.port))
            s.sendall(build_request("GET", f"/download?size={100 << 20}"))
            assert s.recv(65536)
            s.close()
        with RawConn(stack.port) as conn:
            conn.send(build_request("POST", "/echo", body=payload(100_000)))
            r = conn.read_response()
        assert r.status == 200 and sha256(r.body) == payload_sha256(100_000)
        poll_until(
            lambda: fd_count(stack.proxy.pid) == base, 60, f"the proxy's fds to return to {base}"
        )
        poll_until(
            lambda: stack.stats()["open_connections"] == 0,
            60,
            "the backend connections to be closed",
        )
    finally:
        problems = stack.stop()
    assert not problems, problems


# --------------------------------------------------------------------------- leak check

LEAK_REQUESTS = 10_000
LEAK_CONCURRENCY = 32


async def _read_response(reader: asyncio.StreamReader, head_only: bool = False):
    """A minimal response reader for the load loop: (status, headers, body) or None
    if the connection ended first. Only Content-Length responses are expected."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        n, _, v = line.partition(b":")
        headers[n.strip().lower()] = v.strip()
    n = 0 if head_only else int(headers.get(b"content-length", b"0"))
    try:
        body = await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return status, headers, body


def _abort_writer(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


ATTACK_DATA = [a.data for a in sc.ATTACKS if a.ok_before == 0 and len(a.data) < 4096]
UPLOAD = payload(20_000)


async def _leak_load(port: int, total: int, concurrency: int, seed: int) -> dict:
    rng = random.Random(seed)
    kinds = (
        ["good"] * 30
        + ["good-post"] * 10
        + ["attack"] * 12
        + ["abort-upload"] * 6
        + ["abort-download"] * 6
        + ["partial-head"] * 6
        + ["reset-before"] * 5
        + ["reset-during"] * 5
        + ["garbage"] * 5
        + ["overlong"] * 5
        + ["head-with-body"] * 4
        + ["idle"] * 3
        + ["half-close"] * 3
        + ["no-response"] * 1
    )
    plan = [rng.choice(kinds) for _ in range(total)]
    result = {"good_ok": 0, "good_total": 0, "problems": [], "done": 0}
    queue = list(reversed(plan))

    async def one(kind: str, i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if kind in ("good", "good-post"):
                # a keep-alive connection carrying a few correct requests
                for j in range(3):
                    result["good_total"] += 1
                    target = f"/inspect/g{i}-{j}"
                    if kind == "good":
                        writer.write(build_request("GET", target))
                    else:
                        writer.write(build_request("POST", "/echo", body=UPLOAD))
                    r = await _read_response(reader)
                    if r is None or r[0] != 200:
                        result["problems"].append(f"{kind} {target}: {r and r[:2]}")
                        return
                    if kind == "good" and b'"target": "%s"' % target.encode() not in r[2]:
                        result["problems"].append(f"desync: {target} got {r[2][:100]!r}")
                        return
                    if kind == "good-post" and r[2] != UPLOAD:
                        result["problems"].append(f"echo mismatch on {i}")
                        return
                    result["good_ok"] += 1
            elif kind == "attack":
                writer.write(rng.choice(ATTACK_DATA))
                r = await _read_response(reader)
                if r is None or not 400 <= r[0] < 506:
                    result["problems"].append(f"attack answered {r and r[:2]}")
            elif kind == "abort-upload":
                writer.write(
                    build_request(
                        "POST",
                        "/echo",
                        headers=[("Content-Length", "1000000")],
                        content_length=False,
                    )
                    + UPLOAD
                )
                await writer.drain()
                _abort_writer(writer)
            elif kind == "abort-download":
                writer.write(build_request("GET", "/download?size=10000000"))
                await reader.readexactly(50_000)
                _abort_writer(writer)
            elif kind == "partial-head":
                writer.write(b"GET /inspect HTTP/1.1\r\nHost: exa")
                await writer.drain()
                if rng.random() < 0.5:
                    _abort_writer(writer)
            elif kind == "reset-before":
                writer.write(build_request("GET", "/reset-before"))
                r = await _read_response(reader)
                if r is None or r[0] != 502:
                    result["problems"].append(f"reset-before answered {r and r[:2]}")
            elif kind == "reset-during":
                writer.write(build_request("GET", "/reset-during?size=100000"))
                r = await _read_response(reader)
                if r is not None:
                    result["problems"].append(f"reset-during gave a whole response {r[:2]}")
            elif kind == "garbage":
                writer.write(build_request("GET", "/garbage?kind=conflicting-content-length"))
                r = await _read_response(reader)
                if r is None or r[0] != 502:
                    result["problems"].append(f"garbage answered {r and r[:2]}")
            elif kind in ("overlong", "head-with-body"):
                method = "GET" if kind == "overlong" else "HEAD"
                writer.write(
                    build_request(method, "/" + kind) + build_request("GET", f"/inspect/o{i}")
                )
                r1 = await _read_response(reader, head_only=method == "HEAD")
                r2 = await _read_response(reader)
                body = b"hello" if method == "GET" else b""
                if r1 is None or r1[0] != 200 or r1[2] != body:
                    result["problems"].append(f"{kind}: {r1 and r1[:2]}")
                elif r2 is None or b"/inspect/o%d" % i not in r2[2]:
                    result["problems"].append(f"{kind} then desync: {r2 and r2[2][:100]!r}")
            elif kind == "idle":
                # left open and silent: the proxy closes it at its head timeout
                if await reader.read(1) != b"":
                    result["problems"].append("idle connection got bytes")
            elif kind == "half-close":
                writer.write(build_request("GET", f"/inspect/h{i}"))
                writer.write_eof()
                r = await _read_response(reader)
                if r is None or r[0] != 200:
                    result["problems"].append(f"half-close answered {r and r[:2]}")
            elif kind == "no-response":
                writer.write(build_request("GET", "/no-response"))
                r = await _read_response(reader)
                if r is None or r[0] != 504:
                    result["problems"].append(f"no-response answered {r and r[:2]}")
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            if kind in ("good", "good-post", "half-close", "overlong", "head-with-body"):
                result["problems"].append(f"{kind} {i}: {e!r}")
        finally:
            if kind.startswith("abort"):
                writer.transport.abort()
            else:
                writer.close()
            result["done"] += 1

    async def bounded(kind: str, i: int) -> None:
        try:
            await asyncio.wait_for(one(kind, i), 60)
        except TimeoutError:
            result["problems"].append(f"{kind} {i}: no outcome within 60s")

    waiting: list[asyncio.Task] = []

    async def worker() -> None:
        while queue:
            i = len(queue)
            kind = queue.pop()
            if kind in ("idle", "no-response"):
                # these wait for a proxy timeout: do not hold a worker meanwhile
                waiting.append(asyncio.ensure_future(bounded(kind, i)))
                await asyncio.sleep(0)
                continue
            await bounded(kind, i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.gather(*waiting)
    return result


def test_no_fd_or_memory_leak_after_10000_faulty_requests(tmp_path):
    stack = Stack(
        tmp_path,
        top={"keepalive_timeout": "1s", "client_head_timeout": "2s", "client_body_timeout": "2s"},
        route={
            "upstream_keepalive_timeout": "1s",
            "response_header_timeout": "1s",
            "try_duration": "0s",
        },
    )
    pid = stack.proxy.pid
    try:
        base_fds = fd_count(pid)
        # warm up (pools, buffers, lazily made objects), then measure RSS
        warm = asyncio.run(_leak_load(stack.port, 500, LEAK_CONCURRENCY, seed=1))
        assert not warm["problems"], warm["problems"][:10]
        poll_until(lambda: fd_count(pid) == base_fds, 60, "fds back to baseline after warm-up")
        base_rss = rss_kib(pid)
        result = asyncio.run(_leak_load(stack.port, LEAK_REQUESTS, LEAK_CONCURRENCY, seed=2))
        assert result["done"] == LEAK_REQUESTS
        assert not result["problems"], "\n".join(result["problems"][:20])
        assert result["good_ok"] == result["good_total"] > 0
        poll_until(
            lambda: fd_count(pid) == base_fds,
            60,
            f"the proxy's fds to return to {base_fds} (now {fd_count(pid)})",
        )
        rss = rss_kib(pid)
        print(
            f"\nleak check: {result['done']} requests, {result['good_ok']} correct ones all "
            f"answered; fds {base_fds} -> {base_fds}; RSS {base_rss} -> {rss} KiB"
        )
        assert rss < base_rss + 20 * 1024, f"RSS grew from {base_rss} KiB to {rss} KiB"
    finally:
        problems = stack.stop()
    assert not problems, problems
