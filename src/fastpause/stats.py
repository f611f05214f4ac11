"""What the data plane counts, read from one process and summed over several.

``collect`` reads one engine's counters as plain values (a worker sends them to
its supervisor); ``merge`` sums them into the view of one proxy, with the route
modes and health verdicts of the control plane's own table. ``/status`` and
``/metrics`` read only merged stats, so a single process and N workers answer
the same way.
"""

from typing import Any

from fastpause import _core

# One process's counters (``collect``) or the whole proxy's (``merge``).
Stats = dict[str, Any]


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
