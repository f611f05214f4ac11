"""A backend swap while wrk runs: what do clients see?

Two kinds of swap, each under ``wrk -t1 -c64`` keep-alive small-body load:

* ``restart``: the backend is stopped (NGINX graceful quit) and a new one is
  started on the same port 1 s later. fastpause either pauses the route first
  and resumes after (``restart-fastpause-pause``) or just relies on ``try_duration``
  (``restart-fastpause-try``); Caddy relies on ``lb_try_duration 30s`` /
  ``lb_try_interval 250ms``; NGINX (no holding) is the reference for what a
  plain proxy does.
* ``reload`` / ``deploy``: a new backend is started on another port, the proxy
  is pointed at it (Caddy: edit the Caddyfile + ``caddy reload``; fastpause:
  edit the config + ``fastpause reload``, or ``fastpause deploy app --to``),
  then the old backend is stopped. Rows whose fastpause command does not exist
  yet are reported as "not yet available".

Figures: wrk's non-2xx count, socket errors, p99 over the whole run; a probe
(one keep-alive connection, a request every 20 ms, timed) gives latency over
time, and the wrk script counts answers per 100 ms for requests/s over time.
"""

import socket
import statistics
import threading
import time
from pathlib import Path

from benchmarks import load
from benchmarks.browser import request_head
from benchmarks.peers import Backend, Caddy, Fastpause, Nginx
from benchmarks.processes import Supervisor, free_port

GAP = 1.0  # seconds the backend is down during a restart

VARIANTS = {
    # key: (swap kind, peer, how)
    "restart-fastpause-pause": ("restart", "fastpause", "pause, restart backend, resume"),
    "restart-fastpause-try": ("restart", "fastpause", "restart backend; try_duration holds"),
    "restart-caddy": ("restart", "caddy", "restart backend; lb_try_duration holds"),
    "restart-nginx": ("restart", "nginx", "restart backend; no holding (reference)"),
    "reload-fastpause": ("reload", "fastpause", "new backend; fastpause reload"),
    "deploy-fastpause": ("deploy", "fastpause", "new backend; fastpause deploy app --to"),
    "reload-caddy": ("reload", "caddy", "new backend; caddy reload"),
}


