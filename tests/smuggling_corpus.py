"""Request-smuggling corpus for ``test_smuggling.py`` (and the fuzz harness seeds).

Written for fastpause from the public request-smuggling literature (Watchfire's
2005 paper, James Kettle's "HTTP Desync Attacks" 2019 and "Browser-Powered Desync"
2022, the TE.TE obfuscation lists of the Burp/PortSwigger Academy, Bishop Fox's h2c
smuggling, the chunk-extension and LF-only chunk findings of 2023-2024, integer
wrap-around in Content-Length / chunk sizes). No payload was copied: every one is
built here from the technique's description, aimed at the test backend.

Every smuggling attempt carries a second request to ``SMUGGLED_PATH``; the backend
must never see that path (``/__stats`` paths), whatever the outcome.

Three tables:

* ``ATTACKS``: must be rejected. ``status`` is the status fastpause answers, with
  ``Connection: close`` and the connection closed. ``stage`` says where the problem
  is: ``head`` (nothing of that request may reach the backend) or ``body`` (a
  chunked body that is broken after a valid head: the head may have been forwarded,
  but the backend never receives a complete request). ``ok_before`` valid GETs
  pipelined in front of the attack must be answered 200 first.
* ``NEUTRALIZED``: look like attacks but have exactly one reading under RFC 9112;
  they must be forwarded with that reading (the backend's ``/inspect`` shows the
  body length and digest it received) and the connection stays usable (unless the
  request itself asked to close).
* ``STRICTER_THAN_LLHTTP`` / ``LLHTTP_ACCEPTS_BODY``: the deliberate strictness
  differences against httptools (llhttp, strict defaults) on this corpus, each with
  the reason. ``test_smuggling.py`` checks the sets are exact, so they stay true.
"""

# ruff: noqa: E501  (payload tables read best one case per line)
from __future__ import annotations

import dataclasses
import hashlib

import httptools
from http_reference import MAX_CONTENT_LENGTH, decimal

HOST = b"example.test"
H = b"Host: " + HOST + b"\r\n"
SMUGGLED_PATH = "/smuggled"
SMUGGLED = b"GET " + SMUGGLED_PATH.encode() + b" HTTP/1.1\r\n" + H + b"\r\n"
# a POST prefix that, if it became a request, would swallow the victim's next request
SMUGGLED_PREFIX = (
    b"POST " + SMUGGLED_PATH.encode() + b" HTTP/1.1\r\n" + H + b"Content-Length: 400\r\n\r\nx="
)
GOOD = b"GET /inspect HTTP/1.1\r\n" + H + b"\r\n"

HEAD_STAGE = "head"
BODY_STAGE = "body"


@dataclasses.dataclass(frozen=True)
class Attack:
    id: str
    attack: bytes  # the ambiguous request (and what follows it)
    status: int = 400
    stage: str = HEAD_STAGE
    lead: bytes = b""  # valid requests pipelined in front, each answered 200 first
    ok_before: int = 0  # how many requests ``lead`` holds
    note: str = ""

    @property
    def data(self) -> bytes:
        return self.lead + self.attack


@dataclasses.dataclass(frozen=True)
class Neutral:
    id: str
    data: bytes
    body: bytes  # what the backend must receive as the body of the one request
    keeps: bool = True  # the client connection stays open for another request
    absent: tuple[str, ...] = ()  # field names (lowercase) the backend must not receive
    note: str = ""


def req(line: bytes, *fields: bytes, body: bytes = b"", host: bool = True) -> bytes:
    """A request: request line, optional Host, the given field lines, then ``body``."""
    out = line + b"\r\n" + (H if host else b"")
    for f in fields:
        out += f + b"\r\n"
    return out + b"\r\n" + body


def post(*fields: bytes, body: bytes = b"", target: bytes = b"/echo") -> bytes:
    return req(b"POST " + target + b" HTTP/1.1", *fields, body=body)


def get(*fields: bytes, body: bytes = b"", target: bytes = b"/inspect") -> bytes:
    return req(b"GET " + target + b" HTTP/1.1", *fields, body=body)


def cl(n: int | bytes) -> bytes:
    return b"Content-Length: " + (str(n).encode() if isinstance(n, int) else n)


TE = b"Transfer-Encoding: chunked"
# a chunked body that ends, followed by a whole smuggled request
CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED
# the TE.CL classic: a chunk whose data is the smuggled request
SMUGGLED_CHUNK = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"


def cl_te(te_line: bytes, *, cl_first: bool = True, extra: tuple = ()) -> bytes:
    """CL.TE / TE.CL: both framings, the body read one way smuggles a request."""
    body = CHUNKED_THEN_SMUGGLED if cl_first else SMUGGLED_CHUNK
    length = cl(len(body) if cl_first else 4)
    fields = (length, te_line) if cl_first else (te_line, length)
    return post(*extra, *fields, body=body)


def te_only(*te_lines: bytes, body: bytes = SMUGGLED_CHUNK) -> bytes:
    return post(*te_lines, body=body)


def chunked_body(body: bytes, target: bytes = b"/echo") -> bytes:
    """A valid chunked head followed by ``body`` (which is broken somewhere)."""
    return post(TE, body=body, target=target)


def cl_value(value: bytes, body: bytes = SMUGGLED) -> bytes:
    return post(b"Content-Length: " + value, body=body)


_A = Attack

