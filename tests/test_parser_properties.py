"""Property tests for fastpause's request-head parser, with llhttp as oracle.

* Valid heads are generated from the RFC 9112 grammar; fastpause must return
  exactly what was generated, and llhttp must agree (for the methods llhttp
  knows: it rejects other tokens, see LOOSER_THAN_LLHTTP in parser_corpus.py).
* Mutated / fuzzed heads: fastpause raises nothing but HeadError, never accepts
  a head with a bare CR, bare LF or NUL, every accepted head satisfies the
  framing invariants (single Host, no CL+TE, chunked last, ...), and whenever
  fastpause and llhttp both accept, they return the same parse.
"""

from __future__ import annotations

import re

import parser_corpus as pc
import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st
from parser_corpus import REJECT_STATUSES

OWS = b" \t"
# Names with field-specific rules; the generator adds them deliberately.
FRAMING_NAMES = {b"host", b"content-length", b"transfer-encoding", b"expect"}

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def core():
    try:
        from fastpause import _core
    except ImportError as exc:  # pragma: no cover - depends on the build
        pytest.fail(f"fastpause._core is not built/installed: {exc!r}")
    return _core


# ---------------------------------------------------------------------------
# Grammar strategies
# ---------------------------------------------------------------------------

ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DIGIT = b"0123456789"
HEXDIG = b"0123456789ABCDEFabcdef"
UNRESERVED = ALPHA + DIGIT + b"-._~"
SUB_DELIMS = b"!$&'()*+,;="
PCHAR_SINGLE = UNRESERVED + SUB_DELIMS + b":@"


def _byte(alphabet: bytes):
    return st.sampled_from(alphabet).map(lambda c: bytes([c]))


def _join(parts):
    return b"".join(parts)


def _holds_dot_segment(segment: bytes) -> bool:
    """Whether a segment is, or hides, a dot segment (the parser refuses a path whose
    dots climb above the root, or hidden behind %2F, %5C or a ';' parameter; see
    test_request_path.py): split at %2F/%5C, cut at ';', %2e read as '.'."""
    pieces = re.split(rb"%2[fF]|%5[cC]", segment)
    return any(p.split(b";")[0].lower().replace(b"%2e", b".") in (b".", b"..") for p in pieces)


tokens = st.lists(_byte(pc.TCHAR), min_size=1, max_size=16).map(_join)
pct_encoded = st.tuples(_byte(HEXDIG), _byte(HEXDIG)).map(lambda t: b"%" + t[0] + t[1])
pchar = st.one_of(_byte(PCHAR_SINGLE), pct_encoded)
# no dot segments: what the parser does with them has its own tests
segment = st.lists(pchar, max_size=10).map(_join).filter(lambda s: not _holds_dot_segment(s))
query = st.lists(st.one_of(pchar, _byte(b"/?")), max_size=16).map(_join)
absolute_path = st.lists(segment, min_size=1, max_size=5).map(lambda s: b"/" + b"/".join(s))


@st.composite
def origin_form(draw):
    target = draw(absolute_path)
    if draw(st.booleans()):
        target += b"?" + draw(query)
    return target


label = st.lists(_byte(ALPHA.lower() + DIGIT), min_size=1, max_size=8).map(_join)
hostname = st.lists(label, min_size=1, max_size=3).map(lambda ls: b".".join(ls))
port = st.integers(1, 65535).map(lambda p: b"%d" % p)


@st.composite
def authority(draw):
    host = draw(hostname)
    if draw(st.booleans()):
        host += b":" + draw(port)
    return host


@st.composite
def absolute_form(draw):
    scheme = draw(st.sampled_from([b"http", b"https", b"HTTP", b"HTTPS", b"Http", b"hTtPs"]))
    target = scheme + b"://" + draw(authority())
    target += _join(b"/" + s for s in draw(st.lists(segment, max_size=4)))
    if draw(st.booleans()):
        target += b"?" + draw(query)
    return target


ows = st.lists(_byte(OWS), max_size=3).map(_join)
field_char = st.one_of(_byte(pc.VCHAR), _byte(pc.VCHAR), _byte(pc.OBS_TEXT), _byte(OWS))
# field-value = *field-content; leading/trailing OWS is not part of the value.
field_value = st.lists(field_char, max_size=40).map(lambda cs: _join(cs).strip(OWS))
field_name = tokens.filter(lambda n: n.lower() not in FRAMING_NAMES)

known_methods = st.sampled_from(pc.LLHTTP_METHODS)


