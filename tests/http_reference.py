"""Reference readers for the fuzz and desync oracles: what RFC 9112 (plus fastpause's
documented limits) says a chunked body, an upstream response, a number field or a
stream of pipelined requests means.

Written from the RFC grammar, independently of the Cython code. Each reader returns a
verdict: ``OK`` (exactly one reading), ``BAD`` (invalid: must be rejected),
``INCOMPLETE`` (valid so far, more bytes needed), or ``EITHER`` for the few inputs
where fastpause's documented choice and the strict grammar part ways without any
ambiguity of framing (then both outcomes are fine, but an accepted message must
still have the one reading computed here).

No pytest or fastpause imports: the atheris harnesses in ``fuzz/`` use it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OK = "ok"
BAD = "bad"
INCOMPLETE = "incomplete"
EITHER = "either"

TCHAR = set(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
OWS = set(b" \t")
VCHAR_OBS = set(range(0x21, 0x7F)) | set(range(0x80, 0x100))
FIELD_VALUE_CHARS = VCHAR_OBS | OWS
QDTEXT = (
    {0x09, 0x20, 0x21} | set(range(0x23, 0x5C)) | set(range(0x5D, 0x7F)) | set(range(0x80, 0x100))
)

MAX_CHUNK_LINE = 4096  # bytes of a chunk size line, its CR included
# the documented number limits (RELIABILITY.md, "Numbers"): values above are refused;
# leading zeros keep the value and count only towards the line limits
MAX_CONTENT_LENGTH = 10**18 - 1
MAX_CHUNK_SIZE = 2**60 - 1
MAX_TRAILER_BYTES = 16384  # counts every trailer line, dropped ones too
FORBIDDEN_TRAILERS = {b"content-length", b"transfer-encoding", b"host"}
# Trailer fields a proxy must not pass on (README, "Trailers"; RFC 9110 6.5.1): read,
# checked and dropped. Names with '_' and every X-Forwarded-* are dropped too.
DROPPED_TRAILERS = {
    # hop-by-hop, and what the proxy itself writes or acts on
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade", b"trailer",
    b"expect", b"x-request-id",
    # forwarding
    b"forwarded", b"x-real-ip", b"via", b"max-forwards",
    # authentication and state
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"authentication-info", b"proxy-authentication-info", b"cookie", b"set-cookie",
    # request modifiers
    b"cache-control", b"pragma", b"range", b"if-match", b"if-none-match",
    b"if-modified-since", b"if-unmodified-since", b"if-range",
    # response control data
    b"age", b"expires", b"date", b"location", b"retry-after", b"vary", b"warning",
    # content format
    b"content-type", b"content-encoding", b"content-range", b"content-language",
    b"content-location",
}  # fmt: skip


def trailer_forwarded(name: bytes) -> bool:
    low = name.lower()
    return not (low in DROPPED_TRAILERS or low.startswith(b"x-forwarded-") or b"_" in low)


def decimal(digits: bytes) -> int:
    """The value of ``1*DIGIT``, however many leading zeros (Python's int() refuses
    strings over 4,300 digits; a 32 KiB head can hold more zeros than that)."""
    return int(digits.lstrip(b"0") or b"0")


def content_length(elements: list[bytes]) -> int | None:
    """The length that Content-Length list elements (OWS stripped, from every field line)
    give, or None: an element that is not ``1*DIGIT`` (an empty one included: fastpause
    guesses nothing), elements that differ (RFC 9110 8.6), or a value over the limit."""
    if not all(v.isdigit() for v in elements):
        return None
    values = {decimal(v) for v in elements}
    if len(values) != 1:
        return None
    (n,) = values
    return n if n <= MAX_CONTENT_LENGTH else None


def chunk_size(digits: bytes) -> int | None:
    """The value of a chunk size (``1*HEXDIG``), or None over the limit."""
    n = int(digits, 16)  # base 16 has no digit cap in Python
    return n if n <= MAX_CHUNK_SIZE else None


@dataclass
class Chunked:
    verdict: str
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)  # those forwarded
    end: int = 0  # index just after the message (OK / EITHER)
    why: str = ""
    waiting: int | None = None  # INCOMPLETE in chunk data: its bytes still to come


def _chunk_ext_ok(ext: bytes) -> str:
    """Validate ``chunk-ext`` (what follows the size on its line): OK, BAD or EITHER."""
    i, n = 0, len(ext)
    lenient = False
    while i < n:
        while i < n and ext[i] in OWS:
            i += 1
        if i == n:
            # whitespace at the end of the line: allowed after a value, not after a size or
            # a name (fastpause's choice); the grammar allows BWS only before ';' or '='
            return BAD
        if ext[i] != 0x3B:
            return BAD
        i += 1
        while i < n and ext[i] in OWS:
            i += 1
        s = i
        while i < n and ext[i] in TCHAR:
            i += 1
        if i == s:
            return BAD
        j = i
        while j < n and ext[j] in OWS:
            j += 1
        if j < n and ext[j] == 0x3D:
            i = j + 1
            while i < n and ext[i] in OWS:
                i += 1
            if i < n and ext[i] == 0x22:
                i += 1
                while True:
                    if i >= n:
                        return BAD
                    c = ext[i]
                    if c == 0x22:
                        i += 1
                        break
                    if c == 0x5C:
                        if i + 1 >= n or ext[i + 1] not in FIELD_VALUE_CHARS:
                            return BAD
                        i += 2
                        continue
                    if c not in QDTEXT:
                        return BAD
                    i += 1
            else:
                s = i
                while i < n and ext[i] in TCHAR:
                    i += 1
                if i == s:
                    return BAD
            k = i
            while k < n and ext[k] in OWS:
                k += 1
            if k == n and k > i:
                lenient = True  # "a=b " before CRLF: fastpause accepts, the grammar does not
                i = k
        else:
            if j == n and j > i:
                return BAD  # "a " before CRLF
            i = j if j < n and ext[j] == 0x3B else i
    return EITHER if lenient else OK


def _field_line(line: bytes) -> tuple[bytes, bytes] | None:
    """A field line (without CRLF) per RFC 9112 5: (name, value) or None if invalid."""
    if not line or line[0] in OWS:
        return None
    name, sep, value = line.partition(b":")
    if not sep or not name or any(c not in TCHAR for c in name):
        return None
    if any(c not in FIELD_VALUE_CHARS for c in value):
        return None
    return name, value.strip(b" \t")


def decode_chunked(data: bytes, pos: int = 0) -> Chunked:
    """Decode a chunked body starting at ``pos``; stops at the end of the message."""
    body = bytearray()
    n = len(data)
    lenient = False
    while True:
        eol = data.find(b"\r\n", pos)
        line_end = n if eol < 0 else eol
        line = data[pos:line_end]
        # bare CR / LF anywhere in the size line
        if b"\n" in line or b"\r" in line[:-1] or (eol < 0 and b"\r" in line[:-1]):
            return Chunked(BAD, why="bare CR/LF in chunk size line")
        if eol < 0:
            # an unfinished size line: fastpause may already see it is invalid (400) or
            # wait for more; both refuse the message, which is all the oracles need
            return Chunked(INCOMPLETE, bytes(body))
        if len(line) + 1 > MAX_CHUNK_LINE:
            return Chunked(BAD, why="chunk size line too long")
        m = re.match(rb"[0-9a-fA-F]+", line)
        if not m:
            return Chunked(BAD, why="invalid chunk size")
        size = chunk_size(m.group(0))
        if size is None:
            return Chunked(BAD, why="chunk size too large")
        ext = _chunk_ext_ok(line[m.end() :])
        if ext == BAD:
            return Chunked(BAD, why="invalid chunk extension")
        lenient = lenient or ext == EITHER
        pos = eol + 2
        if size == 0:
            break
        if n - pos < size:
            return Chunked(INCOMPLETE, bytes(body + data[pos:n]), waiting=size - (n - pos))
        body += data[pos : pos + size]
        pos += size
        if n - pos < 2:
            if data[pos:n] not in (b"", b"\r"):
                return Chunked(BAD, why="chunk data not followed by CRLF")
            return Chunked(INCOMPLETE, bytes(body), waiting=0)
        if data[pos : pos + 2] != b"\r\n":
            return Chunked(BAD, why="chunk data not followed by CRLF")
        pos += 2
    trailers: list[tuple[bytes, bytes]] = []
    total = 0
    while True:
        eol = data.find(b"\r\n", pos)
        line = data[pos : n if eol < 0 else eol]
        if b"\n" in line or b"\r" in line[:-1]:
            return Chunked(BAD, why="bare CR/LF in trailer section")
        if eol < 0:
            return Chunked(INCOMPLETE, bytes(body))
        if not line:
            pos = eol + 2
            break
        total += len(line) + 2
        f = _field_line(line)
        if f is None:
            return Chunked(BAD, why="invalid trailer field")
        if f[0].lower() in FORBIDDEN_TRAILERS:
            return Chunked(BAD, why="framing or routing field in trailers")
        if abs(total - MAX_TRAILER_BYTES) <= 4:
            lenient = True
        elif total > MAX_TRAILER_BYTES:
            return Chunked(BAD, why="trailer section too large")
        if trailer_forwarded(f[0]):
            trailers.append(f)
        pos = eol + 2
    return Chunked(EITHER if lenient else OK, bytes(body), trailers, pos)


def check_decoder(core, data: bytes) -> None:
    """Oracle: fastpause's decoder (``core.decode_chunked``, the compiled module passed
    in), fed at once and a byte at a time, reads ``data`` as ``decode_chunked`` does:
    the same body and end, the same chunk size (the data bytes it still awaits), or a
    refusal of what is not valid."""
    c = decode_chunked(data)
    for piece in (0, 1):
        try:
            body, _, end, waiting = core.decode_chunked(data, piece)
        except ValueError as e:
            assert c.verdict != OK, f"the decoder refused a valid body ({e}): {data!r}"
            continue
        if end >= 0:
            assert c.verdict in (OK, EITHER), f"decoded what the reference does not ({c}): {data!r}"
            assert (body, end) == (c.body, c.end), f"decoded {body!r} to {end}, not {c}: {data!r}"
        else:
            assert c.verdict in (INCOMPLETE, EITHER), f"waits for more, reference {c}: {data!r}"
            assert body == c.body, f"decoded {body!r} so far, reference {c}: {data!r}"
            if c.verdict == INCOMPLETE and c.waiting is not None:
                assert waiting == c.waiting, f"awaits {waiting} bytes, reference {c}: {data!r}"


# --------------------------------------------------------------------------- responses


@dataclass
class Response:
    verdict: str  # OK / BAD (head invalid: 502) / EITHER
    status: int = 0
    framing: str = ""  # "none" | "length" | "chunked" | "close"
    length: int = 0
    head_end: int = 0
    why: str = ""


_STATUS = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})( [\t \x21-\x7e\x80-\xff]*)?\Z")


def parse_response_head(data: bytes, head_request: bool = False) -> Response:
    """Judge an upstream response head (and its framing) as fastpause must."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return Response(BAD, why="no complete head (the upstream closed)")
    head = data[: end + 4]
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        return Response(BAD, why="bare CR or LF")
    lines = head[:-4].split(b"\r\n")
    m = _STATUS.match(lines[0])
    if not m:
        return Response(BAD, why="status line")
    status = int(m.group(1))
    if status < 100:
        return Response(BAD, why="status below 100")
    # a status line without the SP after the code is still one reading (the proxy sends
    # the SP itself: RFC 9112 4)
    cls: list[bytes] = []
    tes: list[bytes] = []
    for line in lines[1:]:
        f = _field_line(line)
        if f is None:
            return Response(BAD, why=f"field line {line[:40]!r}")
        name = f[0].lower()
        if name == b"content-length":
            cls += [v.strip(b" \t") for v in f[1].split(b",")]
        elif name == b"transfer-encoding":
            tes += [v.strip(b" \t").lower() for v in f[1].split(b",") if v.strip(b" \t")]
    length = content_length(cls)
    if cls and length is None:
        return Response(BAD, why="Content-Length")
    had_te_field = any(line.lower().startswith(b"transfer-encoding:") for line in lines[1:])
    if had_te_field and lines[0].startswith(b"HTTP/1.0"):
        return Response(BAD, why="RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing")
    if had_te_field and (tes != [b"chunked"]):
        return Response(BAD, why="Transfer-Encoding other than one chunked")
    if had_te_field and cls:
        return Response(BAD, why="Content-Length with Transfer-Encoding")
    r = Response(OK, status=status, head_end=end + 4)
    if 100 <= status < 200:
        r.verdict = BAD if status == 101 else EITHER  # interim: generators avoid these
        return r
    if head_request or status in (204, 304):
        r.framing = "none"
    elif had_te_field:
        r.framing = "chunked"
    elif cls:
        r.framing = "length"
        r.length = length
        if r.length == 0:
            r.framing = "none"
    else:
        r.framing = "close"
    return r


