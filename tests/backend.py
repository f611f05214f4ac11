#!/usr/bin/env python3
"""A small HTTP/1.1 origin server for the end-to-end proxy tests.

Runs as its own process: ``python tests/backend.py --port 0`` prints
``backend: listening on 127.0.0.1:PORT`` once it accepts connections. It is written
with asyncio streams and its own strict request parser, and never imports fastpause,
so it judges what the proxy sends upstream independently. Keep-alive (HTTP/1.1
default, 1.0 with ``Connection: keep-alive``), pipelining and many connections work.

Endpoints (by path; query parameters in brackets):

  /echo                     the request body, with Content-Length
  /echo-chunked [trailers]  the request body streamed back as chunked, piece by piece
  /inspect, /inspect/...    JSON: method, target, version, headers as received, body
                            length and sha256, chunk extensions, trailers, connection id
  /status/NNN [close, cl]   a response with that status (no body for 204/304/HEAD)
  /chunked [size, chunk, ext, trailers]   a chunked payload
  /close-delimited [size, conn]           payload without a length, then close
  /http10 [size]            an HTTP/1.0 response with Content-Length, then close
  /download [size]          ``size`` payload bytes with Content-Length, streamed
  /slow-upload [delay, read]  reads ``read`` bytes per ``delay`` seconds; JSON of
                            the body's length and sha256
  /hold [key]               answers only after /__release?key=K (or the peer closes)
  /interim [count, then]    ``count`` 103 Early Hints, then 200 (or RST if then=reset)
  /overlong                 Content-Length 5 but a second response follows (keep-alive)
  /head-with-body           a body even for HEAD (keep-alive)
  /hop-response             a response carrying hop-by-hop headers and two Set-Cookie
  /reset-before             RST (SO_LINGER 0) without answering
  /reset-during [size, key, chunked]  head and half the body, then RST (after release
                            of ``key`` when given)
  /stall-body [size]        head and half the body, then nothing until the peer closes
  /garbage [kind]           an invalid response head, then close
  /no-response              never answers; waits for the peer to close

Control endpoints (not counted in the statistics):

  /__stats                  JSON counters, see STATS
  /__release [key]          release a /hold or /reset-during
  /__wait-held [key]        answers once a /hold or /reset-during with that key arrived
  /__wait-closed [key]      answers once the peer closed a held connection
  /__close-idle             closes every idle keep-alive connection, then answers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import sys
from collections import Counter
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import payload, payload_chunks

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
REQUEST_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(\d)\.(\d)$")
CHUNK_LINE = re.compile(rb"^([0-9A-Fa-f]{1,16})((?:[ \t]*;[^\r\n]*)?)$")
CONTROL_PREFIX = "/__"

STATS: dict = {
    "accepted": 0,  # TCP connections accepted (including control connections)
    "connections": 0,  # connections that carried at least one non-control request
    "open_connections": 0,  # of those, how many are open now
    "heads": 0,  # non-control request heads received
    "completed": 0,  # non-control requests whose body was fully received
    "aborted": 0,  # connections that ended in the middle of a request
    "parse_errors": 0,  # requests the strict parser rejected
    "upstream_pipelining": 0,  # bytes that arrived while a held request was pending
    "paths": Counter(),  # non-control heads per path
    "versions": Counter(),  # non-control heads per HTTP version
}


class BadRequest(Exception):
    pass


class Aborted(Exception):
    pass


class Hold:
    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.closed = asyncio.Event()


HOLDS: dict[str, Hold] = {}
IDLE: set[asyncio.StreamWriter] = set()
_next_conn_id = 0


def hold(key: str) -> Hold:
    if key not in HOLDS:
        HOLDS[key] = Hold()
    return HOLDS[key]


class Request:
    def __init__(self, reader, method, target, version, headers, conn_id, index):
        self.reader: asyncio.StreamReader = reader
        self.method: str = method
        self.target: str = target
        self.version: str = version
        self.headers: list[tuple[str, str]] = headers
        self.conn_id = conn_id
        self.index = index
        url = urlsplit(target)
        self.path = url.path
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.trailers: list[tuple[str, str]] = []
        self.extensions: list[str] = []
        self.control = self.path.startswith(CONTROL_PREFIX)
        self.body_done = False

        te = self.get_all("transfer-encoding")
        cl = self.get_all("content-length")
        if te and cl:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        self.chunked = False
        self.remaining = 0
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings != ["chunked"]:
                raise BadRequest(f"unsupported Transfer-Encoding {te}")
            self.chunked = True
        elif cl:
            if len(cl) != 1 or not cl[0].isdigit():
                raise BadRequest(f"bad Content-Length {cl}")
            self.remaining = int(cl[0])
        if version == "HTTP/1.1" and len(self.get_all("host")) != 1:
            raise BadRequest("HTTP/1.1 request without exactly one Host")
        if not self.chunked and self.remaining == 0:
            self._finish()

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens("connection")
        if self.version == "HTTP/1.1":
            return "close" not in conn
        return "keep-alive" in conn

    def _finish(self) -> None:
        if not self.body_done:
            self.body_done = True
            if not self.control:
                STATS["completed"] += 1

    async def _line(self) -> bytes:
        try:
            line = await self.reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise Aborted("EOF in chunked body") from None
        except asyncio.LimitOverrunError:
            raise BadRequest("chunk line too long") from None
        line = line[:-2]
        if b"\r" in line or b"\n" in line:
            raise BadRequest(f"bare CR/LF in chunked framing: {line!r}")
        return line

    async def chunks(self, piece: int = 65536):
        """The request body, piece by piece, as it arrives."""
        if self.body_done:
            return
        if not self.chunked:
            while self.remaining > 0:
                data = await self.reader.read(min(self.remaining, piece))
                if not data:
                    raise Aborted("EOF in body")
                self.remaining -= len(data)
                yield data
            self._finish()
            return
        while True:
            line = await self._line()
            m = CHUNK_LINE.match(line)
            if not m:
                raise BadRequest(f"bad chunk size line {line!r}")
            size = int(m.group(1), 16)
            if m.group(2):
                self.extensions.append(m.group(2).decode("latin-1"))
            if size == 0:
                while True:
                    tline = await self._line()
                    if not tline:
                        break
                    self.trailers.append(parse_field(tline))
                self._finish()
                return
            while size > 0:
                data = await self.reader.read(min(size, piece))
                if not data:
                    raise Aborted("EOF in chunk")
                size -= len(data)
                yield data
            if await self._line() != b"":
                raise BadRequest("chunk data not followed by CRLF")

    async def read_body(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def drain(self) -> None:
        async for _ in self.chunks():
            pass


def parse_field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise BadRequest(f"obs-fold {line!r}")
    name, sep, value = line.partition(b":")
    if not sep or not TOKEN.match(name):
        raise BadRequest(f"bad header line {line!r}")
    value = value.strip(b" \t")
    if BAD_VALUE.search(value):
        raise BadRequest(f"control character in {line!r}")
    return name.decode("latin-1"), value.decode("latin-1")


async def read_request(reader, conn_id: int, index: int) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise Aborted("EOF in request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too long") from None
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise BadRequest(f"bare CR/LF in head: {line!r}")
    m = REQUEST_LINE.match(lines[0])
    if not m:
        raise BadRequest(f"bad request line {lines[0]!r}")
    version = f"HTTP/{m.group(3).decode()}.{m.group(4).decode()}"
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(f"unsupported version {version}")
    headers = [parse_field(line) for line in lines[1:]]
    return Request(
        reader, m.group(1).decode(), m.group(2).decode("latin-1"), version, headers, conn_id, index
    )


REASONS = {
    100: "Continue",
    103: "Early Hints",
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def head_bytes(status: int, headers: list[tuple[str, str]], version: str = "HTTP/1.1") -> bytes:
    lines = [f"{version} {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def conn_headers(req: Request, keep: bool) -> list[tuple[str, str]]:
    if not keep:
        return [("Connection", "close")]
    if req.version == "HTTP/1.0":
        return [("Connection", "keep-alive")]
    return []


async def respond(
    writer,
    req: Request,
    status: int,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    keep: bool = True,
    content_length: bool = True,
) -> bool:
    keep = keep and req.keep_alive
    hs = list(headers or [])
    if content_length and status != 204:
        hs.append(("Content-Length", str(len(body))))
    hs += conn_headers(req, keep)
    send_body = req.method != "HEAD" and status not in (204, 304)
    writer.write(head_bytes(status, hs) + (body if send_body else b""))
    await writer.drain()
    return keep


def rst(writer) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def wait_eof_or(reader, event: asyncio.Event) -> bool:
    """Wait until ``event`` is set (True) or the peer closes/sends (False)."""
    ev = asyncio.ensure_future(event.wait())
    rd = asyncio.ensure_future(reader.read(1))
    done, _ = await asyncio.wait({ev, rd}, return_when=asyncio.FIRST_COMPLETED)
    if rd in done:
        ev.cancel()
        with contextlib.suppress(Exception):
            if rd.result():
                STATS["upstream_pipelining"] += 1
        return False
    rd.cancel()
    with contextlib.suppress(BaseException):
        await rd
    return True


async def wait_eof(reader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


# --------------------------------------------------------------------------- endpoints
# Each returns True to keep the connection open for the next request.


async def ep_echo(req, reader, writer):
    body = await req.read_body()
    return await respond(writer, req, 200, body, [("Content-Type", "application/octet-stream")])


async def ep_echo_chunked(req, reader, writer):
    keep = req.keep_alive
    writer.write(
        head_bytes(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("Transfer-Encoding", "chunked"),
                *conn_headers(req, keep),
            ],
        )
    )
    h = hashlib.sha256()
    async for piece in req.chunks():
        h.update(piece)
        writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        await writer.drain()
    trailer = f"X-Body-Sha256: {h.hexdigest()}\r\n" if req.query.get("trailers") else ""
    writer.write(f"0\r\n{trailer}\r\n".encode())
    await writer.drain()
    return keep


async def ep_inspect(req, reader, writer):
    h = hashlib.sha256()
    n = 0
    async for piece in req.chunks():
        h.update(piece)
        n += len(piece)
    info = {
        "method": req.method,
        "target": req.target,
        "version": req.version,
        "headers": [[k, v] for k, v in req.headers],
        "chunked": req.chunked,
        "body_length": n,
        "body_sha256": h.hexdigest(),
        "chunk_extensions": req.extensions,
        "trailers": [[k, v] for k, v in req.trailers],
        "connection_id": req.conn_id,
        "request_index": req.index,
    }
    body = json.dumps(info).encode()
    return await respond(writer, req, 200, body, [("Content-Type", "application/json")])


async def ep_status(req, reader, writer):
    await req.drain()
    status = int(req.path.rsplit("/", 1)[1])
    keep = not req.query.get("close")
    if status == 304:
        hs = [("ETag", '"v1"')]
        if "cl" in req.query:
            hs.append(("Content-Length", req.query["cl"]))
        return await respond(writer, req, 304, b"", hs, keep=keep, content_length=False)
    body = b"" if status == 204 else f"status {status}\n".encode()
    return await respond(writer, req, status, body, [("Content-Type", "text/plain")], keep=keep)


async def ep_chunked(req, reader, writer):
    await req.drain()
    size = int(req.query.get("size", "1000"))
    step = int(req.query.get("chunk", "100"))
    ext = ";name=value;flag" if req.query.get("ext") else ""
    keep = req.keep_alive
    writer.write(
        head_bytes(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("Transfer-Encoding", "chunked"),
                *conn_headers(req, keep),
            ],
        )
    )
    if req.method != "HEAD":
        data = payload(size)
        for i in range(0, size, step):
            piece = data[i : i + step]
            writer.write(f"{len(piece):x}{ext}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        trailers = ""
        if req.query.get("trailers"):
            trailers = f"X-Checksum: {hashlib.sha256(data).hexdigest()}\r\nX-Trailer-Two: two\r\n"
        writer.write(f"0\r\n{trailers}\r\n".encode())
    await writer.drain()
    return keep


async def ep_close_delimited(req, reader, writer):
    await req.drain()
    size = int(req.query.get("size", "1000"))
    hs = [("Content-Type", "application/octet-stream")]
    if req.query.get("conn", "1") == "1":
        hs.append(("Connection", "close"))
    writer.write(head_bytes(200, hs))
    if req.method != "HEAD":
        for chunk in payload_chunks(size):
            writer.write(chunk)
            await writer.drain()
    await writer.drain()
    return False


async def ep_http10(req, reader, writer):
    await req.drain()
    data = payload(int(req.query.get("size", "1000")))
    writer.write(head_bytes(200, [("Content-Length", str(len(data)))], version="HTTP/1.0") + data)
    await writer.drain()
    return False


async def ep_download(req, reader, writer):
    await req.drain()
    size = int(req.query.get("size", "1000"))
    keep = req.keep_alive
    writer.write(
        head_bytes(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(size)),
                *conn_headers(req, keep),
            ],
        )
    )
    if req.method != "HEAD":
        for chunk in payload_chunks(size):
            writer.write(chunk)
            await writer.drain()
    await writer.drain()
    return keep


async def ep_slow_upload(req, reader, writer):
    delay = float(req.query.get("delay", "0.002"))
    h = hashlib.sha256()
    n = 0
    async for piece in req.chunks(piece=int(req.query.get("read", "16384"))):
        h.update(piece)
        n += len(piece)
        await asyncio.sleep(delay)  # the workload: a slowly-reading upstream
    body = json.dumps({"length": n, "sha256": h.hexdigest()}).encode()
    return await respond(writer, req, 200, body, [("Content-Type", "application/json")])


async def ep_hold(req, reader, writer):
    await req.drain()
    key = req.query.get("key", "default")
    h = hold(key)
    h.arrived.set()
    if await wait_eof_or(reader, h.release):
        return await respond(
            writer, req, 200, f"released {key}\n".encode(), [("Content-Type", "text/plain")]
        )
    h.closed.set()
    return False


async def ep_interim(req, reader, writer):
    await req.drain()
    for _ in range(int(req.query.get("count", "1"))):
        writer.write(head_bytes(103, [("Link", "</style.css>; rel=preload; as=style")]))
        await writer.drain()
    if req.query.get("then") == "reset":
        rst(writer)
        return False
    return await respond(writer, req, 200, b"final body\n", [("Content-Type", "text/plain")])


async def ep_hop_response(req, reader, writer):
    await req.drain()
    hs = [
        ("Connection", "X-Resp-Hop"),
        ("X-Resp-Hop", "must-not-pass"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "example/1"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
        ("X-End-To-End", "kept"),
        ("Content-Type", "text/plain"),
    ]
    return await respond(writer, req, 200, b"hop\n", hs)


async def ep_overlong(req, reader, writer):
    """A broken upstream: more bytes than its Content-Length, on a kept-alive connection."""
    await req.drain()
    writer.write(
        head_bytes(200, [("Content-Length", "5")])
        + b"hello"
        + head_bytes(200, [("Content-Length", "8")])
        + b"smuggled"
    )
    await writer.drain()
    return True


async def ep_head_with_body(req, reader, writer):
    """A broken upstream: a body even for HEAD, on a kept-alive connection."""
    await req.drain()
    writer.write(head_bytes(200, [("Content-Length", "5")]) + b"hello")
    await writer.drain()
    return True


async def ep_reset_before(req, reader, writer):
    await req.drain()
    rst(writer)
    return False


async def ep_reset_during(req, reader, writer):
    await req.drain()
    size = int(req.query.get("size", "20000"))
    data = payload(size)
    half = data[: size // 2]
    if req.query.get("chunked"):
        writer.write(head_bytes(200, [("Transfer-Encoding", "chunked")]))
        writer.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
    else:
        writer.write(head_bytes(200, [("Content-Length", str(size))]) + half)
    await writer.drain()
    key = req.query.get("key")
    if key:
        h = hold(key)
        h.arrived.set()
        await wait_eof_or(reader, h.release)
    rst(writer)
    return False


async def ep_stall_body(req, reader, writer):
    await req.drain()
    size = int(req.query.get("size", "20000"))
    data = payload(size)
    writer.write(head_bytes(200, [("Content-Length", str(size))]) + data[: size // 2])
    await writer.drain()
    await wait_eof(reader)
    return False


GARBAGE = {
    "junk": b"this is not an HTTP response\r\n\r\n",
    "bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "bad-version": b"HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no-colon": b"HTTP/1.1 200 OK\r\nThis header has no colon\r\nContent-Length: 0\r\n\r\n",
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\nhello",
    "conflicting-content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
}


async def ep_garbage(req, reader, writer):
    await req.drain()
    writer.write(GARBAGE[req.query.get("kind", "junk")])
    await writer.drain()
    return False


async def ep_no_response(req, reader, writer):
    await req.drain()
    await wait_eof(reader)
    return False


async def ep_not_found(req, reader, writer):
    await req.drain()
    return await respond(writer, req, 404, b"no such endpoint\n", [("Content-Type", "text/plain")])


# --------------------------------------------------------------------------- control


def _stats_json() -> dict:
    out = dict(STATS)
    out["paths"] = dict(STATS["paths"])
    out["versions"] = dict(STATS["versions"])
    return out


async def ctl_stats(req, reader, writer):
    await req.drain()
    return await respond(
        writer, req, 200, json.dumps(_stats_json()).encode(), [("Content-Type", "application/json")]
    )


async def ctl_release(req, reader, writer):
    await req.drain()
    hold(req.query.get("key", "default")).release.set()
    return await respond(writer, req, 200, b"ok\n")


async def _ctl_wait(req, writer, event_name):
    await req.drain()
    event = getattr(hold(req.query.get("key", "default")), event_name)
    try:
        await asyncio.wait_for(event.wait(), float(req.query.get("timeout", "60")))
    except TimeoutError:
        return await respond(writer, req, 504, b"timed out\n")
    return await respond(writer, req, 200, b"ok\n")


async def ctl_wait_held(req, reader, writer):
    return await _ctl_wait(req, writer, "arrived")


async def ctl_wait_closed(req, reader, writer):
    return await _ctl_wait(req, writer, "closed")


async def ctl_close_idle(req, reader, writer):
    await req.drain()
    n = len(IDLE)
    for w in list(IDLE):
        w.close()
    IDLE.clear()
    return await respond(writer, req, 200, f"closed {n}\n".encode())


ENDPOINTS = {
    "/echo": ep_echo,
    "/echo-chunked": ep_echo_chunked,
    "/inspect": ep_inspect,
    "/chunked": ep_chunked,
    "/close-delimited": ep_close_delimited,
    "/http10": ep_http10,
    "/download": ep_download,
    "/slow-upload": ep_slow_upload,
    "/hold": ep_hold,
    "/interim": ep_interim,
    "/hop-response": ep_hop_response,
    "/overlong": ep_overlong,
    "/head-with-body": ep_head_with_body,
    "/reset-before": ep_reset_before,
    "/reset-during": ep_reset_during,
    "/stall-body": ep_stall_body,
    "/garbage": ep_garbage,
    "/no-response": ep_no_response,
    "/__stats": ctl_stats,
    "/__release": ctl_release,
    "/__wait-held": ctl_wait_held,
    "/__wait-closed": ctl_wait_closed,
    "/__close-idle": ctl_close_idle,
}


def endpoint_for(path: str):
    if path.startswith("/status/"):
        return ep_status
    if path.startswith("/inspect/"):
        return ep_inspect
    return ENDPOINTS.get(path, ep_not_found)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global _next_conn_id
    _next_conn_id += 1
    conn_id = _next_conn_id
    STATS["accepted"] += 1
    counted = False
    index = 0
    req = None
    try:
        while True:
            IDLE.add(writer)
            try:
                req = await read_request(reader, conn_id, index + 1)
            finally:
                IDLE.discard(writer)
            if req is None:
                break
            index += 1
            if not req.control:
                STATS["heads"] += 1
                STATS["paths"][req.path] += 1
                STATS["versions"][req.version] += 1
                if not counted:
                    counted = True
                    STATS["connections"] += 1
                    STATS["open_connections"] += 1
            keep = await endpoint_for(req.path)(req, reader, writer)
            if keep and not req.body_done:
                await req.drain()
            if not keep or writer.is_closing():
                break
            req = None
    except BadRequest as e:
        STATS["parse_errors"] += 1
        print(f"backend: rejected request: {e}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
    except (Aborted, ConnectionError, asyncio.IncompleteReadError):
        STATS["aborted"] += 1
    finally:
        if counted:
            STATS["open_connections"] -= 1
        with contextlib.suppress(Exception):
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS")
    args = parser.parse_args()
    tls = None
    if args.tls:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*args.tls)
    server = await asyncio.start_server(
        handle, args.host, args.port, limit=1 << 20, backlog=1024, ssl=tls
    )
    port = server.sockets[0].getsockname()[1]
    print(f"backend: listening on {args.host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
