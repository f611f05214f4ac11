"""Shared support for the reload, deploy, health-check and state-file tests.

- An *identity backend* (this file run as a script): answers every request ``200``
  with ``X-Backend: NAME`` and a JSON body naming itself and the target, so a
  response says which backend served it. Its health endpoint ``/health`` answers
  whatever status was last set with ``/__health?status=NNN`` (200 at start), which
  the health-check and deploy tests switch. ``/__stats`` reports how many requests
  (health checks not counted) and health checks it received. Built on protocol
  callbacks (uvloop when available) so it keeps up with the load generator.
- ``identity_backend``: a fixture starting those, on a free or a chosen port.
- ``ConfigFile``: read, edit and rewrite a running proxy's TOML config (for reloads).
- ``LoadGenerator``: a bounded asyncio load generator (N keep-alive connections, a hard
  cap on duration and request count) that records every response's status, the
  backend that served it and the *phase* the test was in when the request was sent.
- ``reload_cli``, ``deploy_cli``, ``admin_reload``, ``admin_deploy``: the commands under
  test, run as a user would.
- ``upstream_entries``: every entry for an upstream address anywhere in ``/status``.

Nothing here sleeps to synchronize: every wait polls an observable against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import helpers  # noqa: E402
from helpers import BackendProtocol, backend_args, run_fast, serve_backend  # noqa: E402

WAIT = 30.0


# --------------------------------------------------------------------------- config files


class ConfigFile:
    """A proxy's config file as a dict: ``top`` keys and a list of ``routes`` tables."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        doc = tomllib.loads(self.path.read_text())
        self.routes: list[dict] = doc.pop("routes", [])
        self.top: dict = doc

    @property
    def route(self) -> dict:
        return self.routes[0]

    def render(self) -> str:
        return helpers.render_config(self.top, self.routes)

    def save(self) -> None:
        # write-then-rename, so a reload never reads a half-written file
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.render())
        tmp.replace(self.path)


def edit_config(proxy, route: dict | None = None, top: dict | None = None) -> ConfigFile:
    """Rewrite ``proxy``'s config file with keys of the route / top level changed
    (a value of None removes a key)."""
    cfg = ConfigFile(proxy.config_path)
    for key, value in (route or {}).items():
        if value is None:
            cfg.route.pop(key, None)
        else:
            cfg.route[key] = value
    for key, value in (top or {}).items():
        if value is None:
            cfg.top.pop(key, None)
        else:
            cfg.top[key] = value
    cfg.save()
    return cfg


# --------------------------------------------------------------------------- commands


