"""A test client for the admin API, independent of fastpause's own client.

``AdminHttp`` speaks HTTP/1.1 with ``http.client`` to ``unix:PATH`` or
``HOST:PORT``; ``raw_exchange`` sends bytes as given (oversized or malformed
requests) and returns everything the proxy answers until it closes. Waits poll
``GET /status`` against a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WAIT = 30.0


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json", self
        return json.loads(self.body)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def connect(spec: str, timeout: float = WAIT) -> socket.socket:
    """A connected socket to the admin address ``unix:PATH`` or ``HOST:PORT``."""
    if spec.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(spec.removeprefix("unix:"))
        return sock
    host, port = spec.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def raw_exchange(spec: str, data: bytes, timeout: float = WAIT) -> bytes:
    """Send ``data``, half-close, and return all bytes until the proxy closes."""
    with connect(spec, timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may answer and close before taking everything
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


class AdminHttp:
    """The admin API at ``spec``, optionally sending a bearer ``token``."""

    def __init__(self, spec: str, token: str | None = None) -> None:
        self.spec = spec
        self.token = token

    def call(
        self,
        method: str,
        target: str,
        body: bytes | dict | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = WAIT,
    ) -> Reply:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        if self.spec.startswith("unix:"):
            conn: http.client.HTTPConnection = _UnixConnection(
                self.spec.removeprefix("unix:"), timeout
            )
        else:
            host, port = self.spec.rsplit(":", 1)
            conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
        try:
            conn.request(method, target, data, sent)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def status(self) -> dict:
        reply = self.call("GET", "/status")
        assert reply.status == 200, reply
        return reply.json()

    def route(self, name: str = "app") -> dict:
        [entry] = [route for route in self.status()["routes"] if route["name"] == name]
        return entry

    def action(self, route: str, action: str, body: dict | None = None) -> Reply:
        return self.call("POST", f"/routes/{route}/{action}", body)

    def ok(self, route: str, action: str, body: dict | None = None) -> dict:
        reply = self.action(route, action, body)
        assert reply.status == 200, reply
        return reply.json()

    def wait_route(self, predicate: Callable[[dict], bool], what: str, name: str = "app") -> dict:
        """Poll the status until ``predicate(route entry)``; fail at the deadline."""
        deadline = time.monotonic() + WAIT
        while True:
            entry = self.route(name)
            if predicate(entry):
                return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {WAIT}s; last status: {entry}")
            time.sleep(0.01)  # polling interval, not synchronization

    def wait_held(self, count: int, name: str = "app") -> dict:
        return self.wait_route(lambda entry: entry["held"] == count, f"{count} held", name)