class Probe(threading.Thread):
    """One keep-alive connection, a request every ``interval``: (sent_at, latency, status)."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []  # status 0 = error
        self.stopping = threading.Event()
        self.head = request_head("/", f"127.0.0.1:{port}")

    def run(self) -> None:
        sock = None
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=40)
                sock.sendall(self.head)
                status = _read_response(sock)
            except OSError:
                status = 0
                if sock is not None:
                    sock.close()
                sock = None
            self.samples.append((began, time.monotonic() - began, status))
            self.stopping.wait(self.interval)
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(45)


def _read_response(sock: socket.socket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        if name.strip().lower() == "connection" and "close" in value.lower():
            close = True
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    if close:
        raise ConnectionError(f"closed after {status}")  # reconnect; counted as an error
    return status


def available(variant: str) -> bool:
    if variant == "reload-fastpause":
        return Fastpause.has_command("reload")
    if variant == "deploy-fastpause":
        return Fastpause.has_command("deploy")
    return True


def swap_run(sup: Supervisor, workdir: Path, variant: str, duration: float, log=print) -> dict:
    kind, proxy, how = VARIANTS[variant]
    if not available(variant):
        log(f"  swap {variant:16} fastpause: not yet available")
        return {"variant": variant, "kind": kind, "proxy": proxy, "how": how, "available": False}
    backend = Backend(workdir)
    old_port, new_port = free_port(), free_port()
    peer = {"fastpause": Fastpause, "caddy": Caddy, "nginx": Nginx}[proxy](workdir)
    timeline = workdir / f"timeline-{variant}.txt"
    timeline.unlink(missing_ok=True)
    script = load.write_script(workdir, close=False, timeline=timeline)
    started = []
    probe = None
    try:
        old = backend.start(sup, old_port)
        started.append(old)
        running = peer.start(sup, free_port(), old_port, hold=True)
        started.append(running.proc)
        url = f"http://127.0.0.1:{running.port}/"
        warm = load.write_script(workdir, close=False)
        load.finish_wrk(sup, load.start_wrk(sup, url, warm, 1), 1)
        probe = Probe(running.port)
        wrk = load.start_wrk(sup, url, script, duration, name=f"wrk-{variant}")
        t_start = time.monotonic()
        probe.start()
        time.sleep(duration * 0.35)
        swap_began = time.monotonic()
        events: list[tuple[float, str]] = [(swap_began, "swap begins")]
        if kind == "restart":
            if variant == "restart-fastpause-pause":
                peer.cli(running, "pause", "app", "--drain-timeout", "10s")
                events.append((time.monotonic(), "paused (drained)"))
            sup.stop(old, sig=3, grace=10)  # SIGQUIT: NGINX's graceful shutdown
            events.append((time.monotonic(), "old backend stopped"))
            time.sleep(GAP)
            started.append(backend.start(sup, old_port))
            events.append((time.monotonic(), "new backend accepting"))
            if variant == "restart-fastpause-pause":
                peer.cli(running, "resume", "app")
                events.append((time.monotonic(), "resumed"))
        else:
            started.append(backend.start(sup, new_port))
            events.append((time.monotonic(), "new backend accepting"))
            if variant == "reload-caddy":
                peer.reload(running, new_port)
            elif variant == "reload-fastpause":
                peer.write_config(running.config, running.port, new_port, running.admin)
                peer.cli(running, "reload", "--config", str(running.config))
            else:
                peer.cli(
                    running,
                    "deploy",
                    "app",
                    "--to",
                    f"127.0.0.1:{new_port}",
                    "--health-path",
                    "/up",
                    "--drain-timeout",
                    "5s",
                )
            events.append((time.monotonic(), "proxy switched"))
            sup.stop(old, sig=3, grace=10)
            events.append((time.monotonic(), "old backend stopped"))
        swap_ended = time.monotonic()
        result = load.finish_wrk(sup, wrk, duration)
        probe.stop()
        window = [s for s in probe.samples if swap_began - 0.5 <= s[0] <= swap_ended + 1.0]
        latencies = sorted(s[1] for s in window) or [0.0]
        buckets = _read_timeline(timeline)
        row = {
            "variant": variant,
            "kind": kind,
            "proxy": proxy,
            "how": how,
            "available": True,
            **result.as_dict(),
            "swap_seconds": swap_ended - swap_began,
            "probe_errors": sum(1 for s in window if s[2] == 0),
            "probe_non2xx": sum(1 for s in window if s[2] >= 400),
            "probe_p99_window": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "probe_max_window": latencies[-1],
            "probe_median_window": statistics.median(latencies),
            "t0": t_start,
            "events": [(t - t_start, what) for t, what in events],
            "probe": [(t - t_start, lat, st) for t, lat, st in probe.samples],
            "buckets": [(b / 10 - t_start, ok, other) for b, ok, other in buckets],
            "proxy_alive": running.proc.alive(),
        }
        log(
            f"  swap {variant:16} {result.rps:8.0f} req/s  non-2xx {result.non2xx}  "
            f"socket errors {result.socket_errors}  p99 {result.p99 * 1e3:.1f} ms  "
            f"probe max {row['probe_max_window'] * 1e3:.0f} ms, errors {row['probe_errors']}"
        )
        return row
    finally:
        if probe is not None and probe.is_alive():
            probe.stop()
        for proc in reversed(started):
            sup.stop(proc)


def _read_timeline(path: Path) -> list[tuple[int, int, int]]:
    merged: dict[int, list[int]] = {}
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        bucket, ok, other = (int(p) for p in parts)
        slot = merged.setdefault(bucket, [0, 0])
        slot[0] += ok
        slot[1] += other
    return sorted((b, v[0], v[1]) for b, v in merged.items())
