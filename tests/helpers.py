"""Support for the end-to-end proxy tests: a raw HTTP/1.1 client and response reader,
deterministic payloads, small socket utilities, and what the test backends share.

The response reader is deliberately strict about what the proxy sends back (CRLF line
endings, well-formed status line and header fields, exactly one framing), because the
proxy's output is what these tests are checking. It understands Content-Length,
chunked (with extensions and trailers), close-delimited bodies and 1xx interim responses.

This module is also imported by ``backend.py`` (for the payload generator) and by the
support modules run as backend processes, so it must stay free of pytest and fastpause
imports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import resource
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- payloads

BLOCK = 65536


def payload_block(k: int) -> bytes:
    """Block number ``k`` of the deterministic test payload (64 KiB of seeded random bytes)."""
    return random.Random(k).randbytes(BLOCK)


def payload_chunks(size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of the deterministic payload, in blocks of at most 64 KiB."""
    k = 0
    remaining = size
    while remaining > 0:
        block = payload_block(k)
        if remaining < BLOCK:
            block = block[:remaining]
        yield block
        remaining -= len(block)
        k += 1


def payload(size: int) -> bytes:
    return b"".join(payload_chunks(size))


def payload_sha256(size: int) -> str:
    h = hashlib.sha256()
    for chunk in payload_chunks(size):
        h.update(chunk)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- sockets


