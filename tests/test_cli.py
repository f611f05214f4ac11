"""The ``fastpause`` command end to end: real processes, real sockets, real signals.

Nothing here sleeps to synchronise: tests wait for the lines the proxy prints
(``listening on``, ``shutting down``), for events set by the test backend and
for the admin API's status, every wait bounded so a broken proxy fails the test
instead of hanging it.

Every test gets its own ``$XDG_RUNTIME_DIR``, so the default admin socket of the
proxies and commands it runs is private to it.
"""

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pytest
from admin_support import AdminHttp
from helpers import free_port
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from ws_support import WsBackend

WAIT = 15.0  # upper bound for anything the proxy should do "at once"
TOKEN = "cli-test-token-0123456789"


@pytest.fixture(autouse=True)
def private_admin_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default admin socket of this test's processes is ``tmp_path/fastpause.sock``."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("FASTPAUSE_ADMIN", raising=False)
    monkeypatch.delenv("FASTPAUSE_ADMIN_TOKEN", raising=False)


def fastpause(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a fastpause command to completion, with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "fastpause", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**os.environ, **env},
    )


class Proxy:
    """A running ``fastpause run`` whose stdout lines are collected by a reader thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastpause", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first new stdout line matching ``pattern``; fails if the proxy exits first."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {WAIT}s; saw {self.seen}")
            if line is None:
                self.lines.put(None)  # keep the end mark for finish()
                pytest.fail(f"proxy exited before printing {pattern!r}: {self.finish()}")
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def started(self) -> tuple[str, int]:
        """Wait for the first listener and return its (host, port)."""
        match = self.wait_for(r"^fastpause: listening on http://(.+):(\d+)$")
        return match[1], int(match[2])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self) -> tuple[int, str, str]:
        """Wait for exit; return (status, all stdout, stderr)."""
        status = self.process.wait(timeout=WAIT)
        rest = []
        while (line := self.lines.get(timeout=WAIT)) is not None:
            rest.append(line)
        assert self.process.stderr is not None
        return status, "\n".join(self.seen + rest), self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def running_proxy(*args: str) -> Iterator[Proxy]:
    running = Proxy(*args)
    try:
        yield running
    finally:
        running.kill()


class HeldBackend:
    """A one-connection HTTP backend that answers only when the test releases it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = threading.Event()
        self.release = threading.Event()
        self.request = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while b"\r\n\r\n" not in self.request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.request += chunk
            self.received.set()
            if self.release.wait(WAIT):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    def close(self) -> None:
        self.release.set()
        self.listener.close()


@pytest.fixture
def held_backend() -> Iterator[HeldBackend]:
    server = HeldBackend()
    yield server
    server.close()


