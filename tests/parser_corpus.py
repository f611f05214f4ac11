"""Request-head corpus and helpers for the parser differential/property tests.

The oracle is httptools (llhttp) in its default, non-lenient configuration. Every
verdict recorded here for llhttp was obtained by running it (httptools 0.9.0),
not guessed; ``test_llhttp_verdicts`` re-checks them so the tables fail loudly if
llhttp's behaviour changes.

Three tables:

* ``CORPUS``: both parsers must agree. ``expect`` is ``OK`` (both accept, and
  both must return exactly ``split_valid_head(data)``) or the HTTP status
  fastpause must reject with (llhttp must reject too).
* ``STRICTER_THAN_LLHTTP``: fastpause rejects with ``expect`` while llhttp
  (lenient defaults / no limits) accepts. ``reason`` cites the RFC.
* ``LOOSER_THAN_LLHTTP``: the other direction: the head is valid per RFC 9112
  and fastpause accepts it, llhttp rejects it.

The test files import it by name: ``tests/conftest.py`` puts ``tests/`` on
``sys.path`` (pytest runs with ``--import-mode=importlib``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httptools

OK = "ok"

# 400/414/431/505 per the parser's rules, plus 417 for a well-formed head with an
# Expect other than 100-continue (RFC 9110 10.1.1).
REJECT_STATUSES = {400, 414, 417, 431, 505}

CRLF = b"\r\n"
HOST = b"Host: example.com"

OWS_BYTES = b" \t"
TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))

# Methods llhttp accepts on an HTTP/1.x request line (checked by running it).
# CONNECT is left out on purpose: it needs authority-form.
LLHTTP_METHODS = (
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PURGE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
    b"QUERY",
)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    expect: Any  # OK or an int status
    reason: str = ""
    kwargs: dict = dataclasses.field(default_factory=dict)


def head(request_line: bytes, *lines: bytes) -> bytes:
    """One complete head: request-line, field lines, empty line."""
    return request_line + CRLF + b"".join(line + CRLF for line in lines) + CRLF


# --------------------------------------------------------------------------
# Reference split (only meaningful for heads that are valid)
# --------------------------------------------------------------------------


def split_valid_head(data: bytes):
    """The parse result a correct parser must produce for a *valid* head.

    For a valid head splitting is unambiguous: single SPs in the request-line,
    the first ':' ends the field name, values lose leading/trailing OWS.
    """
    assert data.endswith(b"\r\n\r\n"), data
    lines = data[:-4].split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    assert len(version) == 8 and version.startswith(b"HTTP/"), version
    ver = (version[5] - 0x30, version[7] - 0x30)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(OWS_BYTES)))
    return (method, target, ver, headers)


# --------------------------------------------------------------------------
# llhttp oracle
# --------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    # llhttp may deliver the URL and header pieces in several callbacks;
    # httptools already joins name/value pieces before calling on_header,
    # the URL we join ourselves.
    def on_url(self, url: bytes) -> None:
        if not self.complete:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((bytes(name), bytes(value)))

    def on_headers_complete(self) -> None:
        self.complete = True


def llhttp_parse(data: bytes, chunks: list[int] | None = None):
    """Run llhttp on ``data``.

    Returns ``("accept", (method, target, (major, minor), headers))`` with the
    values trailing-OWS-trimmed (llhttp strips only the leading OWS),
    ``("reject", "<error class>: <message>")`` or ``("incomplete", None)``.
    ``chunks`` optionally gives split points to feed the data in pieces.
    """
    cb = _Collector()
    parser = httptools.HttpRequestParser(cb)
    pieces = []
    start = 0
    for cut in sorted(set(chunks or [])):
        if 0 < cut < len(data):
            pieces.append(data[start:cut])
            start = cut
    pieces.append(data[start:])
    try:
        for piece in pieces:
            parser.feed_data(piece)
    except httptools.HttpParserUpgrade:
        # CONNECT / Upgrade: llhttp pauses right after the head. That is an
        # accepted head, as long as the head was complete.
        pass
    except httptools.HttpParserError as exc:
        return ("reject", f"{type(exc).__name__}: {exc}")
    if not cb.complete:
        return ("incomplete", None)
    major, _, minor = parser.get_http_version().partition(".")
    headers = [(n, v.rstrip(OWS_BYTES)) for n, v in cb.headers]
    return ("accept", (bytes(parser.get_method()), cb.url, (int(major), int(minor)), headers))


# --------------------------------------------------------------------------
# fastpause side
# --------------------------------------------------------------------------


def fastpause_parse(core, data: bytes, **kwargs):
    """``("accept", result)`` or ``("reject", status, reason)``.

    Anything other than ``HeadError`` propagates (and fails the test).
    """
    try:
        method, target, version, headers = core.parse_request_head(data, **kwargs)
    except core.HeadError as exc:
        return ("reject", exc.status, exc.reason)
    return (
        "accept",
        (method, target, tuple(version), [tuple(h) for h in headers]),
    )


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def _padded_to(total: int, request_line: bytes = b"GET / HTTP/1.1") -> bytes:
    """A valid head of exactly ``total`` bytes (padding in one field value)."""
    base = head(request_line, HOST, b"X-Pad: ")
    pad = total - len(base)
    assert pad > 0
    data = head(request_line, HOST, b"X-Pad: " + b"p" * pad)
    assert len(data) == total
    return data


def _n_fields(n: int, version: bytes = b"1.1") -> bytes:
    """A head with exactly ``n`` field lines in total (Host included)."""
    return head(b"GET / HTTP/" + version, HOST, *(b"X-F%d: v" % i for i in range(n - 1)))


def _target_of_len(n: int) -> bytes:
    return b"/" + b"a" * (n - 1)


def _post(*lines: bytes, version: bytes = b"1.1") -> bytes:
    return head(b"POST /upload HTTP/" + version, HOST, *lines)


def _post10(*lines: bytes) -> bytes:
    return head(b"POST /upload HTTP/1.0", *lines)


def _get(*lines: bytes) -> bytes:
    return head(b"GET / HTTP/1.1", HOST, *lines)


# --------------------------------------------------------------------------
# CORPUS: both parsers agree
# --------------------------------------------------------------------------

_valid: list[Case] = []
_invalid: list[Case] = []


def _v(id_: str, data: bytes, **kwargs) -> None:
    _valid.append(Case("valid-" + id_, data, OK, kwargs=kwargs))


def _x(id_: str, data: bytes, status: int = 400) -> None:
    _invalid.append(Case("invalid-" + id_, data, status))


# --- valid: methods ---------------------------------------------------------
for _m in LLHTTP_METHODS:
    _v("method-" + _m.decode(), head(_m + b" /resource HTTP/1.1", HOST))

# --- valid: request targets --------------------------------------------------
for _i, _t in enumerate(
    [
        b"/",
        b"/index.html",
        b"/a/b/c/",
        b"//double//slashes",
        b"/a?b=c&d=e",
        b"/%41%2f%C3%A9",
        b"/?",
        b"/a?x=/y?z",
        b"/~user/-._",
        b"/@:!$&'()*+,;=",
        b"/a/../b/./c",
        b"/path?q=a%20b+c",
        b"/!~",
        b"/" + b"x" * 2000,
    ]
):
    _v(f"origin-form-{_i}", head(b"GET " + _t + b" HTTP/1.1", HOST))
for _i, _t in enumerate(
    [
        b"http://example.com/x?y=z",
        b"https://example.com:8443/",
        b"HTTP://EXAMPLE.COM/",
        b"hTTpS://example.com/a",
        b"http://example.com",
        b"http://127.0.0.1:8080/a/b?c",
        b"http://[::1]:8080/x",
    ]
):
    _v(f"absolute-form-{_i}", head(b"GET " + _t + b" HTTP/1.1", HOST))
_v("asterisk-form-options-11", head(b"OPTIONS * HTTP/1.1", HOST))
_v("asterisk-form-options-10", head(b"OPTIONS * HTTP/1.0"))
_v("authority-form-connect", head(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"))
_v("authority-form-connect-ipv4", head(b"CONNECT 10.0.0.1:8443 HTTP/1.1", b"Host: 10.0.0.1:8443"))
_v("authority-form-connect-ipv6", head(b"CONNECT [::1]:443 HTTP/1.1", b"Host: [::1]:443"))

# --- valid: versions -----------------------------------------------------------
_v("http10-no-headers", head(b"GET / HTTP/1.0"))
_v("http10-with-host", head(b"GET /x HTTP/1.0", HOST, b"Connection: keep-alive"))
_v("http10-no-host-headers", head(b"GET /x HTTP/1.0", b"Accept: */*", b"User-Agent: t/1"))
_v("http11-host-only", head(b"GET / HTTP/1.1", HOST))

# --- valid: field shapes / OWS ------------------------------------------------
_v("ows-none", _get(b"X:v"))
_v("ows-sp", _get(b"X: v"))
_v("ows-tab", _get(b"X:\tv"))
_v("ows-mixed-both-sides", _get(b"X: \t v \t "))
_v("ows-trailing-sp", _get(b"X: v   "))
_v("ows-trailing-tab", _get(b"X: v\t\t"))
_v("inner-spaces", _get(b"X: a   b"))
_v("inner-tab", _get(b"X: a\tb"))
_v("inner-mixed-ws", _get(b"X: a \t  b"))
_v("empty-value", _get(b"X:"))
_v("empty-value-ows", _get(b"X-Empty:\t \t"))
_v("empty-host", head(b"GET / HTTP/1.1", b"Host:"))
_v("host-with-port", head(b"GET / HTTP/1.1", b"Host: example.com:8080"))
_v("host-case-preserved", head(b"GET / HTTP/1.1", b"hOsT: example.com"))
_v("obs-text-value", _get(b"X: a\x80\xffb"))
_v("obs-text-only-value", _get(b"X: \x80"))
_v("utf8-value", _get(b"X: caf\xc3\xa9 \xe2\x98\x83"))
_v("all-vchar-value", _get(b"X: " + VCHAR))
_v("all-obs-text-value", _get(b"X: " + OBS_TEXT))
_v("value-with-colons", _get(b"X: a:b: c"))
_v("value-quotes-commas", _get(b'X: "a, b", c; d=e'))
_v("all-tchar-name", _get(b"!#$%&'*+-.^_`|~0123456789AZaz: v"))
_v("single-char-name", _get(b"x: y"))
_v("long-name", _get(b"X-" + b"n" * 254 + b": v"))
_v("mixed-case-names", _get(b"x-UPPER: a", b"X-lower: b", b"CoNtEnT-TyPe: text/plain"))
_v("duplicate-plain-fields", _get(b"Accept: a", b"Accept: b", b"accept: c"))
_v("long-value-8k", _get(b"X-Long: " + b"v" * 8000))
_v("long-value-20k", _get(b"X-Long: " + b"w" * 20000))
_v("many-fields-50", _n_fields(50))
_v("max-fields-100", _n_fields(100))
_v("max-head-size-exact", _padded_to(32768))
_v("max-uri-size-exact", head(b"GET " + _target_of_len(8192) + b" HTTP/1.1", HOST))
_v("custom-max-head-exact", _padded_to(64), max_head_size=64)
_v("custom-max-fields-exact", _n_fields(3), max_headers=3)
_v("custom-max-uri-exact", head(b"GET " + _target_of_len(16) + b" HTTP/1.1", HOST), max_uri_size=16)
_v(
    "framing-lookalike-names",
    _post(b"Content-Lengthx: abc", b"Transfer-Encodings: xchunked", b"Hosts: other"),
)
_v(
    "connection-upgrade",
    _get(b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13"),
)
_v("expect-100", _post(b"Expect: 100-continue", b"Content-Length: 5"))
_v(
    "browser-like",
    head(
        b"GET /search?q=fast+pause&lang=en HTTP/1.1",
        HOST,
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8",
        b"Accept-Language: en-US,en;q=0.5",
        b"Accept-Encoding: gzip, deflate, br",
        b"Cookie: a=1; b=2",
        b"Connection: keep-alive",
        b"Upgrade-Insecure-Requests: 1",
    ),
)

# --- valid: framing -------------------------------------------------------------
_v("cl-0", _post(b"Content-Length: 0"))
_v("cl-5", _post(b"Content-Length: 5"))
_v("cl-leading-zeros", _post(b"Content-Length: 005"))
_v("cl-18-digits", _post(b"Content-Length: 999999999999999999"))
_v("cl-18-digits-30-leading-zeros", _post(b"Content-Length: " + b"0" * 30 + b"999999999999999999"))
_v("cl-ows", _post(b"Content-Length: \t 5 \t"))
_v("cl-lowercase-name", _post(b"content-length: 5"))
_v("cl-on-get", _get(b"Content-Length: 3"))
_v("cl-http10", _post10(b"Content-Length: 7"))
_v("te-chunked", _post(b"Transfer-Encoding: chunked"))
_v("te-chunked-uppercase", _post(b"Transfer-Encoding: CHUNKED"))
_v("te-chunked-trailing-sp", _post(b"Transfer-Encoding: chunked "))
_v("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked"))
_v("te-gzip-chunked-nosp", _post(b"Transfer-Encoding: gzip,chunked"))
_v("te-gzip-then-chunked-lines", _post(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"))
_v("te-empty-list-element-first", _post(b"Transfer-Encoding: ,chunked"))
_v("te-tab-ows", _post(b"Transfer-Encoding:\tchunked"))
_v("te-no-ows", _post(b"Transfer-Encoding:chunked"))
_v("te-lowercase-name", _post(b"transfer-encoding: chunked"))
_v("te-on-get", _get(b"Transfer-Encoding: chunked"))

# --- invalid: request-line --------------------------------------------------------
_x("rl-tab-after-method", head(b"GET\t/ HTTP/1.1", HOST))
_x("rl-tab-after-target", head(b"GET /\tHTTP/1.1", HOST))
_x("rl-leading-sp", head(b" GET / HTTP/1.1", HOST))
_x("rl-trailing-sp", head(b"GET / HTTP/1.1 ", HOST))
_x("rl-empty-method", head(b" / HTTP/1.1", HOST))
_x("rl-no-target", head(b"GET HTTP/1.1", HOST))
_x("rl-empty-target", head(b"GET  HTTP/1.1", HOST))
_x("rl-no-version", head(b"GET / ", HOST))
_x("rl-sp-in-target", head(b"GET /a b HTTP/1.1", HOST))
_x("rl-extra-token", head(b"GET / HTTP/1.1 HTTP/1.1", HOST))
_x("method-paren", head(b"GE(T / HTTP/1.1", HOST))
_x("method-at", head(b"G@T / HTTP/1.1", HOST))
_x("method-slash", head(b"G/T / HTTP/1.1", HOST))
_x("method-obs-text", head(b"G\x80T / HTTP/1.1", HOST))
_x("method-nul", head(b"GE\x00T / HTTP/1.1", HOST))
_x("method-del", head(b"GE\x7fT / HTTP/1.1", HOST))
_x("version-lowercase", head(b"GET / http/1.1", HOST))
_x("version-https", head(b"GET / HTTPS/1.1", HOST))
_x("version-no-minor", head(b"GET / HTTP/1", HOST))
_x("version-letter-minor", head(b"GET / HTTP/1.x", HOST))
_x("version-trailing-junk", head(b"GET / HTTP/1.1x", HOST))
_x("version-two-digit-minor", head(b"GET / HTTP/1.10", HOST))
_x("version-nul", head(b"GET / HTTP/1.1\x00", HOST))
_x("version-1.2", head(b"GET / HTTP/1.2", HOST), 505)
_x("version-1.9", head(b"GET / HTTP/1.9", HOST), 505)
_x("version-3.0", head(b"GET / HTTP/3.0", HOST), 505)
_x("version-9.9", head(b"GET / HTTP/9.9", HOST), 505)

# --- invalid: request-target ---------------------------------------------------
_x("target-obs-text-80", head(b"GET /\x80 HTTP/1.1", HOST))
_x("target-obs-text-ff", head(b"GET /\xff HTTP/1.1", HOST))
_x("target-utf8", head(b"GET /caf\xc3\xa9 HTTP/1.1", HOST))
_x("target-utf8-absolute", head(b"GET http://a.example/\xc3\xa9 HTTP/1.1", HOST))
_x("target-obs-text-query", head(b"GET /a?\x80 HTTP/1.1", HOST))
_x("target-del", head(b"GET /\x7f HTTP/1.1", HOST))
_x("target-del-query", head(b"GET /a?\x7f HTTP/1.1", HOST))
_x("target-ctl-01", head(b"GET /\x01 HTTP/1.1", HOST))
_x("target-ctl-ff", head(b"GET /\x0c HTTP/1.1", HOST))
_x("target-nul", head(b"GET /\x00 HTTP/1.1", HOST))
_x("target-tab-inside", head(b"GET /a\tb HTTP/1.1", HOST))
_x("target-tab-query", head(b"GET /a?b\tc HTTP/1.1", HOST))
_x("target-bare-cr", head(b"GET /a\rb HTTP/1.1", HOST))
_x("target-bare-lf", head(b"GET /a\nb HTTP/1.1", HOST))
_x("target-relative", head(b"GET a/b HTTP/1.1", HOST))
_x("target-authority-on-get", head(b"GET example.com:443 HTTP/1.1", HOST))
_x("target-http-single-slash", head(b"GET http:/a HTTP/1.1", HOST))
_x("target-asterisk-pri", head(b"PRI * HTTP/1.1", HOST))

# --- invalid: line endings, NUL, CTL --------------------------------------------
_x("bare-lf-after-request-line", b"GET / HTTP/1.1\nHost: example.com\r\n\r\n")
_x("bare-lf-after-field", b"GET / HTTP/1.1\r\nHost: example.com\n\r\n")
_x("bare-lf-final", b"GET / HTTP/1.1\r\nHost: example.com\r\n\n")
_x("bare-lf-smuggled-te", _post(b"X: y\nTransfer-Encoding: chunked"))
_x("bare-cr-after-request-line", b"GET / HTTP/1.1\rHost: example.com\r\n\r\n")
_x("bare-cr-in-value", _get(b"X: a\rb"))
_x("bare-cr-before-crlf", _get(b"X: a\r"))
_x("nul-in-name", _get(b"X\x00: ab"))
_x("nul-in-value", _get(b"X: a\x00b"))
_x("nul-line-start", _get(b"\x00X: y"))
_x("del-in-value", _get(b"X: \x7f"))
for _c in [*range(0x00, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), 0x7F]:
    _x(f"ctl-{_c:02x}-in-value", _get(b"X: a" + bytes([_c]) + b"b"))
for _c in (0x01, 0x09, 0x1F, 0x7F):
    _x(f"ctl-{_c:02x}-in-name", _get(b"X" + bytes([_c]) + b"Y: v"))

# --- invalid: obs-fold -------------------------------------------------------------
_x("obs-fold-sp", _get(b"X: a", b" b"))
_x("obs-fold-tab", _get(b"X: a", b"\tb"))
_x("obs-fold-ws-only-line", _get(b"X: a", b" "))
_x("obs-fold-first-field", head(b"GET / HTTP/1.1", b" Host: example.com"))
_x("obs-fold-first-field-tab", head(b"GET / HTTP/1.1", b"\tHost: example.com"))
_x("obs-fold-cl", _post(b"Content-Length: 5", b" 6"))

# --- invalid: field names -----------------------------------------------------------
_x("name-sp-before-colon", _get(b"X : b"))
_x("name-tab-before-colon", _get(b"X\t: b"))
_x("name-sp-then-colon-no-ows", _get(b"X-A :b"))
_x("name-empty", _get(b": b"))
_x("name-no-colon", _get(b"Xb"))
for _ch in b'()<>@,;\\"/[]?={}':
    _x(f"name-char-{_ch:02x}", _get(b"A" + bytes([_ch]) + b"B: v"))
_x("name-obs-text", _get(b"X\x80: b"))
_x("name-utf8", _get(b"N\xc3\xa4me: v"))
_x("name-inner-sp", _get(b"X Y: v"))

# --- invalid: Content-Length -------------------------------------------------------
_x("cl-plus", _post(b"Content-Length: +5"))
_x("cl-minus", _post(b"Content-Length: -5"))
_x("cl-inner-sp", _post(b"Content-Length: 1 2"))
_x("cl-hex", _post(b"Content-Length: 0x5"))
_x("cl-empty", _post(b"Content-Length:"))
_x("cl-trailing-letter", _post(b"Content-Length: 5a"))
_x("cl-leading-letter", _post(b"Content-Length: a5"))
_x("cl-decimal", _post(b"Content-Length: 5.0"))
_x("cl-trailing-comma", _post(b"Content-Length: 5,"))
_x("cl-leading-comma", _post(b"Content-Length: ,5"))
_x("cl-double-comma", _post(b"Content-Length: 5,,5"))
_x("cl-vt", _post(b"Content-Length: \x0b5"))
_x("cl-nul", _post(b"Content-Length: 5\x00"))
_x("cl-obs-text", _post(b"Content-Length: 5\x80"))
_x("cl-arabic-digit", _post(b"Content-Length: \xd9\xa5"))
_x("cl-overflow-20-digits", _post(b"Content-Length: 18446744073709551616"))
_x("cl-dup-different", _post(b"Content-Length: 5", b"Content-Length: 6"))
_x("cl-dup-different-case", _post(b"Content-Length: 5", b"content-length: 50"))
_x("cl-list-different", _post(b"Content-Length: 5, 6"))
_x("cl-sp-before-colon", _post(b"Content-Length : 5"))

# --- invalid: smuggling classics (CL.TE, TE.CL, TE.TE) ----------------------------
_x("cl-te", _post(b"Content-Length: 6", b"Transfer-Encoding: chunked"))
_x("te-cl", _post(b"Transfer-Encoding: chunked", b"Content-Length: 6"))
_x("cl-te-obfuscated", _post(b"Transfer-Encoding: xchunked", b"Content-Length: 5"))
_x("cl-te-chunked-identity", _post(b"Content-Length: 5", b"Transfer-Encoding: chunked, identity"))
_x("cl-te-http10", _post10(b"Transfer-Encoding: chunked", b"Content-Length: 5"))
_x("te-xchunked", _post(b"Transfer-Encoding: xchunked"))
_x("te-chunkedx", _post(b"Transfer-Encoding: chunkedx"))
_x("te-identity", _post(b"Transfer-Encoding: identity"))
_x("te-gzip-only", _post(b"Transfer-Encoding: gzip"))
_x("te-chunked-identity", _post(b"Transfer-Encoding: chunked, identity"))
_x("te-chunked-gzip", _post(b"Transfer-Encoding: chunked, gzip"))
_x("te-quoted", _post(b'Transfer-Encoding: "chunked"'))
_x("te-chunked-sp-chunked", _post(b"Transfer-Encoding: chunked chunked"))
_x("te-chunked-obs-text", _post(b"Transfer-Encoding: chunked\xff"))
_x("te-empty", _post(b"Transfer-Encoding:"))
_x("te-duplicate-lines", _post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"))
_x("te-chunked-twice-list", _post(b"Transfer-Encoding: chunked, chunked"))
_x("te-chunked-twice-list-ows", _post(b"Transfer-Encoding: chunked , chunked"))
_x("te-chunked-then-gzip-lines", _post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"))
_x("te-chunked-then-x-lines", _post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: x"))
_x("te-sp-before-colon", _post(b"Transfer-Encoding : chunked"))
_x("te-tab-prefixed", _post(b"\tTransfer-Encoding: chunked"))
_x("te-sp-prefixed", _post(b" Transfer-Encoding: chunked"))
_x("te-nul", _post(b"Transfer-Encoding: chunked\x00"))
_x("te-vt", _post(b"Transfer-Encoding:\x0bchunked"))
_x("te-ff", _post(b"Transfer-Encoding:\x0cchunked"))
_x("te-fold-name", _post(b"Transfer-Encoding", b" : chunked"))
_x("te-fold-value", _post(b"Transfer-Encoding:", b" chunked"))

CORPUS: list[Case] = _valid + _invalid


# --------------------------------------------------------------------------
# fastpause deliberately stricter than llhttp: fastpause rejects, llhttp accepts
# --------------------------------------------------------------------------


def _s(id_: str, data: bytes, status: int, reason: str, **kwargs) -> Case:
    return Case("stricter-" + id_, data, status, reason, kwargs)


STRICTER_THAN_LLHTTP: list[Case] = [
    _s(
        "missing-host-11",
        head(b"GET / HTTP/1.1"),
        400,
        "RFC 9112 3.2: server MUST respond 400 to an HTTP/1.1 request lacking Host",
    ),
    _s(
        "missing-host-absolute-form",
        head(b"GET http://example.com/ HTTP/1.1"),
        400,
        "RFC 9112 3.2: Host is required in HTTP/1.1 even with absolute-form",
    ),
    _s(
        "two-host",
        _get(b"Host: evil.example"),
        400,
        "RFC 9112 3.2: more than one Host field line -> 400",
    ),
    _s(
        "two-host-same-value",
        _get(HOST),
        400,
        "RFC 9112 3.2: more than one Host field line -> 400 (even if identical)",
    ),
    _s(
        "two-host-case-variant",
        _get(b"host: example.com"),
        400,
        "RFC 9112 3.2 + RFC 9110 5.1: names are case-insensitive, still two Host lines",
    ),
    _s(
        "two-host-http10",
        head(b"GET / HTTP/1.0", HOST, b"Host: b.example"),
        400,
        "RFC 9112 3.2: more than one Host -> 400 (any version)",
    ),
    _s(
        "version-2.0",
        head(b"GET / HTTP/2.0", HOST),
        505,
        "RFC 9110 15.6.6: HTTP/2.0 on an HTTP/1.x connection is an unsupported major version",
    ),
    _s(
        "version-0.9",
        head(b"GET / HTTP/0.9", HOST),
        505,
        "RFC 9110 15.6.6 / RFC 9112 2.3: only HTTP/1.0 and HTTP/1.1 are supported",
    ),
    _s(
        "version-missing-http09",
        head(b"GET /", HOST),
        400,
        "RFC 9112 3: request-line needs SP HTTP-version; llhttp treats it as HTTP/0.9",
    ),
    _s(
        "version-rtsp",
        head(b"GET / RTSP/1.0", HOST),
        400,
        'RFC 9112 2.3: HTTP-name is case-sensitive "HTTP"; llhttp also allows RTSP/',
    ),
    _s(
        "version-ice",
        head(b"SOURCE / ICE/1.0", HOST),
        400,
        'RFC 9112 2.3: HTTP-name is "HTTP"; llhttp also allows ICE/ for SOURCE',
    ),
    _s(
        "double-sp-after-method",
        head(b"GET  / HTTP/1.1", HOST),
        400,
        "RFC 9112 3: request-line separators are exactly one SP",
    ),
    _s(
        "double-sp-after-target",
        head(b"GET /  HTTP/1.1", HOST),
        400,
        "RFC 9112 3: request-line separators are exactly one SP",
    ),
    _s(
        "asterisk-on-get",
        head(b"GET * HTTP/1.1", HOST),
        400,
        "RFC 9112 3.2.4: asterisk-form is only used with OPTIONS",
    ),
    _s(
        "asterisk-on-connect",
        head(b"CONNECT * HTTP/1.1", HOST),
        400,
        "RFC 9112 3.2.3/3.2.4: CONNECT needs authority-form, '*' is OPTIONS only",
    ),
    _s(
        "asterisk-with-suffix",
        head(b"OPTIONS *x HTTP/1.1", HOST),
        400,
        "RFC 9112 3.2.4: asterisk-form is exactly '*'",
    ),
    _s(
        "absolute-form-ftp",
        head(b"GET ftp://example.com/f HTTP/1.1", HOST),
        400,
        "RFC 9112 3.2.2 + RFC 9110 4.2: the proxy serves only http/https absolute-form",
    ),
    _s(
        "absolute-form-ws",
        head(b"GET ws://example.com/ HTTP/1.1", HOST),
        400,
        "RFC 9112 3.2.2 + RFC 9110 4.2: the proxy serves only http/https absolute-form",
    ),
    _s(
        "absolute-form-userinfo",
        head(b"GET http://u:p@example.com:80/x HTTP/1.1", HOST),
        400,
        "RFC 9110 4.2.4: userinfo in an http(s) target SHOULD be treated as an error",
    ),
    _s(
        "host-userinfo",
        head(b"GET / HTTP/1.1", b"Host: u@example.com"),
        400,
        'RFC 9110 7.2 / 4.2.4: Host = uri-host [":" port], no userinfo',
    ),
    _s(
        "host-inner-space",
        head(b"GET / HTTP/1.1", b"Host: example.com evil.example"),
        400,
        'RFC 9110 7.2: Host = uri-host [":" port]; SP is not a host character',
    ),
    _s(
        "host-obs-text",
        head(b"GET / HTTP/1.1", b"Host: ex\xc3\xa4mple.com"),
        400,
        "RFC 9110 7.2 + RFC 3986 3.2.2: reg-name is ASCII (pct-encoded), no obs-text",
    ),
    _s(
        "expect-unknown",
        _post(b"Expect: something-else", b"Content-Length: 5"),
        417,
        "RFC 9110 10.1.1: an unsupported expectation MAY be answered with 417",
    ),
    _s(
        "te-non-token-coding",
        _post(b"Transfer-Encoding: g@zip, chunked"),
        400,
        "RFC 9112 7 / RFC 9110 5.6.2: transfer-coding is a token; '@' is malformed syntax",
    ),
    _s(
        "connect-without-port",
        head(b"CONNECT example.com HTTP/1.1", HOST),
        400,
        'RFC 9112 3.2.3: authority-form = uri-host ":" port (port is required)',
    ),
    _s(
        "cl-19-digits",
        _post(b"Content-Length: 1000000000000000000"),
        400,
        "RFC 9112 6.3 / RFC 9110 8.6: fastpause caps Content-Length at 18 significant digits",
    ),
    _s(
        "cl-u64-max",
        _post(b"Content-Length: 18446744073709551615"),
        400,
        "RFC 9110 8.6: Content-Length beyond fastpause's 18-significant-digit bound is rejected",
    ),
    _s(
        "te-in-http10",
        _post10(b"Transfer-Encoding: chunked"),
        400,
        "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing",
    ),
    _s(
        "te-in-http10-with-host",
        _post10(HOST, b"Transfer-Encoding: chunked"),
        400,
        "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing",
    ),
    _s(
        "te-gzip-chunked-in-http10",
        _post10(b"Transfer-Encoding: gzip, chunked"),
        400,
        "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing",
    ),
    _s(
        "head-too-large",
        _padded_to(32769),
        431,
        "RFC 6585 5: head larger than max_head_size (llhttp has no limit)",
    ),
    _s(
        "too-many-fields",
        _n_fields(101),
        431,
        "RFC 6585 5: more than max_headers field lines (llhttp has no limit)",
    ),
    _s(
        "too-many-fields-http10",
        _n_fields(101, b"1.0"),
        431,
        "RFC 6585 5: more than max_headers field lines (llhttp has no limit)",
    ),
    _s(
        "uri-too-long",
        head(b"GET " + _target_of_len(8193) + b" HTTP/1.1", HOST),
        414,
        "RFC 9112 3 / RFC 9110 15.5.15: target longer than max_uri_size -> 414",
    ),
    _s(
        "uri-too-long-absolute",
        head(b"GET http://example.com" + _target_of_len(8193 - 18) + b" HTTP/1.1", HOST),
        414,
        "RFC 9112 3 / RFC 9110 15.5.15: target longer than max_uri_size -> 414",
    ),
    _s(
        "custom-head-too-large",
        _padded_to(65),
        431,
        "RFC 6585 5: head larger than max_head_size=64",
        max_head_size=64,
    ),
    _s(
        "custom-too-many-fields",
        _n_fields(4),
        431,
        "RFC 6585 5: more than max_headers=3 field lines",
        max_headers=3,
    ),
    _s(
        "custom-uri-too-long",
        head(b"GET " + _target_of_len(17) + b" HTTP/1.1", HOST),
        414,
        "RFC 9110 15.5.15: target longer than max_uri_size=16",
        max_uri_size=16,
    ),
]


# --------------------------------------------------------------------------
# llhttp stricter than RFC 9112: valid heads llhttp rejects, fastpause accepts
# --------------------------------------------------------------------------


def _l(id_: str, data: bytes, reason: str) -> Case:
    return Case("looser-" + id_, data, OK, reason)


LOOSER_THAN_LLHTTP: list[Case] = [
    _l(
        "method-unregistered",
        head(b"FOO / HTTP/1.1", HOST),
        "RFC 9112 3.1: method = token; llhttp only knows a fixed method list",
    ),
    _l(
        "method-lowercase",
        head(b"get / HTTP/1.1", HOST),
        "RFC 9112 3.1: method = token (case-sensitive, 'get' is just another method)",
    ),
    _l(
        "method-punct-token",
        head(b"X-Y! / HTTP/1.1", HOST),
        "RFC 9112 3.1: method = token, all tchar allowed",
    ),
    _l(
        "method-all-tchar",
        head(b"!#$%&'*+-.^_`|~09AZaz / HTTP/1.1", HOST),
        "RFC 9112 3.1: method = token, all tchar allowed",
    ),
    _l(
        "method-rtsp-describe",
        head(b"DESCRIBE / HTTP/1.1", HOST),
        "RFC 9112 3.1: method = token; llhttp refuses RTSP method names over HTTP",
    ),
    _l(
        "cl-duplicate-identical",
        _post(b"Content-Length: 5", b"Content-Length: 5"),
        "RFC 9110 8.6: identical repeated Content-Length MAY be treated as one",
    ),
    _l(
        "cl-duplicate-identical-case",
        _post(b"Content-Length: 5", b"content-length: 5"),
        "RFC 9110 8.6: identical repeated Content-Length MAY be treated as one",
    ),
    _l(
        "cl-list-identical",
        _post(b"Content-Length: 5, 5"),
        "RFC 9110 8.6: list of identical values ('5, 5') MAY be treated as one",
    ),
    _l(
        "cl-list-identical-nosp",
        _post(b"Content-Length: 5,5"),
        "RFC 9110 8.6 + 5.6.1: list of identical values MAY be treated as one",
    ),
    _l(
        "cl-list-identical-three",
        _post(b"Content-Length: 5, 5, 5"),
        "RFC 9110 8.6: list of identical values MAY be treated as one",
    ),
    _l(
        "te-chunked-trailing-tab",
        _post(b"Transfer-Encoding: chunked\t"),
        "RFC 9112 5.1: trailing OWS (HTAB) is not part of the value; llhttp compares raw",
    ),
    _l(
        "te-chunked-trailing-sp-tab",
        _post(b"Transfer-Encoding: chunked \t"),
        "RFC 9112 5.1: trailing OWS is not part of the value; llhttp compares raw",
    ),
    _l(
        "te-gzip-chunked-trailing-tab",
        _post(b"Transfer-Encoding: gzip, chunked\t"),
        "RFC 9112 5.1: trailing OWS is not part of the value; llhttp compares raw",
    ),
    _l(
        "te-uppercase-chunked-trailing-tab",
        _post(b"Transfer-Encoding: CHUNKED\t"),
        "RFC 9112 5.1: trailing OWS is not part of the value; llhttp compares raw",
    ),
    _l(
        "te-chunked-trailing-comma",
        _post(b"Transfer-Encoding: chunked,"),
        "RFC 9110 5.6.1: recipients MUST accept and ignore empty list elements",
    ),
    _l(
        "te-chunked-trailing-empty-elements",
        _post(b"Transfer-Encoding: chunked, ,"),
        "RFC 9110 5.6.1: recipients MUST accept and ignore empty list elements",
    ),
]


ALL_CASES: list[Case] = CORPUS + STRICTER_THAN_LLHTTP + LOOSER_THAN_LLHTTP
