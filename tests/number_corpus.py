"""Boundary numbers for the number audit (RELIABILITY.md, "Numbers").

Every number the core parses is tried at 2^31, 2^32, 2^53, 2^63 and 2^64 (each +-1),
at the documented limits (+1), at values that a 32- or 64-bit wrap turns into a
small one, and at small values; each with no, one and 30 leading zeros. This module
renders them for each field and builds the byte streams the end-to-end tests, the
desync harness (``test_desync.py``) and the fuzz seeds (``fuzz/``) send.

No pytest or fastpause imports: the atheris harnesses use it too.
"""

from __future__ import annotations

import http_reference as ref

POWERS = (31, 32, 53, 63, 64)
SMALL = 5  # the body every stream carries is b"hello"
BOUNDARIES: tuple[int, ...] = tuple(
    sorted(
        {2**k + d for k in POWERS for d in (-1, 0, 1)}
        | {2**k + SMALL for k in POWERS}  # what a k-bit wrap reads as SMALL
        | {ref.MAX_CONTENT_LENGTH, ref.MAX_CONTENT_LENGTH + 1}
        | {ref.MAX_CHUNK_SIZE, ref.MAX_CHUNK_SIZE + 1}
        | {0, 1, SMALL - 1, SMALL, SMALL + 1}
    )
)
ZEROS = (0, 1, 30)

HOST = b"Host: example.test\r\n"
GOOD = b"GET /inspect/after HTTP/1.1\r\n" + HOST + b"\r\n"
BODY = b"hello"


def dec(value: int, zeros: int = 0) -> bytes:
    return b"0" * zeros + b"%d" % value


def hexa(value: int, zeros: int = 0) -> bytes:
    return b"0" * zeros + b"%x" % value


def _cases() -> list[tuple[int, int]]:
    return [(v, z) for v in BOUNDARIES for z in ZEROS]


def cl_request(value: bytes) -> bytes:
    """A POST with Content-Length ``value``, the body b"hello", then a GET."""
    return (
        b"POST /inspect HTTP/1.1\r\n"
        + HOST
        + b"Content-Length: "
        + value
        + b"\r\n\r\n"
        + BODY
        + GOOD
    )


def chunked_request(size: bytes) -> bytes:
    """A chunked POST whose first chunk says ``size`` and holds b"hello", then a GET."""
    body = size + b"\r\n" + BODY + b"\r\n0\r\n\r\n"
    return (
        b"POST /inspect HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n" + body + GOOD
    )


def host_port_request(port: bytes) -> bytes:
    return b"GET /inspect HTTP/1.1\r\nHost: example.test:" + port + b"\r\n\r\n" + GOOD


def absolute_port_request(port: bytes) -> bytes:
    return b"GET http://example.test:" + port + b"/inspect HTTP/1.1\r\n" + HOST + b"\r\n" + GOOD


def version_request(major: bytes, minor: bytes) -> bytes:
    return b"GET /inspect HTTP/" + major + b"." + minor + b"\r\n" + HOST + b"\r\n" + GOOD


def request_streams() -> list[tuple[str, bytes]]:
    """(id, client byte stream) for every field at every boundary."""
    out: list[tuple[str, bytes]] = []
    for v, z in _cases():
        out.append((f"cl-{v}-z{z}", cl_request(dec(v, z))))
        out.append((f"chunk-{v:x}-z{z}", chunked_request(hexa(v, z))))
        out.append((f"host-port-{v}-z{z}", host_port_request(dec(v, z))))
        if z == 0:
            out.append((f"abs-port-{v}", absolute_port_request(dec(v))))
            out.append((f"version-major-{v}", version_request(dec(v), b"1")))
            out.append((f"version-minor-{v}", version_request(b"1", dec(v))))
    for z in (1, 30):
        out.append((f"version-zeros-z{z}", version_request(dec(1, z), dec(1, z))))
    # leading zeros only limited by the line limits: 4 KiB for a chunk size line (its
    # CR included), the head size for a Content-Length
    out.append(("chunk-zeros-line-limit", chunked_request(hexa(SMALL, 4094))))
    out.append(("chunk-zeros-over-line-limit", chunked_request(hexa(SMALL, 4095))))
    out.append(("cl-5000-zeros", cl_request(dec(SMALL, 5000))))
    return out


def cl_response(value: bytes) -> bytes:
    """An upstream response with Content-Length ``value`` and the body b"hello"."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n" + BODY


def chunked_response(size: bytes) -> bytes:
    """A chunked upstream response whose first chunk says ``size`` and holds b"hello"."""
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + size
        + b"\r\n"
        + BODY
        + b"\r\n0\r\n\r\n"
    )


def status_response(code: bytes) -> bytes:
    return b"HTTP/1.1 " + code + b" X\r\nContent-Length: 5\r\n\r\n" + BODY


def response_cases() -> list[tuple[str, int, int]]:
    """(field, value, zeros) for the response-side boundary tests."""
    return [(field, v, z) for field in ("cl", "chunk") for v, z in _cases()]
