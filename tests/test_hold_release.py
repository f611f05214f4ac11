"""Holding and releasing requests, end to end: a backend that comes up late, pause and
resume (in arrival order, all at once or paced), and 5,000 requests held at once.

Every wait polls the proxy's admin ``GET /status`` (held count, mode) or a process's
output against a deadline; nothing sleeps to synchronize. Arrival order at the
backend is read from the recording backend's log (``hold_support.RecordingBackend``).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import build_request, free_port, payload, payload_sha256
from hold_support import cli_ok, in_thread, send_held, send_in_order
from workers_support import serving_workers

pytest_plugins = ["hold_support"]  # fixtures: hold_proxy, recorder, late_backend
pytestmark = pytest.mark.workers_variants

# --------------------------------------------------------------------------- backend down


def test_requests_wait_for_a_backend_that_comes_up_later(hold_proxy, late_backend):
    """No upstream accepts connections: the requests are held (try_duration, default
    30s) and the first successful connect releases the whole queue to the backend."""
    port = free_port()
    proxy = hold_proxy(
        route={"try_interval": "100ms", "hold_time_header": "X-Held-Ms"},
        upstreams=[f"127.0.0.1:{port}"],
    )
    pending = []
    for i in range(3):
        pending.append(in_thread(proxy.port, build_request("GET", f"/inspect?late={i}")))
        entry = proxy.admin.wait_held(i + 1)
    assert entry["mode"] == "running", entry  # held because the backend is down, not paused

    backend = late_backend(port)
    for i, p in enumerate(pending):
        resp = p.result(timeout=60)
        assert resp.status == 200, f"{resp!r}\n{proxy.describe()}"
        assert resp.json()["target"] == f"/inspect?late={i}"  # answered by that backend
        held_ms = resp.get("X-Held-Ms")
        assert held_ms is not None and held_ms.isdigit(), resp
    assert backend.stats()["paths"] == {"/inspect": 3}
    proxy.admin.wait_held(0)


def test_a_new_request_releases_the_queue_once_the_backend_is_back(hold_proxy, late_backend):
    """Release is event-driven: with probes a minute apart, the next request's successful
    connect releases what waits, without waiting for the probe."""
    port = free_port()
    proxy = hold_proxy(
        route={"try_interval": "60s", "try_duration": "120s"}, upstreams=[f"127.0.0.1:{port}"]
    )
    pending = []
    for i in range(2):
        pending.append(in_thread(proxy.port, build_request("GET", f"/inspect?early={i}")))
        proxy.admin.wait_held(i + 1)

    late_backend(port)
    pending.append(in_thread(proxy.port, build_request("GET", "/inspect?next")))
    targets = ["/inspect?early=0", "/inspect?early=1", "/inspect?next"]
    for p, target in zip(pending, targets, strict=True):
        resp = p.result(timeout=15)
        assert resp.status == 200, f"{target}: {resp!r}"
        assert resp.json()["target"] == target
    proxy.admin.wait_held(0)


def test_body_held_while_backend_down_is_replayed_exactly(hold_proxy, late_backend):
    """A POST whose connection was refused keeps its whole body and is replayed once the
    backend accepts connections (nothing had reached an upstream)."""
    port = free_port()
    proxy = hold_proxy(route={"try_interval": "100ms"}, upstreams=[f"127.0.0.1:{port}"])
    size = 512 * 1024
    conn = send_held(proxy, proxy.admin, build_request("POST", "/inspect", body=payload(size)), 1)
    late_backend(port)
    resp = conn.read_response()
    conn.close()
    assert resp.status == 200, resp
    seen = resp.json()
    assert (seen["method"], seen["body_length"], seen["body_sha256"]) == (
        "POST",
        size,
        payload_sha256(size),
    )


# --------------------------------------------------------------------------- pause / resume

# Released requests go out in arrival order through a window of this many in flight
# (hold.pxi RELEASE_WINDOW), over up to that many keep-alive connections, and new
# connections are opened one after another, each carrying the next held request.
RELEASE_WINDOW = 64


def assert_released_in_arrival_order(targets: list[str], log: list[dict]) -> None:
    """What the proxy's release order guarantees, as seen from the backend.

    The backend reads several connections at once, so the order in which it *reads*
    requests is not the order in which the proxy *sent* them: a request on a
    connection the backend has not accepted yet (its data is read an event-loop
    turn after the accept, later still when the backend is short of CPU) can be
    overtaken by any number of requests on connections it already serves - a CI run
    saw /order/016 read before /order/001 that way. So the check is what the
    backend can see of the proxy's order without racing its own loop:
    - on each connection, requests come in arrival order;
    - connections are opened in arrival order: the first requests of the
      connections, in the order the backend accepted them, are in arrival order;
    - a request on a connection the backend already serves is never read after one
      held a whole window later (that one was released after it was sent).
    """
    position = {target: i for i, target in enumerate(targets)}
    last_on_conn: dict[int, int] = {}
    latest = -1  # the latest queue position read on an established connection so far
    for entry in log:
        at, conn = position[entry["target"]], entry["conn"]
        if conn in last_on_conn:
            assert at > last_on_conn[conn], (
                f"{entry['target']} came after {targets[last_on_conn[conn]]} on one "
                "connection: not released in arrival order"
            )
            latest = max(latest, at)
            assert latest - at < RELEASE_WINDOW, (
                f"{entry['target']} reached the backend after {targets[latest]}, held "
                f"{latest - at} places later: not released in arrival order"
            )
        last_on_conn[conn] = at
    first_on_conn: dict[int, int] = {}
    for entry in log:
        first_on_conn.setdefault(entry["conn"], position[entry["target"]])
    opened = [first_on_conn[conn] for conn in sorted(first_on_conn)]  # in accept order
    assert opened == sorted(opened), (
        "upstream connections were not opened in arrival order: their first requests "
        f"were {[targets[at] for at in opened]}"
    )
    assert log[0]["target"] == targets[0], "the first held request was not released first"


def by_worker(proxy, targets: list[str], conns) -> list[list[str]]:
    """The held targets of each worker, in arrival order (one list without workers):
    each worker releases its own queue in arrival order; workers release at once."""
    pids = proxy.admin.status()["worker_pids"]
    if not pids:
        return [targets]
    groups: dict[int, list[str]] = {}
    workers = serving_workers(pids, [conn.sock for conn in conns])
    for target, worker in zip(targets, workers, strict=True):
        groups.setdefault(worker, []).append(target)
    return list(groups.values())


def test_pause_holds_500_requests_and_resume_releases_them_in_arrival_order(hold_proxy, recorder):
    proxy = hold_proxy(upstreams=[recorder.address])
    assert proxy.get("/warm-up").status == 200

    done = cli_ok(proxy.admin, "pause", "app")
    assert "drain" in (done.stdout + done.stderr).lower(), done  # says it drained
    assert proxy.admin.route()["mode"] == "paused"

    targets = [f"/order/{i:03d}" for i in range(500)]
    conns = send_in_order(proxy, proxy.admin, targets)
    assert proxy.admin.metric("fastpause_held", route="app") == 500
    assert recorder.targets() == ["/warm-up"], "a request passed the pause"
    queues = by_worker(proxy, targets, conns)

    done = cli_ok(proxy.admin, "resume", "app")
    assert "500" in done.stdout, done  # says how many it released
    for target, conn in zip(targets, conns, strict=True):
        resp = conn.read_response()
        conn.close()
        assert resp.status == 200, f"{target}: {resp!r}"
        assert resp.body == f"recorded {target}\n".encode()
    log = recorder.log()[1:]
    seen = [entry["target"] for entry in log]
    assert sorted(seen) == targets, "the backend did not get each held request exactly once"
    for queue in queues:
        held = set(queue)
        assert_released_in_arrival_order(queue, [e for e in log if e["target"] in held])
    entry = proxy.admin.wait_held(0)
    assert entry["mode"] == "running"
    assert proxy.admin.metric("fastpause_released_total") == 500


def test_paced_resume_spreads_the_release(hold_proxy, recorder):
    """``resume --rate 20``: 30 held requests cannot reach the backend faster than 20/s,
    so their arrivals span at least (30-1)/20 s (80% allowed for clock granularity).
    A request arriving during the paced release waits behind the ones held before it."""
    n, rate = 30, 20
    proxy = hold_proxy(upstreams=[recorder.address])
    proxy.admin.pause()
    targets = [f"/paced/{i:02d}" for i in range(n)]
    conns = send_in_order(proxy, proxy.admin, targets)
    queues = by_worker(proxy, targets, conns)

    cli_ok(proxy.admin, "resume", "app", "--rate", str(rate))
    entry = proxy.admin.wait_until(lambda r: r["held"] < n, "the paced release to start")
    assert entry["mode"] == "running", entry
    late = in_thread(proxy.port, build_request("GET", "/paced/late"))
    for target, conn in zip(targets, conns, strict=True):
        resp = conn.read_response()
        conn.close()
        assert resp.status == 200, f"{target}: {resp!r}"
    assert late.result().status == 200
    log = recorder.log()
    seen = [e["target"] for e in log]
    if len(queues) == 1:
        assert seen == [*targets, "/paced/late"]
    else:  # each worker paces its own queue, at its share of the rate
        assert sorted(seen) == [*targets, "/paced/late"]
        for queue in queues:
            assert [target for target in seen if target in queue] == queue
    released = [e["t"] for e in log if e["target"] != "/paced/late"]
    span = max(released) - min(released)
    assert span >= 0.8 * (n - 1) / rate, (
        f"{n} requests released at --rate {rate} reached the backend within {span:.3f}s"
    )
    assert proxy.admin.wait_held(0)["mode"] == "running"


# --------------------------------------------------------------------------- 5,000 held

MANY = 5000


async def _hold_and_release_many(proxy, n: int) -> list:
    conns = []
    try:
        for i in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(build_request("GET", f"/many/{i}"))
            conns.append((reader, writer))
        await asyncio.to_thread(proxy.admin.wait_held, n, "app", 120.0)
        await asyncio.to_thread(proxy.admin.resume)

        async def one(i, reader):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(v)
                for k, _, v in (ln.partition(":") for ln in lines[1:])
                if k.strip().lower() == "content-length"
            )
            body = await reader.readexactly(length)
            return int(lines[0].split(" ")[1]), body

        return await asyncio.gather(
            *(one(i, r) for i, (r, _) in enumerate(conns)), return_exceptions=True
        )
    finally:
        for _, w in conns:
            w.close()


def test_5000_concurrent_held_requests_all_succeed(hold_proxy, recorder):
    proxy = hold_proxy(upstreams=[recorder.address])
    proxy.admin.pause(max_hold="120s")
    started = time.monotonic()
    results = asyncio.run(asyncio.wait_for(_hold_and_release_many(proxy, MANY), 150))
    errors = [
        (i, r)
        for i, r in enumerate(results)
        if isinstance(r, BaseException) or r != (200, f"recorded /many/{i}\n".encode())
    ]
    assert not errors, (
        f"{len(errors)} of {MANY} held requests failed after "
        f"{time.monotonic() - started:.1f}s; first: {errors[:5]}\n{proxy.describe()}"
    )
    assert sorted(recorder.targets()) == sorted(f"/many/{i}" for i in range(MANY))
    assert proxy.admin.wait_held(0)["mode"] == "running"