# --------------------------------------------------------------------------- request streams

END = "end"  # every byte was read: the stream ended between requests
CLOSED = "close"  # a request ended the connection (Connection: close, HTTP/1.0, CONNECT)
REFUSED = "refused"  # the next message is invalid: nothing from it on may be forwarded


@dataclass
class Request:
    method: bytes
    target: bytes  # as it reaches an origin server (origin-form; RFC 9112 3.2.1-3.2.2)
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]
    body: bytes
    end: int  # index just after the message


@dataclass
class Split:
    """A stream of requests on one connection, as a strict reader splits it."""

    requests: list[Request]  # the complete requests, in order
    stop: str  # END, CLOSED, REFUSED or INCOMPLETE (the stream ends inside a message)
    why: str = ""


_REQUEST_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\Z"
)
_AUTHORITY = re.compile(rb"(?i)https?://[^/?#]*")


def _origin_target(target: bytes) -> bytes:
    """What a proxy sends an origin for ``target``: absolute-form loses its scheme and
    authority (an empty path becomes "/"); origin- and asterisk-form stay."""
    m = _AUTHORITY.match(target)
    if m is None:
        return target
    path = target[m.end() :]
    return path if path.startswith(b"/") else b"/" + path


def _framing(version: tuple[int, int], fields: list[tuple[bytes, bytes]]) -> tuple | str:
    """RFC 9112 6.3 for a request: ("chunked",) or ("length", n), or why it is refused."""
    te = [v for n, v in fields if n.lower() == b"transfer-encoding"]
    cls = [
        e.strip(b" \t") for n, v in fields if n.lower() == b"content-length" for e in v.split(b",")
    ]
    if te:
        if version == (1, 0):
            return "Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1: faulty framing)"
        if cls:
            return "Content-Length with Transfer-Encoding (RFC 9112 6.3)"
        codings = [c.strip(b" \t") for v in te for c in v.split(b",") if c.strip(b" \t")]
        names = [c.split(b";")[0].rstrip(b" \t").lower() for c in codings]
        if not names or any(not n or any(c not in TCHAR for c in n) for n in names):
            return "invalid transfer coding"
        if names[-1] != b"chunked" or names.count(b"chunked") != 1:
            return "chunked is not the final coding, applied once (RFC 9112 6.3, 7)"
        return ("chunked",)
    if cls:
        n = content_length(cls)
        return "invalid Content-Length" if n is None else ("length", n)
    return ("length", 0)