# fmt: off
ATTACKS: list[Attack] = [
    # ---------------------------------------------------------------- CL.TE and TE.CL
    _A("cl-te", cl_te(TE), note="Watchfire/Kettle CL.TE: front uses CL, back uses TE"),
    _A("te-cl", cl_te(TE, cl_first=False), note="TE.CL: front uses TE, back uses CL"),
    _A("cl-te-lowercase-names", post(b"content-length: %d" % len(CHUNKED_THEN_SMUGGLED),
       b"transfer-encoding: chunked", body=CHUNKED_THEN_SMUGGLED)),
    _A("cl-te-uppercase", post(b"CONTENT-LENGTH: %d" % len(CHUNKED_THEN_SMUGGLED),
       b"TRANSFER-ENCODING: CHUNKED", body=CHUNKED_THEN_SMUGGLED)),
    _A("cl-te-mixed-case", post(b"Content-length: %d" % len(CHUNKED_THEN_SMUGGLED),
       b"Transfer-encoding: Chunked", body=CHUNKED_THEN_SMUGGLED)),
    _A("cl0-te", post(cl(0), TE, body=SMUGGLED_CHUNK), note="CL.0 with TE"),
    _A("te-cl0", post(TE, cl(0), body=SMUGGLED_CHUNK)),
    _A("cl-te-get", get(cl(len(CHUNKED_THEN_SMUGGLED)), TE, body=CHUNKED_THEN_SMUGGLED)),
    _A("cl-te-http10", req(b"POST /echo HTTP/1.0", cl(len(CHUNKED_THEN_SMUGGLED)), TE,
       body=CHUNKED_THEN_SMUGGLED)),
    _A("cl-te-identity", post(b"Transfer-Encoding: identity", cl(len(SMUGGLED)), body=SMUGGLED)),
    _A("cl-te-gzip-chunked", cl_te(b"Transfer-Encoding: gzip, chunked")),
    _A("cl-list-te", post(b"Content-Length: 5, 5", TE, body=SMUGGLED_CHUNK)),
    _A("cl-dup-te", post(cl(5), cl(5), TE, body=SMUGGLED_CHUNK)),
    _A("cl-te-split-identity-chunked", post(b"Transfer-Encoding: identity", TE,
       cl(len(CHUNKED_THEN_SMUGGLED)), body=CHUNKED_THEN_SMUGGLED)),
    _A("cl-te-far-apart", post(cl(len(CHUNKED_THEN_SMUGGLED)),
       *(b"X-Pad-%d: %s" % (i, b"p" * 40) for i in range(30)), TE, body=CHUNKED_THEN_SMUGGLED)),
    # ---------------------------------------------------------------- TE.TE obfuscation
    _A("te-xchunked-cl", cl_te(b"Transfer-Encoding: xchunked")),
    _A("te-chunkedx-cl", cl_te(b"Transfer-Encoding: chunkedx")),
    _A("te-chunk-cl", cl_te(b"Transfer-Encoding: chunk")),
    _A("te-space-before-colon-cl", cl_te(b"Transfer-Encoding : chunked")),
    _A("te-tab-before-colon-cl", cl_te(b"Transfer-Encoding\t: chunked")),
    _A("te-leading-space-value-cl", cl_te(b"Transfer-Encoding:  chunked")),
    _A("te-tab-value-cl", cl_te(b"Transfer-Encoding:\tchunked")),
    _A("te-trailing-space-cl", cl_te(b"Transfer-Encoding: chunked ")),
    _A("te-trailing-tab-cl", cl_te(b"Transfer-Encoding: chunked\t")),
    _A("te-vtab-cl", cl_te(b"Transfer-Encoding: \x0bchunked")),
    _A("te-formfeed-cl", cl_te(b"Transfer-Encoding: \x0cchunked")),
    _A("te-vtab-no-cl", te_only(b"Transfer-Encoding: \x0bchunked")),
    _A("te-double-quoted", te_only(b'Transfer-Encoding: "chunked"')),
    _A("te-single-quoted", te_only(b"Transfer-Encoding: 'chunked'")),
    _A("te-chunked-identity", te_only(b"Transfer-Encoding: chunked, identity")),
    _A("te-chunked-twice-one-line", te_only(b"Transfer-Encoding: chunked, chunked")),
    _A("te-chunked-twice-two-lines", te_only(TE, TE)),
    _A("te-chunked-then-x-lines", te_only(TE, b"Transfer-Encoding: x")),
    _A("te-dup-with-cl", cl_te(TE, extra=(TE,))),
    _A("te-obs-fold-name", cl_te(b"X-Foo: bar\r\n Transfer-Encoding: chunked"),
       note="TE hidden in a header continuation"),
    _A("te-obs-fold-value", cl_te(b"Transfer-Encoding:\r\n chunked")),
    _A("te-obs-fold-tab-value", te_only(b"Transfer-Encoding: x\r\n\tchunked")),
    _A("te-name-nul", cl_te(b"Transfer-Encoding\x00: chunked")),
    _A("te-value-nul", cl_te(b"Transfer-Encoding: chunked\x00")),
    _A("te-after-bare-cr", cl_te(b"X-Foo: bar\rTransfer-Encoding: chunked")),
    _A("te-after-bare-lf", cl_te(b"X-Foo: bar\nTransfer-Encoding: chunked")),
    _A("te-value-bare-lf", cl_te(b"Transfer-Encoding:\nchunked")),
    _A("te-first-line-leading-space", req(b"POST /echo HTTP/1.1", b" Transfer-Encoding: chunked",
       cl(len(CHUNKED_THEN_SMUGGLED)), body=CHUNKED_THEN_SMUGGLED, host=False)),
    _A("te-parameter", te_only(b"Transfer-Encoding: chunked;q=1")),
    _A("te-zero-width-space", te_only(b"Transfer-Encoding: \xe2\x80\x8bchunked")),
    _A("te-empty-value", te_only(b"Transfer-Encoding:")),
    _A("te-comma-only", te_only(b"Transfer-Encoding: ,")),
    _A("te-identity-only", te_only(b"Transfer-Encoding: identity", body=SMUGGLED)),
    _A("te-chunked-http10", req(b"POST /echo HTTP/1.0", TE, body=SMUGGLED_CHUNK, host=False)),
    _A("te-chunked-http10-keepalive", req(b"POST /echo HTTP/1.0", b"Connection: keep-alive", TE,
       body=CHUNKED_THEN_SMUGGLED)),
    # ---------------------------------------------------------------- Content-Length
    _A("cl-plus", cl_value(b"+%d" % len(SMUGGLED))),
    _A("cl-minus", cl_value(b"-1")),
    _A("cl-minus-zero", cl_value(b"-0")),
    _A("cl-hex", cl_value(b"0x%x" % len(SMUGGLED))),
    _A("cl-decimal-point", cl_value(b"%d.0" % len(SMUGGLED))),
    _A("cl-exponent", cl_value(b"4e1")),
    _A("cl-inner-space", cl_value(b"1 0")),
    _A("cl-inner-tab", cl_value(b"1\t0")),
    _A("cl-two-different", post(cl(0), cl(len(SMUGGLED)), body=SMUGGLED)),
    _A("cl-two-different-reversed", post(cl(len(SMUGGLED)), cl(0), body=SMUGGLED)),
    _A("cl-list-different", cl_value(b"0, %d" % len(SMUGGLED))),
    _A("cl-list-trailing-comma", cl_value(b"%d," % len(SMUGGLED))),
    _A("cl-list-leading-comma", cl_value(b",%d" % len(SMUGGLED))),
    _A("cl-list-empty-middle", cl_value(b"0,,0")),
    _A("cl-overflow-2p63", cl_value(b"9223372036854775808")),
    _A("cl-overflow-wraps-to-small", cl_value(b"18446744073709551616"),
       note="2**64: a 64-bit wrap reads 0 and the body becomes a request"),
    _A("cl-19-digits", cl_value(b"1000000000000000000")),
    _A("cl-2p63-leading-zeros", cl_value(b"0" * 30 + b"9223372036854775808")),
    _A("cl-2p64-plus-len", cl_value(b"%d" % (2**64 + len(SMUGGLED))),
       note="2**64 + n: a 64-bit wrap reads n and forwards the smuggled request as the body"),
    _A("cl-empty", cl_value(b"")),
    _A("cl-arabic-indic-digit", cl_value("\u0665".encode())),
    _A("cl-fullwidth-digit", cl_value("\uff15".encode())),
    _A("cl-nul", cl_value(b"0\x00")),
    _A("cl-vtab", cl_value(b"\x0b0")),
    _A("cl-quoted", cl_value(b'"0"')),
    _A("cl-space-before-colon", post(b"Content-Length : 0", body=SMUGGLED)),
    _A("cl-obs-fold", post(b"Content-Length:\r\n 0", body=SMUGGLED)),
    _A("cl-bare-cr", post(b"Content-Length: 0\r5", body=SMUGGLED)),
    _A("cl-one-empty-one-set", post(cl(0), b"Content-Length:", body=SMUGGLED)),
    # ---------------------------------------------------------------- header injection
    _A("value-bare-cr-injects-cl", get(b"X-A: a\rContent-Length: %d" % len(SMUGGLED), body=SMUGGLED)),
    _A("value-bare-lf-injects-cl", get(b"X-A: a\nContent-Length: %d" % len(SMUGGLED), body=SMUGGLED)),
    _A("value-nul", get(b"X-A: a\x00Content-Length: 5")),
    _A("name-nul", get(b"Content-Length\x00X: 0", body=SMUGGLED)),
    _A("name-del", get(b"X-A\x7f: 1")),
    _A("name-high-bit", get(b"X-\xff: 1")),
    _A("name-slash", get(b"X/A: 1")),
    _A("name-at", get(b"X@A: 1")),
    _A("name-brace", get(b"X{A}: 1")),
    _A("name-quote", get(b'X"A: 1')),
    _A("name-empty", get(b": 1")),
    _A("value-esc", get(b"X-A: \x1b]8;;http://evil/\x1b\\")),
    _A("whitespace-only-line", get(b"X-A: 1", b"   ")),
    _A("request-line-as-header", get(SMUGGLED.split(b"\r\n")[0])),
    _A("target-bare-cr", req(b"GET /inspect\rX-Injected: 1 HTTP/1.1")),
    _A("target-bare-lf", req(b"GET /inspect\nHost: evil.test HTTP/1.1")),
    _A("target-nul", req(b"GET /inspect\x00/smuggled HTTP/1.1")),
    _A("target-tab", req(b"GET /inspect\t/smuggled HTTP/1.1")),
    _A("target-del", req(b"GET /insp\x7fect HTTP/1.1")),
    _A("target-utf8", req(b"GET /caf\xc3\xa9 HTTP/1.1")),
    _A("target-two-versions", req(b"GET /inspect HTTP/1.1 " + SMUGGLED_PATH.encode() + b" HTTP/1.1")),
    # ---------------------------------------------------------------- absolute-form and Host
    _A("abs-userinfo", req(b"GET http://evil.test@example.test/inspect HTTP/1.1")),
    _A("abs-userinfo-port", req(b"GET http://example.test:80@evil.test/inspect HTTP/1.1")),
    _A("abs-backslash", req(b"GET http://evil.test\\@example.test/inspect HTTP/1.1")),
    _A("abs-empty-host", req(b"GET http:///inspect HTTP/1.1")),
    _A("abs-ftp", req(b"GET ftp://example.test/inspect HTTP/1.1")),
    _A("abs-one-slash", req(b"GET http:/inspect HTTP/1.1")),
    _A("abs-javascript", req(b"GET javascript:alert(1) HTTP/1.1")),
    _A("abs-missing-host-field", req(b"GET http://example.test/inspect HTTP/1.1", host=False)),
    _A("abs-two-host-fields", req(b"GET http://example.test/inspect HTTP/1.1", b"Host: evil.test")),
    _A("host-two", get(b"Host: evil.test")),
    _A("host-two-case", get(b"HOST: evil.test")),
    _A("host-two-same", get(H[:-2])),
    _A("host-userinfo", req(b"GET /inspect HTTP/1.1", b"Host: evil.test@example.test", host=False)),
    _A("host-slash", req(b"GET /inspect HTTP/1.1", b"Host: example.test/evil", host=False)),
    _A("host-list", req(b"GET /inspect HTTP/1.1", b"Host: example.test, evil.test", host=False)),
    _A("host-tab-inside", req(b"GET /inspect HTTP/1.1", b"Host: example\t.test", host=False)),
    _A("host-backslash", req(b"GET /inspect HTTP/1.1", b"Host: evil.test\\example.test", host=False)),
    _A("host-nul", req(b"GET /inspect HTTP/1.1", b"Host: example.test\x00evil", host=False)),
    _A("host-obs-fold", req(b"GET /inspect HTTP/1.1", b"Host: example.test\r\n evil.test", host=False)),
    _A("host-missing-http11", req(b"GET /inspect HTTP/1.1", b"X-A: 1", host=False)),
    _A("host-space-before-colon", req(b"GET /inspect HTTP/1.1", b"Host : evil.test", host=False)),
    _A("host-too-long", req(b"GET /inspect HTTP/1.1", b"Host: " + b"a" * 246 + b".evil.test", host=False),
       note="over 255 bytes: a name cut for routing would not be the one forwarded"),
    _A("host-colon-inside", req(b"GET /inspect HTTP/1.1", b"Host: evil.test:x.example.test", host=False)),
    _A("host-port-not-digits", req(b"GET /inspect HTTP/1.1", b"Host: example.test:80x", host=False)),
    _A("host-literal-then-name", req(b"GET /inspect HTTP/1.1", b"Host: [::1]evil.test", host=False)),
    _A("abs-host-too-long", req(b"GET http://" + b"a" * 246 + b".evil.test/inspect HTTP/1.1")),
    _A("abs-colon-inside", req(b"GET http://evil.test:x.example.test/inspect HTTP/1.1")),
    # ---------------------------------------------------------------- paths the backend could read otherwise
    _A("path-climbs-root", req(b"GET /../inspect HTTP/1.1")),
    _A("path-climbs-encoded", req(b"GET /inspect/%2e%2e/%2E%2E/.%2e/smuggled HTTP/1.1")),
    _A("path-dot-encoded-slash", req(b"GET /inspect/..%2f..%2fsmuggled HTTP/1.1")),
    _A("path-dot-backslash", req(b"GET /inspect/..\\..\\smuggled HTTP/1.1")),
    _A("path-dot-semicolon", req(b"GET /inspect/..;/..;/smuggled HTTP/1.1")),
    _A("path-bad-percent", req(b"GET /inspect/%zz HTTP/1.1")),
    _A("target-fragment", req(b"GET /inspect#/../smuggled HTTP/1.1")),
    # ---------------------------------------------------------------- versions, HTTP/0.9, 1.0
    _A("http09-request", b"GET " + SMUGGLED_PATH.encode() + b"\r\n\r\n"),
    _A("version-lowercase", req(b"GET /inspect http/1.1")),
    _A("version-leading-zero-minor", req(b"GET /inspect HTTP/1.01")),
    _A("version-leading-zero-major", req(b"GET /inspect HTTP/01.1")),
    _A("version-suffix", req(b"GET /inspect HTTP/1.1x")),
    _A("version-nul", req(b"GET /inspect HTTP/1.1\x00")),
    _A("version-missing", req(b"GET /inspect ")),
    _A("version-2.0", req(b"GET /inspect HTTP/2.0"), status=505),
    _A("version-9.9", req(b"GET /inspect HTTP/9.9"), status=505),
    _A("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", status=505),
    # ---------------------------------------------------------------- request line
    _A("double-space", req(b"GET  /inspect HTTP/1.1")),
    _A("tab-separators", req(b"GET\t/inspect\tHTTP/1.1")),
    _A("leading-space", req(b" GET /inspect HTTP/1.1")),
    _A("leading-bare-lf", b"\n" + GOOD),
    _A("leading-bare-cr", b"\r" + GOOD),
    _A("method-slash", req(b"G/ET /inspect HTTP/1.1")),
    _A("method-empty", req(b" /inspect HTTP/1.1")),
    _A("method-high-bit", req(b"G\xc9T /inspect HTTP/1.1")),
    _A("asterisk-get", req(b"GET * HTTP/1.1")),
    _A("asterisk-suffix", req(b"OPTIONS *x HTTP/1.1")),
    _A("connect-with-smuggled-body", req(b"CONNECT example.test:443 HTTP/1.1", body=SMUGGLED),
       status=405),
    # ---------------------------------------------------------------- limits
    _A("oversized-header", get(b"X-Big: " + b"b" * 40000), status=431),
    _A("too-many-headers", get(*(b"X-N%d: v" % i for i in range(120))), status=431),
    _A("long-uri", req(b"GET /inspect?" + b"u" * 9000 + b" HTTP/1.1"), status=414),
    _A("expect-unknown", post(b"Expect: 200-ok", cl(len(SMUGGLED)), body=SMUGGLED), status=417),
    _A("expect-continue-suffix", post(b"Expect: 100-continue-x", cl(len(SMUGGLED)), body=SMUGGLED),
       status=417),
    # ---------------------------------------------------------------- chunked body
    _A("chunk-size-16-f", chunked_body(b"ffffffffffffffff\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"),
       stage=BODY_STAGE),
    _A("chunk-size-wraps-to-small", chunked_body(b"10000000000000005\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE, note="2**64 + 5: a wrapping parser reads 5"),
    _A("chunk-size-2p63", chunked_body(b"8000000000000000\r\n\r\n" + SMUGGLED), stage=BODY_STAGE,
       note="issue 17: 2**63 wrapped to a negative size and was read as the last chunk"),
    _A("chunk-size-2p63-plus-15", chunked_body(b"800000000000000f\r\n\r\n" + SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-2p63-leading-zeros", chunked_body(b"0" * 30 + b"8000000000000000\r\n\r\n" + SMUGGLED),
       stage=BODY_STAGE, note="leading zeros neither hide nor count towards the size"),
    _A("chunk-size-2p63-ext", chunked_body(b"8000000000000000;a=b\r\n\r\n" + SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-2p63-second-chunk", chunked_body(b"5\r\nhello\r\n8000000000000000\r\n\r\n" + SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-size-2p64-minus-1-leading-zeros", chunked_body(b"0" * 30 + b"ffffffffffffffff\r\n\r\n" + SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-size-2p60", chunked_body(b"1000000000000000\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"),
       stage=BODY_STAGE, note="one over the documented limit (2**60 - 1): refused, not waited for"),
    _A("chunk-size-0x", chunked_body(b"0x5\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-plus", chunked_body(b"+5\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-minus", chunked_body(b"-5\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-leading-space", chunked_body(b" 5\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-size-trailing-space", chunked_body(b"5 \r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-size-empty", chunked_body(b"\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-g", chunked_body(b"5g\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-underscore", chunked_body(b"0_5\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-size-semicolon-first", chunked_body(b";5\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-size-lf-only", chunked_body(b"5\nhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-size-cr-only", chunked_body(b"5\rhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-ext-bare-lf", chunked_body(b"5;a\nb\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE, note="2023-24 chunk-extension desyncs"),
    _A("chunk-ext-bare-cr", chunked_body(b"5;a\rb\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-ext-lf-ends-line", chunked_body(b"2;\n" + b"xx\r\n" + b"45\r\n0\r\n\r\n" + SMUGGLED),
       stage=BODY_STAGE, note="LF ends the size line for one parser, not for the other"),
    _A("chunk-ext-nul", chunked_body(b"5;a=\x00\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-ext-quoted-cr", chunked_body(b'5;a="x\ry"\r\nhello\r\n' + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-ext-quoted-lf", chunked_body(b'5;a="x\ny"\r\nhello\r\n' + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-ext-unterminated-quote", chunked_body(b'5;a="x\r\nhello\r\n' + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-ext-empty-value", chunked_body(b"5;a=\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-ext-no-name", chunked_body(b"5;\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-ext-too-long", chunked_body(b"5;a=" + b"x" * 5000 + b"\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("chunk-data-lf-only", chunked_body(b"5\r\nhello\n" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-data-cr-only", chunked_body(b"5\r\nhello\r" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-data-no-crlf", chunked_body(b"5\r\nhello" + CHUNKED_THEN_SMUGGLED), stage=BODY_STAGE),
    _A("chunk-data-longer-than-size", chunked_body(b"3\r\nhello\r\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE),
    _A("last-chunk-lf-only", chunked_body(b"5\r\nhello\r\n0\n\n" + SMUGGLED), stage=BODY_STAGE),
    _A("last-chunk-cr-only", chunked_body(b"5\r\nhello\r\n0\r\r\n" + SMUGGLED), stage=BODY_STAGE),
    _A("trailer-end-lf-only", chunked_body(b"5\r\nhello\r\n0\r\n\n" + SMUGGLED), stage=BODY_STAGE),
    _A("trailer-content-length", chunked_body(b"0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED),
       stage=BODY_STAGE),
    _A("trailer-transfer-encoding", chunked_body(b"0\r\nTransfer-Encoding: chunked\r\n\r\n" + SMUGGLED_CHUNK),
       stage=BODY_STAGE),
    _A("trailer-host", chunked_body(b"0\r\nHost: evil.test\r\n\r\n"), stage=BODY_STAGE),
    _A("trailer-obs-fold", chunked_body(b"0\r\nX-T: a\r\n b\r\n\r\n"), stage=BODY_STAGE),
    _A("trailer-bare-lf", chunked_body(b"0\r\nX-T: a\nX-U: b\r\n\r\n"), stage=BODY_STAGE),
    _A("trailer-nul", chunked_body(b"0\r\nX-T: a\x00b\r\n\r\n"), stage=BODY_STAGE),
    _A("trailer-is-request-line", chunked_body(b"0\r\n" + SMUGGLED), stage=BODY_STAGE),
    _A("trailer-too-large", chunked_body(b"0\r\n" + b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 1000) for i in range(20)) + b"\r\n"),
       stage=BODY_STAGE),
    # ---------------------------------------------------------------- pipelined desync
    _A("pipelined-then-cl-te", cl_te(TE), lead=GOOD, ok_before=1),
    _A("pipelined-then-te-cl", cl_te(TE, cl_first=False), lead=GOOD, ok_before=1),
    _A("pipelined-two-then-bare-lf", SMUGGLED.replace(b"\r\n", b"\n"), lead=GOOD + GOOD,
       ok_before=2),
    _A("pipelined-then-http09", b"GET " + SMUGGLED_PATH.encode() + b"\r\n\r\n", lead=GOOD, ok_before=1),
    _A("pipelined-then-bad-chunk", lead=GOOD, attack=chunked_body(b"5\r\nhello\n" + CHUNKED_THEN_SMUGGLED),
       stage=BODY_STAGE, ok_before=1),
    _A("pipelined-chunked-then-garbage", b"\x00" + SMUGGLED,
       lead=chunked_body(b"5\r\nhello\r\n0\r\n\r\n", target=b"/inspect"), ok_before=1),
    _A("h2c-upgrade-then-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
       lead=get(b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
       status=505, ok_before=1, note="Bishop Fox h2c smuggling: the upgrade is refused"),
    _A("websocket-upgrade-with-body-then-smuggled", SMUGGLED.replace(b"\r\n", b"\n"),
       lead=get(b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", cl(5), body=b"hello"), ok_before=1,
       note="an upgrade with a body is a plain request; what follows is parsed as HTTP"),
]
# fmt: on


# ------------------------------------------------------------------ neutralized look-alikes

_N = Neutral
_CTS = CHUNKED_THEN_SMUGGLED

# fmt: off
NEUTRALIZED: list[Neutral] = [
    _N("cl0-get-with-body", get(cl(len(SMUGGLED)), body=SMUGGLED), SMUGGLED,
       note="CL.0: a GET's body must be forwarded as a body, with its length"),
    _N("te-underscore-name", get(b"Transfer_Encoding: chunked", cl(len(_CTS)), body=_CTS), _CTS,
       absent=("transfer_encoding",),
       note="Transfer_Encoding is another field: framing is the Content-Length; the look-alike "
            "is dropped (names with '_' are, by default)"),
    _N("x-te-name", get(b"X-Transfer-Encoding: chunked", cl(len(_CTS)), body=_CTS), _CTS),
    _N("cl-underscore-name", get(b"Content_Length: 0", TE, body=b"5\r\nhello\r\n0\r\n\r\n"), b"hello",
       absent=("content_length",)),
    _N("xff-underscore-name", get(b"X_Forwarded_For: 203.0.113.66"), b"", absent=("x_forwarded_for",)),
    _N("te-empty-list-elements", get(b"Transfer-Encoding: , chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
       b"hello"),
    _N("te-uppercase", get(b"Transfer-Encoding: CHUNKED", body=b"5\r\nhello\r\n0\r\n\r\n"), b"hello"),
    _N("te-tab-ows", get(b"Transfer-Encoding:\tchunked\t", body=b"5\r\nhello\r\n0\r\n\r\n"), b"hello"),
    _N("cl-leading-zeros", get(cl(b"%05d" % len(SMUGGLED)), body=SMUGGLED), SMUGGLED),
    _N("cl-same-list", get(b"Content-Length: %d, %d" % (len(SMUGGLED), len(SMUGGLED)), body=SMUGGLED),
       SMUGGLED, note="RFC 9110 8.6: identical values may be taken as one"),
    _N("cl-same-twice", get(cl(len(SMUGGLED)), cl(len(SMUGGLED)), body=SMUGGLED), SMUGGLED),
    _N("cl-ows", get(cl(b"\t%d \t" % len(SMUGGLED)), body=SMUGGLED), SMUGGLED),
    _N("chunk-size-leading-zeros", get(TE, body=b"0005\r\nhello\r\n0000\r\n\r\n"), b"hello"),
    _N("chunk-size-30-leading-zeros", get(TE, body=b"0" * 30 + b"5\r\nhello\r\n" + b"0" * 30 + b"\r\n\r\n"),
       b"hello", note="leading zeros do not count towards the size limit"),
    _N("cl-30-leading-zeros", get(cl(b"0" * 30 + b"%d" % len(SMUGGLED)), body=SMUGGLED), SMUGGLED,
       note="leading zeros do not count towards the 18-digit limit"),
    _N("chunk-ext-quoted-specials", get(TE, body=b'5;a="x;y\\"z 0"\r\nhello\r\n0\r\n\r\n'), b"hello",
       note="';' and an escaped quote inside a quoted extension value"),
    _N("chunk-ext-bws", get(TE, body=b"5 ; a = b ;c\r\nhello\r\n0\r\n\r\n"), b"hello"),
    _N("chunk-data-is-request", get(TE, body=SMUGGLED_CHUNK), SMUGGLED,
       note="a request inside chunk data is data"),
    _N("abs-form-overrides-host", req(b"GET http://example.test/inspect HTTP/1.1", b"Host: evil.test",
       host=False), b""),
    _N("leading-empty-lines", b"\r\n\r\n" + GOOD, b"", note="RFC 9112 2.2: ignore CRLF before a request"),
    _N("connection-close-then-smuggled", get(b"Connection: close") + SMUGGLED, b"", keeps=False,
       note="nothing after Connection: close is read as a request"),
    _N("http10-cl-body", req(b"GET /inspect HTTP/1.0", b"Connection: keep-alive", cl(len(SMUGGLED)),
       body=SMUGGLED, host=False), SMUGGLED),
    _N("connection-names-content-length", get(b"Connection: Content-Length", cl(len(SMUGGLED)),
       body=SMUGGLED), SMUGGLED, note="hop-by-hop abuse: framing fields are the proxy's own"),
    _N("connection-names-transfer-encoding", get(b"Connection: Transfer-Encoding", TE,
       body=SMUGGLED_CHUNK), SMUGGLED),
    _N("connection-names-host", get(b"Connection: Host, X-Forwarded-For"), b""),
    _N("h2c-upgrade-refused", get(b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"), b""),
    _N("websocket-upgrade-with-body", get(b"Connection: Upgrade", b"Upgrade: websocket",
       b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", cl(len(SMUGGLED)),
       body=SMUGGLED), SMUGGLED),
    _N("expect-continue-with-body", get(b"Expect: 100-continue", cl(len(SMUGGLED)), body=SMUGGLED),
       SMUGGLED),
    _N("percent-encoded-crlf-target", req(b"GET /inspect?x=%0d%0aHost:%20evil.test HTTP/1.1"), b""),
]
# fmt: on


# ------------------------------------------------------------------ Host confusion

PUBLIC, ADMIN = "public", "admin"

# Host confusion (test_smuggling.py, two routes by host: public.test and admin.test):
# (id, request bytes, route that must answer (None: refused), status, Host it must see;
# status None: either 400 or 404 is fine). "{t}" is replaced by a per-case tag.
# fmt: off
HOST_CASES = [
    ("host-public", b"GET /inspect/{t} HTTP/1.1\r\nHost: public.test\r\n\r\n", PUBLIC, 200, "public.test"),
    ("host-admin", b"GET /inspect/{t} HTTP/1.1\r\nHost: admin.test\r\n\r\n", ADMIN, 200, "admin.test"),
    ("abs-admin-host-public", b"GET http://admin.test/inspect/{t} HTTP/1.1\r\nHost: public.test\r\n\r\n", ADMIN, 200, "admin.test"),
    ("abs-public-host-admin", b"GET http://public.test/inspect/{t} HTTP/1.1\r\nHost: admin.test\r\n\r\n", PUBLIC, 200, "public.test"),
    ("abs-https-uppercase", b"GET HTTPS://ADMIN.test:443/inspect/{t} HTTP/1.1\r\nHost: public.test\r\n\r\n", ADMIN, 200, "ADMIN.test:443"),
    ("host-uppercase", b"GET /inspect/{t} HTTP/1.1\r\nHost: ADMIN.TEST\r\n\r\n", ADMIN, 200, "ADMIN.TEST"),
    ("host-trailing-dot", b"GET /inspect/{t} HTTP/1.1\r\nHost: admin.test.\r\n\r\n", ADMIN, 200, "admin.test."),
    ("host-port", b"GET /inspect/{t} HTTP/1.1\r\nHost: admin.test:8080\r\n\r\n", ADMIN, 200, "admin.test:8080"),
    ("xfh-ignored", b"GET /inspect/{t} HTTP/1.1\r\nHost: public.test\r\nX-Forwarded-Host: admin.test\r\n\r\n", PUBLIC, 200, "public.test"),
    ("http10-no-host-abs", b"GET http://admin.test/inspect/{t} HTTP/1.0\r\n\r\n", ADMIN, 200, "admin.test"),
    ("unknown-host", b"GET /inspect/{t} HTTP/1.1\r\nHost: evil.test\r\n\r\n", None, 404, None),
    ("empty-host", b"GET /inspect/{t} HTTP/1.1\r\nHost:\r\n\r\n", None, 404, None),
    ("ip-literal-host", b"GET /inspect/{t} HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", None, 404, None),
    ("suffix-is-not-a-match", b"GET /inspect/{t} HTTP/1.1\r\nHost: notadmin.test\r\n\r\n", None, 404, None),
    ("host-userinfo", b"GET /inspect/{t} HTTP/1.1\r\nHost: public.test@admin.test\r\n\r\n", None, 400, None),
    ("host-list", b"GET /inspect/{t} HTTP/1.1\r\nHost: public.test,admin.test\r\n\r\n", None, None, None),
    ("host-two-lines", b"GET /inspect/{t} HTTP/1.1\r\nHost: public.test\r\nHost: admin.test\r\n\r\n", None, 400, None),
    ("abs-userinfo", b"GET http://public.test@admin.test/inspect/{t} HTTP/1.1\r\nHost: admin.test\r\n\r\n", None, 400, None),
    ("host-space-admin", b"GET /inspect/{t} HTTP/1.1\r\nHost: public.test admin.test\r\n\r\n", None, 400, None),
]
# fmt: on


# ------------------------------------------------------------------ differences with llhttp

# Heads fastpause rejects (with the status in ATTACKS) that llhttp, in its strict
# default mode, accepts. Each is a deliberate strictness choice.
_HOST_FIELD = "RFC 9112 3.2 / RFC 9110 7.2: a Host value that is not uri-host[:port] -> 400"
_TWO_HOSTS = "RFC 9112 3.2: more than one Host field line -> 400 (llhttp keeps both)"
_NO_HOST = "RFC 9112 3.2: an HTTP/1.1 request without Host -> 400"
_HTTP09 = "HTTP/0.9 is not served: llhttp reads a request line without version as 0.9"
_CLIMBS = "RFC 3986 5.2.4: a path whose dot segments climb above the root -> 400"
_HIDDEN_DOTS = "a dot segment behind %2F, '\\' or ';' (a backend may split there) -> 400"
STRICTER_THAN_LLHTTP: dict[str, str] = {
    "te-chunked-http10": "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing",
    "te-chunked-http10-keepalive": "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0, keep-alive too",
    "cl-overflow-2p63": "Content-Length over 18 significant digits is refused: no 64-bit overflow",
    "cl-19-digits": "Content-Length over 18 significant digits is refused: no 64-bit overflow",
    "cl-2p63-leading-zeros": "Content-Length over 18 significant digits is refused: no 64-bit overflow",
    "target-bare-lf": "RFC 9112 2.2: a bare LF is not a line end (llhttp: HTTP/0.9 request)",
    "abs-userinfo": "RFC 9110 4.2.4: userinfo in an http(s) URI is refused ('@' confusion)",
    "abs-userinfo-port": "RFC 9110 4.2.4: userinfo in an http(s) URI is refused ('@' confusion)",
    "abs-empty-host": "RFC 9110 4.2.1: an http URI with an empty host is invalid",
    "abs-ftp": "a reverse proxy serves http/https absolute-form only (not a forward proxy)",
    "abs-missing-host-field": _NO_HOST,
    "abs-two-host-fields": _TWO_HOSTS,
    "host-two": _TWO_HOSTS,
    "host-two-case": _TWO_HOSTS,
    "host-two-same": _TWO_HOSTS,
    "host-userinfo": _HOST_FIELD,
    "host-slash": _HOST_FIELD,
    "host-list": _HOST_FIELD,
    "host-tab-inside": _HOST_FIELD,
    "host-backslash": _HOST_FIELD,
    "host-too-long": "a host name over 255 bytes -> 400 (routing reads it whole or not at all)",
    "abs-host-too-long": "a host name over 255 bytes -> 400 (routing reads it whole or not at all)",
    "host-colon-inside": _HOST_FIELD,
    "host-port-not-digits": _HOST_FIELD,
    "host-literal-then-name": _HOST_FIELD,
    "abs-colon-inside": "RFC 3986 3.2: authority is host[:port], the port all digits",
    "path-climbs-root": _CLIMBS,
    "path-climbs-encoded": _CLIMBS,
    "path-dot-encoded-slash": _HIDDEN_DOTS,
    "path-dot-backslash": _HIDDEN_DOTS,
    "path-dot-semicolon": _HIDDEN_DOTS,
    "path-bad-percent": "RFC 3986 2.1: '%' starts two hex digits; a path it cannot decode is refused",
    "target-fragment": "RFC 9112 3.2: a request target has no fragment ('#' refused, as HAProxy does)",
    "host-missing-http11": _NO_HOST,
    "http09-request": _HTTP09,
    "pipelined-then-http09": _HTTP09,
    "version-2.0": "RFC 9110 15.6.6: 505 for a major version the server does not speak",
    "double-space": "RFC 9112 3: exactly one SP between request-line parts",
    "leading-bare-lf": "RFC 9112 2.2: only CRLF before a request line may be ignored",
    "leading-bare-cr": "RFC 9112 2.2: only CRLF before a request line may be ignored",
    "asterisk-get": "RFC 9112 3.2.4: asterisk-form is only for OPTIONS",
    "asterisk-suffix": "RFC 9112 3.2: '*x' is no request-target form",
    "oversized-header": "the head size limit (max_head_size, 32 KiB): 431 (RFC 6585 5)",
    "too-many-headers": "the field count limit (max_headers, 100): 431 (RFC 6585 5)",
    "long-uri": "the target size limit (max_uri_size, 8 KiB): 414 (RFC 9110 15.5.15)",
    "expect-unknown": "RFC 9110 10.1.1: an expectation other than 100-continue -> 417",
    "expect-continue-suffix": "RFC 9110 10.1.1: an expectation other than 100-continue -> 417",
}

# Chunked bodies fastpause rejects that llhttp accepts to the end of the message.
LLHTTP_ACCEPTS_BODY: dict[str, str] = {
    "chunk-ext-empty-value": "RFC 9112 7.1.1: chunk-ext-val is a token or quoted-string, never empty",
    "chunk-ext-too-long": "a chunk size line is capped at 4 KiB (extensions are dropped anyway)",
    "trailer-host": "RFC 9110 6.5.1: routing fields are not allowed in a trailer section",
    "trailer-too-large": "the trailer section is capped at 16 KiB",
}

# Neutralized look-alikes that llhttp rejects while fastpause forwards them
# (with the single RFC 9112 reading checked end to end).
LLHTTP_REJECTS_NEUTRAL: dict[str, str] = {
    "te-tab-ows": "RFC 9110 5.5: OWS around a field value is not part of it",
    "cl-same-list": "RFC 9110 8.6 / RFC 9112 6.3: a list of identical lengths is one length",
    "cl-same-twice": "RFC 9110 8.6 / RFC 9112 6.3: repeated identical lengths are one length",
    "chunk-ext-bws": "RFC 9112 7.1.1: BWS is allowed around ';' and '=' in chunk extensions",
}

# Look-alikes that httptools reads differently, and why the difference cannot reach a
# backend. Checked: same head, different body reading; end to end the backend gets
# no Upgrade field.
HTTPTOOLS_DIFFERENT_READING: dict[str, str] = {
    "websocket-upgrade-with-body": (
        "httptools makes llhttp skip the body of any request with Upgrade (its"
        " on_headers_complete returns 2) and hands the body over as tunnel bytes;"
        " fastpause refuses to upgrade a request with a body, reads its Content-Length"
        " body and forwards it without Upgrade/Connection, so the backend reads one"
        " plain request"
    ),
}


# ------------------------------------------------------------------ helpers for the tests


def first_head(data: bytes) -> bytes | None:
    """The first head (through CRLF CRLF), None when there is none."""
    end = data.find(b"\r\n\r\n")
    return None if end < 0 else data[: end + 4]


class _Messages:
    """httptools callbacks: the first message's head and how its body ended."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.chunked = False
        self.body = bytearray()
        self.complete = False
        self.begun = 0

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        if not self.head_done:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((bytes(name), bytes(value).rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if not self.head_done:
            self.method = bytes(self.parser.get_method())
            self.version = self.parser.get_http_version()
        self.head_done = True

    def on_chunk_header(self) -> None:
        if not self.complete:
            self.chunked = True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


@dataclasses.dataclass
class LlhttpResult:
    head: tuple | None  # (method, target, (major, minor), headers) when the head was accepted
    error: str | None
    body_complete: bool
    chunked: bool
    body: bytes
    messages: int
    upgrade: bool = False


def llhttp_run(data: bytes) -> LlhttpResult:
    """Feed ``data`` to llhttp (strict defaults) and describe the first message."""
    cb = _Messages()
    parser = httptools.HttpRequestParser(cb)
    cb.parser = parser
    error = None
    head_error = False
    end = data.find(b"\r\n\r\n")
    pieces = [data] if end < 0 else [data[: end + 4], data[end + 4 :]]
    upgrade = False
    try:
        for i, piece in enumerate(pieces):
            head_error = i == 0
            if piece:
                parser.feed_data(piece)
    except httptools.HttpParserUpgrade:
        upgrade = True
    except httptools.HttpParserError as exc:
        error = f"{type(exc).__name__}: {exc}"
    head = None
    # a head counts as accepted only if feeding it (alone) raised nothing: llhttp
    # reports framing errors (CL with TE, bad TE) right after on_headers_complete
    if cb.head_done and not (error and head_error):
        major, _, minor = cb.version.partition(".")
        head = (cb.method, cb.url, (int(major), int(minor)), cb.headers)
    return LlhttpResult(head, error, cb.complete, cb.chunked, bytes(cb.body), cb.begun, upgrade)


PROBE_CHUNKED = b"3\r\nabc\r\n0\r\n\r\n"
PROBE_MAX = 4096


def probe_body(framing: tuple) -> tuple[bytes, bytes]:
    """Bytes to put after a head with ``framing``, and the body a parser must read."""
    if framing == ("chunked",):
        return PROBE_CHUNKED, b"abc"
    n = framing[1]
    return b"x" * n, b"x" * n


def llhttp_same_framing(head: bytes, framing: tuple) -> tuple[bool, LlhttpResult]:
    """Does llhttp, given ``head`` plus a body framed as ``framing`` says, read the same
    body and end the message at the same byte? (True when llhttp rejects the head.)"""
    if framing[0] == "length" and framing[1] > PROBE_MAX:
        # a huge length: llhttp must still be reading the body after PROBE_MAX bytes
        ll = llhttp_run(head + b"x" * PROBE_MAX)
        if ll.head is None or ll.upgrade:
            return True, ll
        return (not ll.body_complete and ll.error is None and ll.body == b"x" * PROBE_MAX), ll
    extra, body = probe_body(framing)
    ll = llhttp_run(head + extra + GOOD)
    if ll.head is None or ll.upgrade:
        return True, ll
    # what follows the message is llhttp's business (it refuses data after a close)
    return (ll.body_complete and ll.body == body), ll


def framing_of(headers: list[tuple[bytes, bytes]]) -> tuple:
    """RFC 9112 6.3 reading of an accepted head: ("chunked",) or ("length", n)."""
    names = [n.lower() for n, _ in headers]
    if b"transfer-encoding" in names:
        return ("chunked",)
    for n, v in headers:
        if n.lower() == b"content-length":
            return ("length", decimal(v.split(b",")[0].strip()))
    return ("length", 0)


# ------------------------------------------------------------------ head oracles
# (used by test_fuzz.py and the atheris harness fuzz/fuzz_request_head.py)

_TCHAR = set(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_FIELD_VALUE_CHARS = set(range(0x21, 0x7F)) | set(range(0x80, 0x100)) | {0x20, 0x09}


def _framing(result) -> tuple:
    return framing_of([(bytes(n), bytes(v)) for n, v in result[3]])


def check_accepted_head(data: bytes, result) -> None:
    """The invariants of an accepted head."""
    method, target, version, headers = result
    tchar = _TCHAR
    assert method and all(c in tchar for c in method), method
    assert target and all(0x21 <= c <= 0x7E for c in target), target
    assert b"#" not in target, "a request target with a fragment accepted"
    assert tuple(version) in ((1, 0), (1, 1)), version
    stripped = data.replace(b"\r\n", b"")
    assert b"\r" not in stripped and b"\n" not in stripped, "bare CR/LF accepted"
    names = []
    for name, value in headers:
        assert name and all(c in tchar for c in name), name
        assert all(c in _FIELD_VALUE_CHARS for c in value), value
        assert value == value.strip(b" \t"), value
        names.append(bytes(name).lower())
        if names[-1] == b"host" and not value.startswith(b"["):
            host, _, port = bytes(value).partition(b":")
            assert len(host) <= 255 and (not port or port.isdigit()), f"Host {value!r} accepted"
    te = [bytes(v) for n, v in headers if bytes(n).lower() == b"transfer-encoding"]
    cl = [bytes(v) for n, v in headers if bytes(n).lower() == b"content-length"]
    assert not (te and cl), "Content-Length with Transfer-Encoding accepted"
    if te:
        assert tuple(version) == (1, 1), "Transfer-Encoding in HTTP/1.0 accepted"
        codings = [c.strip(b" \t").lower() for v in te for c in v.split(b",") if c.strip(b" \t")]
        assert codings and codings[-1] == b"chunked", codings
        assert codings.count(b"chunked") == 1, codings
    if cl:
        values = {v.strip(b" \t") for c in cl for v in c.split(b",")}
        assert all(v.isdigit() and decimal(v) <= MAX_CONTENT_LENGTH for v in values), cl
        assert len({decimal(v) for v in values}) == 1, cl
    if tuple(version) == (1, 1):
        assert names.count(b"host") == 1, names
    else:
        assert names.count(b"host") <= 1, names


def check_framing_value(core, data: bytes, result) -> None:
    """The core frames the body of an accepted head with the length a big-integer
    reading of its Content-Length gives (no wrap, leading zeros kept)."""
    kind, length = core.request_framing(data)
    want = _framing(result)
    if want == ("chunked",):
        assert kind == "chunked", (data, kind, length)
    else:
        got = (kind, max(length, 0))
        assert got == ("length" if want[1] else "none", want[1]), (data, got, want)


def check_head_against_llhttp(data: bytes, result) -> None:
    ll = llhttp_run(data)
    if ll.head is None:
        return  # llhttp rejects: it cannot read the head another way
    method, target, version, headers = result
    assert ll.head == (
        bytes(method),
        bytes(target),
        tuple(version),
        [(bytes(n), bytes(v)) for n, v in headers],
    ), f"llhttp reads {data!r} differently: {ll.head} vs {result}"
    same, ll2 = llhttp_same_framing(data, _framing(result))
    assert same, f"llhttp frames the body of {data!r} differently from {_framing(result)}: {ll2}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_tables() -> None:
    ids = [a.id for a in ATTACKS] + [n.id for n in NEUTRALIZED]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for a in ATTACKS:
        assert a.stage in (HEAD_STAGE, BODY_STAGE), a.id
        assert 400 <= a.status < 500 or a.status == 505, a.id
    known = {a.id for a in ATTACKS}
    assert set(STRICTER_THAN_LLHTTP) <= known
    assert set(LLHTTP_ACCEPTS_BODY) <= known
    assert set(LLHTTP_REJECTS_NEUTRAL) <= {n.id for n in NEUTRALIZED}
    assert set(HTTPTOOLS_DIFFERENT_READING) <= {n.id for n in NEUTRALIZED}


_check_tables()
