"""``fastpause deploy`` and admin ``POST /routes/NAME/deploy``, end to end.

A deploy health-checks the new targets until all pass (else the route is left exactly
as it was and the command fails, exit 1, naming the target), swaps the route's
upstreams atomically, releases held requests to the new targets, drains the old ones
and returns once drained, printing progress as it goes. Under load nothing is lost;
during a pause the held requests go to the new target on resume.

Backends are identity backends (``deploy_support``): every response names the backend
that served it, and their health endpoint ``/health`` can be switched. Every wait polls
the admin ``GET /status``, a backend's counters or a command's output against a
deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import json

import pytest
from deploy_support import (
    LoadGenerator,
    Streaming,
    deploy_argv,
    deploy_cli,
    describe,
    edit_config,
    event_name,
    ndjson_events,
    reload_cli,
    route_addresses,
    wait_drained,
)
from helpers import IncompleteResponse, build_request, free_port
from hold_support import in_thread

pytest_plugins = ["hold_support", "deploy_support"]  # hold_proxy, identity_backend, ...
pytestmark = pytest.mark.workers_variants

HEALTH = {"health_path": "/health"}
PROGRESS = ["checking", "healthy", "switched", "draining", "done"]


def deploy_ok(proxy, *targets: str, **options: str):
    done = deploy_cli(proxy.admin, "app", *targets, **{**HEALTH, **options})
    assert done.returncode == 0, f"{describe(done)}\n{proxy.describe()}"
    return done


def served_by(proxy, target: str = "/work") -> str:
    resp = proxy.get(target)
    assert resp.status == 200, resp
    return resp.get("X-Backend")


# --------------------------------------------------------------------------- the basic move


def test_deploy_moves_the_route_to_the_new_target(hold_proxy, identity_backend):
    a, b = identity_backend("A"), identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address])
    assert served_by(proxy) == "A"

    done = deploy_ok(proxy, b.address)
    assert b.address in done.stdout, f"progress does not name the target:\n{describe(done)}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    steps = [next((i for i, line in enumerate(lines) if word in line), None) for word in PROGRESS]
    assert None not in steps and steps == sorted(steps), (
        f"expected progress lines {PROGRESS} in that order:\n{describe(done)}"
    )
    assert b.stats()["health_checks"] >= 1  # the target was checked on its health path
    entry = proxy.admin.route()
    assert route_addresses(entry) == [b.address], entry
    assert entry["mode"] == "running", entry
    assert [served_by(proxy) for _ in range(5)] == ["B"] * 5
    wait_drained(proxy.admin, a.address)


def test_deploy_to_several_targets_spreads_requests_over_them(hold_proxy, identity_backend):
    a, b, c = identity_backend("A"), identity_backend("B"), identity_backend("C")
    proxy = hold_proxy(upstreams=[a.address])
    deploy_ok(proxy, b.address, c.address)
    assert sorted(route_addresses(proxy.admin.route())) == sorted([b.address, c.address])
    seen = [served_by(proxy) for _ in range(10)]
    assert set(seen) == {"B", "C"}, seen


def test_deploy_under_load_loses_nothing(hold_proxy, identity_backend):
    """64 keep-alive clients send continuously while ``fastpause deploy app --to B``
    moves the route from A to B; A is killed as soon as the command returns; the load
    goes on. Every request is answered 200, no connection fails, and everything sent
    after the deploy returned is served by B."""
    a, b = identity_backend("A"), identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address])
    load = LoadGenerator(proxy.port, connections=64, max_seconds=90).start()
    try:
        load.wait_completed(500)
        load.phase = "during"
        done = deploy_cli(proxy.admin, "app", b.address, **HEALTH)
        load.phase = "after"
        assert done.returncode == 0, f"{describe(done)}\n{proxy.describe()}"
        a.kill()
        load.phase = "killed"
        load.wait_completed(load.completed + 3000)
    finally:
        load.stop()
    summary = load.summary()
    print(summary)
    assert load.errors == [], summary
    assert set(load.statuses()) == {200}, summary
    assert set(load.by_phase("before")) == {"A"}, summary
    after = load.by_phase("after", "killed")
    assert set(after) == {"B"} and after["B"] > 0, summary
    assert b.requests() >= after["B"]


def test_reload_keeps_a_deployment_unless_the_config_changes_the_upstreams(
    hold_proxy, identity_backend
):
    """A reload for an unrelated change does not send traffic back to the configured
    (old, maybe gone) upstream; a reload whose config names new upstreams wins."""
    a, b, c = identity_backend("A"), identity_backend("B"), identity_backend("C")
    proxy = hold_proxy(upstreams=[a.address])
    deploy_ok(proxy, b.address)
    edit_config(proxy, route={"try_duration": "20s"})
    done = reload_cli(proxy.admin)
    assert done.returncode == 0, describe(done)
    assert route_addresses(proxy.admin.route()) == [b.address]
    assert served_by(proxy) == "B"

    edit_config(proxy, route={"upstreams": [c.address]})
    done = reload_cli(proxy.admin)
    assert done.returncode == 0, describe(done)
    assert route_addresses(proxy.admin.route()) == [c.address]
    assert served_by(proxy) == "C"


# --------------------------------------------------------------------------- pause + deploy


def test_deploy_while_paused_sends_held_requests_to_the_new_target_on_resume(
    hold_proxy, identity_backend
):
    a, b = identity_backend("A"), identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address])
    proxy.admin.pause()
    pending = []
    for i in range(3):
        pending.append(in_thread(proxy.port, build_request("GET", f"/held/{i}"), timeout=90))
        proxy.admin.wait_held(i + 1)

    deploy_ok(proxy, b.address)
    entry = proxy.admin.route()
    assert entry["mode"] == "paused", f"the deploy resumed the route: {entry}"
    assert entry["held"] == 3, entry
    assert route_addresses(entry) == [b.address], entry

    proxy.admin.resume()
    for i, p in enumerate(pending):
        resp = p.result(timeout=30)
        assert resp.status == 200, resp
        assert resp.get("X-Backend") == "B", resp
        assert resp.json()["target"] == f"/held/{i}"
    assert a.requests() == 0
    assert b.requests() == 3


def test_deploy_releases_requests_held_for_a_dead_backend(hold_proxy, identity_backend):
    """Requests held because the old upstream is down go to the deployed target as soon
    as the swap happens (probes are a minute apart, so nothing else releases them)."""
    b = identity_backend("B")
    proxy = hold_proxy(
        route={"try_duration": "120s", "try_interval": "60s"},
        upstreams=[f"127.0.0.1:{free_port()}"],
    )
    pending = []
    for i in range(2):
        pending.append(in_thread(proxy.port, build_request("GET", f"/held/{i}"), timeout=90))
        proxy.admin.wait_held(i + 1)
    done = deploy_ok(proxy, b.address)
    assert "(2 held requests released)" in done.stdout, describe(done)  # in every worker
    for p in pending:
        resp = p.result(timeout=30)
        assert resp.status == 200, resp
        assert resp.get("X-Backend") == "B", resp


# --------------------------------------------------------------------------- failures

FAILING = ["closed-port", "health-500", "one-of-two-unhealthy"]


@pytest.mark.parametrize("kind", FAILING)
def test_deploy_to_a_target_that_never_becomes_healthy_changes_nothing(
    hold_proxy, identity_backend, kind
):
    a = identity_backend("A")
    proxy = hold_proxy(upstreams=[a.address])
    if kind == "closed-port":
        bad = f"127.0.0.1:{free_port()}"
        targets = [bad]
    else:
        sick = identity_backend("sick")
        sick.set_health(500)
        bad = sick.address
        targets = [bad] if kind == "health-500" else [identity_backend("B").address, bad]
    before = proxy.admin.route()

    done = deploy_cli(proxy.admin, "app", *targets, deploy_timeout="1s", **HEALTH)
    assert done.returncode == 1, f"{describe(done)}\n{proxy.describe()}"
    assert bad in done.stdout + done.stderr, f"the failure does not name {bad}:\n{describe(done)}"
    assert "Traceback" not in done.stderr, describe(done)

    after = proxy.admin.route()
    assert route_addresses(after) == [a.address], after
    assert after["mode"] == before["mode"] == "running", after
    assert [served_by(proxy) for _ in range(3)] == ["A"] * 3


def test_failed_deploy_while_paused_keeps_the_route_paused_and_held(hold_proxy, identity_backend):
    a = identity_backend("A")
    proxy = hold_proxy(upstreams=[a.address])
    proxy.admin.pause()
    held = in_thread(proxy.port, build_request("GET", "/held"), timeout=90)
    proxy.admin.wait_held(1)
    bad = f"127.0.0.1:{free_port()}"
    done = deploy_cli(proxy.admin, "app", bad, deploy_timeout="1s", **HEALTH)
    assert done.returncode == 1, describe(done)
    entry = proxy.admin.route()
    assert entry["mode"] == "paused" and entry["held"] == 1, entry
    assert route_addresses(entry) == [a.address], entry
    proxy.admin.resume()
    resp = held.result(timeout=30)
    assert resp.status == 200 and resp.get("X-Backend") == "A", resp


def test_deploy_of_an_unknown_route_fails(hold_proxy, identity_backend):
    a, b = identity_backend("A"), identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address])
    done = deploy_cli(proxy.admin, "nosuch", b.address, **HEALTH)
    assert done.returncode == 1, describe(done)
    assert "nosuch" in done.stderr, describe(done)
    assert route_addresses(proxy.admin.route()) == [a.address]


# --------------------------------------------------------------------------- progress, drain


def test_deploy_waits_for_a_target_that_comes_up_and_reports_progress(hold_proxy, identity_backend):
    """Health-checks the target until it passes, printing progress meanwhile; the route
    is not touched before the target is healthy."""
    a = identity_backend("A")
    port_b = free_port()
    proxy = hold_proxy(upstreams=[a.address])
    deploy = Streaming(
        deploy_argv(proxy.admin, "app", f"127.0.0.1:{port_b}", deploy_timeout="60s", **HEALTH)
    )
    try:
        deploy.wait_line(lambda s: s.strip() != "")  # progress before the end
        assert deploy.proc.poll() is None, deploy.describe()
        assert route_addresses(proxy.admin.route()) == [a.address]
        assert served_by(proxy) == "A"
        identity_backend("B", port=port_b)
        done = deploy.finish(timeout=60)
    finally:
        deploy.kill()
    assert done.returncode == 0, f"{describe(done)}\n{proxy.describe()}"
    assert route_addresses(proxy.admin.route()) == [f"127.0.0.1:{port_b}"]
    assert served_by(proxy) == "B"


def test_deploy_returns_only_once_the_old_target_drained(hold_proxy, backend, identity_backend):
    """A request in flight at the old target finishes; the command returns after it."""
    b = identity_backend("B")
    proxy = hold_proxy(upstreams=[backend.address])  # tests/backend.py: /hold
    slow = in_thread(proxy.port, build_request("GET", "/hold?key=old"), timeout=90)
    backend.wait_held("old")

    deploy = Streaming(deploy_argv(proxy.admin, "app", b.address, drain_timeout="60s", **HEALTH))
    try:
        proxy.admin.wait_until(lambda r: route_addresses(r) == [b.address], "the switch")
        assert served_by(proxy) == "B"
        assert deploy.proc.poll() is None, (
            f"deploy returned with a request in flight at the old target:\n{deploy.describe()}"
        )
        backend.release("old")
        resp = slow.result(timeout=30)
        assert resp.status == 200, resp
        done = deploy.finish(timeout=60)
    finally:
        deploy.kill()
    assert done.returncode == 0, describe(done)
    wait_drained(proxy.admin, backend.address)


def test_deploy_drain_is_bounded_by_drain_timeout(hold_proxy, backend, identity_backend):
    b = identity_backend("B")
    proxy = hold_proxy(upstreams=[backend.address])
    stuck = in_thread(proxy.port, build_request("GET", "/hold?key=stuck"), timeout=90)
    backend.wait_held("stuck")
    done = deploy_cli(proxy.admin, "app", b.address, drain_timeout="1s", **HEALTH)
    assert "Traceback" not in done.stderr, describe(done)
    assert route_addresses(proxy.admin.route()) == [b.address]
    backend.wait_closed("stuck")
    try:
        resp = stuck.result(timeout=30)
    except IncompleteResponse:
        pass
    else:
        assert resp.status >= 500, resp
    assert served_by(proxy) == "B"


# --------------------------------------------------------------------------- admin API


def test_admin_deploy_streams_progress_events(hold_proxy, identity_backend):
    a, b = identity_backend("A"), identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address])
    resp = proxy.admin.action("app", "deploy", {"to": [b.address], "health_path": "/health"})
    assert resp.status == 200, resp
    events = ndjson_events(resp)
    names = [event_name(e) for e in events]
    assert names == PROGRESS, events
    assert b.address in json.dumps(events[0]), events
    assert route_addresses(proxy.admin.route()) == [b.address]
    assert served_by(proxy) == "B"


def test_admin_deploy_failure_ends_with_a_failed_event(hold_proxy, identity_backend):
    a = identity_backend("A")
    proxy = hold_proxy(upstreams=[a.address])
    bad = f"127.0.0.1:{free_port()}"
    resp = proxy.admin.action(
        "app", "deploy", {"to": [bad], "health_path": "/health", "deploy_timeout": "1s"}
    )
    if resp.status == 200:
        events = ndjson_events(resp)
        assert events and event_name(events[-1]) == "failed", events
        assert bad in resp.text, events
    else:
        assert resp.status >= 400 and bad in resp.text, resp
    assert route_addresses(proxy.admin.route()) == [a.address]
    assert served_by(proxy) == "A"


def test_admin_deploy_rejects_a_bad_request(hold_proxy, identity_backend):
    a = identity_backend("A")
    proxy = hold_proxy(upstreams=[a.address])
    for body in ({}, {"to": []}, {"to": ["nope"]}, {"to": [a.address], "deploy_timeout": "x"}):
        resp = proxy.admin.action("app", "deploy", body)
        assert resp.status == 400, (body, resp)
        assert "error" in resp.json(), (body, resp)
    assert route_addresses(proxy.admin.route()) == [a.address]
