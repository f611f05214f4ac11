"""``fastpause upgrade``: a new process takes the listening and admin sockets over,
with the runtime state; the old one finishes its requests and exits. End to end
with real processes: the old proxy (``proxy_factory``), the successor it starts,
clients that never stop while it happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from deploy_support import proxy_output
from helpers import (
    IncompleteResponse,
    RawConn,
    build_request,
    chunked,
    payload,
    payload_sha256,
    raise_fd_limit,
    wait_for,
)
from hold_support import cli, cli_ok, route_entry, send_held, send_in_order
from test_hold_release import assert_released_in_arrival_order, by_worker
from tls_support import client_context, get, https_port, tls_conn, tls_top

pytest_plugins = ["hold_support", "deploy_support", "tls_support"]

HELD = 1000
HELD_OVER_WORKERS = 600  # over two workers: more than one frame's 253 descriptors each


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def successors():
    """The pids of successors the tests started: not our children, so stopped here."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), what=f"successor {pid} to exit")


def upgrade(proxy, successors: list[int], meanwhile=None) -> int:
    return upgrade_saying(proxy, successors, meanwhile)[0]


def upgrade_saying(proxy, successors: list[int], meanwhile=None) -> tuple[int, str]:
    """Run ``fastpause upgrade``; the new process's pid, once the old one is gone.
    ``meanwhile()`` runs once the new process answers the admin API (the command
    itself returns only when the old process has finished its requests)."""
    old = proxy.admin.status()["pid"]
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(cli_ok, proxy.admin, "upgrade")
        new = wait_for(
            lambda: (pid := proxy.admin.status()["pid"]) != old and pid,
            what="the new process to answer the admin API",
        )
        successors.append(new)
        if meanwhile is not None:
            meanwhile()
        done = running.result(120)
    lines = done.stdout.splitlines()
    assert lines[0] == f"started pid {new}", done.stdout
    assert f"pid {new} took over" in done.stdout and lines[-1] == (
        f"done: the old process (pid {old}) exits"
    ), done.stdout
    wait_for(lambda: not alive(old), what=f"the old process {old} to exit")
    return new, done.stdout


