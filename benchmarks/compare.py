"""``--compare REF``: this working tree's fastpause against the one at commit REF.

How each optimization in BENCHMARKS.md was judged. A change worth a few per cent
is invisible between two separate runs on a VM whose CPU times drift ~15 % from
run to run, so both builds run side by side against one backend and are measured
in interleaved rounds (ref, new, ref, new, ...), and the ratio of each round's
pair is what counts. Small body, keep-alive and connection per request. When
valgrind is there, both builds' user-space instructions per request are counted
too (``instructions``): deterministic, so they tell even a 1 % change.

Results are printed and written to ``compare.json`` in the results directory;
BENCHMARKS.md is left alone (it describes the working tree against the peers).
"""

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from benchmarks import instructions, throughput
from benchmarks.peers import Backend, Fastpause, FastpauseRef
from benchmarks.processes import HarnessError, Supervisor, free_port, run

SCENARIOS = ("small-ka", "small-close")
REGISTRY = {Fastpause.name: Fastpause, FastpauseRef.name: FastpauseRef}


def build_reference(root: Path, ref: str, workdir: Path) -> str:
    """Build commit ``ref`` (from a temporary git worktree) as ``FastpauseRef``."""
    commit = run(["git", "-C", str(root), "rev-parse", "--short", ref], timeout=30).strip()
    checkout = workdir / f"ref-{commit}"
    run(["git", "-C", str(root), "worktree", "add", "--detach", str(checkout), commit], timeout=120)
    try:
        FastpauseRef.build(checkout, workdir / "fastpause-ref-build")
    finally:
        run(
            ["git", "-C", str(root), "worktree", "remove", "--force", str(checkout)],
            timeout=120,
            check=False,
        )
    return commit


def compare(
    sup: Supervisor,
    workdir: Path,
    *,
    duration: float,
    rounds: int,
    log: Callable[[str], None] = print,
) -> dict:
    """Interleaved rounds of both builds per scenario, then instruction counts."""
    backend_port = free_port()
    backend = Backend(workdir).start(sup, backend_port)
    out: dict = {"scenarios": {}, "instructions": {}}
    try:
        for scenario in SCENARIOS:
            log(f"compare {scenario}: {throughput.MODES[scenario.split('-')[1]]}")
            rows = throughput.run_scenario(
                sup,
                workdir,
                backend_port,
                scenario,
                duration=duration,
                rounds=rounds,
                peers=[FastpauseRef.name, Fastpause.name],
                log=log,
                registry=REGISTRY,
            )
            out["scenarios"][scenario] = _pairs(rows)
        for scenario in SCENARIOS:
            out["instructions"][scenario] = {}
            for build in (FastpauseRef, Fastpause):
                log(f"instructions per request under {scenario}, {build.name} (callgrind)")
                try:
                    counted = instructions.count(
                        sup, workdir, backend_port, close="close" in scenario, log=log, build=build
                    )
                except HarnessError as error:
                    log(f"  instruction count failed: {error}")
                    counted = {"error": str(error)}
                out["instructions"][scenario][build.name] = counted
    finally:
        sup.stop(backend)
    return out


def _pairs(rows: list[dict]) -> dict:
    """CPU per request of each build by round, and the median of the per-round ratios."""
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["proxy"]] = row["cpu_us_per_request"]
    ref = [r[FastpauseRef.name] for r in by_round.values()]
    new = [r[Fastpause.name] for r in by_round.values()]
    return {
        "ref_cpu_us": ref,
        "new_cpu_us": new,
        "ratio": statistics.median(n / r for n, r in zip(new, ref, strict=True)),
    }


def summary(result: dict, ref: str, new: str) -> list[str]:
    lines = [f"new ({new}) against ref ({ref}): lower is better"]
    for scenario, pair in result["scenarios"].items():
        lines.append(
            f"  {scenario:12} CPU µs/request ref {statistics.median(pair['ref_cpu_us']):6.2f}"
            f"  new {statistics.median(pair['new_cpu_us']):6.2f}"
            f"  ratio {pair['ratio']:.3f} (median of {len(pair['ref_cpu_us'])} round pairs)"
        )
    for scenario, counts in result["instructions"].items():
        a = counts.get(FastpauseRef.name, {}).get("per_request")
        b = counts.get(Fastpause.name, {}).get("per_request")
        if a and b:
            lines.append(
                f"  {scenario:12} instructions/request ref {a:,.0f}  new {b:,.0f}"
                f"  ratio {b / a:.3f}"
            )
    return lines


def write(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=1, default=str))
