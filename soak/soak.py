#!/usr/bin/env python3
"""Bounded soak: steady load on a real proxy while it is paused, resumed, deployed and
reloaded every few seconds. Not part of pytest.

    python soak/soak.py                 # 10 minutes (the default)
    python soak/soak.py --minutes 2     # shorter
    python soak/soak.py --no-write      # do not record the result in RELIABILITY.md

It starts two backends (``tests/backend.py``) and one proxy (``python -m fastpause
run``, installed package) on loopback, drives ``--concurrency`` keep-alive clients at
about ``--rate`` requests per second (GETs checked against their own target, POSTs
checked byte for byte), and cycles through control actions with the real CLI:
``pause`` then ``resume``, ``deploy app --to`` the other backend, ``reload`` (a
changed config file), every ``--interval`` seconds.

It asserts that every request got a 2xx answer of its own, or a documented ``503``
(a hold that expired or a full queue); that nothing was cut or answered wrongly;
and that the proxy's RSS and open fd count stay flat (sampled every few seconds;
fds must come back to their idle baseline at the end, RSS may not grow by more than
``--rss-slack-mib`` from the first minute to the last). The result is written into
RELIABILITY.md between the ``soak:begin`` / ``soak:end`` markers. Exit status 0 when
every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
RELIABILITY = ROOT / "RELIABILITY.md"
sys.path.insert(0, str(TESTS))

from helpers import free_port, payload  # noqa: E402


def start(argv: list[str], log: Path, ready: str, timeout: float = 60.0):
    """Start a process; wait for a stdout line starting with ``ready``; return (proc, line)."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=open(log, "wb"),  # noqa: SIM115
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode("utf-8", "replace")
        if not line:
            raise RuntimeError(f"{argv} exited: {log.read_text()}")
        if line.startswith(ready):
            # keep draining stdout so the pipe never fills
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.strip()
    proc.kill()
    raise RuntimeError(f"{argv} did not start in {timeout}s")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Stats:
    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.ok = 0
        self.problems: list[str] = []
        self.cut = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)


