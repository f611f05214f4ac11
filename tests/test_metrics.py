"""``GET /metrics`` end to end: the exposition parses as Prometheus text, has every
family, and its counters follow real traffic through a real proxy.

Values are read from the data plane's counters at scrape time, so each check
scrapes after the traffic it counts has been answered.
"""

from __future__ import annotations

import pytest
from admin_support import AdminHttp
from helpers import build_request, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.workers_variants

Labels = tuple[tuple[str, str], ...]

FAMILIES = {
    ("fastpause_requests", "counter"),
    ("fastpause_responses", "counter"),
    ("fastpause_connections", "gauge"),
    ("fastpause_in_flight", "gauge"),
    ("fastpause_held", "gauge"),
    ("fastpause_held", "counter"),  # fastpause_held_total
    ("fastpause_released", "counter"),
    ("fastpause_expired", "counter"),
    ("fastpause_rejected_full", "counter"),
    ("fastpause_rejected_body", "counter"),
    ("fastpause_hold_seconds", "histogram"),
    ("fastpause_upstream_connects", "counter"),
    ("fastpause_upstream_connect_failures", "counter"),
    ("fastpause_upstream_requests", "counter"),
    ("fastpause_upstream_up", "gauge"),
    ("fastpause_upstream_active", "gauge"),
    ("fastpause_bytes_in", "counter"),
    ("fastpause_bytes_out", "counter"),
    ("fastpause_held_bytes", "gauge"),
    ("fastpause_at_capacity", "gauge"),
}


@pytest.fixture
def metrics_proxy(proxy_factory, tmp_path):
    """``metrics_proxy(route=..., upstreams=...)``: a proxy whose admin socket is in tmp."""

    def start(route: dict | None = None, upstreams: list[str] | None = None):
        spec = f"unix:{tmp_path}/admin.sock"
        proxy = proxy_factory(route=route, top={"admin": spec}, upstreams=upstreams)
        proxy.admin = AdminHttp(spec)
        return proxy

    return start


def scrape(admin: AdminHttp) -> dict[tuple[str, Labels], float]:
    """Every sample of one scrape, by (sample name, sorted labels)."""
    reply = admin.call("GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_family_is_exposed(metrics_proxy, backend):
    proxy = metrics_proxy()
    reply = proxy.admin.call("GET", "/metrics")
    families = {
        (family.name, family.type) for family in text_string_to_metric_families(reply.body.decode())
    }
    assert families >= FAMILIES
    samples = scrape(proxy.admin)
    assert value(samples, "fastpause_at_capacity") == 0
    assert value(samples, "fastpause_held", route="app") == 0
    assert value(samples, "fastpause_upstream_requests_total", upstream=backend.address) == 0
    for status_class in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert value(samples, "fastpause_responses_total", **{"class": status_class}) == 0


def test_counters_follow_traffic(metrics_proxy, backend):
    proxy = metrics_proxy()
    sent = [
        build_request("GET", "/inspect"),
        build_request("POST", "/echo", body=b"x" * 1000),
        build_request("GET", "/status/404"),
    ]
    with proxy.conn() as conn:  # one keep-alive connection, still open at the scrape
        for raw in sent:
            conn.send(raw)
            conn.read_response(raw.split(b" ", 1)[0].decode())
        samples = scrape(proxy.admin)
        assert value(samples, "fastpause_connections") == 1
    assert value(samples, "fastpause_requests_total") == 3
    assert value(samples, "fastpause_responses_total", **{"class": "2xx"}) == 2
    assert value(samples, "fastpause_responses_total", **{"class": "4xx"}) == 1
    # at least what the client sent (the core also counts bytes read from upstreams)
    assert value(samples, "fastpause_bytes_in_total") >= sum(len(raw) for raw in sent)
    assert value(samples, "fastpause_bytes_out_total") > 1000  # the echo alone
    upstream = backend.address
    assert value(samples, "fastpause_upstream_requests_total", upstream=upstream) == 3
    assert value(samples, "fastpause_upstream_connects_total", upstream=upstream) == 1
    assert value(samples, "fastpause_upstream_connect_failures_total", upstream=upstream) == 0
    assert value(samples, "fastpause_upstream_up", upstream=upstream) == 1
    assert value(samples, "fastpause_upstream_active", upstream=upstream) == 0
    assert value(samples, "fastpause_in_flight", route="app") == 0


def test_hold_counters_and_histogram(metrics_proxy, backend):
    proxy = metrics_proxy()
    admin = proxy.admin
    admin.ok("app", "pause")
    with proxy.conn() as first, proxy.conn() as second:
        first.send(build_request("GET", "/inspect?a"))
        second.send(build_request("GET", "/inspect?b"))
        admin.wait_held(2)
        samples = scrape(admin)
        assert value(samples, "fastpause_held", route="app") == 2
        assert value(samples, "fastpause_held_total", route="app") == 2
        assert value(samples, "fastpause_released_total", route="app") == 0
        admin.ok("app", "resume")
        assert first.read_response().status == 200
        assert second.read_response().status == 200
    samples = scrape(admin)
    assert value(samples, "fastpause_held", route="app") == 0
    assert value(samples, "fastpause_released_total", route="app") == 2
    assert value(samples, "fastpause_expired_total", route="app") == 0

    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "fastpause_hold_seconds_bucket"
    )
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), f"buckets are not cumulative: {buckets}"
    assert buckets[-1] == (float("inf"), 2)
    assert value(samples, "fastpause_hold_seconds_count", route="app") == 2
    assert value(samples, "fastpause_hold_seconds_sum", route="app") > 0


