"""Fixtures for the end-to-end proxy tests: a real backend process and a real
``python -m fastpause run`` process with a generated TOML config, on free ports.

Readiness is read from each process's stdout (the backend's ``backend: listening on``
line, the proxy's ``fastpause: listening on`` line); nothing sleeps to synchronize.
Every process is stopped at teardown, killed if it does not stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # so test modules can `import helpers`
    sys.path.insert(0, str(TESTS_DIR))

# the shared support modules assert too: rewrite them, once, before anything imports them
pytest.register_assert_rewrite(
    "helpers", "hold_support", "deploy_support", "ws_support", "fault_support", "tls_support"
)

from helpers import (  # noqa: E402
    BackendClient,
    RawConn,
    build_request,
    free_port,
    render_config,
    request,
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class OutputLines:
    """Collects a process's stdout lines in a background thread (so the pipe never fills)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = START_TIMEOUT, start: int = 0) -> str | None:
        """The first line (from index ``start``) matching ``predicate``; None if the stream
        closes first. Raises TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    if predicate(self.lines[i]):
                        return self.lines[i]
                    i += 1
                if self.closed:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching output line within {timeout}s: {self.lines!r}")
                self._cond.wait(left)

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self.lines)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


class Process:
    """A child process with collected stdout and stderr written to a file."""

    def __init__(
        self, argv: list[str], stderr_path: Path, cwd: Path, pass_fds: tuple[int, ...] = ()
    ) -> None:
        self.argv = argv
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            pass_fds=pass_fds,
        )
        self.output = OutputLines(self.proc.stdout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")

    def describe(self) -> str:
        return (
            f"{' '.join(self.argv)}\n--- stdout ---\n"
            + "\n".join(self.output.snapshot())
            + f"\n--- stderr ---\n{self.stderr()}"
        )

    def terminate(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL if it is still running after ``timeout``."""
        self.terminate()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            rc = None
        self.output.join()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
        self._stderr.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop(timeout=10)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")


class Backend(Process, BackendClient):
    """``tests/backend.py``, the origin server behind most proxies under test."""

    call_timeout = 60.0

    def __init__(self, tmp: Path, name: str = "backend") -> None:
        super().__init__(
            [sys.executable, str(TESTS_DIR / "backend.py"), "--port", "0"],
            tmp / f"{name}.stderr",
            tmp,
        )
        line = self.output.wait_for(lambda s: s.startswith("backend: listening on "))
        if line is None:
            raise RuntimeError(f"backend did not start:\n{self.describe()}")
        self.host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.address = f"{self.host}:{self.port}"

    def release(self, key: str) -> None:
        assert self.call(f"/__release?key={key}").status == 200

    def wait_held(self, key: str) -> None:
        resp = self.call(f"/__wait-held?key={key}&timeout=30", timeout=60)
        assert resp.status == 200, f"request {key!r} never reached the backend"

    def wait_closed(self, key: str) -> None:
        resp = self.call(f"/__wait-closed?key={key}&timeout=30", timeout=60)
        assert resp.status == 200, f"held connection {key!r} was never closed by its peer"


class ProxyStartError(RuntimeError):
    def __init__(self, proxy: Proxy) -> None:
        super().__init__(f"proxy did not start:\n{proxy.describe()}")
        self.proxy = proxy


class Proxy(Process):
    def __init__(self, config_path: Path, tmp: Path, name: str) -> None:
        self.config_path = config_path
        super().__init__(
            [sys.executable, "-m", "fastpause", "run", "--config", str(config_path)],
            tmp / f"{name}.stderr",
            tmp,
        )
        try:
            line = self.output.wait_for(lambda s: s.startswith("fastpause: listening on http://"))
        except TimeoutError:
            line = None
        if line is None:
            self.stop(timeout=10)
            raise ProxyStartError(self)
        hostport = line.rsplit("http://", 1)[1].strip().rstrip("/")
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}"

    def conn(self, timeout: float = 30.0) -> RawConn:
        return RawConn(self.port, timeout=timeout)

    def request(self, raw: bytes, timeout: float = 30.0):
        return request(self.port, raw, timeout=timeout)

    def get(self, target: str, headers=None, timeout: float = 30.0):
        return request(self.port, build_request("GET", target, headers), timeout=timeout)

    def post(self, target: str, body: bytes, headers=None, timeout: float = 30.0):
        return request(self.port, build_request("POST", target, headers, body), timeout=timeout)


@pytest.fixture
def start_backend(tmp_path):
    """Factory for extra backends: ``start_backend(name)``."""
    started: list[Backend] = []

    def start(name: str = "backend") -> Backend:
        b = Backend(tmp_path, name)
        started.append(b)
        return b

    yield start
    for b in started:
        b.kill()


@pytest.fixture
def backend(start_backend) -> Backend:
    b = start_backend("backend")
    yield b
    if b.proc.poll() is None:
        stats = b.stats()
        assert stats["parse_errors"] == 0, (
            f"the proxy sent the backend requests it could not parse:\n{b.stderr()}"
        )


@pytest.fixture
def proxy_workers() -> int:
    """The ``workers`` of proxies ``proxy_factory`` starts: 1 (one process) unless the
    module is marked ``workers_variants``, whose tests run with 1 and with 2."""
    return 1


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("workers_variants") is None:
        return
    if metafunc.definition.get_closest_marker("single_process") is not None:
        return
    if "proxy_workers" in metafunc.fixturenames:
        metafunc.parametrize("proxy_workers", [1, 2], ids=["1worker", "2workers"])


@pytest.fixture
def proxy_factory(backend, tmp_path, proxy_workers):
    """``proxy_factory(route={...}, top={...}, upstreams=[...])`` starts a proxy.

    ``route`` and ``top`` add or override keys of the single route and of the top level
    (a value of None removes a key). Upstreams default to the ``backend`` fixture.
    """
    started: list[Proxy] = []

    def start(
        route: dict | None = None, top: dict | None = None, upstreams: list[str] | None = None
    ) -> Proxy:
        route_cfg = {"name": "app", "upstreams": upstreams or [backend.address]}
        route_cfg.update(route or {})
        # A free port can be taken by another process between our check and the proxy's
        # bind (other suites run on this machine too): then try another port.
        attempts = 1 if top and "listen" in top else 3
        for attempt in range(attempts):
            n = len(started)
            # each proxy gets its own admin socket: the default one is per user, shared
            top_cfg = {
                "listen": [f"127.0.0.1:{free_port()}"],
                "shutdown_timeout": "10s",
                "admin": f"unix:{tmp_path}/admin{n}.sock",
            }
            top_cfg["workers"] = proxy_workers
            top_cfg.update(top or {})
            path = tmp_path / f"proxy{n}.toml"
            path.write_text(render_config(top_cfg, [route_cfg]))
            try:
                p = Proxy(path, tmp_path, f"proxy{n}")
            except ProxyStartError as e:
                if attempt + 1 < attempts and "in use" in e.proxy.stderr():
                    continue
                raise
            started.append(p)
            return p
        raise AssertionError("unreachable")

    yield start
    problems = []
    for p in started:
        running = p.proc.poll() is None
        p.stop()
        err = p.stderr()
        if "Traceback" in err:
            problems.append(f"proxy wrote a traceback to stderr:\n{err}")
        if running and p.proc.returncode != 0:
            problems.append(f"proxy exited {p.proc.returncode} on SIGTERM at teardown:\n{err}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def proxy(proxy_factory) -> Proxy:
    return proxy_factory()


@pytest.fixture
def client(proxy):
    import httpx

    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=60.0) as c:
        yield c
