"""Restarting the proxy itself under load: ``fastpause upgrade`` against a plain
restart (SIGTERM, then a new process: what ``systemctl restart`` does).

``python -m benchmarks.restart`` runs, for each variant and round: one NGINX
backend; fastpause with two routes, ``app`` (the load) and ``held`` (paused,
holding ``--held`` requests, one connection each); wrk with 64 keep-alive
connections and a client opening a new connection per request, for
``--duration`` seconds (``--workers`` worker processes); at 35 % of the run the
proxy is replaced; then ``held``
is resumed. Figures: wrk's non-2xx answers and socket errors (connect: refused;
read: a keep-alive connection closed under a request), the new-connection
client's refused and failed requests, held requests answered 200, and how long
the replacement took. Results go to ``benchmarks/results/restart.json``.

NGINX's binary upgrade (USR2, WINCH, QUIT) is not run here: the harness runs
NGINX in the foreground under its own supervisor, where NGINX ignores USR2
("the changing binary signal is ignored").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import load, machine, peers
from benchmarks.holding import admin_request
from benchmarks.processes import HarnessError, Supervisor, free_port, wait_for_port

RESULTS = Path(__file__).resolve().parent / "results" / "restart.json"
VARIANTS = ("upgrade", "restart")


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


def _config(path: Path, port: int, upstream: int, admin: str, workers: int) -> None:
    path.write_text(
        f"""listen = ["127.0.0.1:{port}"]
admin = "{admin}"
workers = {workers}
shutdown_timeout = "10s"

[[routes]]
name = "held"
path_prefix = "/held"
strip_path_prefix = true
upstreams = ["127.0.0.1:{upstream}"]

[[routes]]
name = "app"
upstreams = ["127.0.0.1:{upstream}"]
"""
    )


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


def _held_now(admin: str) -> int:
    _, status = admin_request(admin, "GET", "/status")
    return sum(route["held"] for route in status["routes"])


def run_variant(
    sup: Supervisor, workdir: Path, variant: str, duration: float, held_count: int, workers: int
) -> dict:
    backend_port, port = free_port(), free_port()
    backend = peers.Backend(workdir).start(sup, backend_port)
    base = workdir / f"{variant}-{port}"
    base.mkdir()
    conf, admin = base / "fastpause.toml", f"unix:{base}/admin.sock"
    _config(conf, port, backend_port, admin, workers)
    argv = [sys.executable, "-m", "fastpause", "run", "--config", str(conf)]
    env = peers.Fastpause.env()
    proxy = sup.start(f"fastpause-{variant}", argv, env=env)
    wait_for_port(port, proxy)
    successor = None
    try:
        fp = peers.Fastpause(workdir)
        running = peers.Running(fp, proxy, port, backend_port, conf, admin)
        fp.cli(running, "pause", "held")
        held = _hold(port, held_count)
        deadline = time.monotonic() + 30
        while _held_now(admin) < held_count and time.monotonic() < deadline:
            time.sleep(0.05)
        script = load.write_script(workdir, close=False)
        wrk = load.start_wrk(sup, f"http://127.0.0.1:{port}/", script, duration, f"wrk-{variant}")
        clients = NewConnections(port)
        clients.start()
        time.sleep(duration * 0.35)
        began = time.monotonic()
        if variant == "upgrade":
            fp.cli(running, "upgrade", timeout=120)
        else:
            sup.stop(proxy, grace=15)
            proxy = sup.start(f"fastpause-{variant}-2", argv, env=env)
            wait_for_port(port, proxy)
        took = time.monotonic() - began
        _, status = admin_request(admin, "GET", "/status")
        successor = status["pid"] if variant == "upgrade" else None
        fp.cli(running, "resume", "held")
        answered = _answered(held)
        result = load.finish_wrk(sup, wrk, duration)
        clients.stopping.set()
        clients.join(30)
    finally:
        if successor is not None:
            os.kill(successor, signal.SIGTERM)
        sup.stop(proxy)
        sup.stop(backend)
    row = {
        "variant": variant,
        "workers": workers,
        **result.as_dict(),
        "new_connections": clients.counts,
        "held": held_count,
        "held_answered": answered,
        "replace_seconds": took,
    }
    print(
        f"  {variant:8} wrk {result.requests} requests, non-2xx {result.non2xx}, socket "
        f"errors {result.socket_errors} ({result.errors_detail or 'none'}); new connections "
        f"{clients.counts}; held answered {answered}/{held_count}; replaced in {took:.2f}s",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restart", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--held", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="fastpause's workers")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fastpause-bench-restart-"))
    rows = []
    try:
        with Supervisor(workdir) as sup:
            peers.ensure_tools(["fastpause", "nginx"])
            load_before = machine.load_now()
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}", flush=True)
                for variant in VARIANTS:
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
