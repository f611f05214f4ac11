"""Restarting the proxy itself under load: ``fastpause upgrade`` against a plain
restart (SIGTERM, then a new process: what ``systemctl restart`` does) and against
what the peers offer: NGINX's binary upgrade (USR2, WINCH, QUIT), HAProxy's reload
with ``-x`` (the listening sockets passed over its stats socket, ``-sf`` for the
old process) and a Caddy restart.

``python -m benchmarks.restart`` runs, for each variant and round: one NGINX
backend; the proxy with two routes, ``/`` (the load) and ``/held`` (holding
``--held`` requests, one connection each: fastpause on a paused route, Caddy with
``lb_try_duration`` towards a backend that is down; NGINX and HAProxy cannot hold);
wrk with 64 keep-alive connections and a client opening a new connection per
request, for ``--duration`` seconds (``--workers`` worker processes for
fastpause); at 35 % of the run the proxy is replaced; then the held requests are
released (fastpause: ``resume``; Caddy: the held backend starts). Figures: wrk's
non-2xx answers and socket errors (connect: refused; read: a keep-alive connection
closed under a request), the new-connection client's refused and failed requests,
held requests answered 200, and how long the replacement took (until the old
process is gone). Results go to ``benchmarks/results/restart.json``.

NGINX runs in the foreground, started through a shell that exits once NGINX has
written its pid file: NGINX ignores USR2 while the parent it started with is
alive, which a supervised foreground NGINX always has.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import load, machine, peers
from benchmarks.holding import admin_request
from benchmarks.processes import HarnessError, Proc, Supervisor, free_port, wait_for_port

RESULTS = Path(__file__).resolve().parent / "results" / "restart.json"
# how long an old process may take to finish what it serves before it is counted gone
GRACE = 15.0


class NewConnections(threading.Thread):
    """A request per new connection, in a loop: counts answered, refused, failed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.counts = {"ok": 0, "refused": 0, "failed": 0}
        self.stopping = threading.Event()

    def run(self) -> None:
        request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        while not self.stopping.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(request)
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                key = "ok" if data.startswith(b"HTTP/1.1 200 ") else "failed"
            except ConnectionRefusedError:
                key = "refused"
            except OSError:
                key = "failed"
            self.counts[key] += 1