class Load:
    """Clients that keep sending until stopped - some on a new connection per
    request, some on keep-alive connections (reconnecting only when the proxy says
    ``Connection: close``, as browsers do) - and count what did not get a 200: a
    refused connection, a reset, a connection closed without an answer."""

    def __init__(self, port: int, clients: int = 3, keep_alive: int = 3) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._new_connections) for _ in range(clients)]
        self._threads += [threading.Thread(target=self._keep_alive) for _ in range(keep_alive)]
        for thread in self._threads:
            thread.start()

    def _new_connections(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                    s.sendall(build_request("GET", "/inspect?load", [("Connection", "close")]))
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
                self._count(None if data.startswith(b"HTTP/1.1 200 ") else f"{data[:60]!r}")
            except OSError as error:
                self._count(repr(error))

    def _keep_alive(self) -> None:
        conn: RawConn | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = RawConn(self.port)
                conn.send(build_request("GET", "/inspect?keep-alive"))
                resp = conn.read_response()
                self._count(None if resp.status == 200 else f"status {resp.status}")
                if resp.closes:
                    conn.close()
                    conn = None
            except (OSError, IncompleteResponse) as error:
                self._count(f"keep-alive: {error!r}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _count(self, problem: str | None) -> None:
        with self._lock:
            if problem is None:
                self.ok += 1
            else:
                self.failures.append(problem)

    def wait_for_requests(self, count: int) -> None:
        wait_for(lambda: self.ok >= count, what=f"{count} requests of the load")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


@pytest.mark.parametrize("proxy_workers", [1, 2], ids=["1worker", "2workers"])
def test_upgrade_under_load_refuses_no_connection(hold_proxy, backend, successors, proxy_workers):
    """Twice in a row, under a steady load of new connections: none refused, none
    failed; a request in flight in the old process finishes there."""
    proxy = hold_proxy()
    load = Load(proxy.port)
    try:
        load.wait_for_requests(20)
        busy = proxy.conn(timeout=60)
        busy.send(build_request("GET", "/hold?key=old"))
        backend.wait_held("old")

        def finish_in_the_old_process() -> None:
            backend.release("old")
            resp = busy.read_response()
            assert resp.status == 200 and resp.closes, resp

        pids = [proxy.pid]
        for meanwhile in (finish_in_the_old_process, None):
            before = load.ok
            pids.append(upgrade(proxy, successors, meanwhile))
            load.wait_for_requests(before + 20)  # served by the new process
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert len(set(pids)) == 3 and not alive(pids[0]) and not alive(pids[1])
    status = proxy.admin.status()
    assert status["pid"] == pids[-1] and status["listeners"] == [proxy.url]


def test_1000_held_requests_survive_an_upgrade_under_load(hold_proxy, backend, successors):
    """The issue's scenario: a paused route holding 1,000 requests (every fifth with a
    body) while clients keep coming; after the upgrade and a resume every held
    request is answered 200 by the new process, and the load saw no failure."""
    if raise_fd_limit(2 * HELD + 500) < 2 * HELD + 500:
        pytest.skip("needs more open files than ulimit -n allows")
    proxy = hold_proxy(route={"max_held_body": "1MiB"})
    baseline = fd_count(proxy.pid)
    load = Load(proxy.port)
    try:
        load.wait_for_requests(20)
        proxy.admin.pause(max_hold="10m")
        body = payload(1024)
        held = []
        for index in range(HELD):
            conn = proxy.conn(timeout=120)
            with_body = index % 5 == 0
            conn.send(
                build_request(
                    "POST" if with_body else "GET",
                    f"/inspect?held={index}",
                    body=body if with_body else b"",
                )
            )
            held.append((index, with_body, conn))
        # (the load's own requests are held too while paused: at least HELD)
        wait_for(
            lambda: route_entry(proxy.admin.status(), "app")["held"] >= HELD,
            what=f"{HELD} held requests",
        )
        new, said = upgrade_saying(proxy, successors)
        moved = re.search(r"the admin API, (\d+) held requests", said)
        assert moved and int(moved[1]) >= HELD, said
        proxy.admin.resume()
        for index, with_body, conn in held:
            resp = conn.read_response()
            assert resp.status == 200, (index, resp)
            seen = resp.json()
            assert seen["target"] == f"/inspect?held={index}", seen
            assert seen["body_length"] == (len(body) if with_body else 0), seen
            conn.close()
        load.wait_for_requests(load.ok + 20)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert proxy.admin.status()["pid"] == new

    # nothing the handover carried stays open in the new process (beyond the pool of
    # idle upstream connections, which the old process had none of at the start)
    def settled() -> bool:
        [upstream] = route_entry(proxy.admin.status(), "app")["upstreams"]
        return fd_count(new) - upstream["idle"] <= baseline

    wait_for(settled, what=f"the new process back to {baseline} fds and its pool")


def test_an_invalid_config_leaves_the_old_process_serving(hold_proxy, successors):
    proxy = hold_proxy()
    pid = proxy.admin.status()["pid"]
    good = proxy.config_path.read_text()
    proxy.config_path.write_text("bogus = 1\n" + good)
    done = cli(proxy.admin, "upgrade")
    assert done.returncode == 1, done
    assert done.stderr.startswith("fastpause: upgrade failed: the new process refused to start: ")
    assert f"{proxy.config_path}: unknown key 'bogus'" in done.stderr, done.stderr
    assert proxy.admin.status()["pid"] == pid and alive(pid)
    assert proxy.get("/inspect").status == 200
    proxy.config_path.write_text(good)  # fixed: the next upgrade goes through
    upgrade(proxy, successors)
    assert proxy.get("/inspect").status == 200


def test_the_new_process_keeps_route_modes_and_deploys(hold_proxy, identity_backend, successors):
    a, b = identity_backend("A"), identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address])
    cli_ok(proxy.admin, "deploy", "app", "--to", b.address)
    cli_ok(proxy.admin, "stop", "app", "--message", "back soon")
    upgrade(proxy, successors)
    entry = route_entry(proxy.admin.status(), "app")
    assert (entry["mode"], entry["stop_message"]) == ("stopped", "back soon"), entry
    assert [u["address"] for u in entry["upstreams"]] == [b.address], entry
    resp = proxy.get("/")
    assert resp.status == 503 and "back soon" in resp.text, resp
    cli_ok(proxy.admin, "start", "app")
    assert proxy.get("/work").get("X-Backend") == "B"


