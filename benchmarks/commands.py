"""The cost of one control command fanned out to workers: a pause's round trip.

``python -m benchmarks.commands`` starts fastpause with 1 worker (the single
process) and with 2, and times ``POST /routes/default/pause`` (with
``drain_timeout`` 0: nothing is in flight, so the answer comes as soon as every
process has applied it) over the admin Unix socket, followed each time by a
resume. The variants run in interleaved rounds (BENCHMARKS.md, "How it was
measured"), and each round's median is printed so the spread shows.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAUSE = b'{"drain_timeout": 0}'


def _call(admin: str, path: str, body: bytes) -> float:
    """One admin request; seconds from connect to the whole answer."""
    started = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(admin)
        sock.sendall(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    elapsed = time.perf_counter() - started
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {answer[:200]!r}")
    return elapsed


def _start(workdir: Path, workers: int) -> tuple[subprocess.Popen[str], str]:
    admin = str(workdir / f"admin-{workers}.sock")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastpause",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--admin",
            f"unix:{admin}",
            "--workers",
            str(workers),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("fastpause: listening on"):
            return proc, admin
    raise RuntimeError(f"fastpause --workers {workers} did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commands", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args(argv)
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        running = {n: _start(Path(tmp), n) for n in results}
        try:
            for _ in range(args.rounds):
                for workers, (_, admin) in running.items():
                    times = []
                    for _ in range(args.per_round):
                        times.append(_call(admin, "/routes/default/pause", PAUSE))
                        _call(admin, "/routes/default/resume", b"")
                    results[workers].append(statistics.median(times))
        finally:
            for proc, _ in running.values():
                proc.terminate()
                proc.wait()
    print(json.dumps({f"workers={n}": [round(t * 1e6) for t in ts] for n, ts in results.items()}))
    for workers, medians in results.items():
        print(
            f"workers={workers}: pause round trip, median of each round (us): "
            + ", ".join(f"{t * 1e6:.0f}" for t in medians)
        )
    ratios = [two / one for one, two in zip(results[1], results[2], strict=True)]
    print("2 workers / 1, per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
