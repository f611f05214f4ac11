"""Worker processes under a supervisor, end to end: one proxy to the operator.

Each test runs ``fastpause run`` with ``workers = 2`` and finds out which worker
serves which client connection from the kernel (``workers_support``), so it can
check that a pause, a reload or a kill reaches every worker, not only the one a
connection happened to land on. (The hold, reload, deploy, admin, health and
metrics suites also run whole with 2 workers: ``workers_variants``.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from deploy_support import fastpause, proxy_output
from helpers import RawConn, build_request, wait_for
from hold_support import WAIT, cli_ok, route_entry
from workers_support import serving_workers

pytest_plugins = ["hold_support", "deploy_support"]

WORKERS = 2
# Enough connections that each worker gets some: a shared listening socket hands
# most connections to one worker when the proxy is idle (README, "Workers").
SPREAD = 60


def spread_connections(proxy, n: int = SPREAD) -> dict[int, list[RawConn]]:
    """``n`` open client connections, by the pid of the worker that serves each;
    every worker serves at least one."""
    conns = [proxy.conn() for _ in range(n)]
    for conn in conns:  # a request answered: the worker has accepted the connection
        conn.send(build_request("GET", "/inspect?warm"))
        assert conn.read_response().status == 200
    pids = proxy.admin.status()["worker_pids"]
    by_worker: dict[int, list[RawConn]] = {pid: [] for pid in pids}
    for conn, pid in zip(conns, serving_workers(pids, [c.sock for c in conns]), strict=True):
        by_worker[pid].append(conn)
    assert all(by_worker.values()), f"a worker got none of {n} connections: {by_worker}"
    return by_worker


def wait_for_replacement(proxy) -> dict:
    """The status once the first replacement worker serves: every worker is live again."""
    return wait_for(
        lambda: (
            (s := proxy.admin.status())["worker_restarts"] == 1
            and len(s["worker_pids"]) == WORKERS
            and s
        ),
        what="a replacement worker",
    )


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture
def workers_proxy(hold_proxy):
    def start(route=None, top=None, upstreams=None):
        return hold_proxy(route=route, top={"workers": WORKERS, **(top or {})}, upstreams=upstreams)

    return start


def test_pause_reaches_every_worker_and_waits_for_their_in_flight_requests(workers_proxy, backend):
    proxy = workers_proxy()
    by_worker = spread_connections(proxy)
    first = [conns[0] for conns in by_worker.values()]
    for index, conn in enumerate(first):  # one request in flight in each worker
        conn.send(build_request("GET", f"/hold?key=w{index}"))
        backend.wait_held(f"w{index}")

    answer = proxy.admin.pause(drain_timeout=0.2).json()
    assert (answer["mode"], answer["drained"], answer["in_flight"]) == ("paused", False, WORKERS)

    for index in range(WORKERS):
        backend.release(f"w{index}")
    for conn in first:
        assert conn.read_response().status == 200
    answer = proxy.admin.pause().json()
    assert (answer["drained"], answer["in_flight"]) == (True, 0)

    # after the pause answered, no worker lets a request through
    conns = [conn for group in by_worker.values() for conn in group]
    before = backend.stats()["paths"].get("/inspect", 0)
    for index, conn in enumerate(conns):
        conn.send(build_request("GET", f"/inspect?held={index}"))
    proxy.admin.wait_held(len(conns))
    assert backend.stats()["paths"].get("/inspect", 0) == before, "a request passed the pause"

    done = cli_ok(proxy.admin, "resume", "app")
    assert f"released {len(conns)} held requests" in done.stdout, done
    for index, conn in enumerate(conns):
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert resp.json()["target"] == f"/inspect?held={index}"
        conn.close()
    assert backend.stats()["paths"]["/inspect"] == before + len(conns)  # each exactly once


def test_status_and_metrics_count_every_worker(workers_proxy, backend):
    proxy = workers_proxy()
    by_worker = spread_connections(proxy)
    conns = [conn for group in by_worker.values() for conn in group]
    for conn in conns:  # a second request on each: 2 per connection in all
        conn.send(build_request("GET", "/status/404"))
        assert conn.read_response().status == 404
    proxy.admin.pause()
    for conn in conns[:10]:
        conn.send(build_request("GET", "/inspect?held"))
    entry = proxy.admin.wait_held(10)
    assert entry["held"] == 10
    status = proxy.admin.status()
    assert status["connections"] == len(conns)
    [upstream] = route_entry(status, "app")["upstreams"]
    assert upstream["requests"] == 2 * len(conns)

    text = proxy.admin.metrics()
    assert proxy.admin.metric("fastpause_requests_total") == 2 * len(conns) + 10
    assert proxy.admin.metric("fastpause_responses_total", **{"class": "2xx"}) == len(conns)
    assert proxy.admin.metric("fastpause_responses_total", **{"class": "4xx"}) == len(conns)
    assert proxy.admin.metric("fastpause_held", route="app") == 10
    assert proxy.admin.metric("fastpause_connections") == len(conns)
    assert proxy.admin.metric("fastpause_workers") == WORKERS, text
    assert proxy.admin.metric("fastpause_worker_restarts_total") == 0
    proxy.admin.resume()
    for conn in conns[:10]:
        assert conn.read_response().status == 200
    for conn in conns:
        conn.close()


def test_counters_keep_what_a_killed_worker_counted(workers_proxy, backend):
    """A replaced worker's counts stay in the sums (as of the last scrape before it
    died): a Prometheus counter of the proxy never goes back."""
    proxy = workers_proxy()
    by_worker = spread_connections(proxy)
    sent = sum(len(conns) for conns in by_worker.values())
    victim = next(iter(by_worker))
    killed = len(by_worker[victim])
    assert proxy.admin.metric("fastpause_requests_total") == sent
    assert proxy.admin.metric("fastpause_connections") == sent

    os.kill(victim, signal.SIGKILL)
    wait_for_replacement(proxy)
    assert proxy.admin.metric("fastpause_requests_total") == sent
    assert proxy.admin.metric("fastpause_responses_total", **{"class": "2xx"}) == sent
    assert proxy.admin.metric("fastpause_connections") == sent - killed  # a gauge: gone
    [upstream] = route_entry(proxy.admin.status(), "app")["upstreams"]
    assert upstream["requests"] == sent and upstream["healthy"], upstream
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/inspect?after"))
        assert conn.read_response().status == 200
    assert proxy.admin.metric("fastpause_requests_total") == sent + 1
    for conns in by_worker.values():
        for conn in conns:
            conn.close()


def test_a_killed_worker_is_replaced_with_the_route_still_paused(workers_proxy, backend):
    proxy = workers_proxy()
    by_worker = spread_connections(proxy)
    supervisor_fds = fd_count(proxy.pid)
    supervisor_rss = rss_kib(proxy.pid)
    passed = backend.stats()["paths"]["/inspect"]
    proxy.admin.pause()
    victim, survivor = list(by_worker)
    held = by_worker[survivor][0]
    held.send(build_request("GET", "/inspect?survivor"))
    proxy.admin.wait_held(1)

    os.kill(victim, signal.SIGKILL)
    status = wait_for_replacement(proxy)
    [replacement] = set(status["worker_pids"]) - {survivor}
    assert f"(pid {victim}) was killed by SIGKILL" in proxy.stderr(), proxy_output(proxy)
    for conn in by_worker[victim]:  # only the killed worker's connections are lost
        assert conn.is_closed_by_peer()
        conn.close()

    # the replacement holds too: open connections until it serves one
    fresh: list[RawConn] = []
    for _ in range(200):
        conn = proxy.conn()
        fresh.append(conn)
        conn.send(build_request("GET", "/inspect?new"))
        proxy.admin.wait_held(1 + len(fresh))
        if serving_workers(status["worker_pids"], [conn.sock]) == [replacement]:
            break
    else:
        raise AssertionError(f"200 new connections and none reached worker {replacement}")
    assert backend.stats()["paths"]["/inspect"] == passed, "a request passed the pause"
    assert route_entry(proxy.admin.status(), "app")["mode"] == "paused"
    # (an admin connection may still be closing: its lingering end is not a leak)
    wait_for(lambda: fd_count(proxy.pid) <= supervisor_fds, what="the supervisor's fds")
    # a replacement costs the supervisor a process handle, not memory that stays
    assert rss_kib(proxy.pid) - supervisor_rss < 2048, "the supervisor kept what it spent"

    proxy.admin.resume()
    for conn in [held, *fresh]:
        assert conn.read_response().status == 200
        conn.close()
    for conn in by_worker[survivor][1:]:
        conn.close()


def test_a_worker_that_does_not_answer_is_reported_and_replaced(workers_proxy):
    proxy = workers_proxy(top={"worker_timeout": "500ms"})
    stuck, other = proxy.admin.status()["worker_pids"]
    os.kill(stuck, signal.SIGSTOP)
    try:
        answer = proxy.admin.pause(drain_timeout=0).json()
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed and replaced by now
            os.kill(stuck, signal.SIGCONT)
    assert answer["mode"] == "paused"
    assert any(f"pid {stuck}" in problem for problem in answer["workers_failed"]), answer
    status = wait_for_replacement(proxy)
    assert stuck not in status["worker_pids"] and other in status["worker_pids"]
    assert route_entry(status, "app")["mode"] == "paused"  # the new one started paused


def test_max_held_caps_the_whole_proxy_wherever_requests_arrive(workers_proxy, backend):
    """``max_held = 3`` with 2 workers: 3 held in one worker fill the route for both
    (the workers share their held counts), and no worker's part is full earlier."""
    proxy = workers_proxy(route={"max_held": 3})
    by_worker = spread_connections(proxy)
    first_conns, other_conns = list(by_worker.values())[:2]
    assert len(first_conns) >= 4, "the kernel gave one worker nearly every connection"
    proxy.admin.pause()
    for held, conn in enumerate(first_conns[:3], start=1):
        conn.send(build_request("GET", "/inspect?capped"))
        proxy.admin.wait_held(held)
    for conn in (other_conns[0], first_conns[3]):
        conn.send(build_request("GET", "/inspect?over"))
        resp = conn.read_response()
        assert resp.status == 503, resp
        assert "too many requests are waiting" in resp.text, resp
    assert route_entry(proxy.admin.status(), "app")["held"] == 3
    proxy.admin.resume()
    for conn in first_conns[:3]:
        assert conn.read_response().status == 200