def toml_value(value) -> str:
    """A Python value as TOML: scalars, arrays and inline tables
    (``{ address = "...", weight = 3 }``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_config(top: dict, routes: list[dict]) -> str:
    """A proxy config file: ``top`` keys, then one ``[[routes]]`` table per route (keys
    whose value is None are left out).

    One process (``workers = 1``) unless ``top`` says otherwise: what a test observes
    of one process (its fds, its balancing) is then what it checks. The suites marked
    ``workers_variants`` and ``test_workers`` run with workers; the CLI tests run the
    default (``auto``).
    """
    top = {"workers": 1, **top}
    out = [f"{k} = {toml_value(v)}" for k, v in top.items() if v is not None]
    for route in routes:
        out += ["", "[[routes]]"]
        out += [f"{k} = {toml_value(v)}" for k, v in route.items() if v is not None]
    return "\n".join(out) + "\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def raise_fd_limit(need: int) -> int:
    """Raise the soft limit on open files towards ``need`` (as far as the hard limit
    allows) and return it: the test and the proxy it starts (which inherits the
    limit) hold every connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def reset_peak_rss(pid: int) -> None:
    """Start a new peak: ``VmHWM`` is set back to the current RSS (Linux clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM line")


# --------------------------------------------------------------------------- responses


class ProtocolViolation(AssertionError):
    """The peer sent something that is not valid HTTP/1.1."""


class IncompleteResponse(Exception):
    """The connection ended (EOF or reset) before a complete response arrived."""

    def __init__(self, message: str, *, status: int | None = None, body: bytes = b""):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[Response] = field(default_factory=list)
    framing: str = "none"  # "length" | "chunked" | "close" | "none"
    chunk_extensions: list[bytes] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """The value of the only ``name`` field (None if absent; error if repeated)."""
        values = self.get_all(name)
        if not values:
            return None
        assert len(values) == 1, f"{name} appears {len(values)} times: {values}"
        return values[0]

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def has(self, name: str) -> bool:
        return bool(self.get_all(name))

    @property
    def connection_tokens(self) -> set[str]:
        tokens: set[str] = set()
        for value in self.get_all("connection"):
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
        return tokens

    @property
    def closes(self) -> bool:
        return "close" in self.connection_tokens

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:  # short, so assertion failures stay readable
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        return (
            f"<Response {self.version} {self.status} {self.reason!r} headers={self.headers!r} "
            f"framing={self.framing} body={body!r}>"
        )


_STATUS_LINE = re.compile(rb"^HTTP/(\d)\.(\d) (\d{3}) ([\t \x21-\x7e\x80-\xff]*)$")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_LINE = re.compile(rb"^([0-9A-Fa-f]{1,16})((?:[ \t]*;[^\r\n]*)?)$")


class RawConn:
    """A client TCP connection that sends raw bytes and reads raw HTTP responses."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    # -- plumbing
    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0): the client is unambiguously gone."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bool:
        """Read more into the buffer; False at EOF (or reset)."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_line(self, what: str, partial: dict) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                if not line.endswith(b"\r\n"):
                    raise ProtocolViolation(f"{what} ends in a bare LF: {line!r}")
                line = line[:-2]
                if b"\r" in line:
                    raise ProtocolViolation(f"{what} contains a bare CR: {line!r}")
                return line
            if len(self.buf) > 1 << 20:
                raise ProtocolViolation(f"{what} longer than 1 MiB")
            if not self._recv():
                raise IncompleteResponse(
                    f"connection ended while reading {what} (got {bytes(self.buf[:200])!r})",
                    **partial,
                )

    def _read_exact(self, n: int, partial: dict, sink: bytearray) -> None:
        while n > 0:
            if not self.buf and not self._recv():
                raise IncompleteResponse(
                    f"connection ended with {n} body bytes missing",
                    status=partial.get("status"),
                    body=bytes(sink),
                )
            take = min(n, len(self.buf))
            sink += self.buf[:take]
            del self.buf[:take]
            n -= take

    def _read_fields(self, what: str, partial: dict) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        while True:
            line = self._read_line(what, partial)
            if not line:
                return fields
            if line[:1] in (b" ", b"\t"):
                raise ProtocolViolation(f"obs-fold in {what}: {line!r}")
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise ProtocolViolation(f"malformed {what}: {line!r}")
            value = value.strip(b" \t")
            if _FIELD_VALUE_BAD.search(value):
                raise ProtocolViolation(f"control character in {what}: {line!r}")
            fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def _read_head(self) -> Response:
        partial: dict = {}
        line = self._read_line("status line", partial)
        m = _STATUS_LINE.match(line)
        if not m:
            raise ProtocolViolation(f"malformed status line: {line!r}")
        status = int(m.group(3))
        partial["status"] = status
        headers = self._read_fields("header field", partial)
        return Response(
            version=f"HTTP/{m.group(1).decode()}.{m.group(2).decode()}",
            status=status,
            reason=m.group(4).decode("latin-1"),
            headers=headers,
        )

    def read_response(self, method: str = "GET") -> Response:
        """Read one complete response (after any 1xx interim responses)."""
        interim: list[Response] = []
        while True:
            resp = self._read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.interim = interim
        partial = {"status": resp.status}
        body = bytearray()
        te = resp.get_all("transfer-encoding")
        cl = resp.get_all("content-length")
        if method.upper() == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            resp.framing = "none"
            if resp.status == 204 and (te or cl):
                raise ProtocolViolation(f"204 response with framing headers: {resp!r}")
        elif te:
            if cl:
                raise ProtocolViolation(
                    f"response has both Transfer-Encoding and Content-Length: {resp!r}"
                )
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings[-1] != "chunked":
                raise ProtocolViolation(f"response Transfer-Encoding not ending in chunked: {te}")
            resp.framing = "chunked"
            self._read_chunked(resp, body, partial)
        elif cl:
            if len(set(cl)) != 1 or not cl[0].isdigit():
                raise ProtocolViolation(f"bad response Content-Length: {cl}")
            resp.framing = "length"
            self._read_exact(int(cl[0]), partial, body)
        else:
            resp.framing = "close"
            while self._recv():
                pass
            body += self.buf
            self.buf.clear()
        resp.body = bytes(body)
        return resp

    def _read_chunked(self, resp: Response, body: bytearray, partial: dict) -> None:
        while True:
            try:
                line = self._read_line("chunk size line", partial)
            except IncompleteResponse as e:
                raise IncompleteResponse(str(e), status=resp.status, body=bytes(body)) from None
            m = _CHUNK_LINE.match(line)
            if not m:
                raise ProtocolViolation(f"malformed chunk size line: {line!r}")
            size = int(m.group(1), 16)
            if m.group(2):
                resp.chunk_extensions.append(m.group(2))
            if size == 0:
                try:
                    resp.trailers = self._read_fields("trailer field", partial)
                except IncompleteResponse as e:
                    raise IncompleteResponse(str(e), status=resp.status, body=bytes(body)) from None
                return
            self._read_exact(size, partial, body)
            end = bytearray()
            self._read_exact(2, {"status": resp.status}, end)
            if bytes(end) != b"\r\n":
                raise ProtocolViolation(f"chunk data not followed by CRLF: {bytes(end)!r}")

    def read_interim(self) -> Response:
        """Read exactly one response head that must be a 1xx (e.g. 100 Continue)."""
        resp = self._read_head()
        assert 100 <= resp.status < 200, f"expected an interim response, got {resp!r}"
        return resp

    def read_until_close(self, timeout: float = 30.0) -> bytes:
        """Everything the peer sends until it closes; raises TimeoutError if it does not."""
        self.sock.settimeout(timeout)
        try:
            while self._recv():
                pass
        except TimeoutError:
            raise TimeoutError(f"peer did not close within {timeout}s") from None
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def is_closed_by_peer(self, timeout: float = 30.0) -> bool:
        """True if the peer closes (FIN or RST) without sending anything more."""
        extra = self.read_until_close(timeout)
        assert extra == b"", f"peer sent unexpected bytes before closing: {extra[:300]!r}"
        return True


def build_request(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: str | None = "example.test",
    content_length: bool | None = None,
) -> bytes:
    """A well-formed request. Adds Host (unless None) and Content-Length for a body."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if content_length or (content_length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes, trailers: list[tuple[str, str]] | None = None, ext: str = "") -> bytes:
    """A chunked body: one chunk per piece (empty pieces are skipped), then trailers."""
    out = bytearray()
    for piece in pieces:
        if piece:
            out += f"{len(piece):x}{ext}\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n"
    for name, value in trailers or []:
        out += f"{name}: {value}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out)


