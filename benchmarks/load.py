"""wrk runs: the browser-like script, the command, and parsing its report."""

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.browser import wrk_script
from benchmarks.processes import HarnessError, Supervisor

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50: float = 0.0  # seconds
    p99: float = 0.0
    non2xx: int = 0
    socket_errors: int = 0
    errors_detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def write_script(workdir: Path, *, close: bool, timeline: Path | None = None) -> Path:
    name = f"browser{'-close' if close else ''}{'-timeline' if timeline else ''}.lua"
    path = workdir / name
    path.write_text(wrk_script(close=close, timeline=str(timeline) if timeline else None))
    return path


def wrk_command(url: str, script: Path, duration: float, connections: int = 64) -> list[str]:
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]


def start_wrk(sup: Supervisor, url: str, script: Path, duration: float, name: str = "wrk"):
    return sup.start(name, wrk_command(url, script, duration), stdout_pipe=True)


def finish_wrk(sup: Supervisor, proc, duration: float) -> WrkResult:
    try:
        out, _ = proc.popen.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired as error:
        sup.stop(proc)
        raise HarnessError(f"wrk did not finish within {duration + 30:g}s") from error
    sup.stop(proc)
    if proc.popen.returncode != 0:
        raise HarnessError(f"wrk exited {proc.popen.returncode}: {out}\n{proc.log_tail()}")
    return parse(out)


def parse(text: str) -> WrkResult:
    result = WrkResult()
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not found:
        raise HarnessError(f"cannot read wrk's report:\n{text}")
    result.requests = int(found.group(1))
    result.seconds = float(found.group(2)) * _UNITS[found.group(3)]
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    result.rps = float(found.group(1)) if found else 0.0
    for pct, attr in (("50", "p50"), ("99", "p99")):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if found:
            setattr(result, attr, float(found.group(1)) * _UNITS[found.group(2)])
    found = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result.non2xx = int(found.group(1)) if found else 0
    found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if found:
        counts = [int(x) for x in found.groups()]
        result.socket_errors = sum(counts)
        result.errors_detail = (
            f"connect {counts[0]}, read {counts[1]}, write {counts[2]}, timeout {counts[3]}"
        )
    return result