def test_max_held_bytes_caps_the_whole_proxy(workers_proxy, backend):
    """Held bodies count against ``max_held_bytes`` whichever worker holds them."""
    proxy = workers_proxy(top={"max_held_bytes": 1000})
    by_worker = spread_connections(proxy)
    first_conns, other_conns = list(by_worker.values())[:2]
    body = b"x" * 600
    proxy.admin.pause()
    first_conns[0].send(build_request("POST", "/inspect?one", body=body))
    proxy.admin.wait_held(1)
    other_conns[0].send(build_request("POST", "/inspect?two", body=body))
    resp = other_conns[0].read_response()
    assert resp.status == 503, resp
    assert "holding too much request data" in resp.text, resp
    proxy.admin.resume()
    resp = first_conns[0].read_response()
    assert resp.status == 200 and resp.json()["body_length"] == len(body), resp


def test_what_a_killed_worker_held_stops_counting_against_the_cap(workers_proxy, backend):
    proxy = workers_proxy(route={"max_held": 2})
    by_worker = spread_connections(proxy)
    victim, survivor = list(by_worker)[:2]
    proxy.admin.pause()
    for held, conn in enumerate(by_worker[victim][:2], start=1):
        conn.send(build_request("GET", "/inspect?victim"))
        proxy.admin.wait_held(held)
    os.kill(victim, signal.SIGKILL)
    wait_for_replacement(proxy)
    conns = by_worker[survivor][:2]
    for held, conn in enumerate(conns, start=1):  # the cap is free again
        conn.send(build_request("GET", "/inspect?survivor"))
        proxy.admin.wait_held(held)
    proxy.admin.resume()
    for conn in conns:
        assert conn.read_response().status == 200