async def read_response(reader: asyncio.StreamReader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            raise ValueError("unexpected chunked response in the soak")
        elif name == b"connection" and b"close" in value.lower():
            close = True
    return status, await reader.readexactly(length), close


BODY = payload(3000)


async def client(cid: int, port: int, stats: Stats, stop_at: float, rate: float) -> None:
    """One keep-alive client: a request every ~1/rate seconds, checked."""
    rng = random.Random(cid)
    seq = 0
    reader = writer = None
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        next_at += rng.expovariate(rate)
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing, not synchronization
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        seq += 1
        post = rng.random() < 0.25
        target = f"/inspect/c{cid}/{seq}"
        if post:
            req = (
                f"POST /echo HTTP/1.1\r\nHost: soak.test\r\nContent-Length: {len(BODY)}\r\n\r\n"
            ).encode() + BODY
        else:
            req = f"GET {target} HTTP/1.1\r\nHost: soak.test\r\n\r\n".encode()
        try:
            writer.write(req)
            status, body, close = await asyncio.wait_for(read_response(reader), 120)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
            stats.cut += 1
            stats.problem(f"{'POST' if post else target}: {e!r}")
            writer.close()
            reader = writer = None
            continue
        stats.by_status[status] = stats.by_status.get(status, 0) + 1
        if 200 <= status < 300:
            if post and body != BODY:
                stats.problem(f"POST echo mismatch ({len(body)} bytes)")
            elif not post and json.loads(body)["target"] != target:
                stats.problem(f"{target} answered for {json.loads(body)['target']}")
            else:
                stats.ok += 1
        elif status != 503:
            stats.problem(f"{target}: {status} {body[:200]!r}")
        if close:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def cli(admin: str, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "fastpause", *args, "--admin", admin],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def write_config(path: Path, listen: str, admin: str, upstream: str, retry_after: int) -> None:
    path.write_text(
        f'listen = ["{listen}"]\nadmin = "{admin}"\nshutdown_timeout = "10s"\n'
        f'keepalive_timeout = "5s"\n\n[[routes]]\nname = "app"\nupstreams = ["{upstream}"]\n'
        f'retry_after = "{retry_after}s"\nupstream_keepalive_timeout = "5s"\n'
        f'health_path = "/status/200"\n'
    )


async def control(
    admin: str,
    config: Path,
    listen: str,
    backends: list[str],
    stop_at: float,
    interval: float,
    log: list[str],
) -> None:
    """pause/resume, deploy to the other backend, reload: in turn, until the end."""
    current = 0
    step = 0
    loop = asyncio.get_running_loop()
    while time.monotonic() + interval < stop_at:
        await asyncio.sleep(interval)  # the cadence of the soak, not synchronization
        action = ("pause", "deploy", "reload")[step % 3]
        step += 1
        if action == "pause":
            rc, out = await loop.run_in_executor(
                None, cli, admin, "pause", "app", "--max-hold", "30s", "--drain-timeout", "10s"
            )
            log.append(f"pause: {rc} {out}")
            await asyncio.sleep(min(2.0, interval / 2))  # requests wait at the proxy meanwhile
            rc2, out2 = await loop.run_in_executor(None, cli, admin, "resume", "app")
            log.append(f"resume: {rc2} {out2}")
            if rc or rc2:
                raise RuntimeError(f"pause/resume failed: {out} / {out2}")
        elif action == "deploy":
            current = 1 - current
            rc, out = await loop.run_in_executor(
                None,
                cli,
                admin,
                "deploy",
                "app",
                "--to",
                backends[current],
                "--health-path",
                "/status/200",
                "--drain-timeout",
                "10s",
            )
            log.append(f"deploy -> {backends[current]}: {rc} {out.splitlines()[-1:]}")
            if rc:
                raise RuntimeError(f"deploy failed: {out}")
        else:
            write_config(config, listen, admin, backends[current], retry_after=1 + step % 5)
            rc, out = await loop.run_in_executor(None, cli, admin, "reload")
            log.append(f"reload: {rc} {out}")
            if rc:
                raise RuntimeError(f"reload failed: {out}")


async def sampler(pid: int, stop_at: float, samples: list[tuple[float, int, int]]) -> None:
    t0 = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - t0, rss_kib(pid), fd_count(pid)))
        await asyncio.sleep(5)  # sampling period


async def soak(
    args, port: int, pid: int, admin: str, config: Path, listen: str, backends: list[str]
) -> tuple[Stats, list[str], list]:
    stats = Stats()
    log: list[str] = []
    samples: list[tuple[float, int, int]] = []
    stop_at = time.monotonic() + args.minutes * 60
    per_client = args.rate / args.concurrency
    tasks = [client(i, port, stats, stop_at, per_client) for i in range(args.concurrency)]
    ctl = asyncio.ensure_future(
        control(admin, config, listen, backends, stop_at, args.interval, log)
    )
    await asyncio.gather(*tasks, sampler(pid, stop_at, samples))
    try:
        await ctl
    except RuntimeError as e:
        stats.problem(f"control: {e}")
    return stats, log, samples