@st.composite
def valid_heads(draw, methods=None):
    """(data, expected parse) for a valid head built from the grammar."""
    method = draw(methods if methods is not None else st.one_of(known_methods, tokens))
    if method == b"CONNECT":  # needs authority-form: not generated here
        method = b"GET"
    if method == b"OPTIONS" and draw(st.integers(0, 3)) == 0:
        target = b"*"
    elif draw(st.integers(0, 4)) == 0:
        target = draw(absolute_form())
    else:
        target = draw(origin_form())
    minor = draw(st.sampled_from([0, 1]))

    fields = []  # (name, value, left_ows, right_ows)
    for name, value in draw(st.lists(st.tuples(field_name, field_value), max_size=12)):
        fields.append((name, value, draw(ows), draw(ows)))

    extra = []
    if minor == 1 or draw(st.booleans()):
        host_name = draw(st.sampled_from([b"Host", b"host", b"HOST", b"hOsT"]))
        host_value = draw(st.one_of(authority(), st.just(b"")))
        extra.append((host_name, host_value, draw(ows), draw(ows)))
    framing = draw(st.sampled_from(["none", "cl", "te"] if minor == 1 else ["none", "cl"]))
    if framing == "cl":
        digits = draw(st.text("0123456789", min_size=1, max_size=18)).encode()
        name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
        extra.append((name, digits, draw(ows), draw(ows)))
    elif framing == "te":
        value = draw(st.sampled_from([b"chunked", b"CHUNKED", b"gzip, chunked", b"gzip,chunked"]))
        name = draw(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]))
        # llhttp rejects "chunked<HTAB>" (see LOOSER_THAN_LLHTTP): trailing SP only here.
        right = draw(st.lists(st.just(b" "), max_size=2).map(_join))
        extra.append((name, value, draw(ows), right))
    for item in extra:
        fields.insert(draw(st.integers(0, len(fields))), item)

    lines = [name + b":" + left + value + right for name, value, left, right in fields]
    data = pc.head(method + b" " + target + b" HTTP/1.%d" % minor, *lines)
    expected = (method, target, (1, minor), [(n, v) for n, v, _, _ in fields])
    return data, expected


split_points = st.lists(st.integers(1, 400), max_size=3)


# ---------------------------------------------------------------------------
# Invariants every accepted head must satisfy
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CL_ELEMENT_RE = re.compile(rb"[0-9]{1,18}")


def check_accepted(data: bytes, result, max_uri_size=8192, max_headers=100, max_head_size=32768):
    """Everything that must hold when fastpause accepts ``data`` (one head)."""
    method, target, version, headers = result
    assert data.endswith(b"\r\n\r\n") and data.find(b"\r\n\r\n") == len(data) - 4
    assert len(data) <= max_head_size
    assert b"\x00" not in data, "accepted a head containing NUL"
    assert re.search(rb"(?<!\r)\n", data) is None, "accepted a head with a bare LF"
    assert re.search(rb"\r(?!\n)", data) is None, "accepted a head with a bare CR"

    lines = data[:-4].split(b"\r\n")
    assert version in ((1, 0), (1, 1))
    assert _TOKEN_RE.fullmatch(method), method
    assert lines[0] == method + b" " + target + b" HTTP/%d.%d" % version
    assert 0 < len(target) <= max_uri_size
    assert all(0x21 <= c <= 0x7E for c in target), target
    if target == b"*":
        assert method == b"OPTIONS"
    elif not target.startswith(b"/"):
        low = target.lower()
        assert low.startswith((b"http://", b"https://")) or method == b"CONNECT", target

    # One returned field per field line (no obs-fold, nothing dropped/added).
    assert len(headers) == len(lines) - 1 <= max_headers
    for line, (name, value) in zip(lines[1:], headers, strict=True):
        assert _TOKEN_RE.fullmatch(name), name
        assert line.startswith(name + b":"), (line, name)
        assert line[len(name) + 1 :].strip(OWS) == value, (line, value)
        assert value == value.strip(OWS)
        assert all(c >= 0x20 or c == 0x09 for c in value) and 0x7F not in value, value

    def values(field):
        return [v for n, v in headers if n.lower() == field]

    hosts = values(b"host")
    assert len(hosts) <= 1, "accepted more than one Host"
    if version == (1, 1):
        assert len(hosts) == 1, "accepted HTTP/1.1 without Host"
    cls = values(b"content-length")
    tes = values(b"transfer-encoding")
    lengths = set()
    for v in cls:
        for element in v.split(b","):
            element = element.strip(OWS)
            assert _CL_ELEMENT_RE.fullmatch(element), f"accepted Content-Length {v!r}"
            lengths.add(int(element))
    assert len(lengths) <= 1, f"accepted conflicting Content-Length {cls!r}"
    if tes:
        assert not cls, "accepted Transfer-Encoding together with Content-Length"
        assert version == (1, 1), "accepted Transfer-Encoding in HTTP/1.0"
        # Empty list elements are ignored (RFC 9110 5.6.1).
        codings = [c.strip(OWS).lower() for v in tes for c in v.split(b",")]
        codings = [c for c in codings if c]
        assert codings, f"accepted empty Transfer-Encoding {tes!r}"
        for c in codings:
            assert _TOKEN_RE.fullmatch(c.split(b";")[0].strip(OWS)), f"accepted coding {c!r}"
        assert codings[-1] == b"chunked", f"accepted Transfer-Encoding {tes!r}"
        assert codings.count(b"chunked") == 1, f"accepted chunked twice: {tes!r}"


