"""Hold scenarios, fastpause against Caddy.

Three ways of holding N requests (one per connection, from ``holdclient``):

* ``fastpause-pause``: backend up, route paused (``fastpause pause``); release =
  the admin API's resume, timed from the moment the harness sends it.
* ``fastpause-down``: no pause; the backend port is closed, so requests wait
  under ``try_duration`` (30 s, probe every ``try_interval`` 250 ms); release =
  the backend starting, timed from the moment its port accepts a connection
  (the harness polls it every millisecond).
* ``caddy-down``: the same with Caddy's ``lb_try_duration 30s`` /
  ``lb_try_interval 250ms``.

Figures: RSS growth of the proxy ÷ held requests; time from release to the
first and the last answer; the answers' statuses.

``reload_while_held`` is the case Caddy gets wrong (caddyserver/caddy#4442):
requests held for a down backend, then the proxy is reloaded to point at a
live one.
"""

import json
import selectors
import socket
import sys
import time
from pathlib import Path

from benchmarks.peers import Backend, Caddy, Fastpause, Running
from benchmarks.processes import (
    HarnessError,
    Supervisor,
    free_port,
    port_open,
    rss_bytes,
)


def admin_request(admin: str, method: str, path: str, body: bytes = b"", timeout: float = 30.0):
    """One request to fastpause's admin API over its Unix socket: (status, JSON)."""
    sock_path = admin.removeprefix("unix:")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: fastpause\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(payload or b"null")


def held_count(running: Running) -> int:
    _, status = admin_request(running.admin, "GET", "/status")
    return sum(route["held"] for route in status["routes"])


class HoldClient:
    """The ``benchmarks.holdclient`` process: N connections, one request each."""

    def __init__(self, sup: Supervisor, port: int, count: int, name: str, timeout: float = 90.0):
        self.timeout = timeout
        self.out = sup.workdir / f"{name}.json"
        self.proc = sup.start(
            name,
            [
                sys.executable,
                "-m",
                "benchmarks.holdclient",
                "--port",
                str(port),
                "--count",
                str(count),
                "--timeout",
                str(timeout),
                "--out",
                str(self.out),
            ],
            stdout_pipe=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.sup = sup
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.popen.stdout, selectors.EVENT_READ)

    def _line(self, timeout: float) -> str:
        if not self.selector.select(timeout):
            raise HarnessError(f"hold client: no output within {timeout:g}s")
        line = self.proc.popen.stdout.readline()
        if not line:
            raise HarnessError(f"hold client exited:\n{self.proc.log_tail()}")
        return line.strip()

    def wait_sent(self, timeout: float = 60.0) -> int:
        line = self._line(timeout)
        if not line.startswith("sent "):
            raise HarnessError(f"hold client: unexpected {line!r}")
        return int(line.split()[1])

    def result(self) -> dict:
        try:
            line = self._line(self.timeout + 30)
            if line != "done":
                raise HarnessError(f"hold client: unexpected {line[:200]!r}")
            return json.loads(self.out.read_text())
        finally:
            self.selector.close()
            self.sup.stop(self.proc)