def test_supervisor_killed_takes_its_workers_along(workers_proxy):
    proxy = workers_proxy()
    pids = proxy.admin.status()["worker_pids"]
    os.kill(proxy.pid, signal.SIGKILL)
    proxy.proc.wait(timeout=30)
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), what=f"worker {pid} to exit")
    with socket.socket() as sock:  # nothing holds the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", proxy.port))


def test_sigterm_lets_every_worker_finish_its_requests(workers_proxy, backend):
    proxy = workers_proxy()
    by_worker = spread_connections(proxy)
    first = [conns[0] for conns in by_worker.values()]
    for index, conn in enumerate(first):
        conn.send(build_request("GET", f"/hold?key=t{index}"))
        backend.wait_held(f"t{index}")
    proxy.terminate()
    wait_for(  # one line for the whole proxy, said once no worker accepts
        lambda: f"shutting down: {WORKERS} open connections" in proxy_output(proxy),
        what="the proxy to start shutting down",
    )
    assert proxy_output(proxy).count("shutting down: ") == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT).close()
    for index in range(WORKERS):
        backend.release(f"t{index}")
    for conn in first:
        assert conn.read_response().status == 200
    assert proxy.wait() == 0
    assert "fastpause: stopped" in proxy_output(proxy)


def test_sighup_reloads_every_worker(workers_proxy, backend, start_backend):
    proxy = workers_proxy()
    by_worker = spread_connections(proxy)
    second = start_backend("second")
    config = proxy.config_path.read_text()
    proxy.config_path.write_text(config.replace(backend.address, second.address))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in proxy_output(proxy), what="the reload")
    sent = 0
    for conns in by_worker.values():
        for conn in conns[:3]:
            conn.send(build_request("GET", "/inspect?after-reload"))
            assert conn.read_response().status == 200
            sent += 1
    assert second.stats()["paths"]["/inspect"] == sent, "a worker still routes to the old backend"
    for conns in by_worker.values():
        for conn in conns:
            conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_the_number_of_workers_changes_only_by_a_restart(workers_proxy):
    proxy = workers_proxy()
    config = proxy.config_path.read_text()
    proxy.config_path.write_text(config.replace(f"workers = {WORKERS}", "workers = 3"))
    result = fastpause("reload", "--admin", proxy.admin.spec)
    assert result.returncode == 1, result
    assert "workers: the number of workers cannot change by reload" in result.stderr, result
    assert len(proxy.admin.status()["worker_pids"]) == WORKERS


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "workers: 0 is out of range: expected 1 to 256"),
        ("257", "workers: 257 is out of range: expected 1 to 256"),
        ('"many"', "workers: expected \"auto\" or a number of processes, got string 'many'"),
        ("true", 'workers: expected "auto" or a number of processes, got boolean true'),
        ('"0s"', "worker_timeout"),
    ],
)
def test_bad_workers_values_are_config_errors(tmp_path: Path, value: str, problem: str):
    key = "worker_timeout" if value == '"0s"' else "workers"
    path = tmp_path / "bad.toml"
    path.write_text(f'{key} = {value}\n[[routes]]\nname = "app"\nupstreams = ["127.0.0.1:1"]\n')
    result = fastpause("validate", str(path))
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"{path}: {problem}"), result.stderr