def fastpause(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastpause", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(done: subprocess.CompletedProcess) -> str:
    return (
        f"{' '.join(map(str, done.args))} exited {done.returncode}\n"
        f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"
    )


def reload_cli(admin, config: Path | None = None) -> subprocess.CompletedProcess:
    args = ["reload"]
    if config is not None:
        args += ["--config", str(config)]
    return fastpause(*args, "--admin", admin.spec)


def deploy_cli(admin, route: str, *targets: str, **options: str) -> subprocess.CompletedProcess:
    """``fastpause deploy ROUTE --to T ... [--health-path P] [--deploy-timeout D] ...``;
    options are given with underscores (``health_path="/health"``)."""
    return fastpause(*deploy_argv(admin, route, *targets, **options)[3:])


def deploy_argv(admin, route: str, *targets: str, **options: str) -> list[str]:
    argv = [sys.executable, "-m", "fastpause", "deploy", route]
    for target in targets:
        argv += ["--to", target]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", value]
    return [*argv, "--admin", admin.spec]


class Streaming:
    """A command run in the background whose stdout lines are collected as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._stderr: list[bytes] = []
        self._out = threading.Thread(target=self._pump, daemon=True)
        self._err = threading.Thread(
            target=lambda: self._stderr.append(self.proc.stderr.read()), daemon=True
        )
        self._out.start()
        self._err.start()

    def _pump(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, predicate, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            i = 0
            while True:
                while i < len(self.lines):
                    if predicate(self.lines[i]):
                        return self.lines[i]
                    i += 1
                if self.proc.poll() is not None and not self._out.is_alive():
                    raise AssertionError(f"command ended without such a line:\n{self.describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such line within {timeout}s:\n{self.describe()}")
                self._cond.wait(min(left, 0.2))

    def finish(self, timeout: float = 90.0) -> subprocess.CompletedProcess:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"command did not finish in {timeout}s:\n{self.describe()}"
            ) from None
        self._out.join(10)
        self._err.join(10)
        return subprocess.CompletedProcess(
            self.argv, rc, "\n".join(self.lines) + "\n", self.stderr()
        )

    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def describe(self) -> str:
        return (
            f"{' '.join(self.argv)} (rc={self.proc.poll()})\n--- stdout ---\n"
            + "\n".join(self.lines)
            + f"\n--- stderr ---\n{self.stderr()}"
        )


def admin_reload(admin, body=None):
    return admin.call("POST", "/reload", body)


def ndjson_events(resp) -> list[dict]:
    """The JSON objects of a streamed NDJSON answer, one per non-empty line."""
    events = []
    for line in resp.body.decode("utf-8", "replace").splitlines():
        if line.strip():
            events.append(json.loads(line))
    return events


EVENT_KEYS = ("event", "type", "phase", "step", "status", "state")


def event_name(event: dict) -> str | None:
    """The kind of a deploy progress event (checking, healthy, switched, ...)."""
    for key in EVENT_KEYS:
        value = event.get(key)
        if isinstance(value, str):
            return value
    return None


# --------------------------------------------------------------------------- status


def upstream_entries(status, address: str) -> list[dict]:
    """Every object anywhere in the status document whose ``address`` is ``address``
    (route upstream lists, and any list of upstreams being drained)."""
    found: list[dict] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("address") == address:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(status)
    return found


def route_addresses(entry: dict) -> list[str]:
    return [u["address"] if isinstance(u, dict) else u for u in entry["upstreams"]]


def wait_drained(admin, address: str, route: str = "app", timeout: float = WAIT) -> None:
    """Until ``address`` is no longer among the route's upstreams and nothing is in
    flight to it anywhere the status shows it."""

    def drained() -> bool:
        status = admin.status()
        from hold_support import route_entry

        if address in route_addresses(route_entry(status, route)):
            return False
        return all(int(e.get("active", 0) or 0) == 0 for e in upstream_entries(status, address))

    deadline = time.monotonic() + timeout
    while not drained():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{address} not drained after {timeout}s: {admin.status()}{admin._why()}"
            )
        time.sleep(0.01)


def wait_for(predicate, what: str, timeout: float = WAIT, interval: float = 0.01):
    """``helpers.wait_for`` with the description first, as these tests call it."""
    return helpers.wait_for(predicate, timeout, interval, what)


def proxy_output(proxy) -> str:
    """Everything the proxy printed so far, stdout and stderr."""
    return "\n".join(proxy.output.snapshot()) + "\n" + proxy.stderr()


def connect_refused(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


# --------------------------------------------------------------------------- load generator


class LoadGenerator:
    """``connections`` keep-alive client connections sending ``GET`` continuously.

    Bounded: stops on ``stop()``, after ``max_seconds`` or after ``max_requests``
    responses, whichever comes first. Each response is recorded as
    ``(phase, status, backend)``, ``phase`` being ``self.phase`` when the request was
    sent (the test moves it along: "before", "after", ...). A connection that ends or
    fails without a complete response is a connection error (recorded, then the
    connection is reopened); a ``Connection: close`` response is honoured by
    reconnecting and is not an error.
    """

    def __init__(
        self,
        port: int,
        connections: int = 64,
        max_seconds: float = 60.0,
        max_requests: int = 400_000,
        host: str = "127.0.0.1",
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.connections = connections
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.timeout = timeout
        self.phase = "before"
        self.results: list[tuple[str, int, str | None]] = []
        self.errors: list[str] = []
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._crash: BaseException | None = None

    # -- control (test thread)
    def start(self) -> LoadGenerator:
        self._thread.start()
        return self

    @property
    def completed(self) -> int:
        return len(self.results)

    def wait_completed(self, n: int, timeout: float = WAIT) -> None:
        """Until ``n`` responses in all have been recorded."""
        deadline = time.monotonic() + timeout
        while self.completed < n:
            if self._crash is not None:
                raise AssertionError(f"load generator crashed: {self._crash!r}")
            if not self._thread.is_alive():
                raise AssertionError(f"load generator ended after {self.completed} responses")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"load generator: {self.completed} of {n} responses after {timeout}s; "
                    f"errors: {self.errors[:5]}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 30)
        if self._crash is not None:
            raise AssertionError(f"load generator crashed: {self._crash!r}")
        assert not self._thread.is_alive(), "load generator did not stop"

    # -- summary
    def statuses(self) -> Counter:
        return Counter(status for _, status, _ in self.results)

    def by_phase(self, *phases: str) -> Counter:
        return Counter(backend for phase, _, backend in self.results if phase in phases)

    def summary(self) -> str:
        per_phase = Counter((phase, backend) for phase, _, backend in self.results)
        return (
            f"{self.completed} responses, statuses {dict(self.statuses())}, "
            f"by (phase, backend) {dict(per_phase)}, {len(self.errors)} connection errors "
            f"{self.errors[:5]}, {self.reconnects} reconnects"
        )

    # -- the loop (its own thread)
    def _main(self) -> None:
        try:
            run_fast(self._run)
        except BaseException as e:  # handed to the test thread
            self._crash = e

    async def _run(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        await asyncio.gather(*(self._client(i) for i in range(self.connections)))

    def _done(self) -> bool:
        return (
            self._stop.is_set()
            or len(self.results) >= self.max_requests
            or time.monotonic() > self._deadline
        )

    async def _client(self, c: int) -> None:
        writer = None
        reader = None
        for i in itertools.count():
            if self._done():
                break
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.timeout
                    )
                except (OSError, TimeoutError) as e:
                    self.errors.append(f"conn {c}: connect failed: {e!r}")
                    continue
            phase = self.phase
            writer.write(
                f"GET /load?c={c}&i={i}&phase={phase} HTTP/1.1\r\nHost: load.test\r\n\r\n".encode()
            )
            try:
                status, headers, _ = await asyncio.wait_for(_read_response(reader), self.timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                self.errors.append(f"conn {c} request {i} (sent in phase {phase!r}): {e!r}")
                writer.close()
                writer = None
                continue
            self.results.append((phase, status, headers.get("x-backend")))
            if "close" in headers.get("connection", "").lower():
                self.reconnects += 1
                writer.close()
                writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return int(parts[1]), headers, bytes(body)
    return int(parts[1]), headers, await reader.readexactly(int(headers.get("content-length", "0")))


# --------------------------------------------------------------------------- fixtures

if __name__ != "__main__":  # the identity backend process does without pytest
    import pytest
    from hold_support import _Child

    class IdentityBackend(_Child):
        """This file run as a backend process, named ``name``."""

        def __init__(self, tmp: Path, name: str, port: int = 0) -> None:
            self.name = name
            super().__init__(
                [sys.executable, __file__, "--port", str(port), "--name", name],
                "identity: listening on ",
                tmp / f"identity-{name}.stderr",
            )

        def requests(self) -> int:
            return int(self.stats()["requests"])

    @pytest.fixture
    def identity_backend(tmp_path):
        """``identity_backend(name, port=0)`` starts an identity backend process."""
        started: list[IdentityBackend] = []

        def start(name: str, port: int = 0) -> IdentityBackend:
            b = IdentityBackend(tmp_path, name, port)
            started.append(b)
            return b

        yield start
        for b in started:
            b.kill()

    @pytest.fixture
    def extra_proxies():
        """Proxies a test starts itself (restarts): ``extra_proxies.append(p)``; each is
        stopped at teardown and must not have written a traceback."""
        started: list = []
        yield started
        problems = []
        for p in started:
            p.stop()
            if "Traceback" in p.stderr():
                problems.append(f"proxy wrote a traceback to stderr:\n{p.stderr()}")
        assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- identity backend

NAME = "backend"
HEALTH = {"status": 200}
STATS = {"requests": 0, "health_checks": 0}


class _Identity(BackendProtocol):
    def answer(self, method: str, target: str, close: bool) -> None:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/health":
            STATS["health_checks"] += 1
            status = HEALTH["status"]
            self._json(status, {"backend": NAME, "health": status}, close)
        elif url.path == "/__health":
            HEALTH["status"] = int(query["status"])
            self._json(200, {"backend": NAME, "health": HEALTH["status"]}, close)
        elif url.path == "/__stats":
            self._json(200, {"backend": NAME, **STATS}, close)
        else:
            STATS["requests"] += 1
            self._json(200, {"backend": NAME, "method": method, "target": target}, close)

    def refuse_chunked(self) -> None:
        self._json(400, {"error": "chunked not supported"}, True)

    def _json(self, status: int, doc: dict, close: bool) -> None:
        headers = [("Content-Type", "application/json"), ("X-Backend", NAME)]
        self.send(status, json.dumps(doc).encode(), close, headers)


def main() -> None:
    global NAME
    args = backend_args("identity backend for the deploy tests", name="backend")
    NAME = args.name
    run_fast(lambda: serve_backend(_Identity, args.port, "identity: listening on "))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
