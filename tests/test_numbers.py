"""The number audit (issue 17): every number the core parses, against a big-integer
reference, in process and end to end.

Fields (RELIABILITY.md, "Numbers", has the table): Content-Length in requests and
responses, chunk sizes both ways, the response status code, the HTTP versions of
requests and responses, and ports (Host, absolute-form, CONNECT), which the core only
skips. The reference is ``http_reference`` (Python integers: ``int(s, 10)`` /
``int(s, 16)``, no width) with the documented limits: a Content-Length below 10^18, a
chunk size below 2^60, leading zeros free.

1. Hypothesis properties through the core's diagnostic entry points
   (``request_framing``, ``parse_request_head``, ``parse_response_head``,
   ``decode_chunked``): the core accepts exactly what the reference accepts, with the
   same value, at the boundaries of ``number_corpus`` and at random values up to 2^70,
   with and without leading zeros.
2. End to end, the response side at every boundary: what a client gets through the
   proxy from a raw upstream (the proxy re-writes Content-Length from the value it
   parsed, so the client sees that value). The request side end to end is the desync
   harness (``test_desync.py``), fed with ``number_corpus.request_streams()``.
3. Ports end to end: any number of digits routes by the host name alone.
"""

from __future__ import annotations

import contextlib

import http_reference as ref
import number_corpus as nc
import pytest
from fault_support import CLOSE, SEND, RawUpstream, Script, Stack
from helpers import RawConn, build_request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

PROPS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

VALUES = st.one_of(st.sampled_from(nc.BOUNDARIES), st.integers(0, 2**70))
ZEROS = st.one_of(st.sampled_from(nc.ZEROS), st.integers(0, 64))
DIGITS = st.builds(nc.dec, VALUES, ZEROS) | st.text("0123456789", min_size=1, max_size=6).map(
    str.encode
)
OWS = st.sampled_from([b"", b" ", b"\t", b" \t "])


@pytest.fixture(scope="module")
def core():
    from fastpause import _core

    return _core