def test_expired_requests_are_counted(metrics_proxy, backend):
    proxy = metrics_proxy()
    proxy.admin.ok("app", "pause", {"max_hold": 0.05})
    assert proxy.get("/inspect").status == 503  # answered once the hold passed
    samples = scrape(proxy.admin)
    assert value(samples, "fastpause_expired_total", route="app") == 1
    assert value(samples, "fastpause_hold_seconds_count", route="app") == 1


@pytest.mark.single_process(
    "exact caps: workers share them (test_workers.py::test_caps_are_shared_between_workers)"
)
def test_rejections_are_counted(metrics_proxy, backend):
    proxy = metrics_proxy(route={"max_held": 1, "max_held_body": "1KiB"})
    admin = proxy.admin
    admin.ok("app", "pause")
    assert proxy.post("/echo", b"x" * 2048).status == 503  # body too large to hold
    with proxy.conn() as held:
        held.send(build_request("POST", "/echo", body=b"y" * 1000))
        admin.wait_held(1)
        assert proxy.get("/inspect").status == 503  # the queue is full
        samples = scrape(admin)
        assert value(samples, "fastpause_held_bytes") == 1000
        admin.ok("app", "resume")
        assert held.read_response().status == 200
    samples = scrape(admin)
    assert value(samples, "fastpause_rejected_body_total", route="app") == 1
    assert value(samples, "fastpause_rejected_full_total", route="app") == 1
    assert value(samples, "fastpause_held_bytes") == 0


def test_connect_failures_are_counted(metrics_proxy, backend):
    dead = f"127.0.0.1:{free_port()}"
    proxy = metrics_proxy(route={"try_duration": "0s", "fail_duration": "1h"}, upstreams=[dead])
    assert proxy.get("/").status == 502
    samples = scrape(proxy.admin)
    assert value(samples, "fastpause_upstream_connect_failures_total", upstream=dead) >= 1
    assert value(samples, "fastpause_upstream_connects_total", upstream=dead) == 0
    assert value(samples, "fastpause_responses_total", **{"class": "5xx"}) == 1
    # down for fail_duration; with workers, the others learn it from the one that
    # failed (a message through the supervisor, which may still be on its way)
    wait_for(
        lambda: value(scrape(proxy.admin), "fastpause_upstream_up", upstream=dead) == 0,
        what="every worker to mark the upstream down",
    )


def test_active_exchanges_are_a_gauge(metrics_proxy, backend):
    proxy = metrics_proxy()
    with proxy.conn() as busy:
        busy.send(build_request("GET", "/hold?key=busy"))
        backend.wait_held("busy")
        samples = scrape(proxy.admin)
        assert value(samples, "fastpause_upstream_active", upstream=backend.address) == 1
        backend.release("busy")
        assert busy.read_response().status == 200
