"""Processes the harness starts, and what /proc says about them.

Every process is started in its own session (so its process group holds its
children too: the NGINX workers, a shell's children) and registered with the
``Supervisor``; ``Supervisor.close`` (run from ``finally``, and on SIGINT,
SIGTERM and SIGHUP) sends SIGTERM to every group, waits a moment, then SIGKILL.
Every wait has a timeout.
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class HarnessError(Exception):
    """A step of the benchmark could not be done (a peer did not start, ...)."""


class Proc:
    """A started process: its Popen, a name for messages, and its log file."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """This process and all its descendants (NGINX: master + workers)."""
        return [self.pid, *descendants(self.pid)]


class Supervisor:
    """Starts processes and guarantees they are gone when the harness ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self._previous: dict[int, object] = {}
        self.interrupted = False

    def __enter__(self) -> "Supervisor":
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum in self._previous:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(signum, signal.SIG_IGN)
        self.close()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: object) -> None:
        # Turn the signal into an exception: the ``finally`` blocks and __exit__
        # run, and every process is stopped on the way out. The flag makes the
        # next ``start`` raise again, should library code have swallowed this one.
        self.interrupted = True
        raise KeyboardInterrupt(f"signal {signum}")

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout_pipe: bool = False,
    ) -> Proc:
        if self.interrupted:
            raise KeyboardInterrupt("interrupted")
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as sink:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else sink,
                stderr=sink,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                text=stdout_pipe,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, *, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group, wait up to ``grace``, then SIGKILL the group."""
        if proc.alive():
            _signal_group(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(grace)
        # Whatever is left of the group (orphaned workers) goes too.
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)
        if proc.popen.stdout:
            proc.popen.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self.procs[:]):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=3.0)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run(argv: list[str], *, timeout: float, check: bool = True, **kwargs) -> str:
    """Run a short command to completion (bounded); its stdout+stderr."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
            **kwargs,
        )
    except subprocess.TimeoutExpired as error:
        raise HarnessError(f"{' '.join(argv)}: no answer within {timeout:g}s") from error
    if check and done.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout + done.stderr


def wait_for_port(port: int, proc: Proc | None = None, timeout: float = 15.0) -> None:
    """Until 127.0.0.1:port accepts a connection (or the process dies, or timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise HarnessError(f"{proc.name} exited at start:\n{proc.log_tail()}")
        if port_open(port):
            return
        time.sleep(0.02)
    tail = proc.log_tail() if proc else ""
    raise HarnessError(f"nothing accepted connections on port {port} within {timeout:g}s\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of every thread of these processes (/proc/PID/task/*/stat)."""
    ticks = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pids: Iterable[int]) -> int:
    return sum(_status_kib(pid, "VmRSS") for pid in pids) * 1024


def peak_rss_bytes(pids: Iterable[int]) -> int:
    """Sum of VmHWM (peak resident set) since start or the last ``reset_peak_rss``."""
    return sum(_status_kib(pid, "VmHWM") for pid in pids) * 1024


def reset_peak_rss(pids: Iterable[int]) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