def record(text: str) -> None:
    body = RELIABILITY.read_text() if RELIABILITY.exists() else "# Reliability\n"
    block = f"<!-- soak:begin -->\n{text}\n<!-- soak:end -->"
    if "<!-- soak:begin -->" in body:
        body = re.sub(r"<!-- soak:begin -->.*?<!-- soak:end -->", lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip("\n") + "\n\n## Soak\n\n" + block + "\n"
    RELIABILITY.write_text(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=300.0, help="requests per second, total")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between control actions")
    ap.add_argument("--rss-slack-mib", type=float, default=20.0)
    ap.add_argument("--no-write", action="store_true", help="do not update RELIABILITY.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fastpause-soak-"))
    procs = []
    try:
        backends = []
        for name in ("a", "b"):
            p, line = start(
                [sys.executable, str(TESTS / "backend.py"), "--port", "0"],
                tmp / f"backend-{name}.log",
                "backend: listening on ",
            )
            procs.append(p)
            backends.append(line.rsplit(" ", 1)[1])
        listen = f"127.0.0.1:{free_port()}"
        admin = f"unix:{tmp}/admin.sock"
        config = tmp / "fastpause.toml"
        write_config(config, listen, admin, backends[0], retry_after=1)
        proxy_log = tmp / "proxy.log"
        proxy, _ = start(
            [sys.executable, "-m", "fastpause", "run", "--config", str(config)],
            proxy_log,
            "fastpause: listening on",
        )
        procs.append(proxy)
        port = int(listen.rsplit(":", 1)[1])
        idle_fds = fd_count(proxy.pid)
        started = dt.datetime.now(dt.UTC)
        t0 = time.monotonic()
        stats, log, samples = asyncio.run(
            soak(args, port, proxy.pid, admin, config, listen, backends)
        )
        elapsed = time.monotonic() - t0
        # idle again: client and upstream keep-alive connections time out (5 s)
        deadline = time.monotonic() + 60
        # (<=: the active health check holds one more connection now and then)
        while fd_count(proxy.pid) > idle_fds and time.monotonic() < deadline:
            time.sleep(0.5)
        end_fds = fd_count(proxy.pid)
        proxy.terminate()
        rc = proxy.wait(30)
        stderr = proxy_log.read_text("utf-8", "replace")
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.kill()
                p.wait(10)

    total = sum(stats.by_status.values())
    first = [s for s in samples if s[0] <= 60] or samples[:1]
    last = [s for s in samples if s[0] >= samples[-1][0] - 60] if samples else []
    rss_first = max(s[1] for s in first) if first else 0
    rss_last = max(s[1] for s in last) if last else 0
    fds_peak = max(s[2] for s in samples) if samples else 0
    actions = {
        k: sum(1 for line in log if line.startswith(k))
        for k in ("pause", "resume", "deploy", "reload")
    }
    checks = {
        "every request 2xx or a documented 503": not stats.problems and stats.cut == 0,
        "RSS flat": rss_last - rss_first <= args.rss_slack_mib * 1024,
        "fds back to the idle baseline": end_fds <= idle_fds,
        "clean exit, no traceback": rc == 0 and "Traceback" not in stderr,
        "control actions all succeeded": not any(p.startswith("control") for p in stats.problems),
    }
    passed = all(checks.values())
    lines = [
        f"Last run: {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} minutes "
        f"(`python soak/soak.py --minutes {args.minutes:g}`), {platform.node() or 'host'}, "
        f"{os.cpu_count()} cores shared with other test runs. "
        f"**{'PASSED' if passed else 'FAILED'}**.",
        "",
        f"- load: {args.concurrency} keep-alive clients, about {args.rate:g} requests/s "
        f"(75% GET checked against their own target, 25% 3 KB POST echoed byte for byte)",
        f"- requests: {total} answered, {stats.ok} correct 2xx, "
        f"{stats.by_status.get(503, 0)} documented 503, {stats.cut} cut, "
        f"{len(stats.problems)} problems; by status: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(stats.by_status.items())),
        f"- control actions (every {args.interval:g} s, in turn): "
        + ", ".join(f"{k} {v}" for k, v in actions.items()),
        f"- proxy RSS: {rss_first} KiB in the first minute, {rss_last} KiB in the last "
        f"(slack {args.rss_slack_mib:g} MiB); open fds: {idle_fds} idle before, peak "
        f"{fds_peak} under load, {end_fds} idle after",
        "- checks: " + "; ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in checks.items()),
    ]
    if stats.problems:
        lines.append("- first problems: " + "; ".join(stats.problems[:5]))
    text = "\n".join(lines)
    print(text)
    print("\n".join(log[-6:]))
    if not args.no_write:
        record(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
