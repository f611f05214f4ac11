"""Where fastpause spends its CPU under the small-body keep-alive load.

``perf record -g`` on the proxy process (all of it: kernel, libc, CPython,
uvloop/libuv, the Cython core) gives the hot functions by self time; ``py-spy
record --native`` (when installed) gives the same from the Python side, with
Cython functions named. Both run while wrk drives the proxy exactly as in the
``small-ka`` scenario.
"""

import re
import shutil
import time
from collections import Counter
from pathlib import Path

from benchmarks import load
from benchmarks.peers import Fastpause
from benchmarks.processes import HarnessError, Supervisor, free_port, run


def profile(sup: Supervisor, workdir: Path, backend_port: int, duration: float, log=print) -> dict:
    out: dict = {}
    running = Fastpause(workdir).start(sup, free_port(), backend_port)
    script = load.write_script(workdir, close=False)
    url = f"http://127.0.0.1:{running.port}/"
    try:
        load.finish_wrk(sup, load.start_wrk(sup, url, script, 1), 1)
        if shutil.which("perf"):
            data = workdir / "perf.data"
            wrk = load.start_wrk(sup, url, script, duration + 2)
            time.sleep(1)
            perf = sup.start(
                "perf",
                [
                    "perf",
                    "record",
                    "-F",
                    "999",
                    "-g",
                    "-p",
                    str(running.proc.pid),
                    "-o",
                    str(data),
                    "--",
                    "sleep",
                    str(duration),
                ],
            )
            perf.popen.wait(duration + 30)
            sup.stop(perf)
            result = load.finish_wrk(sup, wrk, duration + 2)
            report = run(
                [
                    "perf",
                    "report",
                    "-i",
                    str(data),
                    "--no-children",
                    "--sort",
                    "dso,sym",
                    "--stdio",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0.2",
                ],
                timeout=300,
                check=False,
            )
            (workdir / "perf-report.txt").write_text(report)
            by_dso = run(
                [
                    "perf",
                    "report",
                    "-i",
                    str(data),
                    "--no-children",
                    "--sort",
                    "dso",
                    "--stdio",
                    "-g",
                    "none",
                ],
                timeout=300,
                check=False,
            )
            out["perf"] = {
                "top": _perf_top(report),
                "dso": _perf_dso(by_dso),
                "rps_while_profiled": result.rps,
            }
            log(f"  perf: {len(out['perf']['top'])} hot functions")
        else:
            log("  perf not installed (apt-get install linux-perf): skipped")
        spy = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
        if Path(spy).exists():
            raw = workdir / "py-spy.txt"
            wrk = load.start_wrk(sup, url, script, duration + 2)
            time.sleep(1)
            proc = sup.start(
                "py-spy",
                [
                    spy,
                    "record",
                    "--native",
                    "-r",
                    "200",
                    "-d",
                    str(int(duration)),
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "-p",
                    str(running.proc.pid),
                ],
            )
            proc.popen.wait(duration + 60)
            sup.stop(proc)
            result = load.finish_wrk(sup, wrk, duration + 2)
            if raw.exists():
                self_top, total_top, samples = _pyspy_top(raw.read_text())
                out["py-spy"] = {
                    "self": self_top,
                    "total": total_top,
                    "samples": samples,
                    "rps_while_profiled": result.rps,
                }
                log(f"  py-spy: {samples} samples")
            else:
                log(f"  py-spy produced nothing:\n{proc.log_tail()}")
    except HarnessError as error:
        log(f"  profile failed: {error}")
        out["error"] = str(error)
    finally:
        sup.stop(running.proc)
    return out


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