def test_held_requests_and_idle_connections_go_to_the_new_process(hold_proxy, recorder, successors):
    """The held requests move in arrival order, still held (and as old as they were);
    idle keep-alive connections move too and carry on with the new process."""
    proxy = hold_proxy(upstreams=[recorder.address])
    idle = [proxy.conn() for _ in range(5)]
    for conn in idle:
        conn.send(build_request("GET", "/warm"))
        assert conn.read_response().status == 200
    cli_ok(proxy.admin, "pause", "app", "--max-hold", "10m")  # no deadline in the way
    targets = [f"/order/{i:03d}" for i in range(100)]
    conns = send_in_order(proxy, proxy.admin, targets)
    age = route_entry(proxy.admin.status(), "app")["oldest_held_age_seconds"]

    _, said = upgrade_saying(proxy, successors)
    assert "took over 1 listener, the admin API, 100 held requests and 5 idle connections" in (
        said
    ), said
    entry = route_entry(proxy.admin.status(), "app")
    assert (entry["mode"], entry["held"]) == ("paused", 100), f"{entry}\n{proxy.describe()}"
    assert entry["oldest_held_age_seconds"] >= age, entry
    assert recorder.targets() == ["/warm"] * 5, "a request passed the pause"

    # the old process is gone: the new one reads these (and holds them: still paused)
    for index, conn in enumerate(idle):
        targets.append(f"/idle/{index}")
        conns.append(conn)
        conn.send(build_request("GET", targets[-1]))
        proxy.admin.wait_held(len(targets))
    cli_ok(proxy.admin, "resume", "app")
    for target, conn in zip(targets, conns, strict=True):
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, f"recorded {target}\n".encode()), resp
    assert_released_in_arrival_order(targets, recorder.log()[5:])


def test_held_requests_keep_their_bodies(hold_proxy, backend, successors):
    proxy = hold_proxy()
    proxy.admin.pause()
    body = payload(4096)
    with_length = send_held(proxy, proxy.admin, build_request("POST", "/inspect?cl", body=body), 1)
    in_chunks = send_held(
        proxy,
        proxy.admin,
        build_request(
            "POST",
            "/inspect?te",
            [("Transfer-Encoding", "chunked")],
            chunked(body[:1000], body[1000:]),
            content_length=False,
        ),
        2,
    )
    _, said = upgrade_saying(proxy, successors)
    assert "2 held requests" in said, said
    proxy.admin.resume()
    for conn, target in ((with_length, "/inspect?cl"), (in_chunks, "/inspect?te")):
        resp = conn.read_response()
        assert resp.status == 200, resp
        seen = resp.json()
        assert (seen["target"], seen["body_length"]) == (target, len(body)), seen
        assert seen["body_sha256"] == payload_sha256(4096)


@pytest.mark.parametrize("cut", ["inside a chunk", "between chunks"])
def test_held_requests_whose_bodies_are_still_arriving_go_too(hold_proxy, backend, successors, cut):
    """The part of the body that came goes along; the rest arrives on the socket, now
    the new process's: one with a length, one chunked and cut inside a chunk's data
    or right after one."""
    proxy = hold_proxy()
    proxy.admin.pause()
    body = payload(10_000)
    with_length = build_request("POST", "/inspect?cl", body=body)
    in_chunks = build_request(
        "POST",
        "/inspect?te",
        [("Transfer-Encoding", "chunked")],
        chunked(body[:6000], body[6000:]),
        content_length=False,
    )
    at = len(in_chunks) - len(b"\r\n0\r\n\r\n") - (2000 if cut == "inside a chunk" else 4005)
    sent = [(with_length, len(with_length) - 5000), (in_chunks, at)]
    conns = [
        send_held(proxy, proxy.admin, raw[:part], index + 1)
        for index, (raw, part) in enumerate(sent)
    ]
    _, said = upgrade_saying(proxy, successors)
    assert "2 held requests" in said, said
    for conn, (raw, part) in zip(conns, sent, strict=True):
        conn.send(raw[part:])
    proxy.admin.resume()
    for conn, target in zip(conns, ("/inspect?cl", "/inspect?te"), strict=True):
        resp = conn.read_response()
        assert resp.status == 200, resp
        seen = resp.json()
        assert (seen["target"], seen["body_sha256"]) == (target, payload_sha256(10_000)), seen


def test_with_workers_each_worker_hands_its_held_requests_over(hold_proxy, recorder, successors):
    """2 workers: each old worker's held queue goes whole to one new worker, in order
    (more than the 253 descriptors one message can carry, so in several frames)."""
    proxy = hold_proxy(upstreams=[recorder.address], top={"workers": 2})
    cli_ok(proxy.admin, "pause", "app", "--max-hold", "10m")
    targets = [f"/order/{i:03d}" for i in range(HELD_OVER_WORKERS)]
    conns = send_in_order(proxy, proxy.admin, targets)
    queues = by_worker(proxy, targets, conns)
    assert all(queues), queues  # both old workers hold some
    _, said = upgrade_saying(proxy, successors)
    assert f"the admin API, {HELD_OVER_WORKERS} held requests" in said, said
    assert route_entry(proxy.admin.status(), "app")["held"] == HELD_OVER_WORKERS
    cli_ok(proxy.admin, "resume", "app")
    for target, conn in zip(targets, conns, strict=True):
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, f"recorded {target}\n".encode()), resp
    log = recorder.log()
    for queue in queues:  # each queue in its arrival order (the workers release at once)
        assert_released_in_arrival_order(queue, [e for e in log if e["target"] in queue])


