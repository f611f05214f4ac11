"""Controlling a route, end to end: stop/start with a maintenance message, the health
path answered by the proxy while paused or stopped, pause waiting for in-flight
requests to drain, the status and metrics a user watches, and the hold-time header.

Commands go through ``python -m fastpause ... --admin unix:SOCK`` (the CLI) or the
admin HTTP API on the same socket, as a user or a deploy script would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import build_request
from hold_support import cli_ok, metric_value, route_entry, send_held, send_in_order

pytest_plugins = ["hold_support"]  # fixtures: hold_proxy, recorder, late_backend
pytestmark = pytest.mark.workers_variants

MESSAGE = "Down for maintenance until 17:00 UTC"


# --------------------------------------------------------------------------- stop / start


@pytest.mark.parametrize("via", ["cli", "api"])
def test_stop_answers_held_and_new_requests_with_the_message(hold_proxy, backend, via):
    proxy = hold_proxy(route={"retry_after": "11s"})
    admin = proxy.admin
    admin.pause()
    conns = send_in_order(proxy, admin, [f"/held/{i}" for i in range(3)])

    if via == "cli":
        cli_ok(admin, "stop", "app", "--message", MESSAGE)
    else:
        admin.stop(message=MESSAGE)
    for conn in conns:  # at once: no resume, no deadline passes
        resp = conn.read_response()
        conn.close()
        assert resp.status == 503, resp
        assert resp.get("Retry-After") == "11", resp
        assert MESSAGE in resp.text, resp
    entry = admin.wait_held(0)
    assert entry["mode"] == "stopped"

    resp = proxy.get("/inspect?while-stopped")
    assert resp.status == 503, resp
    assert resp.get("Retry-After") == "11", resp
    assert MESSAGE in resp.text, resp
    assert backend.stats()["heads"] == 0, "a request reached the backend while stopped"

    if via == "cli":
        cli_ok(admin, "start", "app")
    else:
        admin.start()
    assert admin.route()["mode"] == "running"
    resp = proxy.get("/inspect?after-start")
    assert resp.status == 200, resp
    assert resp.json()["target"] == "/inspect?after-start"


# --------------------------------------------------------------------------- health path


def _backend_hits(backend, path: str) -> int:
    return backend.stats()["paths"].get(path, 0)


def test_health_path_is_answered_by_the_proxy_while_paused_or_stopped(hold_proxy, backend):
    # health_path is also checked on the upstream (once at start, then every hour here)
    up = "/status/200"
    proxy = hold_proxy(route={"health_path": up, "health_interval": "1h"})
    admin = proxy.admin
    deadline = time.monotonic() + 30
    while _backend_hits(backend, up) < 1:  # the proxy's own first check
        assert time.monotonic() < deadline, "the proxy never checked the backend's health"
        time.sleep(0.05)
    # running: the health path is an ordinary request (the backend answers it)
    assert proxy.get(up).status == 200
    seen = _backend_hits(backend, up)
    assert seen == 2

    admin.pause()
    held = send_held(proxy, admin, build_request("GET", "/inspect?held"), 1)
    for method in ("GET", "HEAD"):
        resp = proxy.request(build_request(method, up))
        assert resp.status == 200, f"{method} {up} while paused: {resp!r}"
    assert admin.route()["held"] == 1, "the health check was held, or released the held one"

    admin.stop(message=MESSAGE)
    resp = held.read_response()
    held.close()
    assert resp.status == 503, resp
    for method in ("GET", "HEAD"):
        resp = proxy.request(build_request(method, up))
        assert resp.status == 200, f"{method} {up} while stopped: {resp!r}"
    assert proxy.get("/inspect?other").status == 503

    assert _backend_hits(backend, up) == seen, "the backend saw a paused/stopped health check"
    admin.start()
    assert proxy.get("/inspect").status == 200


# --------------------------------------------------------------------------- pause drains


def test_pause_waits_for_in_flight_requests_and_holds_new_ones(hold_proxy, backend):
    proxy = hold_proxy()
    admin = proxy.admin
    busy = proxy.conn(timeout=60)
    busy.send(build_request("GET", "/hold?key=inflight"))
    backend.wait_held("inflight")

    pause = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastpause",
            "pause",
            "app",
            "--drain-timeout",
            "30s",
            "--admin",
            admin.spec,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        admin.wait_until(lambda r: r["mode"] == "paused", "the route to be paused")
        held = send_held(proxy, admin, build_request("GET", "/inspect?new"), 1)
        assert admin.route()["in_flight"] == 1
        assert pause.poll() is None, (
            f"fastpause pause returned while a request was still in flight: {pause.communicate()}"
        )

        backend.release("inflight")
        resp = busy.read_response()
        assert resp.status == 200 and resp.body == b"released inflight\n", resp
        out, err = pause.communicate(timeout=60)
    finally:
        if pause.poll() is None:
            pause.kill()
            pause.communicate()
        busy.close()
    assert pause.returncode == 0, (out, err)
    assert "drain" in (out + err).lower(), (out, err)
    assert admin.route()["held"] == 1, "draining released the held request"

    admin.resume()
    resp = held.read_response()
    held.close()
    assert resp.status == 200, resp
    assert resp.json()["target"] == "/inspect?new"


def test_pause_gives_up_waiting_after_the_drain_timeout(hold_proxy, backend):
    """A request that does not finish within --drain-timeout: pause returns, says it is
    still in flight, and the route is paused anyway; the request itself is not cut."""
    proxy = hold_proxy()
    busy = proxy.conn(timeout=60)
    busy.send(build_request("GET", "/hold?key=slow"))
    backend.wait_held("slow")

    done = cli_ok(proxy.admin, "pause", "app", "--drain-timeout", "1s")
    out = done.stdout.lower()
    assert "still in flight" in out and "1" in out, done
    assert "drained," not in out, done
    entry = proxy.admin.route()
    assert (entry["mode"], entry["in_flight"]) == ("paused", 1), entry

    backend.release("slow")
    resp = busy.read_response()
    busy.close()
    assert resp.status == 200 and resp.body == b"released slow\n", resp


def test_start_serves_a_paused_route_again(hold_proxy, backend):
    proxy = hold_proxy()
    proxy.admin.pause()
    conn = send_held(proxy, proxy.admin, build_request("GET", "/inspect?held"), 1)
    cli_ok(proxy.admin, "start", "app")
    resp = conn.read_response()
    conn.close()
    assert resp.status == 200, resp
    assert resp.json()["target"] == "/inspect?held"
    assert proxy.admin.wait_held(0)["mode"] == "running"


# --------------------------------------------------------------------------- status, metrics


def test_status_and_metrics_report_held_requests(hold_proxy, backend):
    proxy = hold_proxy()
    admin = proxy.admin
    assert proxy.get("/inspect").status == 200
    cli_ok(admin, "pause", "app")
    sent = time.monotonic()
    conns = send_in_order(proxy, admin, ["/inspect?a", "/inspect?b"])
    entry = admin.route()
    elapsed = time.monotonic() - sent
    assert entry["mode"] == "paused"
    assert entry["held"] == 2
    assert entry["in_flight"] == 0
    age = entry["oldest_held_age_seconds"]  # the proxy's clock ticks in ms
    assert isinstance(age, int | float) and 0 <= age <= elapsed + 0.002, entry
    assert backend.address in json.dumps(entry["upstreams"]), entry

    shown = json.loads(cli_ok(admin, "status", "--json").stdout)
    assert route_entry(shown, "app")["held"] == 2
    assert route_entry(shown, "app")["mode"] == "paused"
    text = cli_ok(admin, "status").stdout
    assert "app" in text and "paused" in text, text

    metrics = admin.metrics()
    assert metric_value(metrics, "fastpause_held", route="app") == 2, metrics
    assert metric_value(metrics, "fastpause_held_total") == 2, metrics
    assert metric_value(metrics, "fastpause_released_total") == 0, metrics

    cli_ok(admin, "resume", "app")
    for conn in conns:
        assert conn.read_response().status == 200
        conn.close()
    entry = admin.wait_held(0)
    assert entry["mode"] == "running"
    assert entry["oldest_held_age_seconds"] in (None, 0), entry
    metrics = admin.metrics()
    assert metric_value(metrics, "fastpause_held", route="app") == 0, metrics
    assert metric_value(metrics, "fastpause_held_total") == 2, metrics
    assert metric_value(metrics, "fastpause_released_total") == 2, metrics
    assert metric_value(metrics, "fastpause_expired_total") == 0, metrics


def test_admin_api_rejects_an_unknown_route(hold_proxy):
    proxy = hold_proxy()
    resp = proxy.admin.action("no-such-route", "pause")
    assert 400 <= resp.status < 500, resp
    done = subprocess.run(
        [sys.executable, "-m", "fastpause", "pause", "no-such-route", "--admin", proxy.admin.spec],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, done
    assert "no-such-route" in done.stderr, done
    assert "Traceback" not in done.stderr, done


# --------------------------------------------------------------------------- hold time


def test_hold_time_header_on_every_held_response_and_only_there(hold_proxy, backend):
    """Each held request's response carries the hold time in ms, however short its hold
    (the last one sent waits only for one status poll); unheld responses never do."""
    proxy = hold_proxy(route={"hold_time_header": "X-Held-Ms"})
    admin = proxy.admin
    resp = proxy.get("/inspect?direct")
    assert resp.status == 200 and not resp.has("X-Held-Ms"), resp

    admin.pause()
    held = []  # (target, conn, sent, seen held)
    for i in range(10):
        target = f"/inspect?held={i}"
        sent = time.monotonic()
        conn = send_held(proxy, admin, build_request("GET", target), i + 1)
        held.append((target, conn, sent, time.monotonic()))
    resuming = time.monotonic()
    admin.resume()
    for target, conn, sent, seen in held:
        resp = conn.read_response()
        done = time.monotonic()
        conn.close()
        assert resp.status == 200, resp
        value = resp.get("X-Held-Ms")
        assert value is not None and value.isdigit(), f"{target} was held: {resp!r}"
        # held at least from when the proxy reported it until the resume was sent, at
        # most from when it was sent until its response arrived (2 ms: clock granularity)
        low, high = (resuming - seen) * 1000 - 2, (done - sent) * 1000 + 2
        assert low <= int(value) <= high, (target, value, low, high)
        forwarded = [k.lower() for k, _ in resp.json()["headers"]]
        assert "x-held-ms" not in forwarded, "the hold-time header was sent upstream"

    resp = proxy.get("/inspect?after")
    assert resp.status == 200 and not resp.has("X-Held-Ms"), resp