@dataclass
class Subject:
    """A proxy under test and the way it is replaced (one per variant)."""

    sup: Supervisor
    base: Path
    port: int
    backend: int
    held_port: int  # the held requests' backend (Caddy's, down until released)
    workers: int = 1
    procs: list[Proc] = field(default_factory=list)
    holds = True

    def start(self) -> None:
        raise NotImplementedError

    def before_holding(self) -> None:
        """What makes ``/held`` hold (fastpause: pause the route)."""

    def wait_held(self, count: int) -> None:
        """Until the proxy has the ``count`` held requests (as far as it can tell)."""

    def replace(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in self.procs:
            self.sup.stop(proc)


class FastpauseSubject(Subject):
    upgrade = True

    def start(self) -> None:
        self.conf, self.admin = self.base / "fastpause.toml", f"unix:{self.base}/admin.sock"
        self.conf.write_text(
            f"""listen = ["127.0.0.1:{self.port}"]
admin = "{self.admin}"
workers = {self.workers}
shutdown_timeout = "10s"

[[routes]]
name = "held"
path_prefix = "/held"
strip_path_prefix = true
upstreams = ["127.0.0.1:{self.backend}"]

[[routes]]
name = "app"
upstreams = ["127.0.0.1:{self.backend}"]
"""
        )
        self._start_process()

    def _start_process(self) -> None:
        argv = [sys.executable, "-m", "fastpause", "run", "--config", str(self.conf)]
        proc = self.sup.start(f"fastpause-{self.port}", argv, env=peers.Fastpause.env())
        self.procs.append(proc)
        wait_for_port(self.port, proc)

    def _cli(self, *args: str) -> None:
        fastpause = peers.Fastpause(self.base)
        running = peers.Running(fastpause, self.procs[-1], self.port, 0, self.conf, self.admin)
        fastpause.cli(running, *args, timeout=120)

    def before_holding(self) -> None:
        self._cli("pause", "held")

    def wait_held(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, status = admin_request(self.admin, "GET", "/status")
            if sum(route["held"] for route in status["routes"]) >= count:
                return
            time.sleep(0.05)

    def replace(self) -> None:
        if self.upgrade:
            self._cli("upgrade")
            _, status = admin_request(self.admin, "GET", "/status")
            self.successor = status["pid"]
            return
        self.sup.stop(self.procs[-1], grace=GRACE)
        self._start_process()

    def release(self) -> None:
        self._cli("resume", "held")

    def stop(self) -> None:
        if self.upgrade and getattr(self, "successor", None):
            os.kill(self.successor, signal.SIGTERM)
        super().stop()


class FastpauseRestart(FastpauseSubject):
    upgrade = False


class NginxBinaryUpgrade(Subject):
    """USR2 (a new master from the same binary, on the inherited sockets), WINCH
    (the old workers finish gracefully), QUIT (the old master goes)."""

    holds = False

    def start(self) -> None:
        conf = self.base / "nginx.conf"
        common = peers._nginx_common(self.base)
        conf.write_text(
            common
            + f"""
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{peers._nginx_temp_paths(self.base)}
    upstream app {{
        server 127.0.0.1:{self.backend};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port} backlog=16384;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        # NGINX acts on USR2 only once the parent it started with is gone: the shell
        # exits as soon as NGINX has written its pid file (it noted its parent by then).
        self.pid_file = self.base / "nginx.pid"
        command = (
            f"{peers._nginx_binary()} -e {self.base}/error.log -p {self.base} -c {conf} & "
            f"while [ ! -s {self.pid_file} ]; do sleep 0.01; done"
        )
        self.procs.append(self.sup.start(f"nginx-{self.port}", ["sh", "-c", command]))
        wait_for_port(self.port)

    def _master(self, path: Path) -> int:
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline:
            try:
                return int(path.read_text())
            except (OSError, ValueError):
                time.sleep(0.02)
        raise HarnessError(f"NGINX wrote no {path.name}")

    def replace(self) -> None:
        old = self._master(self.pid_file)
        os.kill(old, signal.SIGUSR2)
        self._master(self.base / "nginx.pid.oldbin")
        while self._master(self.pid_file) == old:
            time.sleep(0.02)
        time.sleep(0.2)  # the new master's workers start accepting
        os.kill(old, signal.SIGWINCH)
        time.sleep(0.5)  # what NGINX's guide leaves to the operator: watch the new workers
        os.kill(old, signal.SIGQUIT)
        _wait_gone(old)

    def release(self) -> None:
        pass

    def stop(self) -> None:
        with contextlib.suppress(OSError, HarnessError):
            os.kill(self._master(self.pid_file), signal.SIGTERM)
        super().stop()


class HaproxyReload(Subject):
    """A new HAProxy takes the listening sockets from the old one (``-x`` over the
    stats socket, ``expose-fd listeners``) and tells it to finish (``-sf``)."""

    holds = False

    def start(self) -> None:
        self.conf = self.base / "haproxy.cfg"
        self.stats = self.base / "haproxy.sock"
        stats = f"    stats socket {self.stats} mode 600 level admin expose-fd listeners\n"
        haproxy = peers.Haproxy(self.base)
        self.conf.write_text(haproxy.config(self.port, self.backend, extra_global=stats))
        self._start_process([])

    def _start_process(self, extra: list[str]) -> None:
        argv = ["haproxy", "-db", "-f", str(self.conf), *extra]
        proc = self.sup.start(f"haproxy-{self.port}-{len(self.procs)}", argv)
        self.procs.append(proc)
        wait_for_port(self.port, proc)

    def replace(self) -> None:
        old = self.procs[-1]
        self._start_process(["-x", str(self.stats), "-sf", str(old.pid)])
        _wait_gone(old.pid)

    def release(self) -> None:
        pass


class CaddyRestart(Subject):
    """Caddy holds ``/held`` with ``lb_try_duration`` towards a backend that is down;
    the restart is SIGTERM (Caddy's graceful stop) and a new process."""

    def start(self) -> None:
        self.caddy = peers.Caddy(self.base)
        self.conf = self.base / "Caddyfile"
        self.conf.write_text(
            f"""{{
\tadmin off
\tauto_https off
}}

:{self.port} {{
\tbind 127.0.0.1
\thandle_path /held* {{
\t\treverse_proxy 127.0.0.1:{self.held_port} {{
\t\t\tlb_try_duration 60s
\t\t\tlb_try_interval 250ms
\t\t}}
\t}}
\treverse_proxy 127.0.0.1:{self.backend} {{
\t\ttransport http {{
\t\t\tkeepalive_idle_conns_per_host 512
\t\t}}
\t}}
}}
"""
        )
        self._start_process()

    def _start_process(self) -> None:
        argv = ["caddy", "run", "--config", str(self.conf), "--adapter", "caddyfile"]
        proc = self.sup.start(f"caddy-{self.port}-{len(self.procs)}", argv, env=self.caddy.env())
        self.procs.append(proc)
        wait_for_port(self.port, proc)

    def replace(self) -> None:
        self.sup.stop(self.procs[-1], grace=GRACE)
        self._start_process()

    def release(self) -> None:
        self.procs.append(peers.Backend(self.base).start(self.sup, self.held_port))


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + GRACE + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _zombie(pid):
            return
        time.sleep(0.02)
    raise HarnessError(f"the old process {pid} was still running {GRACE + 5:g}s later")


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


VARIANTS: dict[str, type[Subject]] = {
    "fastpause-upgrade": FastpauseSubject,
    "fastpause-restart": FastpauseRestart,
    "nginx-binary-upgrade": NginxBinaryUpgrade,
    "haproxy-reload-x": HaproxyReload,
    "caddy-restart": CaddyRestart,
}
TOOLS = {"nginx-binary-upgrade": "nginx", "haproxy-reload-x": "haproxy", "caddy-restart": "caddy"}


def _hold(port: int, count: int) -> list[socket.socket]:
    held = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(f"GET /held?n={index} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        held.append(sock)
    return held


def _answered(held: list[socket.socket]) -> int:
    """Held requests answered 200 (each connection read until its status line)."""
    ok = 0
    for sock in held:
        try:
            data = sock.recv(65536)
            ok += data.startswith(b"HTTP/1.1 200 ")
        except OSError:
            pass
        sock.close()
    return ok


def run_variant(
    sup: Supervisor, workdir: Path, variant: str, duration: float, held_count: int, workers: int
) -> dict:
    backend_port, port = free_port(), free_port()
    backend = peers.Backend(workdir).start(sup, backend_port)
    base = workdir / f"{variant}-{port}"
    base.mkdir()
    base.chmod(0o755)
    subject = VARIANTS[variant](sup, base, port, backend_port, free_port(), workers)
    subject.start()
    try:
        held: list[socket.socket] = []
        if subject.holds:
            subject.before_holding()
            held = _hold(port, held_count)
            subject.wait_held(held_count)
        script = load.write_script(workdir, close=False)
        wrk = load.start_wrk(sup, f"http://127.0.0.1:{port}/", script, duration, f"wrk-{variant}")
        clients = NewConnections(port)
        clients.start()
        time.sleep(duration * 0.35)
        began = time.monotonic()
        subject.replace()
        took = time.monotonic() - began
        subject.release()
        answered = _answered(held)
        result = load.finish_wrk(sup, wrk, duration)
        clients.stopping.set()
        clients.join(30)
    finally:
        subject.stop()
        sup.stop(backend)
    row = {
        "variant": variant,
        "workers": workers,
        **result.as_dict(),
        "new_connections": clients.counts,
        "held": held_count if subject.holds else None,
        "held_answered": answered if subject.holds else None,
        "replace_seconds": took,
    }
    holding = f"{answered}/{held_count}" if subject.holds else "cannot hold"
    print(
        f"  {variant:21} wrk {result.requests} requests, non-2xx {result.non2xx}, socket "
        f"errors {result.socket_errors} ({result.errors_detail or 'none'}); new connections "
        f"{clients.counts}; held answered {holding}; replaced in {took:.2f}s",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restart", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--held", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="fastpause's workers")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant {', '.join(sorted(unknown))}")
    workdir = Path(tempfile.mkdtemp(prefix="fastpause-bench-restart-"))
    rows = []
    try:
        with Supervisor(workdir) as sup:
            peers.ensure_tools(
                sorted({"fastpause", "nginx", *(TOOLS.get(v, "nginx") for v in variants)})
            )
            load_before = machine.load_now()
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}", flush=True)
                for variant in variants:
                    rows.append(
                        run_variant(sup, workdir, variant, args.duration, args.held, args.workers)
                        | {"round": round_}
                    )
    except HarnessError as error:
        print(f"benchmarks: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[f"workers={args.workers}"] = {"load_before": load_before, "rows": rows}
    RESULTS.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