def test_run_workers_option(tmp_path: Path):
    result = fastpause("run", "--workers", "0", "--admin", f"unix:{tmp_path}/a.sock")
    assert result.returncode == 2, result
    assert result.stderr == ("command line: --workers: 0 is out of range: expected 1 to 256\n"), (
        result.stderr
    )


@pytest.mark.parametrize("target", ["file", "stdout"])
def test_access_log_lines_stay_whole_with_every_worker_writing(workers_proxy, tmp_path, target):
    log = tmp_path / "access.log"
    proxy = workers_proxy(top={"access_log": str(log) if target == "file" else "stdout"})
    by_worker = spread_connections(proxy)
    sent = SPREAD  # spread_connections sent one request per connection
    for conns in by_worker.values():
        for conn in conns:
            for index in range(20):
                conn.send(build_request("GET", f"/inspect?{'x' * 200}={index}"))
                assert conn.read_response().status == 200
                sent += 1
            conn.close()
    proxy.terminate()
    assert proxy.wait() == 0
    if target == "file":
        lines = log.read_text().splitlines()
    else:
        lines = [line for line in proxy.output.snapshot() if '"GET /inspect?' in line]
    assert len(lines) == sent
    for line in lines:  # whole lines: one request each, nothing of another in it
        assert line.count('"GET /inspect?') == 1 and line.endswith(tuple("0123456789-")), line


