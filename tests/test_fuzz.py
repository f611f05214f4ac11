"""Short, bounded fuzzing in the suite (the long runs are the atheris harnesses in fuzz/).

1. ``parse_request_head`` on random bytes and on structured mutations of valid heads
   (smuggling corpus included): only ``HeadError`` may escape; an accepted head obeys
   the framing invariants (RFC 9112 6.3); and when llhttp accepts it too, llhttp has
   the same reading and frames a body the same way.
2. The response framer end to end: a raw upstream sends generated response heads and
   bodies (valid, broken, truncated, with leftovers); the client gets exactly what
   ``http_reference`` says (the response, a 502, or a cut connection), never a
   malformed response or a hang, and the proxy never writes a traceback.
3. The request chunked decoder in process (``decode_chunked``) and end to end: generated
   (and mutated) chunked bodies are read, and reach the backend, exactly as
   ``http_reference`` decodes them, or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools

import http_reference as ref
import pytest
import smuggling_corpus as sc
from fault_support import CLOSE, SEND, RawUpstream, Script, Stack, read_or_cut
from helpers import RawConn, build_request
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
E2E = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def core():
    from fastpause import _core

    return _core


# --------------------------------------------------------------------------- request heads

INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"\x0b",
    b"\x0c",
    b"\x7f",
    b"\x80",
    b"\xff",
    b'"',
    b"\\",
    b"0",
    b"-",
    b"+",
    b"x",
    b"@",
    b"/",
]
METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"PATCH", b"DELETE", b"CONNECT", b"PRI"]
TARGETS = [
    b"/",
    b"/a?b=c",
    b"*",
    b"http://example.test/x",
    b"https://h:8443/",
    b"example.test:443",
    b"//x",
    b"/%0d%0a",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0"]
FIELDS = [
    b"Host: example.test",
    b"Host: other.test",
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: 5, 5",
    b"Content-Length: 007",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: identity",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"TE: trailers",
    b"X-A: b",
    b"X-Empty:",
    b"Cookie: a=b; c=d",
    b"Keep-Alive: timeout=5",
]


def parse_checked(core, data: bytes):
    try:
        result = core.parse_request_head(data)
    except core.HeadError as e:
        assert isinstance(e.status, int) and e.status in (400, 414, 417, 431, 505), e.status
        assert e.reason
        return None
    sc.check_accepted_head(data, result)
    sc.check_framing_value(core, data, result)
    sc.check_head_against_llhttp(data, result)
    return result


@FAST
@given(st.binary(max_size=400))
def test_random_bytes(core, data):
    parse_checked(core, data)
    parse_checked(core, data + b"\r\n\r\n")


@st.composite
def heads(draw):
    line = b" ".join(
        [
            draw(st.sampled_from(METHODS)),
            draw(st.sampled_from(TARGETS)),
            draw(st.sampled_from(VERSIONS)),
        ]
    )
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=6))
    if draw(st.booleans()):
        fields = [b"Host: example.test", *fields]
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


@st.composite
def mutated(draw, base):
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "case", "dup"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "insert":
            data[i:i] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del data[i]
        elif op == "replace":
            data[i : i + 1] = draw(st.sampled_from(INTERESTING))
        elif op == "case":
            data[i : i + 1] = bytes(data[i : i + 1]).swapcase()
        else:
            j = data.find(b"\r\n", i)
            if j > 0:
                start = data.rfind(b"\r\n", 0, i) + 2 if data.rfind(b"\r\n", 0, i) >= 0 else 0
                data[j + 2 : j + 2] = data[start : j + 2]
    return bytes(data)


CORPUS_HEADS = [h for h in (sc.first_head(a.attack) for a in sc.ATTACKS) if h and len(h) < 2000]
CORPUS_HEADS += [sc.first_head(n.data.lstrip(b"\r\n")) for n in sc.NEUTRALIZED]


@FAST
@given(mutated(heads()))
def test_mutated_generated_heads(core, data):
    parse_checked(core, data)


@FAST
@given(mutated(st.sampled_from(CORPUS_HEADS)))
def test_mutated_smuggling_heads(core, data):
    parse_checked(core, data)


# Inputs found by fuzzing (fuzz/ harnesses or hypothesis) stay here as regression tests:
# (kind, input). "head": through parse_request_head and its oracles; "chunked": as a
# chunked request body end to end; "decoder": through the decoder in process.
REGRESSIONS = [
    # a bare LF opening a trailer line was refused only at the line's CRLF (RELIABILITY.md,
    # finding 8)
    ("decoder", b"5\r\nhello\r\n0\r\n\n"),
    # the head harness must cut at the first empty line: "GET s/mu\r\n" + CRLF CRLF
    ("head", b"GET s/mu\r\n\r\n"),
    # obs-text in a trailer value is forwarded as is (the oracle compares latin-1)
    ("chunked", b"5;a=b\r\nhello\r\n0\r\nX-T: \xb8\xb8\xb81\r\n\r\n"),
]


@pytest.mark.parametrize(("kind", "data"), [r for r in REGRESSIONS if r[0] == "head"])
def test_regressions_head(core, kind, data):
    parse_checked(core, data)


@pytest.mark.parametrize(("kind", "data"), [r for r in REGRESSIONS if r[0] == "decoder"])
def test_regressions_decoder(core, kind, data):
    ref.check_decoder(core, data)


@pytest.mark.parametrize(("kind", "data"), [r for r in REGRESSIONS if r[0] == "chunked"])
def test_regressions_chunked(stack, kind, data):
    tag = f"r{next(_counter)}"
    check_chunked_outcome(stack, data, send_chunked_body(stack.port, data, tag), tag)


def test_generated_heads_are_mostly_accepted(core):
    """The generator is not vacuous: plenty of its heads get through the parser."""
    accepted = 0
    for line in itertools.product(METHODS[:3], TARGETS[:2], VERSIONS):
        data = b" ".join(line) + b"\r\nHost: example.test\r\n\r\n"
        if parse_checked(core, data) is not None:
            accepted += 1
    assert accepted >= 10


# --------------------------------------------------------------------------- response framer

_counter = itertools.count()


@pytest.fixture(scope="module")
def raw_stack(tmp_path_factory):
    up = RawUpstream({})
    stack = Stack(
        tmp_path_factory.mktemp("fuzz"),
        route={"response_header_timeout": "10s", "upstream_body_timeout": "10s"},
        upstreams=[up.address],
        with_backend=False,
    )
    yield stack, up
    problems = stack.stop()
    up.close()
    assert not up.errors, up.errors
    assert not problems, "\n".join(problems)


STATUSES = [200, 201, 204, 206, 301, 304, 404, 500, 503, 599]


# trailer lines of generated chunked bodies: fields passed on and fields the proxy drops
TRAILER_LINES = [b"X-T: 1", b"X-Sum: abc ", b'Etag: "x"']
TRAILER_LINES += [b"X_T: 1", b"X-Forwarded-For: 1.2.3.4", b"Authorization: x", b"Connection: close"]


@st.composite
def chunked_bodies(draw, max_chunks: int = 4):
    out = bytearray()
    for _ in range(draw(st.integers(0, max_chunks))):
        data = draw(st.binary(min_size=1, max_size=40))
        size = b"%x" % len(data)
        if draw(st.booleans()):
            size = size.upper() if draw(st.booleans()) else b"00" + size
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b';a="q;\\"x"', b" ;a = b", b";a=b "]))
        out += size + ext + b"\r\n" + data + b"\r\n"
    out += b"0" + draw(st.sampled_from([b"", b";z"])) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from(TRAILER_LINES)) + b"\r\n"
    out += b"\r\n"
    return bytes(out)


@st.composite
def responses(draw):
    status = draw(st.sampled_from(STATUSES))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"caf\xe9"]))
    body = draw(st.binary(max_size=60))
    framing = draw(st.sampled_from(["cl", "chunked", "close", "cl-short", "cl-long", "both"]))
    fields = [draw(st.sampled_from([b"X-A: 1", b"Server: raw", b"Cache-Control: no-store"]))]
    if framing in ("cl", "cl-short", "cl-long"):
        n = len(body) + {"cl": 0, "cl-short": -1, "cl-long": 3}[framing]
        fields.append(b"Content-Length: %d" % max(n, 0))
        payload = body
    elif framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked_bodies())
    elif framing == "both":
        fields += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
        payload = body
    else:
        payload = body
    if draw(st.booleans()):
        fields.append(draw(st.sampled_from([b"Connection: close", b"Connection: keep-alive"])))
    draw(st.randoms()).shuffle(fields)
    status_line = version + b" %d " % status + reason
    if not reason and draw(st.booleans()):
        status_line = status_line[:-1]  # no SP after the code: the proxy must add it
    head = status_line + b"\r\n" + b"".join(f + b"\r\n" for f in fields)
    data = bytearray(head + b"\r\n" + payload)
    if draw(st.integers(0, 3)) == 0:  # a mutation anywhere
        i = draw(st.integers(0, len(data) - 1))
        data[i : i + 1] = draw(st.sampled_from(INTERESTING))
    if draw(st.integers(0, 4)) == 0:
        data += b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
    return bytes(data)


def expected_response(data: bytes, head_request: bool):
    """What the client must get: ("502",), ("cut", prefix), ("full", status, body), or
    ("cut-or-full", status, body)."""
    r = ref.parse_response_head(data, head_request)
    if r.verdict == ref.BAD:
        return ("502",)
    rest = data[r.head_end :]
    if r.framing == "none":
        return ("full", r.status, b"")
    if r.framing == "length":
        if len(rest) < r.length:
            return ("cut", rest)
        return ("full", r.status, rest[: r.length])
    if r.framing == "close":
        return ("full", r.status, rest)
    c = ref.decode_chunked(rest)
    if c.verdict == ref.OK:
        return ("full", r.status, c.body)
    if c.verdict == ref.EITHER:
        return ("cut-or-full", r.status, c.body)
    return ("cut", c.body)


@E2E
@given(data=responses(), head_request=st.booleans())
def test_response_framer_end_to_end(raw_stack, data, head_request):
    stack, up = raw_stack
    r = ref.parse_response_head(data, head_request)
    assume(r.verdict != ref.EITHER)  # interim responses: not generated on purpose
    path = f"/fz/{next(_counter)}"
    up.scripts[path] = Script([(SEND, data), CLOSE])
    method = "HEAD" if head_request else "GET"
    expect = expected_response(data, head_request)
    event(f"expect {expect[0]}")
    with RawConn(stack.port, timeout=30) as conn:
        conn.send(build_request(method, path))
        got = read_or_cut(conn, method)  # a ProtocolViolation (garbage relayed) fails here
        if expect[0] == "502":
            assert got is not None and got.status == 502, (expect, got)
        elif expect[0] == "cut":
            assert got is None, f"a complete response from a broken one: {got!r}"
        elif expect[0] == "full":
            assert got is not None, f"cut, expected {expect}"
            assert got.status == expect[1], (expect, got)
            assert got.body == expect[2], (expect, got)
        else:
            if got is not None:
                assert got.status == expect[1] and got.body == expect[2], (expect, got)
        assert b"smuggled" not in conn.buf
    # the proxy is in sync afterwards
    up.scripts["/ok"] = Script.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with RawConn(stack.port, timeout=30) as conn:
        conn.send(build_request("GET", "/ok"))
        ok = conn.read_response()
        assert ok.status == 200 and ok.body == b"ok", ok


# --------------------------------------------------------------------------- request bodies


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("fuzz-body"), top={"client_body_timeout": "10s"})
    yield s
    problems = s.stop()
    assert not problems, "\n".join(problems)


@st.composite
def mutated_chunked(draw):
    data = bytearray(draw(chunked_bodies()))
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            data[i:i] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del data[i]
        else:
            data[i : i + 1] = draw(st.sampled_from(INTERESTING))
    return bytes(data)


def send_chunked_body(port: int, body: bytes, tag: str):
    """POST ``body`` as a chunked request body, then half-close; the response or None."""
    head = (
        f"POST /inspect/{tag} HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    import socket

    with RawConn(port, timeout=30) as conn:
        try:
            conn.send(head + body)
            conn.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_or_cut(conn, "POST")


def check_chunked_outcome(stack, body: bytes, resp, tag: str) -> None:
    c = ref.decode_chunked(body)
    with contextlib.suppress(InvalidArgument):  # outside a hypothesis test (regressions)
        event(f"reference {c.verdict}, proxy {resp.status if resp else 'closed'}")
    if resp is not None and resp.status == 200:
        assert c.verdict in (ref.OK, ref.EITHER), (
            f"accepted a chunked body the reference refuses ({c.why}): {body!r}"
        )
        info = resp.json()
        assert info["target"] == f"/inspect/{tag}"
        assert info["body_sha256"] == hashlib.sha256(c.body).hexdigest(), (body, info)
        got_trailers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in info["trailers"]]
        assert got_trailers == c.trailers, (body, info)
        return
    assert c.verdict != ref.OK, f"refused a valid chunked body: {body!r} -> {resp!r}"
    if resp is not None:
        assert resp.status == 400, resp
        assert resp.closes


@FAST
@given(body=mutated_chunked())
def test_chunked_decoder_in_process(core, body):
    """The decoder itself reads every body as the reference does: same data, same end,
    same chunk sizes (what it still awaits), fed at once or a byte at a time."""
    ref.check_decoder(core, body)


@E2E
@given(body=mutated_chunked())
def test_request_chunked_decoder_end_to_end(stack, body):
    before = stack.stats()["completed"]
    tag = f"c{next(_counter)}"
    resp = send_chunked_body(stack.port, body, tag)
    check_chunked_outcome(stack, body, resp, tag)
    if resp is None or resp.status != 200:
        assert stack.stats()["completed"] == before, f"the backend got a complete request: {body!r}"
