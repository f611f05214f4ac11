"""The token table of fuzz_request_head.py's structured inputs (shared with replay.py)."""

from __future__ import annotations

# Structured inputs: after a first byte with its low bit set, each byte picks a token
# (or, past the table, stands for itself), so most inputs are nearly heads and the
# interesting decisions (framing, Host, versions, targets) are reached often.
TOKENS = [
    b"GET",
    b"POST",
    b"HEAD",
    b"OPTIONS",
    b"CONNECT",
    b"PUT",
    b" ",
    b"  ",
    b"\t",
    b"/",
    b"/a?b=c",
    b"*",
    b"http://example.test/x",
    b"https://h:1/",
    b"example.test:443",
    b"//x",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b" HTTP/2.0",
    b" HTTP/1.1\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b"Host: ",
    b"Host: example.test\r\n",
    b"host:",
    b"example.test",
    b"evil.test",
    b"Content-Length: ",
    b"content-length:",
    b"Content-Length: 5\r\n",
    b"0",
    b"5",
    b"00",
    b"18446744073709551616",
    b"-",
    b"+",
    b"0x",
    b"Transfer-Encoding: ",
    b"transfer-encoding:",
    b"Transfer-Encoding: chunked\r\n",
    b"chunked",
    b"CHUNKED",
    b"gzip",
    b"identity",
    b",",
    b", ",
    b";",
    b"=",
    b'"',
    b"\\",
    b":",
    b": ",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"Upgrade",
    b"Upgrade: websocket\r\n",
    b"Expect: ",
    b"100-continue",
    b"TE: trailers\r\n",
    b"X-A: b\r\n",
    b"\x0b",
    b"\x0c",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"@",
    b"%0d%0a",
    b"#",
    # boundary numbers (tests/number_corpus.py): 2^31, 2^32, 2^53, 2^63, the limits
    b"2147483648",
    b"4294967296",
    b"9007199254740992",
    b"9223372036854775808",
    b"999999999999999999",
    b"1000000000000000000",
    b"0" * 30,
]


def decode(data: bytes) -> bytes:
    if not data or not data[0] & 1:
        return data[1:]
    out = bytearray()
    for b in data[1:]:
        out += TOKENS[b] if b < len(TOKENS) else bytes([b])
    return bytes(out)