def test_status_says_how_many_workers_serve(workers_proxy):
    proxy = workers_proxy()
    result = fastpause("status", "--admin", proxy.admin.spec)
    assert result.returncode == 0, result
    first = result.stdout.splitlines()[0]
    assert f"(pid {proxy.pid}, {WORKERS} workers), up " in first, result.stdout


def test_status_workers_shows_what_each_worker_serves_and_holds(workers_proxy):
    proxy = workers_proxy()
    by_worker = spread_connections(proxy)
    proxy.admin.pause()
    held = {pid: conns[: index + 1] for index, (pid, conns) in enumerate(by_worker.items())}
    for conns in held.values():
        for conn in conns:
            conn.send(build_request("GET", "/inspect?held"))
    proxy.admin.wait_held(sum(len(conns) for conns in held.values()))

    details = {d["pid"]: d for d in proxy.admin.status()["worker_details"]}
    assert sorted(details) == sorted(by_worker)
    assert sorted(d["index"] for d in details.values()) == list(range(WORKERS))
    for pid, conns in by_worker.items():
        assert details[pid]["connections"] == len(conns), details[pid]
        assert details[pid]["held"] == len(held[pid]), details[pid]
        assert details[pid]["requests"] == len(conns) + len(held[pid]), details[pid]

    result = fastpause("status", "--workers", "--admin", proxy.admin.spec)
    assert result.returncode == 0, result
    rows = {
        int(cells[1]): cells
        for line in result.stdout.splitlines()
        if (cells := line.split()) and cells[0].isdigit()
    }
    assert sorted(rows) == sorted(by_worker), result.stdout
    for pid, conns in by_worker.items():  # WORKER PID UP CONNECTIONS HELD IN-FLIGHT REQUESTS
        assert rows[pid][3:5] == [str(len(conns)), str(len(held[pid]))], result.stdout
    proxy.admin.resume()
    for conns in held.values():
        for conn in conns:
            assert conn.read_response().status == 200
    for conns in by_worker.values():
        for conn in conns:
            conn.close()


def test_connections_made_while_a_worker_is_replaced_wait_for_it_and_are_served(
    workers_proxy, backend
):
    """The supervisor keeps every worker's listening socket: connections the kernel
    hashes to a dead worker's socket queue there until its replacement accepts them,
    so a kill loses only the connections that worker had, never a new one."""
    proxy = workers_proxy()
    victim, survivor = proxy.admin.status()["worker_pids"]
    os.kill(victim, signal.SIGKILL)
    answers = Counter()
    for index in range(40):  # made at once: the replacement is still starting
        with proxy.conn() as conn:
            conn.send(build_request("GET", f"/inspect?during-restart={index}"))
            answers[conn.read_response().status] += 1
    assert answers == {200: 40}, answers
    status = proxy.admin.status()
    assert status["worker_restarts"] == 1 and survivor in status["worker_pids"], status


def test_sigterm_to_the_whole_process_group_stops_quietly(tmp_path, backend):
    """systemd's default KillMode, ``timeout``, ``kill -- -PGID``: every process gets
    SIGTERM at once. The workers drain without a line of their own (the supervisor
    says one), and one that exits before the supervisor asks it to stop accepting is
    not reported lost."""
    config = tmp_path / "group.toml"
    config.write_text(
        f'listen = ["127.0.0.1:0"]\nadmin = "off"\nworkers = {WORKERS}\n'
        f'[[routes]]\nname = "app"\nupstreams = ["{backend.address}"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastpause", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, not the test's
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("fastpause: listening on "):
                break
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "is gone" not in err and "did not answer" not in err, err
    assert out.count("shutting down: ") == 1, out
    assert out.rstrip().endswith("fastpause: stopped"), out