def _settle_rss(pids: list[int], running: Running | None, sent: int, timeout: float) -> int:
    """RSS once the proxy has taken in every request: for fastpause, when its
    status says all are held; for Caddy, when RSS stops growing (< 0.5 % over
    0.5 s, at least 1 s after the last request was sent)."""
    deadline = time.monotonic() + timeout
    if running is not None:
        while time.monotonic() < deadline and held_count(running) < sent:
            time.sleep(0.1)
        time.sleep(0.3)
        return rss_bytes(pids)
    time.sleep(1.0)
    last = rss_bytes(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_bytes(pids)
        if abs(now - last) < 0.005 * max(last, 1):
            return max(now, last)
        last = now
    return last


def _wait_accepting(port: int, timeout: float = 15.0) -> float:
    """Poll the port every millisecond; the monotonic time it first accepted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return time.monotonic()
        time.sleep(0.001)
    raise HarnessError(f"backend on port {port} did not come up within {timeout:g}s")


def hold_run(
    sup: Supervisor, workdir: Path, kind: str, count: int, log=print, workers: int = 1
) -> dict:
    """One hold scenario; ``workers``: fastpause's worker processes (RSS is summed
    over the supervisor and its workers)."""
    backend = Backend(workdir)
    backend_port = free_port()
    fastpause = kind.startswith("fastpause")
    peer = Fastpause(workdir) if fastpause else Caddy(workdir)
    peer.workers = workers
    started = []
    try:
        if kind == "fastpause-pause":
            started.append(backend.start(sup, backend_port))
        running = peer.start(sup, free_port(), backend_port, hold=True)
        started.append(running.proc)
        if kind == "fastpause-pause":
            peer.cli(running, "pause", "app", "--max-hold", "120s")
        pids = running.pids()
        before = rss_bytes(pids)
        client = HoldClient(sup, running.port, count, f"holdclient-{kind}")
        started.append(client.proc)
        sent = client.wait_sent()
        after = _settle_rss(pids, running if fastpause else None, sent, timeout=30.0)
        held = held_count(running) if fastpause else None
        if kind == "fastpause-pause":
            released_at = time.monotonic()
            status, answer = admin_request(running.admin, "POST", "/routes/app/resume")
            if status != 200:
                raise HarnessError(f"resume answered {status}: {answer}")
        else:
            started.append(backend.start(sup, backend_port, wait=False))
            released_at = _wait_accepting(backend_port)
        result = client.result()
        answered = result["answered"]
        row = {
            "kind": kind,
            "workers": workers,
            "count": count,
            "sent": sent,
            "held_reported": held,
            "rss_before": before,
            "rss_after": after,
            "rss_per_held": (after - before) / max(1, sent),
            "first": answered[0] - released_at if answered else None,
            "last": answered[-1] - released_at if answered else None,
            "answered": len(answered),
            "statuses": result["statuses"],
            "errors": result["errors"],
            "release_curve": [
                t - released_at for t in answered[:: max(1, len(answered) // 400)] + answered[-1:]
            ],
            "proxy_alive": running.proc.alive(),
        }
        log(
            f"  hold {kind:16} ({workers}w) {sent} held: "
            f"+{row['rss_per_held'] / 1024:6.1f} KiB each, "
            f"first {_ms(row['first'])}, last {_ms(row['last'])} after release; "
            f"statuses {result['statuses']} errors {result['errors']}"
        )
        return row
    finally:
        for proc in reversed(started):
            sup.stop(proc)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f} ms"


def reload_while_held(sup: Supervisor, workdir: Path, proxy: str, count: int, log=print) -> dict:
    """Requests held for a down backend; then a live backend is started on
    another port and the proxy reloaded to it. How are the held requests answered?"""
    if proxy == "fastpause" and not Fastpause.has_command("reload"):
        row = {"proxy": proxy, "available": False}
        log("  reload-while-held fastpause: not yet available (no `fastpause reload`)")
        return row
    backend = Backend(workdir)
    down, live = free_port(), free_port()
    peer = Fastpause(workdir) if proxy == "fastpause" else Caddy(workdir)
    started = []
    try:
        running = peer.start(sup, free_port(), down, hold=True)
        started.append(running.proc)
        started.append(backend.start(sup, live))
        client = HoldClient(sup, running.port, count, f"holdclient-reload-{proxy}")
        started.append(client.proc)
        sent = client.wait_sent()
        time.sleep(1.0)
        began = time.monotonic()
        if proxy == "fastpause":
            peer.write_config(running.config, running.port, live, running.admin)
            peer.cli(running, "reload", "--config", str(running.config))
        else:
            peer.reload(running, live)
        result = client.result()
        answered = result["answered"]
        row = {
            "proxy": proxy,
            "available": True,
            "sent": sent,
            "statuses": result["statuses"],
            "errors": result["errors"],
            "last": answered[-1] - began if answered else None,
        }
        log(
            f"  reload-while-held {proxy}: {sent} held, statuses {result['statuses']} "
            f"errors {result['errors']}, last answer {_ms(row['last'])} after the reload"
        )
        return row
    finally:
        for proc in reversed(started):
            sup.stop(proc)