@pytest.fixture
def requester() -> Iterator[ThreadPoolExecutor]:
    """Runs blocking HTTP requests while the test drives the proxy."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def get(host: str, port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fastpause.toml"
    path.write_text(text)
    return path


def route_to(port: int) -> str:
    return f'[[routes]]\nname = "app"\nupstreams = ["127.0.0.1:{port}"]\n'


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 2, nothing on stdout, one clear message on stderr, no traceback."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ---------------------------------------------------------------- one-shot commands


def test_version() -> None:
    expected = f"fastpause {version('fastpause')}\n"
    assert fastpause("version").stdout == expected
    assert fastpause("--version").stdout == expected


def test_validate_ok(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'listen = ["127.0.0.1:8080", "[::1]:8080"]\n' + route_to(9))
    result = fastpause("validate", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{path}: ok (1 route, 2 listeners)\n"


def test_validate_several_routes(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        route_to(9).replace('"app"', '"api"')
        + 'hosts = ["api.example.com"]\n'
        + route_to(9).replace('"app"', '"docs"')
        + 'path_prefix = "/docs"\n'
        + route_to(9),
    )
    result = fastpause("validate", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{path}: ok (3 routes, 1 listener)\n"


def test_validate_ambiguous_routes(tmp_path: Path) -> None:
    path = write_config(tmp_path, route_to(9) + route_to(10).replace('"app"', '"web"'))
    assert_user_error(
        fastpause("validate", str(path)),
        f"{path}: routes[1]: route 'web' and routes[0] ('app') both match any host and any "
        "path: give one of them other hosts or another path_prefix\n",
    )


def test_validate_bad_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[[routes]]\nname = "app"\nupstreams = ["127.0.0.1:1", "foo"]\n')
    result = fastpause("validate", str(path))
    assert_user_error(result)
    assert result.stderr == (
        f"{path}: routes[0].upstreams[1]: invalid address 'foo': "
        "expected HOST:PORT (IPv6 in brackets, e.g. '[::1]:8080')\n"
    )


def test_validate_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert_user_error(fastpause("validate", str(path)), f"{path}: cannot read file")


def test_validate_resolves_upstream_names(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, '[[routes]]\nname = "app"\nupstreams = ["no-such-host.invalid:80"]\n'
    )
    assert_user_error(
        fastpause("validate", str(path)),
        f"{path}: routes[0].upstreams[0]: cannot resolve host 'no-such-host.invalid'",
    )


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"max_headers = 'lots'\n{route_to(9)}")
    assert_user_error(
        fastpause("run", "--config", str(path)),
        f"{path}: max_headers: expected an integer, got string 'lots'",
    )


def test_run_with_toml_syntax_error_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, "max_headers 100\n")
    assert_user_error(fastpause("run", "--config", str(path)), f"{path}: invalid TOML:", "line")


def test_run_config_and_to_conflict(tmp_path: Path) -> None:
    path = write_config(tmp_path, route_to(9))
    result = fastpause("run", "--config", str(path), "--to", "127.0.0.1:9")
    assert_user_error(result, "--config cannot be combined with --listen or --to")


def test_run_bad_to_address() -> None:
    assert_user_error(
        fastpause("run", "--to", "localhost"), "command line: --to: invalid address 'localhost'"
    )


def test_unknown_command_is_a_usage_error() -> None:
    assert_user_error(fastpause("launch"), "invalid choice: 'launch'")


# ---------------------------------------------------------------- the running proxy


def test_port_in_use_exits_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = fastpause("run", "--listen", f"127.0.0.1:{port}", "--to", "127.0.0.1:9")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"fastpause: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "listening on" not in result.stdout


def test_unwritable_access_log_exits_1(tmp_path: Path) -> None:
    log = tmp_path / "no" / "such" / "dir" / "access.log"
    path = write_config(tmp_path, f'listen = ["127.0.0.1:0"]\naccess_log = "{log}"\n{route_to(9)}')
    result = fastpause("run", "--config", str(path))
    assert result.returncode == 1
    assert f"cannot open access log {log}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_start_and_graceful_stop(signum: int) -> None:
    with running_proxy("--listen", "127.0.0.1:0", "--to", "127.0.0.1:9") as running:
        route = running.wait_for(r"^fastpause: route ")
        assert route.string == "fastpause: route default -> 127.0.0.1:9"
        host, port = running.started()
        assert host == "127.0.0.1" and port > 0
        with socket.create_connection((host, port), timeout=WAIT):
            pass  # accepting connections once it says so
        running.signal(signum)
        status, stdout, stderr = running.finish()
    assert status == 0, stderr
    assert stdout.endswith("fastpause: stopped")
    assert "Traceback" not in stderr


def test_every_listener_is_bound_before_any_is_announced() -> None:
    with running_proxy("--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0") as running:
        first = running.started()
        second = running.started()
        assert first != second
        for address in (first, second):
            with socket.create_connection(address, timeout=WAIT):
                pass
        running.signal(signal.SIGTERM)
        assert running.finish()[0] == 0


def test_second_listener_failing_exits_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = fastpause("run", "--listen", "127.0.0.1:0", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "listening on" not in result.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_proxies_and_writes_json_access_log(
    tmp_path: Path, held_backend: HeldBackend, requester: ThreadPoolExecutor
) -> None:
    log = tmp_path / "access.log"
    config = write_config(
        tmp_path,
        f'listen = ["127.0.0.1:0"]\naccess_log = "{log}"\naccess_log_format = "json"\n'
        + route_to(held_backend.port),
    )
    with running_proxy("--config", str(config)) as running:
        running.wait_for(rf"^fastpause: route app -> 127\.0\.0\.1:{held_backend.port}$")
        host, port = running.started()
        held_backend.release.set()
        assert requester.submit(get, host, port, "/hello?x=1").result(WAIT) == (200, b"hello")
        assert held_backend.request.startswith(b"GET /hello?x=1 HTTP/1.1\r\n")
        running.signal(signal.SIGTERM)
        status, _, stderr = running.finish()
    assert status == 0, stderr
    [line] = log.read_text().splitlines()  # written by the flush at shutdown
    entry = json.loads(line)
    assert entry["method"] == "GET"
    assert entry["target"] == "/hello?x=1"
    assert (entry["status"], entry["version"], entry["client"]) == (200, "HTTP/1.1", "127.0.0.1")
    assert entry["upstream"] == f"127.0.0.1:{held_backend.port}"
    assert entry["bytes"] > 0 and entry["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"])


def test_common_log_format(
    tmp_path: Path, held_backend: HeldBackend, requester: ThreadPoolExecutor
) -> None:
    log = tmp_path / "access.log"
    config = write_config(
        tmp_path, f'listen = ["127.0.0.1:0"]\naccess_log = "{log}"\n' + route_to(held_backend.port)
    )
    with running_proxy("--config", str(config)) as running:
        host, port = running.started()
        held_backend.release.set()
        assert requester.submit(get, host, port, "/clf").result(WAIT)[0] == 200
        running.signal(signal.SIGTERM)
        assert running.finish()[0] == 0
    [line] = log.read_text().splitlines()
    assert re.fullmatch(
        r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /clf HTTP/1\.1" 200 \d+',
        line,
    ), line


def test_graceful_stop_lets_in_flight_requests_finish(
    held_backend: HeldBackend, requester: ThreadPoolExecutor
) -> None:
    with running_proxy(
        "--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{held_backend.port}"
    ) as running:
        host, port = running.started()
        response = requester.submit(get, host, port)
        assert held_backend.received.wait(WAIT)
        running.signal(signal.SIGTERM)
        running.wait_for(r"^fastpause: shutting down: 1 open connection, waiting up to 10s$")
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection((host, port), timeout=WAIT).close()
        assert running.process.poll() is None  # still waiting for the request
        held_backend.release.set()
        assert response.result(WAIT) == (200, b"hello")
        status, stdout, _ = running.finish()
    assert status == 0
    assert stdout.endswith("fastpause: stopped")


@pytest.mark.parametrize("workers", [1, 2])
def test_second_signal_cuts_the_grace_period(
    tmp_path: Path, held_backend: HeldBackend, requester: ThreadPoolExecutor, workers: int
) -> None:
    """With workers the supervisor passes the cut on as a message: a second SIGTERM
    reaching a worker before it handled the first would be lost in it."""
    config = write_config(
        tmp_path,
        f'listen = ["127.0.0.1:0"]\nshutdown_timeout = "10m"\nworkers = {workers}\n'
        f"{route_to(held_backend.port)}",
    )
    with running_proxy("--config", str(config)) as running:
        host, port = running.started()
        response = requester.submit(get, host, port)
        assert held_backend.received.wait(WAIT)
        running.signal(signal.SIGTERM)
        running.wait_for(r"^fastpause: shutting down: .* waiting up to 600s$")
        running.signal(signal.SIGINT)
        status, stdout, _ = running.finish()  # bounded by WAIT, far below the 10m grace
    assert status == 0
    assert stdout.endswith("fastpause: stopped")
    assert isinstance(response.exception(WAIT), (http.client.HTTPException, OSError))


def test_grace_period_ends_on_its_own(
    tmp_path: Path, held_backend: HeldBackend, requester: ThreadPoolExecutor
) -> None:
    config = write_config(
        tmp_path,
        f'listen = ["127.0.0.1:0"]\nshutdown_timeout = "50ms"\n{route_to(held_backend.port)}',
    )
    with running_proxy("--config", str(config)) as running:
        host, port = running.started()
        response = requester.submit(get, host, port)
        assert held_backend.received.wait(WAIT)
        running.signal(signal.SIGTERM)
        status, stdout, _ = running.finish()
    assert status == 0
    assert stdout.endswith("fastpause: stopped")
    assert isinstance(response.exception(WAIT), (http.client.HTTPException, OSError))


def test_python_dash_m_and_console_script_agree() -> None:
    script = Path(sys.executable).with_name("fastpause")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run(
        [str(script), "version"], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert result.stdout == fastpause("version").stdout


# ---------------------------------------------------------------- admin commands


def get_full(host: str, port: int, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    """GET through the proxy: status, headers, body."""
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


class ProxyInfo:
    """A running proxy's addresses, with a client for its admin API."""

    def __init__(self, host: str, port: int, admin: str) -> None:
        self.host, self.port, self.admin = host, port, admin
        self.api = AdminHttp(admin)


