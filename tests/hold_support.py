"""Shared support for the holding tests (``test_hold_*.py``).

- ``Admin``: a client for the proxy's admin API (``GET /status``, ``GET /metrics``,
  ``POST /routes/NAME/ACTION``) over its Unix socket, and ``cli()`` to run the
  ``fastpause`` admin commands as a user would.
- ``hold_proxy``: a fixture starting a proxy (through ``proxy_factory``) with its own
  admin socket in ``tmp_path`` and waiting until the admin API answers.
- A *recording backend* (this file run as a script): answers every request 200 at
  once and keeps a log of arrivals (target, time, connection) in the order it read
  them, served at ``/__log``. ``tests/backend.py`` has no arrival-order log (its
  ``/__stats`` only counts heads per path), which the ordering and pacing tests
  need; it is also built to take thousands of concurrent connections (uvloop when
  available, one protocol object per connection, listen backlog 4096).
- ``fixed_port_backend``: a ``tests/backend.py`` process on a port chosen in advance
  (the "backend comes up later" tests).

Nothing here sleeps to synchronize: every wait polls an observable (the admin
status, a process's stdout) against a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from helpers import (  # noqa: E402
    BackendClient,
    BackendProtocol,
    RawConn,
    Response,
    backend_args,
    build_request,
    request,
    run_fast,
    serve_backend,
)

WAIT = 30.0  # deadline for anything the proxy should do promptly


# --------------------------------------------------------------------------- admin API


def _admin_conn(spec: str, timeout: float) -> RawConn:
    """A ``RawConn`` (strict response reader) over the admin socket ``unix:PATH`` or
    ``HOST:PORT``."""
    if spec.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(spec[len("unix:") :])
        except OSError:
            sock.close()
            raise
    else:
        host, port = spec.rsplit(":", 1)
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    conn = RawConn.__new__(RawConn)
    conn.sock = sock
    conn.buf = bytearray()
    conn.eof = False
    conn.reset = False
    return conn


class Admin:
    """The admin API of one running proxy."""

    def __init__(self, spec: str, proxy=None) -> None:
        self.spec = spec
        self.proxy = proxy

    def _why(self) -> str:
        return f"\n{self.proxy.describe()}" if self.proxy is not None else ""

    def call(self, method: str, path: str, body=None, timeout: float = 60.0) -> Response:
        data = b"" if body is None else json.dumps(body).encode()
        headers = [("Connection", "close")]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        raw = build_request(
            method, path, headers, data, host="localhost", content_length=method != "GET"
        )
        with _admin_conn(self.spec, timeout) as conn:
            conn.send(raw)
            return conn.read_response(method)

    def wait_ready(self, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = self.call("GET", "/status", timeout=5)
                if resp.status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"admin API at {self.spec} not answering{self._why()}")
            time.sleep(0.02)

    # -- status
    def status(self) -> dict:
        resp = self.call("GET", "/status")
        assert resp.status == 200, resp
        return resp.json()

    def route(self, name: str = "app") -> dict:
        return route_entry(self.status(), name)

    def held(self, name: str = "app") -> int:
        return int(self.route(name)["held"])

    def wait_until(self, predicate, what: str, name: str = "app", timeout: float = WAIT) -> dict:
        """Poll ``GET /status`` until ``predicate(route_entry)`` holds; the entry."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.route(name)
            if predicate(entry):
                return entry
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; "
                    f"last status of {name!r}: {entry}{self._why()}"
                )
            time.sleep(0.005)

    def wait_held(self, n: int, name: str = "app", timeout: float = WAIT) -> dict:
        return self.wait_until(lambda r: int(r["held"]) == n, f"{n} held request(s)", name, timeout)

    # -- metrics
    def metrics(self) -> str:
        resp = self.call("GET", "/metrics")
        assert resp.status == 200, resp
        return resp.text

    def metric(self, name: str, **labels: str) -> float | None:
        return metric_value(self.metrics(), name, **labels)

    # -- control
    def action(self, route: str, action: str, body=None, timeout: float = 60.0) -> Response:
        return self.call("POST", f"/routes/{route}/{action}", body, timeout=timeout)

    def pause(self, route: str = "app", **body) -> Response:
        resp = self.action(route, "pause", body or None)
        assert resp.status == 200, resp
        return resp

    def resume(self, route: str = "app", **body) -> Response:
        resp = self.action(route, "resume", body or None)
        assert resp.status == 200, resp
        return resp

    def stop(self, route: str = "app", **body) -> Response:
        resp = self.action(route, "stop", body or None)
        assert resp.status == 200, resp
        return resp

    def start(self, route: str = "app") -> Response:
        resp = self.action(route, "start")
        assert resp.status == 200, resp
        return resp


