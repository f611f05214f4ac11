"""What the data plane counts, read from one process and summed over several.

``collect`` reads one engine's counters as plain values (a worker sends them to
its supervisor); ``merge`` sums them into the view of one proxy, with the route
modes and health verdicts of the control plane's own table. ``/status`` and
``/metrics`` read only merged stats, so a single process and N workers answer
the same way. ``retire`` keeps what a worker that died had counted, so the
proxy's counters never go back when a worker is replaced.
"""

from typing import Any

from fastpause import _core

# One process's counters (``collect``) or the whole proxy's (``merge``).
Stats = dict[str, Any]

# What a process has now rather than has counted: a retired worker has none of it.
GAUGES = frozenset({"connections", "in_flight", "held_bytes", "held", "active", "idle"})


def collect(engine: _core.Engine) -> Stats:
    """Every counter and gauge of ``engine``: proxy-wide, per route, per upstream."""
    routes = engine.table.routes
    # Routes may share an upstream object: count its connections once.
    unique = {id(upstream): upstream for route in routes for upstream in route.upstreams}
    return {
        "engine": engine.stats(),
        "routes": {
            route.name: route.state.stats() | {"oldest_held_age": route.state.oldest_held_age}
            for route in routes
        },
        "route_upstreams": {
            route.name: [upstream.stats() for upstream in route.upstreams] for route in routes
        },
        "upstreams": [upstream.stats() for upstream in unique.values()],
    }


def merge(parts: list[Stats], table: _core.RoutingTable) -> Stats:
    """The whole proxy: counts summed over ``parts``, modes and health from ``table``."""
    engines = [part["engine"] for part in parts]
    engine = _sum_numbers(engines)
    engine["at_capacity"] = any(e["at_capacity"] for e in engines)
    routes = {}
    route_upstreams = {}
    for route in table.routes:
        states = [part["routes"][route.name] for part in parts if route.name in part["routes"]]
        routes[route.name] = _route(route.state, states)
        pools = [pool for part in parts for pool in part["route_upstreams"].get(route.name, [])]
        route_upstreams[route.name] = [
            _upstream(upstream, [p for p in pools if p["address"] == upstream.address])
            for upstream in route.upstreams
        ]
    return {
        "engine": engine,
        "routes": routes,
        "route_upstreams": route_upstreams,
        "upstreams": _by_address([pool for part in parts for pool in part["upstreams"]]),
    }


def _route(state: _core.RouteState, parts: list[Stats]) -> Stats:
    merged = _sum_numbers(parts)
    merged["mode"] = state.mode_name
    ages = [part["oldest_held_age"] for part in parts if part["oldest_held_age"] is not None]
    merged["oldest_held_age"] = max(ages) if ages else None
    merged["hold_seconds_buckets"] = _sum_buckets([part["hold_seconds_buckets"] for part in parts])
    return merged


def _upstream(upstream: _core.Upstream, pools: list[Stats]) -> Stats:
    """One upstream of a route: its pools' counts, the control plane's verdict."""
    merged = _sum_numbers(pools)
    merged["address"] = upstream.address
    merged["healthy"] = upstream.healthy
    merged["down"] = any(pool["down"] for pool in pools)
    merged["draining"] = upstream.draining
    return merged


def _by_address(pools: list[Stats]) -> dict[str, Stats]:
    """Per address: counts summed, ``up`` when any pool of it takes requests."""
    totals: dict[str, Stats] = {}
    for pool in pools:
        total = totals.setdefault(pool["address"], {"up": 0})
        for key, value in _sum_numbers([pool]).items():
            total[key] = total.get(key, 0) + value
        total["up"] = max(total["up"], int(bool(pool["healthy"]) and not pool["down"]))
    return totals


def _sum_numbers(parts: list[Stats]) -> Stats:
    """Every int or float field summed (booleans and text left out)."""
    total: Stats = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def _sum_buckets(parts: list[list[Any]]) -> list[tuple[float, int]]:
    """Histogram buckets (upper bound, count) added bucket by bucket."""
    if not parts:
        return []
    return [
        (float(bounds[0][0]), sum(int(bucket[1]) for bucket in bounds))
        for bounds in zip(*parts, strict=True)
    ]


def retire(total: Stats | None, last: Stats) -> Stats:
    """``total`` (the counts of workers gone before) plus the counters of ``last``,
    the last stats of a worker that is gone: its gauges are not the proxy's any more.

    The result is one more part for ``merge``; an upstream in it counts as neither
    healthy nor down, so it changes no verdict.
    """
    total = total or {"engine": {}, "routes": {}, "route_upstreams": {}, "upstreams": []}
    return {
        "engine": _add_counters(total["engine"], last["engine"]) | {"at_capacity": False},
        "routes": {
            name: _add_route(total["routes"].get(name), last["routes"].get(name))
            for name in total["routes"].keys() | last["routes"].keys()
        },
        "route_upstreams": {
            name: _add_pools(
                total["route_upstreams"].get(name, []), last["route_upstreams"].get(name, [])
            )
            for name in total["route_upstreams"].keys() | last["route_upstreams"].keys()
        },
        "upstreams": _add_pools(total["upstreams"], last["upstreams"]),
    }


def _add_counters(total: Stats, part: Stats) -> Stats:
    """``total`` plus the counters of ``part``; its gauges are 0."""
    added = dict(total)
    for key, value in _sum_numbers([part]).items():
        added[key] = added.get(key, 0) + (0 if key in GAUGES else value)
    return added


def _add_route(total: Stats | None, part: Stats | None) -> Stats:
    parts = [one for one in (total, part) if one is not None]
    added: Stats = {}
    for one in parts:
        added = _add_counters(added, one)
    buckets = _sum_buckets([one["hold_seconds_buckets"] for one in parts])
    return added | {"oldest_held_age": None, "hold_seconds_buckets": buckets}


def _add_pools(total: list[Stats], pools: list[Stats]) -> list[Stats]:
    """Pools of the same address added up, as pools that neither take requests nor fail."""
    by_address: dict[str, Stats] = {}
    for pool in [*total, *pools]:
        seen = by_address.get(pool["address"], {})
        by_address[pool["address"]] = _add_counters(seen, pool) | {
            "address": pool["address"],
            "healthy": False,
            "down": False,
            "draining": False,
        }
    return list(by_address.values())
