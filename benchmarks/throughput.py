"""Throughput scenarios: every proxy under the same wrk load, rounds interleaved.

A scenario is a body size (small, 16 KiB, 1 MiB) and a connection mode
(keep-alive, or ``Connection: close`` on every request). For each scenario the
four proxies are started fresh against one NGINX backend, warmed up, then
measured in interleaved rounds (fastpause NGINX HAProxy Caddy, fastpause NGINX
...). Per measurement: requests/s, p50/p99, CPU µs per proxied request (utime +
stime of every thread of the proxy's processes, after - before, ÷ requests),
peak RSS (VmHWM, reset before each measurement).
"""

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import load
from benchmarks.peers import BODIES, PEERS, Backend, Peer, Running
from benchmarks.processes import (
    Supervisor,
    cpu_seconds,
    free_port,
    peak_rss_bytes,
    reset_peak_rss,
)

MODES = {"ka": "keep-alive, 64 connections", "close": "new connection per request, 64 at once"}
SCENARIOS = [f"{body}-{mode}" for mode in MODES for body in BODIES]
ORDER = ["fastpause", "nginx", "haproxy", "caddy"]


def measure(sup: Supervisor, running: Running, url: str, script: Path, duration: float) -> dict:
    pids = running.pids()
    reset_peak_rss(pids)
    before = cpu_seconds(pids)
    proc = load.start_wrk(sup, url, script, duration)
    result = load.finish_wrk(sup, proc, duration)
    after = cpu_seconds(pids)
    answered = max(1, result.requests)
    return {
        **result.as_dict(),
        "cpu_seconds": after - before,
        "cpu_us_per_request": (after - before) / answered * 1e6,
        "peak_rss": peak_rss_bytes(pids),
        "alive": running.proc.alive(),
    }


def run_scenario(
    sup: Supervisor,
    workdir: Path,
    backend_port: int,
    scenario: str,
    *,
    duration: float,
    rounds: int,
    peers: list[str],
    log=print,
    registry: dict[str, type[Peer]] = PEERS,
) -> list[dict]:
    """Rows of every round for the ``peers`` (names in ``registry``) in one scenario."""
    body, mode = scenario.split("-")
    script = load.write_script(workdir, close=(mode == "close"))
    started: dict[str, Running] = {}
    rows: list[dict] = []
    try:
        for name in peers:
            started[name] = registry[name](workdir).start(sup, free_port(), backend_port)
        for name in peers:  # warm up: pools filled, caches hot
            running = started[name]
            url = f"{running.peer.scheme}://127.0.0.1:{running.port}{BODIES[body]}"
            load.finish_wrk(sup, load.start_wrk(sup, url, script, 1), 1)
        for round_no in range(1, rounds + 1):
            for name in peers:
                running = started[name]
                url = f"{running.peer.scheme}://127.0.0.1:{running.port}{BODIES[body]}"
                row = measure(sup, running, url, script, duration)
                row.update(scenario=scenario, proxy=name, round=round_no, time=time.time())
                rows.append(row)
                log(
                    f"  {scenario:12} round {round_no} {name:9} {row['rps']:9.0f} req/s  "
                    f"p50 {row['p50'] * 1e3:6.2f} ms  p99 {row['p99'] * 1e3:7.2f} ms  "
                    f"{row['cpu_us_per_request']:6.1f} µs CPU/req  "
                    f"peak {row['peak_rss'] / 2**20:6.1f} MiB"
                    + (f"  non-2xx {row['non2xx']}" if row["non2xx"] else "")
                    + (f"  socket errors {row['errors_detail']}" if row["socket_errors"] else "")
                )
    finally:
        for running in started.values():
            sup.stop(running.proc)
    return rows


FIGURES = ("rps", "p50", "p99", "cpu_us_per_request", "peak_rss")


def summarize(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """scenario -> proxy -> {figure: median over rounds, ..., ratios vs NGINX}.

    Ratios are medians of the per-round ratios (each proxy against the NGINX
    measurement of the same round), so a round slowed by a neighbour's test
    suite moves both sides of its ratio.
    """
    out: dict[str, dict[str, dict]] = {}
    for scenario in dict.fromkeys(row["scenario"] for row in rows):
        srows = [row for row in rows if row["scenario"] == scenario]
        by_round: dict[int, dict[str, dict]] = {}
        for row in srows:
            by_round.setdefault(row["round"], {})[row["proxy"]] = row
        out[scenario] = {}
        for proxy in dict.fromkeys(row["proxy"] for row in srows):
            prow = [row for row in srows if row["proxy"] == proxy]
            figures = {f: statistics.median(row[f] for row in prow) for f in FIGURES}
            figures["rounds"] = len(prow)
            figures["non2xx"] = sum(row["non2xx"] for row in prow)
            figures["socket_errors"] = sum(row["socket_errors"] for row in prow)
            for ref in ("nginx", "haproxy", "caddy"):
                ratios = {f: [] for f in FIGURES}
                for peers in by_round.values():
                    if proxy in peers and ref in peers:
                        for f in FIGURES:
                            if peers[ref][f]:
                                ratios[f].append(peers[proxy][f] / peers[ref][f])
                figures[f"vs_{ref}"] = {f: statistics.median(v) for f, v in ratios.items() if v}
            out[scenario][proxy] = figures
    return out


def run_scenarios(
    sup: Supervisor,
    workdir: Path,
    scenarios: Sequence[str],
    *,
    duration: float,
    rounds: int,
    peers: list[str],
    registry: dict[str, type[Peer]],
    label: str,
) -> list[dict]:
    """``run_scenario`` for each of ``scenarios``, one NGINX backend for them all."""

    backend_port = free_port()
    backend = Backend(workdir).start(sup, backend_port)
    rows: list[dict] = []
    for scenario in scenarios:
        print(f"{scenario} {label}", flush=True)
        rows += run_scenario(
            sup,
            workdir,
            backend_port,
            scenario,
            duration=duration,
            rounds=rounds,
            peers=peers,
            registry=registry,
        )
    sup.stop(backend)
    return rows


def print_round_ratios(rows: list[dict], names: list[str], scenarios: Sequence[str]) -> None:
    """Each round's CPU-per-request and requests/s ratio of every proxy against the
    NGINX measurement of the same round (the spread, not only a median)."""
    for scenario in scenarios:
        by_round: dict[int, dict[str, dict]] = {}
        for row in rows:
            if row["scenario"] == scenario:
                by_round.setdefault(row["round"], {})[row["proxy"]] = row
        for name in names if by_round else ():
            if name == "nginx":
                continue
            ratios = [
                r[name]["cpu_us_per_request"] / r["nginx"]["cpu_us_per_request"]
                for r in by_round.values()
            ]
            rps = [r[name]["rps"] / r["nginx"]["rps"] for r in by_round.values()]
            print(
                f"{scenario} {name} vs NGINX: CPU/request "
                + ", ".join(f"{x:.2f}" for x in ratios)
                + "; requests/s "
                + ", ".join(f"{x:.2f}" for x in rps)
            )