def test_an_upgrade_waits_for_a_deploy_in_progress(hold_proxy, identity_backend, successors):
    """A deploy checking its targets when the upgrade comes: the upgrade waits for its
    switch, so the new process runs the deployed targets (the change is not lost)."""
    a, b = identity_backend("A"), identity_backend("B")
    b.set_health(503)
    proxy = hold_proxy(upstreams=[a.address])
    with ThreadPoolExecutor(2) as pool:
        deploying = pool.submit(
            cli, proxy.admin, "deploy", "app", "--to", b.address, "--health-path", "/health"
        )
        wait_for(lambda: b.stats()["health_checks"] >= 1, what="the deploy to check B")
        old = proxy.admin.status()["pid"]
        upgrading = pool.submit(cli, proxy.admin, "upgrade")
        # changes are refused (409) once the upgrade has begun, and it waits for the lock
        wait_for(
            lambda: proxy.admin.call("POST", "/routes/app/start", {}).status == 409,
            what="the upgrade to begin",
        )
        b.set_health(200)
        deployed, upgraded = deploying.result(120), upgrading.result(120)
    assert deployed.returncode == 0, deployed
    assert upgraded.returncode == 0, upgraded
    status = proxy.admin.status()
    successors.append(status["pid"])
    assert status["pid"] != old
    [upstream] = route_entry(status, "app")["upstreams"]
    assert upstream["address"] == b.address, status
    assert proxy.get("/work").get("X-Backend") == "B"


def test_sigusr2_upgrades(hold_proxy, successors):
    proxy = hold_proxy()
    old = proxy.pid
    os.kill(old, signal.SIGUSR2)
    wait_for(lambda: not alive(old), what="the old process to exit")
    new = proxy.admin.status()["pid"]
    successors.append(new)
    assert new != old
    said = f"fastpause: upgrade: handed_over: pid {new}"
    assert proxy.output.wait_for(lambda s: s.startswith(said)), proxy.describe()
    assert proxy.get("/inspect").status == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_held_https_requests_are_answered_by_the_new_process(
    hold_proxy, recorder, successors, pairs, ca, workers
):
    """A TLS session cannot move to another process: the old one keeps decrypting and
    relays the bytes to the new one, which holds, releases and answers them; an idle
    HTTPS keep-alive connection carries on the same way; the old process exits once
    its last relayed connection has closed."""
    proxy = hold_proxy(upstreams=[recorder.address], top=tls_top(pairs, workers=workers))
    port, context = https_port(proxy), client_context(ca)
    kept = tls_conn(port, context, "app.test")
    assert get(kept, "/warm").status == 200
    cli_ok(proxy.admin, "pause", "app", "--max-hold", "10m")
    held = []
    for index in range(3):
        conn = tls_conn(port, context, "app.test")
        conn.send(build_request("GET", f"/order/{index}", host="app.test"))
        proxy.admin.wait_held(index + 1)
        held.append(conn)
    old = proxy.admin.status()["pid"]

    said = cli_ok(proxy.admin, "upgrade").stdout
    new = proxy.admin.status()["pid"]
    successors.append(new)
    assert new != old and "3 held requests and 1 idle connection" in said, said
    assert route_entry(proxy.admin.status(), "app")["held"] == 3  # held in the new one

    cli_ok(proxy.admin, "resume", "app")  # the new process's resume releases them
    for index, conn in enumerate(held):
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, f"recorded /order/{index}\n".encode()), resp
        conn.close()
    assert get(kept, "/after").status == 200  # through the relay, served by the new one
    assert recorder.targets()[0] == "/warm" and recorder.targets()[-1] == "/after"
    targets, released = [f"/order/{i}" for i in range(3)], recorder.log()[1:4]
    if workers == 1:  # with workers, each holds its own queue: no order across them
        assert_released_in_arrival_order(targets, released)
    assert sorted(entry["target"] for entry in released) == targets
    assert alive(old), "the old process left while it relayed a connection"
    kept.close()
    wait_for(lambda: not alive(old), what=f"the old process {old} to exit")
    said = proxy_output(proxy)  # a line per process that relays (each worker)
    relayed = re.findall(r"relaying (\d+) TLS connections? to the new process", said)
    assert sum(map(int, relayed)) == 4, proxy.describe()
    assert "no longer listening" not in said, said  # the HTTPS socket was handed over too
