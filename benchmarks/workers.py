"""Throughput with 2 workers: fastpause ``workers = 2`` against NGINX
``worker_processes 2``, HAProxy ``nbthread 2`` and Caddy ``GOMAXPROCS=2``.

``python -m benchmarks.workers`` runs the small-body scenarios (keep-alive and a
new connection per request) the way the throughput group does - every proxy
against one NGINX backend, interleaved rounds, CPU of every process of each
proxy (a supervisor and its workers for fastpause, master and workers for NGINX)
- and prints each round's CPU-per-request ratio against NGINX, then writes
``benchmarks/results/workers.json``. On a 2-core machine wrk and the backend
share the cores with the proxy: the ratios compare the proxies under the same
squeeze, the requests/s figures are the machine's, not the proxies'.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import holding, machine, peers, throughput
from benchmarks.processes import HarnessError, Supervisor

RESULTS = Path(__file__).resolve().parent / "results" / "workers.json"
SCENARIOS = ("small-ka", "small-close")
WORKERS = 2


def _with_workers(cls: type[peers.Peer]) -> type[peers.Peer]:
    """``cls`` with ``WORKERS`` processes or threads, under the same name."""
    return type(f"{cls.__name__}{WORKERS}", (cls,), {"workers": WORKERS})


REGISTRY = {name: _with_workers(cls) for name, cls in peers.PEERS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", default="fastpause,nginx,haproxy")
    parser.add_argument(
        "--hold", type=int, default=10_000, help="requests held in the hold scenario (0: skip)"
    )
    parser.add_argument("--hold-rounds", type=int, default=3)
    parser.add_argument("--only-hold", action="store_true", help="skip the throughput scenarios")
    args = parser.parse_args(argv)
    names = [name for name in args.peers.split(",") if name]
    workdir = Path(tempfile.mkdtemp(prefix="fastpause-bench-workers-"))
    rows: list[dict] = []
    holds: list[dict] = []
    try:
        with Supervisor(workdir) as sup:
            peers.ensure_tools(names)
            load_before = machine.load_now()
            if args.hold:
                holds = _hold_rounds(sup, workdir, args.hold, args.hold_rounds)
            rows = throughput.run_scenarios(
                sup,
                workdir,
                () if args.only_hold else SCENARIOS,
                duration=args.duration,
                rounds=args.rounds,
                peers=names,
                registry=REGISTRY,
                label=f"with {WORKERS} workers each",
            )
    except HarnessError as error:
        print(f"benchmarks: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = throughput.summarize(rows)
    throughput.print_round_ratios(rows, names, SCENARIOS)
    RESULTS.parent.mkdir(exist_ok=True)
    results = {"load_before": load_before, "rows": rows, "summary": summary}
    if args.only_hold and RESULTS.exists():  # keep the throughput rounds of an earlier run
        results = json.loads(RESULTS.read_text())
    results |= {"holds": holds, "holds_load_before": load_before}
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    return 0


def _hold_rounds(sup: Supervisor, workdir: Path, count: int, rounds: int) -> list[dict]:
    """``count`` requests held on a paused route, then resumed: 1 worker and
    ``WORKERS`` workers, interleaved, ``rounds`` times each."""
    print(f"hold {count} on a paused route, 1 and {WORKERS} workers", flush=True)
    rows = []
    for _ in range(rounds):
        for workers in (1, WORKERS):
            rows.append(holding.hold_run(sup, workdir, "fastpause-pause", count, workers=workers))
    return rows


if __name__ == "__main__":
    sys.exit(main())