@contextlib.contextmanager
def admin_proxy(tmp_path: Path, upstream_port: int, extra: str = "") -> Iterator[ProxyInfo]:
    """A proxy on the default admin socket of the test (``tmp_path/fastpause.sock``)."""
    config = write_config(tmp_path, f'listen = ["127.0.0.1:0"]\n{extra}' + route_to(upstream_port))
    with running_proxy("--config", str(config)) as running:
        admin_line = running.wait_for(r"^fastpause: admin on (.+)$")
        host, port = running.started()
        yield ProxyInfo(host, port, admin_line[1])


def admin_ok(*args: str, **env: str) -> str:
    """Run an admin command that must succeed; its stdout."""
    result = fastpause(*args, **env)
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout


def assert_admin_failure(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit status 1, nothing on stdout, exactly ``message`` on stderr."""
    assert (result.returncode, result.stdout, result.stderr) == (1, "", message + "\n"), result


def test_default_admin_socket_is_found_by_the_commands(tmp_path: Path, backend) -> None:
    with admin_proxy(tmp_path, backend.port) as proxy:
        assert proxy.admin == f"unix:{tmp_path}/fastpause.sock"
        assert admin_ok("status").startswith("fastpause ")


def test_pause_and_resume(tmp_path: Path, backend, requester: ThreadPoolExecutor) -> None:
    with admin_proxy(tmp_path, backend.port) as proxy:
        assert admin_ok("pause", "app") == "app: paused; drained, 0 in flight\n"
        responses = [requester.submit(get, proxy.host, proxy.port, "/inspect") for _ in range(2)]
        proxy.api.wait_held(2)
        assert admin_ok("resume", "app") == "app: resumed; released 2 held requests\n"
        assert [response.result(WAIT)[0] for response in responses] == [200, 200]
        assert proxy.api.route()["mode"] == "running"


def test_paced_resume(tmp_path: Path, backend, requester: ThreadPoolExecutor) -> None:
    with admin_proxy(tmp_path, backend.port) as proxy:
        admin_ok("pause", "app", "--max-hold", "20s")
        response = requester.submit(get, proxy.host, proxy.port, "/inspect")
        assert proxy.api.wait_held(1)["max_hold_seconds"] == 20
        assert admin_ok("resume", "app", "--rate", "20") == (
            "app: resumed; releasing 1 held request at 20/s\n"
        )
        assert response.result(WAIT)[0] == 200


def test_pause_reports_requests_still_in_flight(
    tmp_path: Path, backend, requester: ThreadPoolExecutor
) -> None:
    with admin_proxy(tmp_path, backend.port) as proxy:
        busy = requester.submit(get, proxy.host, proxy.port, "/hold?key=busy")
        backend.wait_held("busy")
        out = admin_ok("pause", "app", "--drain-timeout", "100ms")
        assert re.fullmatch(r"app: paused; 1 still in flight after 0\.1\d*s\n", out), out
        backend.release("busy")
        assert busy.result(WAIT)[0] == 200
        assert admin_ok("resume", "app") == "app: resumed; released 0 held requests\n"


def test_stop_and_start(tmp_path: Path, backend, requester: ThreadPoolExecutor) -> None:
    with admin_proxy(tmp_path, backend.port) as proxy:
        admin_ok("pause", "app")
        held = requester.submit(get_full, proxy.host, proxy.port, "/inspect")
        proxy.api.wait_held(1)
        out = admin_ok("stop", "app", "--message", "Back at noon", "--retry-after", "2m")
        assert out == "app: stopped; answered 1 held request with 503\n"
        for status, headers, body in (held.result(WAIT), get_full(proxy.host, proxy.port)):
            assert (status, headers["Retry-After"]) == (503, "120")
            assert b"Back at noon" in body
        assert admin_ok("start", "app") == "app: started\n"
        assert get(proxy.host, proxy.port, "/inspect")[0] == 200


def test_status_table_and_json(tmp_path: Path, backend, requester: ThreadPoolExecutor) -> None:
    with admin_proxy(tmp_path, backend.port, "workers = 1\n") as proxy:
        admin_ok("pause", "app")
        held = requester.submit(get, proxy.host, proxy.port, "/inspect")
        proxy.api.wait_held(1)
        summary, blank, header, row = admin_ok("status").splitlines()
        assert re.fullmatch(
            rf"fastpause \S+ \(pid \d+\), up \d+\.\ds, listening on http://127\.0\.0\.1:{proxy.port}",
            summary,
        ), summary
        assert blank == ""
        assert header.split() == [
            "ROUTE",
            "MATCH",
            "MODE",
            "HELD",
            "OLDEST",
            "HELD",
            "IN",
            "FLIGHT",
            "LB",
            "UPSTREAMS",
        ]
        route, match, mode, count, age, in_flight, lb, upstream = row.split()
        assert (route, match, mode, count, in_flight, lb, upstream) == (
            "app",
            "*",
            "paused",
            "1",
            "0",
            "round_robin",
            backend.address,
        )
        assert re.fullmatch(r"\d+\.\ds", age), age

        status = json.loads(admin_ok("status", "--json"))
        [entry] = status["routes"]
        assert (entry["name"], entry["mode"], entry["held"]) == ("app", "paused", 1)
        assert status["listeners"] == [f"http://127.0.0.1:{proxy.port}"]
        assert status["worker_details"] == []
        workers = admin_ok("status", "--workers").splitlines()[-1]
        assert workers == f"one process serves (pid {status['pid']}): no workers", workers
        admin_ok("resume", "app")
        assert held.result(WAIT)[0] == 200


ROUTES = """
[[routes]]
name = "api"
hosts = ["api.example.com", "*.api.example.com"]
lb = "least_conn"
upstreams = [{{ address = "{backend}", weight = 3 }}, "127.0.0.1:{dead}"]

[[routes]]
name = "docs"
path_prefix = "/docs"
strip_path_prefix = true
upstreams = ["{backend}"]

[[routes]]
name = "default"
upstreams = ["{backend}"]
"""


def test_routes_are_announced_and_shown_with_match_policy_and_weights(
    tmp_path: Path, backend
) -> None:
    dead = free_port()
    config = write_config(
        tmp_path, 'listen = ["127.0.0.1:0"]\n' + ROUTES.format(backend=backend.address, dead=dead)
    )
    with running_proxy("--config", str(config)) as running:
        routes = [running.wait_for(r"^fastpause: route ").string for _ in range(3)]
        running.started()
        assert routes == [
            f"fastpause: route api for api.example.com,*.api.example.com (least_conn) -> "
            f"{backend.address} weight 3, 127.0.0.1:{dead}",
            f"fastpause: route docs for /docs (stripped) -> {backend.address}",
            f"fastpause: route default -> {backend.address}",
        ]
        _, _, header, *rows = admin_ok("status").splitlines()
        columns = [header.index(name) for name in ("MATCH", "MODE", "LB", "UPSTREAMS")]
        cells = [
            [
                row[start:end].strip()
                for start, end in zip([0, *columns], [*columns, None], strict=True)
            ]
            for row in rows
        ]
        assert [(c[0], c[1], c[3], c[4]) for c in cells] == [
            (
                "api",
                "api.example.com,*.api.example.com",
                "least_conn",
                f"{backend.address} (weight 3), 127.0.0.1:{dead}",
            ),
            ("docs", "/docs (stripped)", "round_robin", backend.address),
            ("default", "*", "round_robin", backend.address),
        ]
        running.signal(signal.SIGTERM)
        assert running.finish()[0] == 0


def test_admin_address_from_option_and_environment(tmp_path: Path, backend) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with admin_proxy(tmp_path, backend.port) as proxy:
        moved = {"XDG_RUNTIME_DIR": str(elsewhere)}  # the default now points to nothing
        assert fastpause("status", **moved).returncode == 1
        assert admin_ok("status", **moved, FASTPAUSE_ADMIN=proxy.admin).startswith("fastpause ")
        absent = f"unix:{elsewhere}/absent.sock"
        assert admin_ok("status", "--admin", proxy.admin, FASTPAUSE_ADMIN=absent)
        assert fastpause("status", "--admin", absent, FASTPAUSE_ADMIN=proxy.admin).returncode == 1


def test_run_admin_option(tmp_path: Path) -> None:
    socket_path = tmp_path / "custom.sock"
    args = ("--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--admin", f"unix:{socket_path}")
    with running_proxy(*args) as running:
        running.wait_for(rf"^fastpause: admin on unix:{re.escape(str(socket_path))}$")
        running.started()
        assert "default" in admin_ok("status", "--admin", f"unix:{socket_path}")
        running.signal(signal.SIGTERM)
        assert running.finish()[0] == 0
    assert not socket_path.exists()


def test_run_refuses_a_public_admin_without_token() -> None:
    assert_user_error(
        fastpause("run", "--admin", "0.0.0.0:0"),
        "command line: --admin: 0.0.0.0:0 can be reached from other hosts: set admin_token",
    )


def test_token_for_a_tcp_admin(tmp_path: Path, backend) -> None:
    extra = f'admin = "127.0.0.1:0"\nadmin_token = "{TOKEN}"\n'
    with admin_proxy(tmp_path, backend.port, extra) as proxy:
        assert_admin_failure(
            fastpause("status", "--admin", proxy.admin),
            "fastpause: a valid admin token is required (Authorization: Bearer TOKEN)",
        )
        assert admin_ok("status", "--admin", proxy.admin, FASTPAUSE_ADMIN_TOKEN=TOKEN)
        assert admin_ok("stop", "app", "--admin", proxy.admin, "--token", TOKEN)
        assert admin_ok("start", "app", "--admin", proxy.admin, "--token", TOKEN)


def test_unknown_route_fails(tmp_path: Path, backend) -> None:
    with admin_proxy(tmp_path, backend.port):
        for action in ("pause", "resume", "stop", "start"):
            assert_admin_failure(fastpause(action, "nope"), "fastpause: no route named 'nope'")


def test_no_proxy_answering(tmp_path: Path) -> None:
    missing = tmp_path / "fastpause.sock"
    assert_admin_failure(
        fastpause("status"), f"fastpause: no proxy is answering at unix:{missing} (no such socket)"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(missing))  # a socket file nothing listens on
    assert_admin_failure(
        fastpause("pause", "app"),
        f"fastpause: no proxy is answering at unix:{missing} (connection refused)",
    )
    port = free_port()
    assert_admin_failure(
        fastpause("resume", "app", "--admin", f"127.0.0.1:{port}"),
        f"fastpause: no proxy is answering at 127.0.0.1:{port} (connection refused)",
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("pause", "app", "--max-hold", "soon"), {}, "argument --max-hold: invalid duration"),
        (("pause", "app", "--max-hold", "0s"), {}, "must be greater than 0"),
        (("resume", "app", "--rate", "0"), {}, "invalid rate '0': must be greater than 0"),
        (("stop", "app", "--retry-after", "1.5s"), {}, "Retry-After is a whole number"),
        (("status", "--admin", "off"), {}, "command line: --admin: 'off' names no proxy"),
        (("status",), {"FASTPAUSE_ADMIN": "nowhere"}, "environment: FASTPAUSE_ADMIN: invalid"),
        (("pause",), {}, "the following arguments are required: ROUTE"),
        (("reload", "app"), {}, "unrecognized arguments: app"),
        (("deploy", "app"), {}, "the following arguments are required: --to"),
        (("deploy", "--to", "127.0.0.1:1"), {}, "the following arguments are required: ROUTE"),
        (("deploy", "app", "--to", "nowhere"), {}, "argument --to: invalid address 'nowhere'"),
        (("deploy", "app", "--to", "127.0.0.1:0"), {}, "port must be a number from 1 to 65535"),
        (
            ("deploy", "app", "--to", "127.0.0.1:1", "--health-path", "up"),
            {},
            "argument --health-path: invalid health_path 'up': must start with '/'",
        ),
        (
            ("deploy", "app", "--to", "127.0.0.1:1", "--deploy-timeout", "0s"),
            {},
            "argument --deploy-timeout: invalid duration '0s': must be greater than 0",
        ),
        (
            ("deploy", "app", "--to", "127.0.0.1:1", "--drain-timeout", "soon"),
            {},
            "argument --drain-timeout: invalid duration 'soon'",
        ),
    ],
)
def test_admin_command_usage_errors(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    assert_user_error(fastpause(*args, **env), message)


# ---------------------------------------------------------------- reload


def test_reload_and_deploy_need_a_running_proxy(tmp_path: Path) -> None:
    missing = f"fastpause: no proxy is answering at unix:{tmp_path}/fastpause.sock (no such socket)"
    assert_admin_failure(fastpause("reload"), missing)
    assert_admin_failure(fastpause("deploy", "app", "--to", "127.0.0.1:1"), missing)


def test_reload_applies_the_changed_file(tmp_path: Path, backend, start_backend) -> None:
    other = start_backend("other")
    with admin_proxy(tmp_path, backend.port) as proxy:
        path = tmp_path / "fastpause.toml"
        path.write_text(path.read_text().replace(str(backend.port), str(other.port)))
        assert admin_ok("reload") == f"reloaded {path}: 1 route\n"
        assert proxy.api.route()["upstreams"][0]["address"] == other.address


def test_reload_with_a_relative_config_path(tmp_path: Path, backend, start_backend) -> None:
    other = start_backend("other")
    with admin_proxy(tmp_path, backend.port) as proxy:
        moved = tmp_path / "moved.toml"
        moved.write_text(
            (tmp_path / "fastpause.toml").read_text().replace(str(backend.port), str(other.port))
        )
        result = subprocess.run(
            [sys.executable, "-m", "fastpause", "reload", "--config", "moved.toml"],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
            cwd=tmp_path,
        )
        assert (result.returncode, result.stdout) == (0, f"reloaded {moved}: 1 route\n"), result
        assert proxy.api.route()["upstreams"][0]["address"] == other.address


def test_reload_of_an_invalid_file_fails(tmp_path: Path, backend) -> None:
    with admin_proxy(tmp_path, backend.port) as proxy:
        path = tmp_path / "fastpause.toml"
        path.write_text("max_headers = 'lots'\n" + path.read_text())
        assert_admin_failure(
            fastpause("reload"),
            f"fastpause: {path}: max_headers: expected an integer, got string 'lots'",
        )
        assert get(proxy.host, proxy.port, "/inspect")[0] == 200


def test_reload_without_a_config_file() -> None:
    with running_proxy("--listen", "127.0.0.1:0", "--to", "127.0.0.1:9") as running:
        running.started()
        assert_admin_failure(
            fastpause("reload"),
            "fastpause: no config file to reload; start with --config or pass one",
        )


def wait_for_stderr(proxy, text: str) -> None:
    """Poll the proxy's stderr file until ``text`` appears (bounded)."""
    deadline = time.monotonic() + WAIT
    while text not in proxy.stderr():
        assert time.monotonic() < deadline, f"{text!r} not on stderr: {proxy.stderr()}"
        time.sleep(0.01)  # polling interval, not synchronization


def test_sighup_reloads(proxy_factory, backend, start_backend) -> None:
    proxy = proxy_factory()
    other = start_backend("other")
    path = proxy.config_path
    path.write_text(path.read_text().replace(backend.address, other.address))
    proxy.proc.send_signal(signal.SIGHUP)
    reloaded = proxy.output.wait_for(lambda line: "reloaded" in line, timeout=WAIT)
    assert reloaded == f"fastpause: reloaded {path}: 1 route"
    assert proxy.get("/inspect").status == 200
    assert other.stats()["paths"] == {"/inspect": 1}


def test_sighup_with_an_invalid_file_keeps_serving(proxy_factory, backend) -> None:
    proxy = proxy_factory()
    path = proxy.config_path
    path.write_text(path.read_text() + "bogus = 1\n")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for_stderr(
        proxy,
        f"fastpause: reload failed: {path}: routes[0]: unknown key 'bogus'; "
        "still serving the previous config\n",
    )
    assert proxy.get("/inspect").status == 200
    assert proxy.proc.poll() is None


# ---------------------------------------------------------------- deploy


def test_deploy_prints_each_step(tmp_path: Path, backend, start_backend) -> None:
    other = start_backend("other")
    with admin_proxy(tmp_path, backend.port) as proxy:
        out = admin_ok("deploy", "app", "--to", other.address, "--health-path", "/status/200")
        assert out.splitlines() == [
            f"app: checking {other.address} at /status/200",
            f"app: {other.address} is healthy",
            f"app: switched {backend.address} -> {other.address} (0 held requests released)",
            f"app: draining {backend.address} (0 in flight)",
            "app: done",
        ]
        assert get(proxy.host, proxy.port, "/inspect")[0] == 200
        assert other.stats()["paths"]["/inspect"] == 1


def test_deploy_releases_held_requests_to_the_new_target(
    tmp_path: Path, backend, requester: ThreadPoolExecutor
) -> None:
    dead = free_port()
    with admin_proxy(tmp_path, dead) as proxy:
        held = requester.submit(get, proxy.host, proxy.port, "/inspect")
        proxy.api.wait_held(1)
        out = admin_ok("deploy", "app", "--to", backend.address, "--health-path", "/status/204")
        assert f"app: switched 127.0.0.1:{dead} -> {backend.address} (1 held request released)" in (
            out.splitlines()
        )
        assert held.result(WAIT)[0] == 200


def test_deploy_close_tunnels_cuts_websockets_at_the_switch(tmp_path: Path) -> None:
    """With --close-tunnels the old target's tunnel is cut at the switch, so the drain
    has nothing left to wait for: the deploy ends well before its drain timeout, and
    says the drain completed."""
    old, new = WsBackend(tmp_path, "old"), WsBackend(tmp_path, "new")
    try:
        with admin_proxy(tmp_path, old.port) as proxy:
            url = f"ws://{proxy.host}:{proxy.port}/headers"
            with ws_connect(url, proxy=None, open_timeout=WAIT) as tunnel:
                assert json.loads(tunnel.recv(WAIT))["backend"] == "old"
                deploy = fastpause(
                    "deploy", "app", "--to", new.address, "--health-path", "/health",
                    "--drain-timeout", "10m", "--close-tunnels",
                )  # fmt: skip
                assert (deploy.returncode, deploy.stderr) == (0, ""), deploy
                draining, done = deploy.stdout.splitlines()[-2:]
                assert re.fullmatch(
                    rf"app: draining {old.address} \(\d in flight; WebSocket tunnels cut\)",
                    draining,
                ), draining
                assert done == "app: done"
                with pytest.raises(ConnectionClosed):
                    tunnel.recv(WAIT)
            with ws_connect(url, proxy=None, open_timeout=WAIT) as again:
                assert json.loads(again.recv(WAIT))["backend"] == "new"
    finally:
        old.kill()
        new.kill()


def test_failed_deploy_exits_1(tmp_path: Path, backend) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with admin_proxy(tmp_path, backend.port) as proxy:
        result = fastpause("deploy", "app", "--to", dead, "--deploy-timeout", "100ms")
        assert (result.returncode, result.stdout) == (1, f"app: checking {dead} at /up\n")
        assert result.stderr == (
            f"fastpause: app: deploy failed: {dead} did not pass the health check at /up "
            "within 0.1s: connection refused\n"
        )
        assert proxy.api.route()["upstreams"][0]["address"] == backend.address
        assert_admin_failure(
            fastpause("deploy", "nope", "--to", dead), "fastpause: no route named 'nope'"
        )


# ---------------------------------------------------------------- state file


def state_config(tmp_path: Path) -> str:
    return f'state_file = "{tmp_path}/state.json"\n'


def test_changes_are_saved_to_the_state_file(tmp_path: Path, backend, start_backend) -> None:
    other = start_backend("other")
    with admin_proxy(tmp_path, backend.port, state_config(tmp_path)):
        state = tmp_path / "state.json"
        assert not state.exists()  # nothing changed yet
        admin_ok("deploy", "app", "--to", other.address, "--health-path", "/status/200")
        admin_ok("stop", "app", "--message", "Back soon")
        saved = json.loads(state.read_text())
        assert saved == {
            "version": 1,
            "routes": {
                "app": {
                    "upstreams": [other.address],
                    "config_upstreams": [backend.address],
                    "mode": "stopped",
                    "max_hold": 30.0,
                    "stop_message": "Back soon",
                }
            },
        }
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".state")] == []