def route_entry(status: dict, name: str) -> dict:
    """The status entry of route ``name`` (``routes`` as a list of objects with a
    ``name``, or as an object keyed by name)."""
    routes = status["routes"] if isinstance(status, dict) else status
    if isinstance(routes, dict):
        assert name in routes, f"route {name!r} missing from status: {status}"
        return routes[name]
    for entry in routes:
        if entry.get("name") == name:
            return entry
    raise AssertionError(f"route {name!r} missing from status: {status}")


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` whose labels include ``labels``; None when
    there is no such sample."""
    total = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(m.group(3))
    return total


def cli(admin: Admin | str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``python -m fastpause ARGS --admin SPEC`` to completion."""
    spec = admin.spec if isinstance(admin, Admin) else admin
    return subprocess.run(
        [sys.executable, "-m", "fastpause", *args, "--admin", spec],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_ok(admin: Admin | str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    done = cli(admin, *args, timeout=timeout)
    assert done.returncode == 0, (
        f"fastpause {' '.join(args)} exited {done.returncode}\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}"
    )
    return done


# --------------------------------------------------------------------------- clients


def send_held(proxy, admin: Admin, raw: bytes, expect_held: int, timeout: float = 60.0) -> RawConn:
    """Open a connection, send ``raw`` and wait until the route holds ``expect_held``."""
    conn = proxy.conn(timeout=timeout)
    conn.send(raw)
    admin.wait_held(expect_held)
    return conn


def send_in_order(
    proxy, admin: Admin, targets, already_held: int = 0, timeout: float = 60.0
) -> list[RawConn]:
    """One connection per target, each sent only once the previous one is held, so the
    arrival order at the proxy is exactly the order of ``targets``."""
    conns = []
    try:
        for i, target in enumerate(targets):
            conns.append(
                send_held(proxy, admin, build_request("GET", target), already_held + i + 1, timeout)
            )
    except BaseException:
        for c in conns:
            c.close()
        raise
    return conns


class Pending:
    """A request sent from a thread; ``result()`` is its response (or raises)."""

    def __init__(self, fn) -> None:
        self._value = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # handed to the test thread
            self._error = e

    def result(self, timeout: float = 60.0):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"no response within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


def in_thread(port: int, raw: bytes, timeout: float = 60.0) -> Pending:
    return Pending(lambda: request(port, raw, timeout=timeout))


# --------------------------------------------------------------------------- processes


class _Child(BackendClient):
    """A backend process that prints one readiness line on stdout (``BackendClient``
    gives it the control requests)."""

    def __init__(
        self, argv: list[str], ready_prefix: str, stderr_path: Path, timeout: float = 60.0
    ) -> None:
        self.argv = argv
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.lines.append(line)
                if line.startswith(ready_prefix):
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not ready.wait(timeout) or not any(s.startswith(ready_prefix) for s in self.lines):
            self.kill()
            raise RuntimeError(f"{argv} did not start: {self.lines}\n{self.stderr()}")
        line = next(s for s in self.lines if s.startswith(ready_prefix))
        host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.address = f"{host}:{port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        self._pump.join(5)
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
        self._stderr.close()


class RecordingBackend(_Child):
    """This file run as a backend: 200 for everything, arrivals logged in order."""

    call_timeout = 60.0

    def __init__(self, tmp: Path, name: str = "recorder") -> None:
        super().__init__(
            [sys.executable, __file__, "--port", "0"],
            "recorder: listening on ",
            tmp / f"{name}.stderr",
        )

    def log(self) -> list[dict]:
        return self.get_json("/__log")

    def targets(self) -> list[str]:
        return [e["target"] for e in self.log()]


class FixedPortBackend(_Child):
    """``tests/backend.py --port PORT`` (the real test backend on a chosen port)."""

    def __init__(self, tmp: Path, port: int, name: str = "late-backend") -> None:
        super().__init__(
            [sys.executable, str(TESTS_DIR / "backend.py"), "--port", str(port)],
            "backend: listening on ",
            tmp / f"{name}.stderr",
        )


# --------------------------------------------------------------------------- fixtures

if __name__ != "__main__":  # the recording backend process does without pytest
    import pytest

    @pytest.fixture
    def hold_proxy(proxy_factory, tmp_path):
        """``hold_proxy(route={...}, top={...}, upstreams=[...])``: a proxy with its own
        admin socket; the returned proxy has ``.admin`` (an ``Admin``)."""
        counter = itertools.count()

        def start(route=None, top=None, upstreams=None):
            spec = f"unix:{tmp_path}/hold-admin{next(counter)}.sock"
            p = proxy_factory(route=route, top={"admin": spec, **(top or {})}, upstreams=upstreams)
            p.admin = Admin(spec, p)
            p.admin.wait_ready()
            return p

        return start

    @pytest.fixture
    def recorder(tmp_path):
        b = RecordingBackend(tmp_path)
        yield b
        b.kill()

    @pytest.fixture
    def late_backend(tmp_path):
        """``late_backend(port)`` starts ``tests/backend.py`` on ``port``."""
        started = []

        def start(port: int):
            b = FixedPortBackend(tmp_path, port)
            started.append(b)
            return b

        yield start
        for b in started:
            b.kill()


# --------------------------------------------------------------------------- the recorder

LOG: list[dict] = []
_conn_ids = itertools.count(1)


class _Recorder(BackendProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.conn = next(_conn_ids)

    def answer(self, method: str, target: str, close: bool) -> None:
        if target == "/__log":
            self.send(200, json.dumps(LOG).encode(), close)
            return
        LOG.append({"target": target, "method": method, "t": time.monotonic(), "conn": self.conn})
        self.send(200, f"recorded {target}\n".encode(), close)

    def refuse_chunked(self) -> None:
        self.send(400, b"chunked bodies not supported here\n", True)


def main() -> None:
    args = backend_args("recording backend for the hold tests")
    run_fast(lambda: serve_backend(_Recorder, args.port, "recorder: listening on "))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