def post_head(*fields: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a.test\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


# --------------------------------------------------------------------------- Content-Length


def core_request_length(core, head: bytes) -> int | None:
    """The length the core frames the request body with, None when it refuses (400)."""
    try:
        framing, length = core.request_framing(head)
    except core.HeadError as e:
        assert e.status == 400, (e.status, e.reason)
        return None
    assert framing == ("length" if length > 0 else "none"), (framing, length)
    return length


@PROPS
@given(v=VALUES, z=ZEROS, ows=OWS)
@example(v=2**63, z=0, ows=b"").via("issue 17: 2^63")
@example(v=2**64 + 5, z=30, ows=b"").via("a 64-bit wrap reads 5")
@example(v=nc.SMALL, z=4000, ows=b"").via("zeros are free")
def test_request_content_length_is_the_big_integer_value(core, v, z, ows):
    digits = nc.dec(v, z)
    got = core_request_length(core, post_head(b"Content-Length: " + ows + digits + ows))
    assert got == ref.content_length([digits]), digits


@PROPS
@given(a=DIGITS, b=DIGITS, one_line=st.booleans())
def test_content_length_lists_agree_by_value(core, a, b, one_line):
    """``5, 005`` is one length (RFC 9110 8.6); values that differ by any amount,
    a wrap included, are refused."""
    fields = (
        [b"Content-Length: " + a + b", " + b]
        if one_line
        else [
            b"Content-Length: " + a,
            b"Content-Length: " + b,
        ]
    )
    assert core_request_length(core, post_head(*fields)) == ref.content_length([a, b])


@PROPS
@given(v=VALUES, z=ZEROS)
@example(v=2**64 + 5, z=0)
def test_response_content_length_is_the_big_integer_value(core, v, z):
    digits = nc.dec(v, z)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: " + digits + b"\r\n\r\n"
    want = ref.content_length([digits])
    try:
        _, status, framing, length, _ = core.parse_response_head(head)
    except core.HeadError as e:
        assert want is None, (digits, e.reason)
        assert e.status == 502
        return
    assert (status, length) == (200, want), digits
    assert framing == ("length" if want else "none")
    r = ref.parse_response_head(head)
    assert r.verdict == ref.OK and r.length == want


# --------------------------------------------------------------------------- chunk sizes


@PROPS
@given(
    v=VALUES,
    z=ZEROS,
    upper=st.booleans(),
    piece=st.sampled_from([0, 1, 3]),
)
@example(v=2**63, z=0, upper=False, piece=0).via("issue 17: 2^63")
@example(v=2**63 + 15, z=30, upper=True, piece=1).via("issue 17: 2^63 + 15, zeros")
@example(v=2**64 + 5, z=0, upper=False, piece=0).via("a 64-bit wrap reads 5")
@example(v=ref.MAX_CHUNK_SIZE, z=4080, upper=False, piece=0).via("zeros are free")
def test_chunk_size_is_the_big_integer_value(core, v, z, upper, piece):
    """After ``<size> CRLF`` and up to 3 data bytes, the decoder waits for exactly
    ``size - 3`` more (a size of 0 ends the body), fed at once or a byte at a time."""
    size = nc.hexa(v, z)
    size = size.upper() if upper else size
    want = ref.chunk_size(size)
    data = size + b"\r\n" + (b"\r\n" if v == 0 else b"xyz"[: min(v, 3)])
    try:
        body, _, end, waiting = core.decode_chunked(data, piece)
    except ValueError as e:
        assert want is None, (size, str(e))
        assert str(e) == "chunk size too large"
        return
    assert want is not None, f"accepted {size!r}, over the limit"
    if want == 0:
        assert (body, end) == (b"", len(data))
    else:
        assert end == -1 and body == b"xyz"[: min(want, 3)]
        assert waiting == want - min(want, 3), (size, waiting)


def test_chunk_size_line_limit_counts_leading_zeros(core):
    """Zeros cost nothing towards the value, but the 4 KiB line limit still holds
    (the reference agrees)."""
    for zeros, ok in ((4094, True), (4095, False)):
        data = nc.hexa(nc.SMALL, zeros) + b"\r\nhello\r\n0\r\n\r\n"
        assert (ref.decode_chunked(data).verdict == ref.OK) is ok
        if ok:
            assert core.decode_chunked(data)[0] == b"hello"
        else:
            with pytest.raises(ValueError, match="chunk size line too long"):
                core.decode_chunked(data)


# --------------------------------------------------------------------------- status, versions


@PROPS
@given(code=DIGITS)
@example(code=b"101").via("the one the reference refuses for the exchange")
@example(code=b"200").via("plain")
@example(code=b"0200").via("a leading zero makes four digits")
@example(code=b"4294967496").via("2^32 + 200")
def test_status_code_is_three_digits_at_least_100(core, code):
    head = b"HTTP/1.1 " + code + b" X\r\nContent-Length: 0\r\n\r\n"
    r = ref.parse_response_head(head)
    try:
        _, status, _, _, _ = core.parse_response_head(head)
    except core.HeadError as e:
        assert r.verdict == ref.BAD, (code, e.reason)
        return
    # the reference refuses a 101 for the exchange (no upgrade was asked), not for its
    # digits: for it only the number is compared
    assert r.verdict != ref.BAD or r.status == 101, code
    assert status == r.status == int(code), code


@PROPS
@given(major=DIGITS, minor=DIGITS)
@example(major=b"1", minor=b"1").via("plain")
@example(major=b"01", minor=b"1").via("a leading zero")
@example(major=b"4294967297", minor=b"1").via("2^32 + 1")
def test_request_version_is_digit_dot_digit(core, major, minor):
    """HTTP/1.0 and HTTP/1.1 only; another well-formed version (one digit each) is
    505, anything longer is malformed (400); the reference reads the same."""
    head = b"GET / HTTP/" + major + b"." + minor + b"\r\nHost: a.test\r\n\r\n"
    split = ref.split_requests(head)
    try:
        _, _, version, _ = core.parse_request_head(head)
    except core.HeadError as e:
        assert split.stop == ref.REFUSED, (head, e.reason)
        assert e.status == (505 if len(major) == len(minor) == 1 else 400), (head, e.status)
        return
    assert [r.version for r in split.requests] == [tuple(version)], head


@PROPS
@given(major=DIGITS, minor=DIGITS)
def test_response_version_is_one_dot_digit(core, major, minor):
    head = b"HTTP/" + major + b"." + minor + b" 200 OK\r\nContent-Length: 0\r\n\r\n"
    r = ref.parse_response_head(head)
    try:
        version, _, _, _, _ = core.parse_response_head(head)
    except core.HeadError:
        assert r.verdict == ref.BAD, head
        return
    assert r.verdict == ref.OK, head
    assert version == (1, 0 if minor == b"0" else 1), head


# --------------------------------------------------------------------------- ports


@PROPS
@given(port=DIGITS | st.just(b""))
def test_ports_are_not_numbers_to_the_core(core, port):
    """A port is ``*DIGIT`` (RFC 3986 3.2.3): the core never converts it, so no length
    of it can overflow anything; Host, absolute-form and CONNECT accept them all."""
    for head in (
        b"GET / HTTP/1.1\r\nHost: a.test:" + port + b"\r\n\r\n",
        b"GET http://a.test:" + port + b"/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ):
        assert core.parse_request_head(head)[0] == b"GET"
        assert [r.method for r in ref.split_requests(head).requests] == [b"GET"]
    if port:
        connect = b"CONNECT a.test:" + port + b" HTTP/1.1\r\nHost: a.test\r\n\r\n"
        assert core.parse_request_head(connect)[1] == b"a.test:" + port


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def raw_stack(tmp_path_factory):
    up = RawUpstream({})
    stack = Stack(
        tmp_path_factory.mktemp("numbers"),
        route={"hosts": ["example.test"], "response_header_timeout": "10s"},
        upstreams=[up.address],
        with_backend=False,
    )
    yield stack, up
    problems = stack.stop()
    up.close()
    assert not up.errors, up.errors
    assert not problems, "\n".join(problems)


def relayed(port: int, target: str, host: str = "example.test") -> tuple[bytes, bytes]:
    """(head, rest) of all the client gets for one request (with Connection: close)
    until the proxy ends the connection, by a FIN or a reset."""
    data = bytearray()
    with RawConn(port) as conn:
        conn.send(build_request("GET", target, [("Connection", "close")], host=host))
        with contextlib.suppress(ConnectionResetError):
            while piece := conn.sock.recv(65536):
                data += piece
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    return head, rest


def field(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        if n.lower() == name:
            return v.strip()
    return None


@pytest.mark.parametrize(
    ("v", "z"), [(v, z) for v in nc.BOUNDARIES for z in nc.ZEROS], ids=lambda x: str(x)
)
def test_response_content_length_boundaries_end_to_end(raw_stack, v, z):
    """502 over the limit; otherwise the client sees the parsed value (no zeros) as
    the Content-Length, the body bytes that fit it, and a cut connection when the
    upstream sent fewer."""
    stack, up = raw_stack
    target = f"/cl/{v}/{z}"
    up.scripts[target] = Script([(SEND, nc.cl_response(nc.dec(v, z))), CLOSE])
    head, rest = relayed(stack.port, target)
    want = ref.content_length([nc.dec(v, z)])
    if want is None:
        assert head.startswith(b"HTTP/1.1 502 "), head
        return
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert field(head, b"content-length") == b"%d" % want, head
    assert rest == nc.BODY[:want], rest


@pytest.mark.parametrize(
    ("v", "z"), [(v, z) for v in nc.BOUNDARIES for z in nc.ZEROS], ids=lambda x: str(x)
)
def test_response_chunk_size_boundaries_end_to_end(raw_stack, v, z):
    """The upstream's first chunk says ``size`` and carries b"hello", then the last
    chunk, then it closes. The client gets the body re-chunked: exactly b"hello" when
    the size is 5; the bytes after the size line as data (as many as the size says,
    all 12 at most), then a cut, when it is larger (within the limit); a cut with no
    data over the limit (never a wrap to a small size)."""
    stack, up = raw_stack
    target = f"/chunk/{v}/{z}"
    up.scripts[target] = Script([(SEND, nc.chunked_response(nc.hexa(v, z))), CLOSE])
    head, rest = relayed(stack.port, target)
    assert head.startswith(b"HTTP/1.1 200 "), head
    got = ref.decode_chunked(rest)
    want = ref.chunk_size(nc.hexa(v, z))
    if want == nc.SMALL:
        assert (got.verdict, got.body) == (ref.OK, nc.BODY), got
        return
    assert got.verdict == ref.INCOMPLETE, f"a complete body from size {v:#x}: {got}"
    if want is None:
        assert got.body == b"", got
    elif want > nc.SMALL:
        assert got.body == (nc.BODY + b"\r\n0\r\n\r\n")[:want], got
    else:
        assert nc.BODY[:want].startswith(got.body), got


@pytest.mark.parametrize("z", nc.ZEROS)
@pytest.mark.parametrize("v", nc.BOUNDARIES)
def test_any_port_routes_by_host_name(raw_stack, v, z):
    """The route matches ``example.test`` whatever digits follow the colon; another
    name with the same port matches nothing."""
    stack, up = raw_stack
    port = nc.dec(v, z).decode()
    head, _ = relayed(stack.port, f"/port/{v}/{z}", host=f"example.test:{port}")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert up.count(f"/port/{v}/{z}") == 1
    head, _ = relayed(stack.port, f"/port/{v}/{z}", host=f"other.test:{port}")
    assert head.startswith(b"HTTP/1.1 404 "), head