def check_any(core, data: bytes):
    """Run fastpause on arbitrary bytes; return its (checked) outcome."""
    out = pc.fastpause_parse(core, data)  # anything but HeadError propagates
    if out[0] == "reject":
        _, status, reason = out
        assert type(status) is int and status in REJECT_STATUSES, (data, status, reason)
        assert isinstance(reason, str) and reason
        return out
    end = data.find(b"\r\n\r\n")
    assert end != -1, f"accepted input without CRLF CRLF: {data!r}"
    if end + 4 != len(data):
        # Bytes after the head are outside the contract ("pass exactly the
        # head"); the only acceptable acceptance is the parse of the head alone.
        assert out == pc.fastpause_parse(core, data[: end + 4]), data
        return out
    check_accepted(data, out[1])
    return out


def check_differential(core, data: bytes, chunks=None):
    fp = check_any(core, data)
    end = data.find(b"\r\n\r\n")
    if end == -1 or end + 4 != len(data):
        return
    ll = pc.llhttp_parse(data, chunks)
    note(f"fastpause={fp!r}")
    note(f"llhttp={ll!r}")
    if fp[0] == "accept" and ll[0] == "accept":
        assert fp[1] == ll[1], f"both accept {data!r} with different results"


# ---------------------------------------------------------------------------
# (a)+(b) generated valid heads
# ---------------------------------------------------------------------------


@SETTINGS
@given(valid_heads(methods=known_methods), split_points)
def test_llhttp_accepts_generated_heads(case, chunks):
    """Validates the generator against the oracle (runs without the core)."""
    data, expected = case
    assert pc.llhttp_parse(data, chunks) == ("accept", expected)


@SETTINGS
@given(valid_heads(), split_points)
def test_generated_valid_heads(core, case, chunks):
    data, expected = case
    fp = pc.fastpause_parse(core, data)
    assert fp == ("accept", expected), f"input {data!r}"
    check_accepted(data, fp[1])
    if expected[0] in pc.LLHTTP_METHODS:
        assert pc.llhttp_parse(data, chunks) == ("accept", expected)


@SETTINGS
@given(valid_heads(), st.integers(0, 2))
def test_generated_heads_respect_limits(core, case, slack):
    """Limits set exactly at the head's size pass; one below is rejected."""
    data, expected = case
    target, n_fields = expected[1], len(expected[3])
    exact = {"max_head_size": len(data), "max_uri_size": len(target), "max_headers": n_fields}
    assert pc.fastpause_parse(core, data, **exact) == ("accept", expected)
    limits = {k: v + slack for k, v in exact.items()}
    assert pc.fastpause_parse(core, data, **limits) == ("accept", expected)
    for key, status in (("max_head_size", 431), ("max_uri_size", 414), ("max_headers", 431)):
        if exact[key] == 0:
            continue
        out = pc.fastpause_parse(core, data, **{key: exact[key] - 1})
        assert out[:2] == ("reject", status), (key, out, data)


# ---------------------------------------------------------------------------
# Every byte value at every place of the block scanners (16 bytes a step on
# x86-64, 8 for values elsewhere): each byte is classified exactly as the RFC says
# whether it falls in a block, at a block's edge or in the byte-by-byte tail.
# ---------------------------------------------------------------------------

TCHAR = set(ALPHA + DIGIT + b"!#$%&'*+-.^_`|~")
SCAN_OFFSETS = (0, 1, 7, 8, 15, 16, 17, 31, 32, 38)
LONG_RUN = 40


