"""System calls per proxied request: fastpause, NGINX and HAProxy side by side.

``perf`` says where fastpause's CPU goes; it cannot say whether a proxy spends
more than another because it asks the kernel more often. That is the first
suspect when the gap opens with a new connection per request (``small-close``):
every request then adds an accept, socket options, a close, and a round of
event-loop registrations, and each proxy chooses how many calls that costs.

``strace -f -c`` attached to the proxy's worker process counts every system call
while wrk runs a short bounded load; divided by the requests wrk completed, the
counts compare across proxies. strace stops the tracee at every call and slows
it many times over, so only the counts mean anything, never the times (which is
why the summary is asked for names, calls and errors only).
"""

import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import load
from benchmarks.peers import PEERS, Running
from benchmarks.processes import HarnessError, Proc, Supervisor, free_port

PROXIES = ("fastpause", "nginx", "haproxy")
TRACE_SECONDS = 2.0
CONNECTIONS = 64  # as in the throughput scenarios (load.wrk_command's default)
ATTACH_TIMEOUT = 10.0


def available() -> bool:
    return shutil.which("strace") is not None


def count_all(
    sup: Supervisor,
    workdir: Path,
    backend_port: int,
    *,
    close: bool,
    log: Callable[[str], None] = print,
) -> dict:
    """Syscalls per request for every proxy of ``PROXIES`` under one connection mode.

    Skipped (with a message) when strace is not installed; one proxy failing is
    recorded against that proxy and does not cost the others.
    """
    if not available():
        log("  strace not installed (apt-get install strace): syscall counts skipped")
        return {"skipped": "strace not installed"}
    script = load.write_script(workdir, close=close)
    proxies: dict[str, dict] = {}
    for name in PROXIES:
        try:
            proxies[name] = count_one(sup, workdir, name, backend_port, script)
        except HarnessError as error:
            log(f"  syscalls {name}: failed: {error}")
            proxies[name] = {"error": str(error)}
            continue
        log(f"  syscalls {name:9} {_summary(proxies[name])}")
    return {"seconds": TRACE_SECONDS, "connections": CONNECTIONS, "proxies": proxies}


def count_one(sup: Supervisor, workdir: Path, name: str, backend_port: int, script: Path) -> dict:
    """Start the proxy fresh, warm it (upstream pool filled, so the traced run sees
    the steady state), then count its syscalls during a traced wrk run."""
    running = PEERS[name](workdir).start(sup, free_port(), backend_port)
    try:
        url = f"http://127.0.0.1:{running.port}/"
        load.finish_wrk(sup, load.start_wrk(sup, url, script, 1), 1)
        return traced_run(sup, workdir, running, url, script)
    finally:
        sup.stop(running.proc)


def traced_run(sup: Supervisor, workdir: Path, running: Running, url: str, script: Path) -> dict:
    """strace attached before wrk starts and detached after it ends, so every call
    made for the requests wrk counts is in the summary."""
    pid = running.worker_pid()
    output = workdir / f"strace-{running.peer.name}-{running.port}.txt"
    tracer = sup.start(
        f"strace-{running.peer.name}-{running.port}",
        ["strace", "-f", "-c", "-U", "name,calls,errors", "-o", str(output), "-p", str(pid)],
    )
    try:
        _wait_attached(tracer)
        wrk = load.start_wrk(sup, url, script, TRACE_SECONDS)
        result = load.finish_wrk(sup, wrk, TRACE_SECONDS)
    finally:
        sup.stop(tracer, sig=signal.SIGINT, grace=15.0)  # SIGINT: detach, write the summary
    if not output.exists():
        raise HarnessError(f"strace wrote no summary:\n{tracer.log_tail()}")
    return per_request(parse(output.read_text()), result)


def _wait_attached(tracer: Proc) -> None:
    """strace reports ``Process N attached`` on stderr once the tracee is stopped
    for it; a wrk run started before that would be partly uncounted."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while time.monotonic() < deadline:
        if "attached" in tracer.log.read_text(errors="replace"):
            return
        if not tracer.alive():
            raise HarnessError(f"strace exited at start:\n{tracer.log_tail()}")
        time.sleep(0.05)
    raise HarnessError(f"strace did not attach within {ATTACH_TIMEOUT:g}s:\n{tracer.log_tail()}")


_ROW = re.compile(r"^(\w+)\s+(\d+)\s*(\d*)\s*$")


def parse(summary: str) -> dict[str, tuple[int, int]]:
    """``strace -c -U name,calls,errors`` summary -> {syscall: (calls, errors)};
    the ``total`` row is left out (the sum is recomputed)."""
    counts: dict[str, tuple[int, int]] = {}
    for line in summary.splitlines():
        found = _ROW.match(line)
        if found and found.group(1) not in ("syscall", "total"):
            counts[found.group(1)] = (int(found.group(2)), int(found.group(3) or 0))
    return counts


def per_request(counts: dict[str, tuple[int, int]], result: load.WrkResult) -> dict:
    """Counts divided by the requests wrk completed, syscalls most frequent first."""
    requests = max(1, result.requests)
    ranked = sorted(counts.items(), key=lambda item: -item[1][0])
    return {
        "requests": result.requests,
        "rps_while_traced": result.rps,
        "socket_errors": result.socket_errors,
        "non2xx": result.non2xx,
        "per_request": sum(calls for calls, _ in counts.values()) / requests,
        "failed_per_request": sum(errors for _, errors in counts.values()) / requests,
        "calls": [
            {"syscall": name, "per_request": calls / requests, "failed": errors / requests}
            for name, (calls, errors) in ranked
        ],
    }


def top_text(row: dict, limit: int = 12, floor: float = 0.05) -> str:
    """``write 2.00, read 2.00 (1.00 failed), ...``: the most frequent calls per request,
    leaving out those under ``floor`` per request (mostly the connections that the
    traced run found open or left open, not the requests themselves)."""
    return ", ".join(
        f"{c['syscall']} {c['per_request']:.2f}"
        + (f" ({c['failed']:.2f} failed)" if c["failed"] >= 0.005 else "")
        for c in row["calls"][:limit]
        if c["per_request"] >= floor
    )


def _summary(row: dict) -> str:
    return (
        f"{row['per_request']:5.2f} calls/req over {row['requests']:,} requests "
        f"({row['rps_while_traced']:,.0f} req/s traced): {top_text(row, 5)}"
    )
