"""Support for the hardening tests (smuggling, faults, slowloris, fuzz).

* ``Stack``: a real backend process and a real proxy process, started once for a
  whole module (the per-test fixtures of ``conftest.py`` would start hundreds of
  processes for a corpus); stopped at module teardown, where the proxy must exit
  cleanly and must not have written a traceback.
* ``RawUpstream``: a deliberately misbehaving HTTP/1.1 upstream on raw sockets (in
  threads of the test process). Each request path names a ``Script`` of what to
  send back: arbitrary bytes, then close, reset, hang, half-close or keep going.
* ``RecordingUpstream``: a strict upstream that logs every request the proxy forwards,
  as the reference reader (``http_reference``) splits them (the desync harness).
* Process probes: open fd count and RSS of the proxy.

Nothing here sleeps to synchronize: readiness comes from the processes' output,
and waiting is polling with a deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import conftest  # the test suite's process wrappers (Backend, Proxy, render_config)
import http_reference as ref
from helpers import RawConn, build_request, free_port, request

# --------------------------------------------------------------------------- stacks


class Stack:
    """A backend (``tests/backend.py``) and a proxy routing to it (or to ``upstreams``)."""

    def __init__(
        self,
        tmp: Path,
        route: dict | None = None,
        top: dict | None = None,
        upstreams: list[str] | None = None,
        with_backend: bool = True,
        routes: list[dict] | None = None,
    ) -> None:
        """``routes`` replaces the single route (an upstream "BACKEND" is the backend)."""
        self.tmp = tmp
        self.backend = conftest.Backend(tmp, "backend") if with_backend else None
        addresses = upstreams or [self.backend.address]
        route_cfg = {"name": "app", "upstreams": addresses}
        route_cfg.update(route or {})
        route_cfgs = [route_cfg]
        if routes is not None:
            route_cfgs = [
                {
                    **r,
                    "upstreams": [
                        self.backend.address if u == "BACKEND" else u for u in r["upstreams"]
                    ],
                }
                for r in routes
            ]
        self.proxy = None
        last = None
        for attempt in range(3):
            top_cfg = {
                "listen": [f"127.0.0.1:{free_port()}"],
                "shutdown_timeout": "10s",
                "admin": f"unix:{tmp}/admin{attempt}.sock",
            }
            top_cfg.update(top or {})
            path = tmp / f"proxy{attempt}.toml"
            path.write_text(conftest.render_config(top_cfg, route_cfgs))
            try:
                self.proxy = conftest.Proxy(path, tmp, f"proxy{attempt}")
                break
            except conftest.ProxyStartError as e:
                last = e
                if "in use" not in e.proxy.stderr():
                    break
        if self.proxy is None:
            if self.backend is not None:
                self.backend.kill()
            raise last

    @property
    def port(self) -> int:
        return self.proxy.port

    def stats(self) -> dict:
        return self.backend.stats()

    def stop(self) -> list[str]:
        """Stop both; returns the problems found (traceback, unclean exit)."""
        problems = []
        running = self.proxy.proc.poll() is None
        rc = self.proxy.stop()
        err = self.proxy.stderr()
        if "Traceback" in err:
            problems.append(f"proxy wrote a traceback to stderr:\n{err[-5000:]}")
        if running and rc != 0:
            problems.append(f"proxy exited {rc} on SIGTERM:\n{err[-3000:]}")
        if self.backend is not None:
            if self.backend.proc.poll() is None:
                with contextlib.suppress(Exception):
                    stats = self.backend.stats()
                    if stats["parse_errors"]:
                        problems.append(
                            f"the backend could not parse what the proxy sent:\n"
                            f"{self.backend.stderr()[-3000:]}"
                        )
            self.backend.kill()
        return problems


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def poll_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until truthy; AssertionError with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def good_get(port: int, target: str = "/inspect", timeout: float = 30.0):
    """A normal request on a fresh connection; returns the response (checked 200 + JSON
    target for /inspect)."""
    resp = request(port, build_request("GET", target), timeout=timeout)
    assert resp.status == 200, resp
    if target.startswith("/inspect"):
        assert resp.json()["target"] == target, resp
    return resp


# --------------------------------------------------------------------------- raw upstream

SEND = "send"
CLOSE = "close"  # FIN after what was sent
RST = "rst"  # reset (SO_LINGER 0)
HANG = "hang"  # send nothing more; wait for the peer to close
HALF_CLOSE = "half-close"  # shutdown(SHUT_WR) and wait for the peer to close
KEEP = "keep"  # read the next request on this connection
CALL = "call"  # (CALL, fn): fn(sock) runs in the connection's thread (the test's own step)
# (LATER, bytes): sent on this connection when its next request arrives, before that
# request's own script - an upstream whose response goes on after the proxy took it
# as complete (whoever's request comes next on a reused connection gets these bytes)
LATER = "later"


@dataclass
class Script:
    """What the raw upstream does for one request: ``steps`` in order, each
    ``(SEND, bytes)``, ``(LATER, bytes)``, ``(CALL, fn)`` or one of CLOSE / RST / HANG /
    HALF_CLOSE / KEEP (the last step ends the exchange; without one the connection is
    kept)."""

    steps: list = field(default_factory=list)
    early: bool = False  # answer right after the head, without reading the body

    @classmethod
    def reply(cls, data: bytes, then: str = KEEP) -> Script:
        return cls([(SEND, data), then])


class RawUpstream:
    """A threaded raw-socket upstream that follows ``Script``s chosen by request path.

    ``scripts`` maps a path (query ignored) to a Script, or to a callable
    ``(path, query) -> Script``. Unknown paths get a small valid 200.
    """

    def __init__(self, scripts: dict | None = None, default: Script | None = None) -> None:
        self.scripts = dict(scripts or {})
        self.default = default
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[int, str]] = []  # (connection number, target) by arrival
        self.closed_by_peer: set[int] = set()  # connections the proxy closed (EOF/reset)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # -- lifecycle
    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)

    def __enter__(self) -> RawUpstream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, t in self.requests if t.split("?", 1)[0] == path)

    def conns_of(self, target: str) -> list[int]:
        """The connections that carried requests for exactly ``target``."""
        with self.lock:
            return [c for c, t in self.requests if t == target]

    def wait_closed_by_peer(self, conn: int, timeout: float = 30.0) -> None:
        poll_until(
            lambda: conn in self.closed_by_peer,
            timeout,
            f"the proxy to close upstream connection {conn}",
        )

    # -- serving
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                n = self.connections
                self._socks.add(sock)
            threading.Thread(target=self._serve, args=(sock, n), daemon=True).start()

    def _serve(self, sock: socket.socket, n: int) -> None:
        sock.settimeout(120)
        buf = bytearray()
        later: list[bytes] = []  # LATER bytes owed to the next request on this connection
        try:
            while not self._stop.is_set():
                try:
                    head = self._read_head(sock, buf)
                    script = self._script_for(head[0]) if head else None
                    if head and not script.early and not self._read_body(sock, buf, *head[1:]):
                        head = None
                except ConnectionResetError:
                    head = None
                if head is None:
                    with self.lock:
                        self.closed_by_peer.add(n)
                    return
                with self.lock:
                    self.requests.append((n, head[0]))
                if later:
                    sock.sendall(later.pop())
                if not self._run(sock, script, n, later):
                    return
        except (OSError, ValueError) as e:
            if not self._stop.is_set() and not isinstance(e, ConnectionError | TimeoutError):
                with self.lock:
                    self.errors.append(repr(e))
        finally:
            with self.lock:
                self._socks.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _script_for(self, target: str) -> Script:
        path, _, query = target.partition("?")
        s = self.scripts.get(path)
        if callable(s):
            return s(path, query)
        if s is not None:
            return s
        if self.default is not None:
            return self.default
        return Script.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    @staticmethod
    def _recv_more(sock: socket.socket, buf: bytearray) -> bool:
        data = sock.recv(65536)
        if not data:
            return False
        buf += data
        return True

    def _read_head(self, sock: socket.socket, buf: bytearray):
        """Read one request head: (target, content length, chunked), None at EOF."""
        while b"\r\n\r\n" not in buf:
            if not self._recv_more(sock, buf):
                return None
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end])
        del buf[:end]
        lines = head[:-4].split(b"\r\n")
        target = lines[0].split(b" ")[1].decode("latin-1")
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            elif name.strip().lower() == b"transfer-encoding":
                chunked = True
        return target, length, chunked

    def _read_body(self, sock: socket.socket, buf: bytearray, length: int, chunked: bool) -> bool:
        """Read (and drop) the request body; False at EOF."""
        if chunked:
            while True:
                while b"\r\n" not in buf:
                    if not self._recv_more(sock, buf):
                        return False
                i = buf.index(b"\r\n")
                size = int(bytes(buf[:i]).split(b";")[0], 16)
                del buf[: i + 2]
                if size == 0:
                    while b"\r\n" not in buf:
                        if not self._recv_more(sock, buf):
                            return False
                    # trailers (the proxy forwards none in these tests) end with CRLF
                    while not buf.startswith(b"\r\n"):
                        j = buf.index(b"\r\n")
                        del buf[: j + 2]
                        while b"\r\n" not in buf:
                            if not self._recv_more(sock, buf):
                                return False
                    del buf[:2]
                    break
                while len(buf) < size + 2:
                    if not self._recv_more(sock, buf):
                        return False
                del buf[: size + 2]
        else:
            while len(buf) < length:
                if not self._recv_more(sock, buf):
                    return False
            del buf[:length]
        return True

    def _run(self, sock: socket.socket, script: Script, n: int, later: list[bytes]) -> bool:
        """Play ``script``; True to keep reading requests on this connection."""
        for step in script.steps:
            if isinstance(step, tuple):
                kind, arg = step
                if kind == LATER:
                    later.append(arg)
                elif kind == CALL:
                    arg(sock)
                else:
                    sock.sendall(arg)
            elif step == KEEP:
                return True
            elif step == CLOSE:
                return False
            elif step == RST:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            elif step in (HANG, HALF_CLOSE):
                if step == HALF_CLOSE:
                    sock.shutdown(socket.SHUT_WR)
                while not self._stop.is_set():
                    try:
                        if not sock.recv(65536):
                            break
                    except TimeoutError:
                        continue
                    except ConnectionResetError:
                        break
                with self.lock:
                    self.closed_by_peer.add(n)
                return False
            else:
                raise ValueError(f"unknown step {step!r}")
        return True


class RecordingUpstream(RawUpstream):
    """An upstream that reads what the proxy forwards with the strict reference reader
    (``http_reference.split_requests``), appends every complete request to ``log`` as
    ``(connection number, http_reference.Request)`` and answers it with an empty 200.
    What that reader refuses goes to ``errors``: the proxy forwarded something a strict
    server reads differently (or not at all)."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self) -> None:
        self.log: list[tuple[int, ref.Request]] = []
        self._conns: dict[int, socket.socket] = {}
        self._waiting: set[int] = set()  # connections with nothing to read, waiting for more
        super().__init__({})

    def quiet(self) -> bool:
        """True when every connection waits for bytes with none unread: whatever the
        proxy sent so far is in ``log`` (or ``errors``)."""
        with self.lock:
            return all(n in self._waiting and _unread(s) == 0 for n, s in self._conns.items())

    def _serve(self, sock: socket.socket, n: int) -> None:
        buf = bytearray()
        with self.lock:
            self._conns[n] = sock
        try:
            while not self._stop.is_set():
                with self.lock:
                    self._waiting.add(n)
                select.select([sock], [], [])  # readable: bytes count as unread until recv
                with self.lock:
                    self._waiting.discard(n)
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                split = ref.split_requests(bytes(buf))
                if split.requests:
                    with self.lock:
                        self.log += [(n, r) for r in split.requests]
                    del buf[: split.requests[-1].end]
                    sock.sendall(self.ANSWER * len(split.requests))
                if split.stop == ref.REFUSED:
                    with self.lock:
                        self.errors.append(f"the proxy forwarded {bytes(buf)[:300]!r}: {split.why}")
                    break
                if split.stop == ref.CLOSED:
                    break
        except OSError:
            pass
        finally:
            with self.lock:
                self._conns.pop(n, None)
                self._waiting.discard(n)
                self._socks.discard(sock)
                self.closed_by_peer.add(n)
            with contextlib.suppress(OSError):
                sock.close()


def _unread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def read_or_cut(conn: RawConn, method: str = "GET"):
    """A response, or None if the connection was cut (EOF/RST) before one was complete.

    A ``ProtocolViolation`` (garbage that reached the client) propagates."""
    from helpers import IncompleteResponse

    try:
        return conn.read_response(method)
    except IncompleteResponse:
        return None