def _head_with_field(name: bytes, value: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": " + value + b"\r\n\r\n"


def _one_field(core, data):
    _method, _target, _version, headers = core.parse_request_head(data)
    assert headers[0] == (b"Host", b"a")
    assert len(headers) == 2
    return headers[1]


@pytest.mark.parametrize("offset", SCAN_OFFSETS)
def test_every_byte_in_a_field_name(core, offset):
    for b in range(256):
        name = bytearray(b"n" * LONG_RUN)
        name[offset] = b
        data = _head_with_field(bytes(name), b"v")
        if b in TCHAR:
            assert _one_field(core, data) == (bytes(name), b"v"), (offset, b)
        elif b == 0x3A and offset > 0:  # the name ends at the first colon
            rest = bytes(name[offset + 1 :]) + b": v"
            assert _one_field(core, data) == (bytes(name[:offset]), rest), (offset, b)
        else:
            with pytest.raises(core.HeadError) as err:
                core.parse_request_head(data)
            assert err.value.status == 400, (offset, b)


@pytest.mark.parametrize("offset", SCAN_OFFSETS)
def test_every_byte_in_a_field_value(core, offset):
    for b in range(256):
        value = bytearray(b"v" * LONG_RUN)
        value[offset] = b
        data = _head_with_field(b"X-Long", bytes(value))
        if (b >= 0x20 and b != 0x7F) or b == 0x09:
            expected = bytes(value).strip(b" \t")
            assert _one_field(core, data) == (b"X-Long", expected), (offset, b)
        else:
            with pytest.raises(core.HeadError) as err:
                core.parse_request_head(data)
            assert err.value.status == 400, (offset, b)


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------

MUTATION_BYTES = [b"\r", b"\n", b"\x00", b" ", b":", b"\x7f", b"\x80"]


@st.composite
def mutated_heads(draw):
    data, _ = draw(valid_heads())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "insert", "dup_line", "del_cr"]))
        if op == "insert":
            pos = draw(st.integers(0, len(data)))
            data = data[:pos] + draw(st.sampled_from(MUTATION_BYTES)) + data[pos:]
        elif op == "dup_line":
            parts = data.split(b"\r\n")
            candidates = [i for i, p in enumerate(parts) if p]
            if candidates:
                i = draw(st.sampled_from(candidates))
                parts.insert(i, parts[i])
                data = b"\r\n".join(parts)
        else:
            crs = [i for i, c in enumerate(data) if c == 0x0D]
            if crs:
                pos = draw(st.sampled_from(crs))
                data = data[:pos] + data[pos + 1 :]
    return data


@SETTINGS
@given(mutated_heads(), split_points)
@example(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", [])
@example(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", [])
@example(b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", [])
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x00", [])
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\n", [])
def test_mutated_heads(core, data, chunks):
    check_differential(core, data, chunks)


# ---------------------------------------------------------------------------
# Framing fuzz (CL / TE / Host combinations) and raw bytes
# ---------------------------------------------------------------------------

CL_VALUES = [
    b"5",
    b"05",
    b"6",
    b"0",
    b"+5",
    b"-5",
    b"5, 5",
    b"5,5",
    b"5, 6",
    b" 5 ",
    b"5\t",
    b"",
    b"1" * 18,
    b"1" * 19,
    b"0x5",
    b"5 5",
    b"99999999999999999999",
    b"5,",
    b",5",
    b"5;",
]
TE_VALUES = [
    b"chunked",
    b"CHUNKED",
    b"Chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"chunked, chunked",
    b"xchunked",
    b"chunkedx",
    b"identity",
    b"gzip",
    b"",
    b"chunked ",
    b" chunked",
    b"chunked\t",
    b'"chunked"',
    b"chunked;a=b",
    b",chunked",
    b"chunked,",
    b"chunked\x0b",
    b"ch unked",
]
HOST_VALUES = [b"example.com", b"", b"a:80", b"b.example"]


@st.composite
def framing_heads(draw):
    minor = draw(st.sampled_from([0, 1]))
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT"]))
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["cl", "te", "host", "other"]))
        if kind == "cl":
            name = draw(st.sampled_from([b"Content-Length", b"content-length"]))
            value = draw(st.sampled_from(CL_VALUES))
        elif kind == "te":
            name = draw(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]))
            value = draw(st.sampled_from(TE_VALUES))
        elif kind == "host":
            name = draw(st.sampled_from([b"Host", b"host"]))
            value = draw(st.sampled_from(HOST_VALUES))
        else:
            name, value = b"X-Other", b"1"
        sep = draw(st.sampled_from([b":", b": ", b":\t", b" :", b": \t"]))
        lines.append(name + sep + value)
    return pc.head(method + b" /f HTTP/1.%d" % minor, *lines)


@SETTINGS
@given(framing_heads())
def test_framing_fuzz(core, data):
    check_differential(core, data)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes(core, data):
    check_any(core, data)


@SETTINGS
@given(st.binary(max_size=120), st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.0\r\n"]))
def test_random_field_section(core, junk, request_line):
    data = request_line + junk + b"\r\n\r\n"
    assume(data.find(b"\r\n\r\n") == len(data) - 4)
    check_differential(core, data)