def _keeps_open(method: bytes, version: tuple[int, int], fields: list[tuple[bytes, bytes]]) -> bool:
    options = {
        o.strip(b" \t").lower()
        for n, v in fields
        if n.lower() == b"connection"
        for o in v.split(b",")
    }
    if method == b"CONNECT" or b"close" in options:
        return False  # after CONNECT the connection is a tunnel, no more HTTP
    return version == (1, 1) or b"keep-alive" in options


def split_requests(data: bytes) -> Split:
    """Split a client's byte stream into requests (RFC 9112 2.2, 3, 5, 6.3, 7.1).

    Strict on everything that decides where a message ends (line ends, framing
    fields, chunked syntax, the documented limits), lenient on what does not (the
    target's form, Host's value, methods, expectations): a proxy may refuse more,
    but must never split a stream differently.
    """
    requests: list[Request] = []
    pos, n = 0, len(data)
    while True:
        while data.startswith(b"\r\n", pos):  # empty lines before a request line
            pos += 2
        if pos == n:
            return Split(requests, END)
        end = data.find(b"\r\n\r\n", pos)
        flat = data[pos : n if end < 0 else end + 2].replace(b"\r\n", b"")
        if b"\n" in flat or b"\r" in (flat[:-1] if end < 0 else flat):  # a CR may await its LF
            return Split(requests, REFUSED, "bare CR or LF in a head")
        if end < 0:
            return Split(requests, INCOMPLETE, "the stream ends inside a head")
        lines = data[pos:end].split(b"\r\n")
        m = _REQUEST_LINE.match(lines[0])
        if m is None:
            return Split(requests, REFUSED, f"request line {lines[0][:60]!r}")
        method, target = m.group(1), m.group(2)
        version = (int(m.group(3)), int(m.group(4)))
        if version not in ((1, 0), (1, 1)):
            return Split(requests, REFUSED, f"HTTP/{version[0]}.{version[1]}")
        fields = [_field_line(line) for line in lines[1:]]
        if None in fields:
            return Split(requests, REFUSED, "invalid field line")
        hosts = sum(1 for name, _ in fields if name.lower() == b"host")
        if hosts > 1 or (hosts == 0 and version == (1, 1)):
            return Split(requests, REFUSED, "not exactly one Host (RFC 9112 3.2)")
        framing = _framing(version, fields)
        if isinstance(framing, str):
            return Split(requests, REFUSED, framing)
        pos = end + 4
        if framing[0] == "chunked":
            c = decode_chunked(data, pos)
            if c.verdict == BAD:
                return Split(requests, REFUSED, f"chunked body: {c.why}")
            if c.verdict == INCOMPLETE:
                return Split(requests, INCOMPLETE, "the stream ends inside a chunked body")
            body, pos = c.body, c.end
        else:
            if n - pos < framing[1]:
                return Split(requests, INCOMPLETE, "the stream ends inside a body")
            body, pos = data[pos : pos + framing[1]], pos + framing[1]
        requests.append(Request(method, _origin_target(target), version, fields, body, pos))
        if not _keeps_open(method, version, fields):
            return Split(requests, CLOSED)


