"""User-space instructions per proxied request, counted by callgrind.

CPU time on this kind of VM drifts ~15 % from run to run and there are no hardware
counters, so a change worth 2 % cannot be told from noise by timing it alone.
Valgrind's callgrind counts every instruction the proxy executes in user space,
the same whatever else the machine is doing, so instructions ÷ requests compares
two builds exactly. The kernel's share (most of the CPU on loopback) is not in the
count: the targets are still judged by CPU time; this says where user space goes.

fastpause runs under ``valgrind --tool=callgrind`` (some 50x slower) with the same
small-body load as the profile; counting is zeroed after a warm-up
(``callgrind_control -z``) and dumped right after a bounded wrk run (``-d``), so the
count covers the requests wrk completed, give or take the few in flight at either
end. The dump is read here: self instructions per function and per binary.
"""

import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchmarks import load
from benchmarks.peers import Fastpause
from benchmarks.processes import HarnessError, Supervisor, free_port, run, wait_for_port

WARMUP_SECONDS = 3.0
COUNT_SECONDS = 10.0
START_TIMEOUT = 120.0  # the interpreter starts slowly under valgrind
TOOLS = ("valgrind", "callgrind_control")


def available() -> bool:
    return all(shutil.which(tool) for tool in TOOLS)


def count(
    sup: Supervisor,
    workdir: Path,
    backend_port: int,
    *,
    close: bool,
    log: Callable[[str], None] = print,
    build: type[Fastpause] = Fastpause,
) -> dict:
    """Instructions per request, by binary and by function, for one connection mode
    (of the fastpause that ``build`` runs: this tree's, or ``--compare``'s reference)."""
    if not available():
        log("  valgrind not installed (apt-get install valgrind): instruction count skipped")
        return {"skipped": "valgrind not installed"}
    port = free_port()
    base = workdir / f"callgrind-{port}"
    base.mkdir(exist_ok=True)
    conf = base / "fastpause.toml"
    build(workdir).write_config(conf, port, backend_port, f"unix:{base}/admin.sock")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={base}/callgrind.out.%p"]
    argv += [sys.executable, "-m", "fastpause", "run", "--config", str(conf)]
    proc = sup.start(f"callgrind-{port}", argv, env=build.env())
    script = load.write_script(workdir, close=close)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_port(port, proc, timeout=START_TIMEOUT)
        load.finish_wrk(sup, load.start_wrk(sup, url, script, WARMUP_SECONDS), WARMUP_SECONDS)
        run(["callgrind_control", "-z", str(proc.popen.pid)], timeout=60)
        wrk = load.start_wrk(sup, url, script, COUNT_SECONDS)
        result = load.finish_wrk(sup, wrk, COUNT_SECONDS)
        run(["callgrind_control", "-d", str(proc.popen.pid)], timeout=120)
    finally:
        sup.stop(proc)
    dump = _wait_for_dump(base / f"callgrind.out.{proc.popen.pid}.1")
    total, by_function = self_costs(dump)
    if result.requests == 0 or total == 0:
        raise HarnessError(f"nothing counted: {result.requests} requests, {total} instructions")
    per = result.requests
    binaries: Counter = Counter()
    for (binary, _), n in by_function.items():
        binaries[binary] += n
    out = {
        "requests": per,
        "rps_under_callgrind": result.rps,
        "per_request": total / per,
        "binaries": [{"binary": b, "per_request": n / per} for b, n in binaries.most_common(8)],
        "top": [
            {"binary": b, "function": f, "per_request": n / per}
            for (b, f), n in by_function.most_common(25)
        ],
    }
    log(f"  {out['per_request']:,.0f} instructions/request over {per:,} requests")
    return out


def _wait_for_dump(path: Path, timeout: float = 30.0) -> Path:
    """``callgrind_control -d`` returns once the dump is requested; the file follows."""
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise HarnessError(f"callgrind wrote no dump at {path}")
        time.sleep(0.1)
    return path


# Name compression in callgrind's format: "(id) name" defines, "(id)" refers back.
# Objects (ob, cob), files (fl, fi, fe, cfi, cfl) and functions (fn, cfn) each have
# their own table.
_SPACES = {
    "ob": "ob", "cob": "ob",
    "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl",
    "fn": "fn", "cfn": "fn",
}  # fmt: skip


def self_costs(path: Path) -> tuple[int, Counter]:
    """(total, Counter {(binary, function): self instructions}) from a callgrind dump.

    A cost line belongs to the current function, except the one right after a
    ``calls=`` line: that is the called function's inclusive cost, which counts
    where it was spent instead. The functions must add up to the dump's own total.
    """
    tables: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}
    binary = function = ""
    after_call = False
    total = 0
    costs: Counter = Counter()
    with path.open() as lines:
        for line in lines:
            head = line[:1]
            if head.isdigit() or head in "+-*":
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if len(fields) > 1:
                    costs[(binary, function)] += int(fields[1])
                continue
            key, sep, value = line.rstrip("\n").partition("=")
            if sep and key in _SPACES:
                name = _name(tables[_SPACES[key]], value)
                if key == "ob":
                    binary = Path(name).name
                elif key == "fn":
                    function = name
            elif sep and key == "calls":
                after_call = True
            elif line.startswith(("totals:", "summary:")):
                total = max(total, int(line.split()[1]))
    summed = sum(costs.values())
    if total and summed != total:  # the parse missed or double-counted something
        raise HarnessError(f"{path}: functions add up to {summed:,}, the dump says {total:,}")
    return summed, costs


def _name(table: dict[str, str], value: str) -> str:
    value = value.strip()
    if not value.startswith("("):
        return value
    ident, _, name = value[1:].partition(")")
    name = name.strip()
    if name:
        table[ident] = name
    return table.get(ident, ident)