def request(port: int, raw: bytes, method: str | None = None, timeout: float = 30.0) -> Response:
    """Send ``raw`` on a fresh connection and read one response."""
    if method is None:
        method = raw.split(b" ", 1)[0].decode("latin-1")
    with RawConn(port, timeout=timeout) as conn:
        conn.send(raw)
        return conn.read_response(method)


def get_json(port: int, target: str, timeout: float = 30.0):
    resp = request(port, build_request("GET", target), timeout=timeout)
    assert resp.status == 200, resp
    return resp.json()


# --------------------------------------------------------------------------- test backends
#
# The backend processes the tests start (``backend.py``, and the recorder, identity and
# WebSocket backends that ``hold_support``, ``deploy_support`` and ``ws_support`` run as
# scripts) are driven the same way from the test side, and the recorder and identity
# backends serve HTTP the same way: both halves are written once, here.


class BackendClient:
    """Control requests straight to a backend process (not through the proxy).

    Each backend has a few control paths: ``/__stats`` (its counters; not the
    recorder's), ``/__log`` (the recorder's arrivals), and ``/__health?status=NNN``
    (the identity and WebSocket backends' ``/health`` answer). A subclass provides
    ``port`` once its process listens.
    """

    port: int
    call_timeout: float = 30.0  # how long a control request may take to be answered

    def call(self, target: str, timeout: float | None = None) -> Response:
        """``GET target`` on a fresh connection."""
        timeout = self.call_timeout if timeout is None else timeout
        return request(self.port, build_request("GET", target), timeout=timeout)

    def get_json(self, target: str):
        """The JSON body of ``GET target``, which must answer 200."""
        return get_json(self.port, target, timeout=self.call_timeout)

    def stats(self) -> dict:
        return self.get_json("/__stats")

    def set_health(self, status: int) -> None:
        """Make ``/health`` answer ``status`` from now on."""
        assert self.call(f"/__health?status={status}").status == 200


REASONS = {
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _framing(fields: list[str]) -> tuple[int, bool] | None:
    """``(Content-Length, Connection: close)`` of a request head's fields; None when it
    has a Transfer-Encoding (the minimal backends do not read chunked bodies)."""
    length, close = 0, False
    for line in fields:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding":
            return None
        if name == "content-length":
            length = int(value)
        elif name == "connection" and "close" in value.lower():
            close = True
    return length, close


class BackendProtocol(asyncio.Protocol):
    """One connection to a minimal backend (the recorder, the identity backend).

    Protocol callbacks instead of streams, so that one process keeps up with thousands
    of connections and the load generator. Only the request line matters to these
    backends: a Content-Length body is skipped, a chunked request refused. A subclass
    answers each request with ``answer`` and says how to refuse with ``refuse_chunked``.
    """

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ")
            framing = _framing(lines[1:])
            if framing is None:
                self.refuse_chunked()
                return
            length, close = framing
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            self.answer(method, target, close)
            if close:
                return

    def answer(self, method: str, target: str, close: bool) -> None:
        raise NotImplementedError

    def refuse_chunked(self) -> None:
        raise NotImplementedError

    def send(
        self, status: int, body: bytes, close: bool, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """One Content-Length response (``headers`` first); ``close`` ends the connection."""
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers or [])
        head += f"Content-Length: {len(body)}\r\n"
        if close:
            head += "Connection: close\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)
        if close:
            self.transport.close()


def backend_args(description: str, name: str | None = None) -> argparse.Namespace:
    """A backend script's command line: ``--port`` (0: any free port) and, when ``name``
    is given, ``--name`` defaulting to it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    if name is not None:
        parser.add_argument("--name", default=name)
    return parser.parse_args()


def announce(ready: str, sock: socket.socket) -> None:
    """Print the readiness line the test side waits for: ``READY127.0.0.1:PORT``."""
    print(f"{ready}127.0.0.1:{sock.getsockname()[1]}", flush=True)


async def serve_backend(protocol: Callable[[], asyncio.Protocol], port: int, ready: str) -> None:
    """Serve ``protocol`` on 127.0.0.1:``port`` until killed, announced with ``ready``.
    The backlog is large because the hold tests open thousands of connections at once."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=4096)
    announce(ready, server.sockets[0])
    async with server:
        await server.serve_forever()


def run_fast(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on uvloop when it is installed (the backends and the load generator
    must keep up with the proxy), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