def write_state(tmp_path: Path, **route: object) -> Path:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "routes": {"app": route}}))
    return path


def test_a_restart_restores_deploy_and_pause(
    tmp_path: Path, backend, requester: ThreadPoolExecutor
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    write_state(
        tmp_path, upstreams=[backend.address], config_upstreams=[dead], mode="paused", max_hold=20
    )
    with admin_proxy(tmp_path, int(dead.rsplit(":", 1)[1]), state_config(tmp_path)) as proxy:
        route = proxy.api.route()
        assert (route["mode"], route["max_hold_seconds"]) == ("paused", 20)
        assert [upstream["address"] for upstream in route["upstreams"]] == [backend.address]
        held = requester.submit(get, proxy.host, proxy.port, "/inspect")
        proxy.api.wait_held(1)
        admin_ok("resume", "app")
        assert held.result(WAIT)[0] == 200


def test_each_route_is_saved_and_restored(tmp_path: Path, backend, start_backend) -> None:
    other = start_backend("other")
    routes = (
        f'[[routes]]\nname = "api"\nhosts = ["api.example.com"]\n'
        f'upstreams = [{{ address = "{backend.address}", weight = 3 }}]\n'
        f"{route_to(backend.port)}"
    )
    config = write_config(tmp_path, f'listen = ["127.0.0.1:0"]\n{state_config(tmp_path)}{routes}')
    with running_proxy("--config", str(config)) as running:
        running.started()
        admin_ok("deploy", "api", "--to", other.address, "--health-path", "/status/200")
        admin_ok("pause", "app")
        running.signal(signal.SIGTERM)
        assert running.finish()[0] == 0
    saved = json.loads((tmp_path / "state.json").read_text())["routes"]
    assert (saved["api"]["upstreams"], saved["api"]["mode"]) == ([other.address], "running")
    assert (saved["app"]["upstreams"], saved["app"]["mode"]) == (None, "paused")

    with running_proxy("--config", str(config)) as running:
        restored = [running.wait_for(r"^fastpause: route \w+: restored").string for _ in range(2)]
        assert restored == [
            f"fastpause: route api: restored from {tmp_path}/state.json: deployed to "
            f"{other.address}",
            f"fastpause: route app: restored from {tmp_path}/state.json: paused",
        ]
        host, port = running.started()
        api, app = AdminHttp(f"unix:{tmp_path}/fastpause.sock").status()["routes"]
        assert [(u["address"], u["weight"]) for u in api["upstreams"]] == [(other.address, 1)]
        assert app["mode"] == "paused"
        conn = http.client.HTTPConnection(host, port, timeout=WAIT)
        try:
            conn.request("GET", "/inspect", headers={"Host": "api.example.com"})
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        assert other.stats()["paths"]["/inspect"] == 1


def test_a_restored_deploy_yields_to_a_changed_config(tmp_path: Path, backend) -> None:
    stale = f"127.0.0.1:{free_port()}"
    write_state(tmp_path, upstreams=[stale], config_upstreams=["127.0.0.1:1"], mode="stopped")
    config = write_config(
        tmp_path,
        f'listen = ["127.0.0.1:0"]\n{state_config(tmp_path)}{route_to(backend.port)}',
    )
    with running_proxy("--config", str(config)) as running:
        note = running.wait_for(r"^fastpause: route app: upstreams changed")
        assert note.string == (
            f"fastpause: route app: upstreams changed in the config since the deploy to {stale}; "
            f"using the config's {backend.address}"
        )
        running.started()
        route = AdminHttp(f"unix:{tmp_path}/fastpause.sock").route()
        assert route["mode"] == "stopped"  # the mode is restored all the same
        assert [upstream["address"] for upstream in route["upstreams"]] == [backend.address]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{garbage", "not valid JSON"),
        ('{"version": 7, "routes": {}}', "unsupported version 7"),
    ],
)
def test_an_unusable_state_file_is_ignored(
    tmp_path: Path, backend, content: str, problem: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    config = write_config(
        tmp_path,
        f'listen = ["127.0.0.1:0"]\n{state_config(tmp_path)}{route_to(backend.port)}',
    )
    with running_proxy("--config", str(config)) as running:
        host, port = running.started()
        assert get(host, port, "/inspect")[0] == 200
        running.signal(signal.SIGTERM)
        status, _, stderr = running.finish()
    assert status == 0
    assert f"fastpause: ignoring state file {state}: {problem}" in stderr
    assert "Traceback" not in stderr