# --------------------------------------------------------------------------- paths

_UNRESERVED = re.compile(rb"[A-Za-z0-9\-._~]")
_DOTS = (b".", b"..")


def _decoded_dots(segment: bytes) -> bytes:
    return re.sub(rb"%2[eE]", b".", segment)


def _hides_dots(segment: bytes) -> bool:
    pieces = re.split(rb"\\|%5[cC]|%2[fF]", segment)
    return any(_decoded_dots(p.split(b";")[0]) in _DOTS for p in pieces)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4, as written there (input and output buffers)."""
    inp, out = path, b""
    while inp:
        if inp.startswith(b"../"):
            inp = inp[3:]
        elif inp.startswith(b"./"):
            inp = inp[2:]
        elif inp.startswith(b"/./") or inp == b"/.":
            inp = b"/" + inp[3:]
        elif inp.startswith(b"/../") or inp == b"/..":
            inp = b"/" + inp[4:]
            out = out[: max(out.rfind(b"/"), 0)]
        elif inp in _DOTS:
            inp = b""
        else:
            end = inp.find(b"/", 1)
            segment = inp if end < 0 else inp[:end]
            out += segment
            inp = inp[len(segment) :]
    return out


def _pct(match: re.Match) -> bytes:
    byte = bytes([int(match.group(1), 16)])
    return byte if _UNRESERVED.fullmatch(byte) else b"%" + match.group(1).upper()


def normal_target(target: bytes) -> bytes | None:
    """The RFC 3986 normal form of an origin-form target's path (dot segments removed,
    ``%2e`` read as a dot, unreserved characters decoded, hex in uppercase; the query
    untouched) that the proxy routes on and forwards, or None where it refuses the path
    (README, Routing)."""
    path, mark, query = target.partition(b"?")
    if re.search(rb"%(?![0-9A-Fa-f]{2})", path):
        return None
    segments = path.split(b"/")[1:]
    if any(_decoded_dots(s) not in _DOTS and _hides_dots(s) for s in segments):
        return None
    # a sentinel segment first: climbing above the root removes it
    sentinel = b"/\x00"
    resolved = _remove_dot_segments(sentinel + _decoded_dots(path))
    if not (resolved == sentinel or resolved.startswith(sentinel + b"/")):
        return None
    resolved = resolved[len(sentinel) :] or b"/"
    return re.sub(rb"%([0-9A-Fa-f]{2})", _pct, resolved) + mark + query
