"""Where fastpause spends its CPU under the small-body load, keep-alive or not.

``perf record -g`` on the proxy process (all of it: kernel, libc, CPython,
uvloop/libuv, the Cython core) gives the hot functions by self time; ``py-spy
record --native`` (when installed) gives the same from the Python side, with
Cython functions named. Both run while wrk drives the proxy exactly as in the
``small-ka`` scenario, or with ``close`` as in ``small-close`` (a new connection
per request), where fastpause's cost against NGINX differs most.
"""

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchmarks import load
from benchmarks.peers import Fastpause, Running
from benchmarks.processes import HarnessError, Proc, Supervisor, free_port, run


def scenario(close: bool) -> str:
    """The throughput scenario whose load a profile reproduces."""
    return "small-close" if close else "small-ka"


def profile(
    sup: Supervisor,
    workdir: Path,
    backend_port: int,
    duration: float,
    *,
    close: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """perf, then py-spy, each over its own wrk run of ``duration`` seconds against a
    fresh, warmed fastpause; a profiler that fails is recorded in ``error``."""
    out: dict = {"scenario": scenario(close)}
    running = Fastpause(workdir).start(sup, free_port(), backend_port)
    script = load.write_script(workdir, close=close)
    url = f"http://127.0.0.1:{running.port}/"
    try:
        load.finish_wrk(sup, load.start_wrk(sup, url, script, 1), 1)
        if shutil.which("perf"):
            out["perf"] = _perf(sup, workdir, running, url, script, duration)
            log(f"  perf: {len(out['perf']['top'])} hot functions")
        else:
            log("  perf not installed (apt-get install linux-perf): skipped")
        spy = _pyspy_binary()
        if spy:
            out["py-spy"] = _pyspy(sup, workdir, running, spy, url, script, duration)
            log(f"  py-spy: {out['py-spy']['samples']} samples")
        else:
            log("  py-spy not installed (pip install py-spy): skipped")
    except HarnessError as error:
        log(f"  profile failed: {error}")
        out["error"] = str(error)
    finally:
        sup.stop(running.proc)
    return out


def _under_load(
    sup: Supervisor, url: str, script: Path, duration: float, argv: list[str], name: str
) -> tuple[load.WrkResult, Proc]:
    """Run a profiler (``argv``, which stops by itself after ``duration``) while wrk
    drives the proxy; wrk starts first and outlasts it, so the profile sees only
    steady load. Returns wrk's result (requests/s while profiled) and the profiler."""
    wrk = load.start_wrk(sup, url, script, duration + 2)
    time.sleep(1)
    profiler = sup.start(name, argv)
    try:
        profiler.popen.wait(duration + 60)
    except subprocess.TimeoutExpired as error:
        sup.stop(wrk)
        raise HarnessError(f"{name} did not finish within {duration + 60:g}s") from error
    finally:
        sup.stop(profiler)
    return load.finish_wrk(sup, wrk, duration + 2), profiler


def _perf(
    sup: Supervisor, workdir: Path, running: Running, url: str, script: Path, duration: float
) -> dict:
    """Hot functions by self time and the share of each binary (kernel, core, CPython)."""
    data = workdir / f"perf-{running.port}.data"
    argv = ["perf", "record", "-F", "999", "-g", "-p", str(running.proc.pid), "-o", str(data)]
    argv += ["--", "sleep", str(duration)]
    result, _ = _under_load(sup, url, script, duration, argv, f"perf-{running.port}")
    by_symbol = _perf_report(data, "dso,sym", "--percent-limit", "0.2")
    (workdir / f"perf-report-{running.port}.txt").write_text(by_symbol)
    return {
        "top": _perf_top(by_symbol),
        "dso": _perf_dso(_perf_report(data, "dso")),
        "rps_while_profiled": result.rps,
    }


def _perf_report(data: Path, sort: str, *extra: str) -> str:
    """``perf report`` as flat text: self time only, no call graphs."""
    argv = ["perf", "report", "-i", str(data), "--no-children", "--sort", sort]
    return run([*argv, "--stdio", "-g", "none", *extra], timeout=300, check=False)


def _pyspy_binary() -> str | None:
    """py-spy on PATH or next to this interpreter (installed into the virtualenv)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return spy if Path(spy).exists() else None


def _pyspy(
    sup: Supervisor,
    workdir: Path,
    running: Running,
    spy: str,
    url: str,
    script: Path,
    duration: float,
) -> dict:
    """Self and inclusive time per function, the core's Cython functions named."""
    raw = workdir / f"py-spy-{running.port}.txt"
    argv = [spy, "record", "--native", "-r", "200", "-d", str(int(duration)), "-f", "raw"]
    argv += ["-o", str(raw), "-p", str(running.proc.pid)]
    result, spy_proc = _under_load(sup, url, script, duration, argv, f"py-spy-{running.port}")
    if not raw.exists():
        raise HarnessError(f"py-spy produced nothing:\n{spy_proc.log_tail()}")
    self_top, total_top, samples = _pyspy_top(raw.read_text())
    return {
        "self": self_top,
        "total": total_top,
        "samples": samples,
        "rps_while_profiled": result.rps,
    }


_PERF_LINE = re.compile(r"^\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$")


def _perf_top(report: str, limit: int = 25) -> list[dict]:
    rows = []
    for line in report.splitlines():
        found = _PERF_LINE.match(line)
        if found:
            pct, dso, where, sym = found.groups()
            rows.append({"percent": float(pct), "dso": dso, "kernel": where == "k", "symbol": sym})
    return rows[:limit]


def _perf_dso(report: str) -> list[dict]:
    """Share of samples per binary: kernel, the Cython core, CPython, uvloop, libc."""
    rows = []
    for line in report.splitlines():
        found = re.match(r"^\s+([\d.]+)%\s+(\S+)\s*$", line)
        if found:
            rows.append({"percent": float(found.group(1)), "dso": found.group(2)})
    return rows[:10]


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (file:line)"; drop the line so a function is one entry.
    return re.sub(r":\d+\)$", ")", frame.strip())


def _pyspy_top(raw: str, limit: int = 25) -> tuple[list[dict], list[dict], int]:
    self_counts: Counter = Counter()
    total_counts: Counter = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_counts[frames[-1]] += n
        for frame in set(frames):
            if ".pxi" in frame or ".pyx" in frame:  # inclusive time of the core's functions
                total_counts[frame] += n

    def table(counter: Counter) -> list[dict]:
        return [
            {"percent": 100.0 * n / max(1, samples), "function": name}
            for name, n in counter.most_common(limit)
        ]

    return table(self_counts), table(total_counts), samples
