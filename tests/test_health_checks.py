"""Active and passive health checks, end to end.

A route with ``health_path`` checks its upstreams every ``health_interval``; healthy
is 2xx/3xx. An unhealthy upstream gets no new requests; with none healthy, requests
are held (``try_duration``) and released the moment a check passes. Passive:
a connect failure keeps an upstream out for ``fail_duration``.

The upstreams are identity backends (``deploy_support``) whose ``/health`` answer is
switched with ``/__health?status=NNN``. Every wait polls the admin ``GET /status`` or
a backend's counters against a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import pytest
from deploy_support import upstream_entries, wait_for
from helpers import build_request, free_port
from hold_support import in_thread

pytest_plugins = ["hold_support", "deploy_support"]  # hold_proxy, identity_backend
pytestmark = pytest.mark.workers_variants

CHECKS = {
    "health_path": "/health",
    "health_interval": "100ms",
    "health_timeout": "2s",
    "health_passes": 1,
    "health_fails": 1,
}


def upstream(proxy, address: str) -> dict:
    from hold_support import route_entry

    for u in route_entry(proxy.admin.status(), "app")["upstreams"]:
        if u["address"] == address:
            return u
    raise AssertionError(f"{address} not among the route's upstreams: {proxy.admin.status()}")


def wait_health(proxy, address: str, healthy: bool) -> dict:
    return wait_for(
        lambda: (u := upstream(proxy, address))["healthy"] is healthy and u,
        f"{address} to be reported {'healthy' if healthy else 'unhealthy'}",
    )


def test_checks_hit_the_health_path_on_an_interval(hold_proxy, identity_backend):
    x = identity_backend("X")
    proxy = hold_proxy(route=CHECKS, upstreams=[x.address])
    wait_for(lambda: x.stats()["health_checks"] >= 3, "three health checks at X")
    assert x.requests() == 0  # checks only, on /health
    assert upstream(proxy, x.address)["healthy"] is True


def test_failing_checks_hold_requests_and_a_passing_check_releases_them(
    hold_proxy, identity_backend
):
    """The only upstream fails its checks: requests are held (it still accepts
    connections, but gets none). Checks pass again: the held requests are answered by
    it (probes are a minute apart, so only the passing check releases them)."""
    x = identity_backend("X")
    proxy = hold_proxy(
        route={**CHECKS, "try_duration": "120s", "try_interval": "60s"}, upstreams=[x.address]
    )
    wait_for(lambda: x.stats()["health_checks"] >= 1, "a first health check")
    assert proxy.get("/before").status == 200

    x.set_health(500)
    wait_health(proxy, x.address, healthy=False)
    pending = []
    for i in range(3):
        pending.append(in_thread(proxy.port, build_request("GET", f"/held/{i}"), timeout=90))
        entry = proxy.admin.wait_held(i + 1)
    assert entry["mode"] == "running", entry
    assert x.requests() == 1  # only /before reached it

    x.set_health(200)
    for i, p in enumerate(pending):
        resp = p.result(timeout=30)
        assert resp.status == 200, resp
        assert resp.json()["target"] == f"/held/{i}"
    assert x.requests() == 4
    proxy.admin.wait_held(0)
    assert upstream(proxy, x.address)["healthy"] is True


def test_unhealthy_upstream_gets_no_new_requests(hold_proxy, identity_backend):
    x, y = identity_backend("X"), identity_backend("Y")
    proxy = hold_proxy(route=CHECKS, upstreams=[x.address, y.address])
    y.set_health(503)
    wait_health(proxy, y.address, healthy=False)
    before = y.requests()
    seen = []
    for i in range(10):
        resp = proxy.get(f"/spread/{i}")
        assert resp.status == 200, resp
        seen.append(resp.get("X-Backend"))
    assert seen == ["X"] * 10, seen
    assert y.requests() == before

    y.set_health(200)
    wait_health(proxy, y.address, healthy=True)
    seen = {proxy.get("/again").get("X-Backend") for _ in range(10)}
    assert seen == {"X", "Y"}, seen


def test_redirect_counts_as_healthy(hold_proxy, identity_backend):
    x, y = identity_backend("X"), identity_backend("Y")
    proxy = hold_proxy(route=CHECKS, upstreams=[x.address, y.address])
    y.set_health(500)
    wait_health(proxy, y.address, healthy=False)
    y.set_health(301)
    wait_health(proxy, y.address, healthy=True)


def test_request_held_past_try_duration_with_no_healthy_upstream_gets_503(
    hold_proxy, identity_backend
):
    x = identity_backend("X")
    proxy = hold_proxy(route={**CHECKS, "try_duration": "1s"}, upstreams=[x.address])
    x.set_health(500)
    wait_health(proxy, x.address, healthy=False)
    resp = proxy.get("/never", timeout=30)
    assert resp.status == 503, resp
    assert resp.has("Retry-After"), resp
    assert x.requests() == 0


def test_health_thresholds_need_consecutive_results(hold_proxy, identity_backend):
    """With ``health_fails = 2`` and ``health_passes = 2`` the verdict still flips
    (after enough checks in a row)."""
    x, y = identity_backend("X"), identity_backend("Y")
    proxy = hold_proxy(
        route={**CHECKS, "health_fails": 2, "health_passes": 2}, upstreams=[x.address, y.address]
    )
    checks = y.stats()["health_checks"]
    y.set_health(500)
    wait_health(proxy, y.address, healthy=False)
    assert y.stats()["health_checks"] - checks >= 2
    checks = y.stats()["health_checks"]
    y.set_health(200)
    wait_health(proxy, y.address, healthy=True)
    assert y.stats()["health_checks"] - checks >= 2


def test_passive_fail_duration_keeps_a_refusing_upstream_out(hold_proxy, identity_backend):
    """Without active checks, a connect failure marks the upstream down for
    ``fail_duration``: the request is retried on the other upstream, and later
    requests do not try the dead one again meanwhile."""
    x = identity_backend("X")
    dead = f"127.0.0.1:{free_port()}"
    proxy = hold_proxy(route={"fail_duration": "120s"}, upstreams=[dead, x.address])
    for i in range(10):
        resp = proxy.get(f"/p/{i}")
        assert resp.status == 200, resp
        assert resp.get("X-Backend") == "X"
    entries = upstream_entries(proxy.admin.status(), dead)
    assert entries and entries[0]["down"] is True, entries
    assert entries[0]["connect_failures"] == 1, entries


def test_health_check_settings_are_validated(tmp_path):
    from deploy_support import fastpause

    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'listen = ["127.0.0.1:0"]\n\n[[routes]]\nname = "app"\n'
        'upstreams = ["127.0.0.1:9"]\nhealth_path = "/up"\nhealth_interval = "0s"\n'
    )
    done = fastpause("validate", str(cfg))
    assert done.returncode == 2, done
    assert "routes[0].health_interval" in done.stderr, done.stderr
    cfg.write_text(
        'listen = ["127.0.0.1:0"]\n\n[[routes]]\nname = "app"\n'
        'upstreams = ["127.0.0.1:9"]\nhealth_path = "/up"\nhealth_interval = "1s"\n'
        'health_timeout = "2s"\nhealth_passes = 1\nhealth_fails = 2\nfail_duration = "10s"\n'
    )
    done = fastpause("validate", str(cfg))
    assert done.returncode == 0, done


def test_reload_starts_and_stops_health_checks(hold_proxy, identity_backend):
    """A reload that adds ``health_path`` starts checking; one that removes it stops
    checking and trusts the upstream again (it no longer stays marked unhealthy)."""
    from deploy_support import edit_config, reload_cli

    x, y = identity_backend("X"), identity_backend("Y")
    proxy = hold_proxy(upstreams=[x.address, y.address])
    assert y.stats()["health_checks"] == 0
    y.set_health(500)
    edit_config(proxy, route=CHECKS)
    done = reload_cli(proxy.admin)
    assert done.returncode == 0, done
    wait_health(proxy, y.address, healthy=False)
    assert {proxy.get("/a").get("X-Backend") for _ in range(6)} == {"X"}

    edit_config(proxy, route={key: None for key in CHECKS})
    done = reload_cli(proxy.admin)
    assert done.returncode == 0, done
    wait_health(proxy, y.address, healthy=True)
    assert {proxy.get("/b").get("X-Backend") for _ in range(6)} == {"X", "Y"}
