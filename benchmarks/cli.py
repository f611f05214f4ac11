"""``python -m benchmarks``: run the comparison, write results, plots and BENCHMARKS.md."""

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import machine, peers, throughput
from benchmarks.processes import HarnessError, Supervisor, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GROUPS = ("throughput", "hold", "swap", "profile")
# ``--only`` name -> (results key, connection mode): ``profile`` runs both.
PROFILES = {"profile-ka": ("profile", False), "profile-close": ("profile_close", True)}
HOLD_KINDS = ("fastpause-pause", "fastpause-down", "caddy-down")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="fastpause against NGINX, HAProxy and Caddy (see BENCHMARKS.md).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run: 2 s measurements, 2 rounds, 1,000 held requests",
    )
    p.add_argument("--duration", type=float, help="seconds per wrk measurement (default 10)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per scenario (default 3)")
    p.add_argument(
        "--hold-count", type=int, help="held requests in the hold scenarios (default 10000)"
    )
    p.add_argument(
        "--only",
        metavar="SCENARIO",
        action="append",
        default=[],
        help="run only these (repeatable, or comma-separated): a group ("
        + ", ".join(GROUPS)
        + "), a throughput scenario ("
        + ", ".join(throughput.SCENARIOS)
        + "), a hold kind ("
        + ", ".join(HOLD_KINDS)
        + ", reload-held), a profile mode ("
        + ", ".join(PROFILES)
        + "; the group profile runs both) or a swap variant",
    )
    p.add_argument(
        "--peers",
        default=",".join(throughput.ORDER),
        help="proxies in the throughput scenarios (default: all four)",
    )
    p.add_argument("--results", type=Path, default=RESULTS, help="where results go")
    p.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild BENCHMARKS.md and the plots from results.json",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    p.add_argument(
        "--build",
        action="store_true",
        help="build fastpause from this working tree into the work directory and run that "
        "copy (immune to reinstalls of the shared virtualenv during the run)",
    )
    p.add_argument(
        "--compare",
        metavar="REF",
        help="instead of the comparison with the peers: this working tree's fastpause "
        "against the one at commit REF, side by side in interleaved rounds (default 7 of "
        "8 s), plus both builds' instruction counts; writes compare.json, not BENCHMARKS.md",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    duration = args.duration or (2.0 if args.quick else 10.0)
    rounds = args.rounds or (2 if args.quick else 3)
    hold_count = args.hold_count or (1000 if args.quick else 10000)
    swap_duration = max(6.0, duration * 1.2) if args.quick else max(12.0, duration * 1.5)
    only = {item for chunk in args.only for item in chunk.split(",") if item}
    args.results.mkdir(parents=True, exist_ok=True)
    results_file = args.results / "results.json"

    if args.compare:
        return _compare(args)

    if args.report_only:
        from benchmarks import report

        report.write(json.loads(results_file.read_text()), args.results, ROOT / "BENCHMARKS.md")
        return 0

    from benchmarks import holding, swap

    def wanted(group: str, name: str) -> bool:
        return not only or group in only or name in only

    results: dict = {}
    if only and results_file.exists():
        results = json.loads(results_file.read_text())  # a partial run updates the last full one
    workdir = Path(tempfile.mkdtemp(prefix="fastpause-bench-"))
    log_lines: list[str] = []

    def log(message: str) -> None:
        print(message, flush=True)
        log_lines.append(message)

    began = time.monotonic()
    status = 0
    try:
        with Supervisor(workdir) as sup:
            peers.ensure_tools()
            if args.build:
                log("building fastpause from the working tree ...")
                peers.Fastpause.build(ROOT, workdir / "fastpause-build")
            results["machine"] = machine.facts()
            results["settings"] = {
                "duration": duration,
                "rounds": rounds,
                "hold_count": hold_count,
                "swap_duration": swap_duration,
                "quick": args.quick,
            }
            results["versions"] = {
                **peers.tool_versions(),
                **{cls.name: cls(workdir).version() for cls in peers.PEERS.values()},
            }
            log(f"versions: {results['versions']}")
            backend_port = free_port()
            backend = peers.Backend(workdir).start(sup, backend_port)
            names = [n for n in args.peers.split(",") if n]
            scenarios = [s for s in throughput.SCENARIOS if wanted("throughput", s)]
            if scenarios:
                rows = [
                    r for r in results.get("throughput_rows", []) if r["scenario"] not in scenarios
                ]
                for scenario in scenarios:
                    log(f"throughput {scenario}: {throughput.MODES[scenario.split('-')[1]]}")
                    load_before = machine.load_now()
                    new = throughput.run_scenario(
                        sup,
                        workdir,
                        backend_port,
                        scenario,
                        duration=duration,
                        rounds=rounds,
                        peers=names,
                        log=log,
                    )
                    for row in new:
                        row["load_before"] = load_before
                    rows += new
                    results["throughput_rows"] = rows
                    _save(results_file, results)
                results["throughput"] = throughput.summarize(rows)
            for name, (key, close) in PROFILES.items():
                if wanted("profile", name):
                    results[key] = _profile(sup, workdir, backend_port, duration, close, log)
                    _save(results_file, results)
            sup.stop(backend)
            _save(results_file, results)
            hold = dict(results.get("hold", {}))
            for kind in HOLD_KINDS:
                if wanted("hold", kind):
                    hold[kind] = holding.hold_run(sup, workdir, kind, hold_count, log=log)
                    results["hold"] = hold
                    _save(results_file, results)
            if wanted("hold", "reload-held"):
                results["reload_held"] = {
                    proxy: holding.reload_while_held(sup, workdir, proxy, 100, log=log)
                    for proxy in ("fastpause", "caddy")
                }
            swaps = dict(results.get("swap", {}))
            for variant in swap.VARIANTS:
                if wanted("swap", variant):
                    try:
                        swaps[variant] = swap.swap_run(
                            sup, workdir, variant, swap_duration, log=log
                        )
                    except HarnessError as error:
                        log(f"  swap {variant} failed: {error}")
                        kind, proxy, how = swap.VARIANTS[variant]
                        swaps[variant] = {
                            "variant": variant,
                            "kind": kind,
                            "proxy": proxy,
                            "how": how,
                            "available": True,
                            "error": str(error),
                        }
                    results["swap"] = swaps
                    _save(results_file, results)
    except HarnessError as error:
        log(f"benchmarks: {error}")
        status = 1
    except KeyboardInterrupt:
        print("benchmarks: interrupted; every started process was stopped", file=sys.stderr)
        status = 130
    finally:
        results["elapsed_seconds"] = time.monotonic() - began
        results["load_after"] = machine.load_now()
        _save(results_file, results)
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if status == 0 and not args.no_report:
        from benchmarks import report

        report.write(results, args.results, ROOT / "BENCHMARKS.md")
        log(f"wrote {ROOT / 'BENCHMARKS.md'} and plots in {args.results}")
    return status


def _compare(args: argparse.Namespace) -> int:
    """``--compare REF``: both builds side by side (see benchmarks/compare.py)."""
    from benchmarks import compare

    workdir = Path(tempfile.mkdtemp(prefix="fastpause-compare-"))
    try:
        with Supervisor(workdir) as sup:
            peers.ensure_tools()
            print("building fastpause from the working tree ...", flush=True)
            peers.Fastpause.build(ROOT, workdir / "fastpause-build")
            print(f"building fastpause at {args.compare} ...", flush=True)
            ref = compare.build_reference(ROOT, args.compare, workdir)
            result = compare.compare(
                sup, workdir, duration=args.duration or 8.0, rounds=args.rounds or 7
            )
    except HarnessError as error:
        print(f"benchmarks: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmarks: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    new = peers.Fastpause.built_from
    result.update(ref=ref, new=new, machine=machine.facts())
    args.results.mkdir(parents=True, exist_ok=True)
    compare.write(result, args.results / "compare.json")
    for line in compare.summary(result, ref, new):
        print(line)
    return 0


def _profile(
    sup: Supervisor,
    workdir: Path,
    backend_port: int,
    duration: float,
    close: bool,
    log: Callable[[str], None],
) -> dict:
    """perf and py-spy on fastpause, syscalls per request of fastpause, NGINX and
    HAProxy, then fastpause's instructions per request, under one connection mode.
    Each part is guarded on its own: a profiler problem must cost neither the other
    parts nor the rest of the run."""
    from benchmarks import instructions, profiling, syscalls

    log(f"profile: fastpause under {profiling.scenario(close)}")
    out = _guarded(
        "profile",
        log,
        lambda: profiling.profile(
            sup, workdir, backend_port, max(5.0, duration), close=close, log=log
        ),
    )
    log(f"syscalls per request under {profiling.scenario(close)} (strace -f -c)")
    out["syscalls"] = _guarded(
        "syscall count",
        log,
        lambda: syscalls.count_all(sup, workdir, backend_port, close=close, log=log),
    )
    log(f"instructions per request under {profiling.scenario(close)} (callgrind)")
    out["instructions"] = _guarded(
        "instruction count",
        log,
        lambda: instructions.count(sup, workdir, backend_port, close=close, log=log),
    )
    return out


def _guarded(what: str, log: Callable[[str], None], measure: Callable[[], dict]) -> dict:
    """``measure()``, or ``{"error": ...}`` (logged) if it raised anything but an interrupt."""
    try:
        return measure()
    except Exception as error:
        log(f"  {what} failed: {error!r}")
        return {"error": repr(error)}


def _save(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
