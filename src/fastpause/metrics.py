"""Prometheus metrics, read from the data plane's own counters at scrape time.

The hot path counts in C integers (docs/ARCHITECTURE.md, "Hot path rules"); nothing in
Python counts per request. A scrape reads every process's counters
(``fastpause.stats``), sums them and turns them into metric families.
"""

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from fastpause.stats import Stats

CONTENT_TYPE = CONTENT_TYPE_LATEST

# (metric name without _total, RouteState.stats() key, help text)
_ROUTE_COUNTERS = [
    ("fastpause_held", "held_total", "Requests that were held."),
    ("fastpause_released", "released_total", "Held requests released to an upstream."),
    ("fastpause_expired", "expired_total", "Held requests answered 503 when max hold passed."),
    (
        "fastpause_rejected_full",
        "rejected_full_total",
        "Requests answered 503 because the hold queue was full (max_held).",
    ),
    (
        "fastpause_rejected_body",
        "rejected_body_total",
        "Requests answered 503 because their body was too large to hold.",
    ),
]
# (metric name without _total, Upstream.stats() key, help text)
_UPSTREAM_COUNTERS = [
    ("fastpause_upstream_connects", "connects", "Connections opened to the upstream."),
    (
        "fastpause_upstream_connect_failures",
        "connect_failures",
        "Connection attempts to the upstream that failed.",
    ),
    ("fastpause_upstream_requests", "requests", "Requests sent to the upstream."),
]
# (metric name, key computed in _upstream_metrics, help text)
_UPSTREAM_GAUGES = [
    (
        "fastpause_upstream_up",
        "up",
        "1 when the upstream takes new requests: its health check passes and no recent "
        "failure marked it down.",
    ),
    ("fastpause_upstream_active", "active", "Exchanges in progress with the upstream."),
]


class ProxyCollector:
    """A custom collector over stats already read (``fastpause.stats.merge``)."""

    def __init__(self, stats: Stats, workers: int, restarts: int) -> None:
        self._stats = stats
        self._workers = workers
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        yield from _engine_metrics(self._stats["engine"])
        yield from _route_metrics(self._stats["routes"])
        yield from _upstream_metrics(self._stats["upstreams"])
        yield GaugeMetricFamily(
            "fastpause_workers", "Processes serving the data plane.", value=self._workers
        )
        yield CounterMetricFamily(
            "fastpause_worker_restarts",
            "Worker processes replaced after they died or stopped answering.",
            value=self._restarts,
        )


def render(stats: Stats, workers: int = 1, restarts: int = 0) -> bytes:
    """The Prometheus text exposition of the whole proxy's ``stats``."""
    return generate_latest(ProxyCollector(stats, workers, restarts))


def _engine_metrics(stats: dict[str, int]) -> Iterator[Metric]:
    """Proxy-wide counters."""
    yield CounterMetricFamily(
        "fastpause_requests", "Requests read from clients.", value=stats["requests_total"]
    )
    responses = CounterMetricFamily(
        "fastpause_responses", "Responses sent to clients, by status class.", labels=["class"]
    )
    for digit in "12345":
        responses.add_metric([f"{digit}xx"], stats[f"responses_{digit}xx"])
    yield responses
    yield GaugeMetricFamily(
        "fastpause_connections", "Open client connections.", value=stats["connections"]
    )
    yield CounterMetricFamily(
        "fastpause_connections_accepted",
        "Client connections accepted.",
        value=stats["connections_total"],
    )
    yield CounterMetricFamily(
        "fastpause_bytes_in", "Bytes received from clients.", value=stats["bytes_in"]
    )
    yield CounterMetricFamily(
        "fastpause_bytes_out", "Bytes sent to clients.", value=stats["bytes_out"]
    )
    yield GaugeMetricFamily(
        "fastpause_at_capacity",
        "1 from the moment max_connections client connections are open until fewer than "
        "90% of it are: the listeners do not accept meanwhile (new clients wait in the "
        "listen backlog).",
        value=int(stats["at_capacity"]),
    )
    yield GaugeMetricFamily(
        "fastpause_held_bytes",
        "Request body bytes buffered for held requests (capped by max_held_bytes).",
        value=stats["held_bytes"],
    )


def _route_metrics(states: dict[str, dict[str, object]]) -> Iterator[Metric]:
    """Per-route gauges, hold counters and the hold-time histogram."""
    in_flight = GaugeMetricFamily(
        "fastpause_in_flight", "Requests sent upstream and not yet answered.", labels=["route"]
    )
    held = GaugeMetricFamily("fastpause_held", "Requests held now.", labels=["route"])
    for name, stats in states.items():
        in_flight.add_metric([name], _number(stats["in_flight"]))
        held.add_metric([name], _number(stats["held"]))
    yield in_flight
    yield held
    for metric, key, help_text in _ROUTE_COUNTERS:
        counter = CounterMetricFamily(metric, help_text, labels=["route"])
        for name, stats in states.items():
            counter.add_metric([name], _number(stats[key]))
        yield counter
    hold_time = HistogramMetricFamily(
        "fastpause_hold_seconds", "How long requests were held.", labels=["route"]
    )
    for name, stats in states.items():
        buckets = stats["hold_seconds_buckets"]
        assert isinstance(buckets, list)
        hold_time.add_metric(
            [name], _cumulative(buckets), sum_value=_number(stats["hold_seconds_sum"])
        )
    yield hold_time


def _cumulative(buckets: list[tuple[float, int]]) -> list[tuple[str, float]]:
    """The core counts per bucket; Prometheus buckets count everything up to ``le``."""
    total = 0
    cumulative = []
    for upper_bound, count in buckets:
        total += count
        cumulative.append((floatToGoString(upper_bound), float(total)))
    return cumulative


def _upstream_metrics(totals: dict[str, dict[str, int]]) -> Iterator[Metric]:
    """Per-upstream counters and gauges, labelled by the address as written in the config.

    Routes may share an upstream object (counted once) and two pools may serve the
    same address (summed; the address is up when any of its pools is): one series
    per address either way (``fastpause.stats``).
    """
    for metric, key, help_text in _UPSTREAM_COUNTERS:
        counter = CounterMetricFamily(metric, help_text, labels=["upstream"])
        for address, per_address in totals.items():
            counter.add_metric([address], per_address[key])
        yield counter
    for metric, key, help_text in _UPSTREAM_GAUGES:
        gauge = GaugeMetricFamily(metric, help_text, labels=["upstream"])
        for address, per_address in totals.items():
            gauge.add_metric([address], per_address[key])
        yield gauge


def _number(value: object) -> float:
    """A stats value as a sample value; the core reports ints and floats."""
    assert isinstance(value, int | float)
    return float(value)
