"""Load-balancing policies across a route's upstreams, with real backend processes.

- ``round_robin``: smooth weighted round robin, exact: weights 5:1:1 split 70 requests
  50/10/10 (and every 7 in a row 5/1/1).
- ``least_conn``: a new request goes to the upstream with fewer exchanges in progress.
- ``random_two``: two at random, the less loaded one wins; all upstreams get traffic.
- ``first``: everything to the first usable upstream, the next one when it is down.
- ``ip_hash``: a client IP keeps its upstream (all tests come from 127.0.0.1), and moves
  (for good) when that upstream goes away.
- ``cookie``: ``Set-Cookie: fp_<route>=<token>; Path=/; HttpOnly; SameSite=Lax``; a
  client sending it back stays on that upstream; when it is down, another upstream and
  a new cookie.
- Unhealthy upstreams are skipped by every policy.

Backends that must say who served a request are ``tests/ws_support.py`` processes
(``X-Backend: NAME``); ``tests/backend.py`` is used where a response must be held
(``/hold``) and its ``/__stats`` path counters tell where requests went.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from helpers import build_request, wait_for

pytest_plugins = ["ws_support"]  # fixtures: ws_backend, routes_proxy

WAIT = 60.0


def served_by(proxy, target: str = "/lb", headers=None) -> str:
    """One request on a new connection; the name of the backend that answered it."""
    resp = proxy.get(target, headers=headers)
    assert resp.status == 200, resp
    name = resp.get("X-Backend")
    assert name, resp
    return name


def sequence(proxy, n: int, target: str = "/lb") -> list[str]:
    """``n`` requests one after the other on one keep-alive connection."""
    names = []
    with proxy.conn() as conn:
        for i in range(n):
            conn.send(build_request("GET", f"{target}?i={i}"))
            resp = conn.read_response()
            assert resp.status == 200, f"request {i}: {resp!r}"
            names.append(resp.get("X-Backend"))
            assert not resp.closes, "the proxy closed a keep-alive client connection"
    return names


def one_route(proxy_start, upstreams, lb: str | None, name: str = "app", **route):
    cfg = {"name": name, "upstreams": upstreams, **route}
    if lb is not None:
        cfg["lb"] = lb
    return proxy_start([cfg])


def hold_counts(backends) -> list[int]:
    return [b.stats()["paths"].get("/hold", 0) for b in backends]


# --------------------------------------------------------------------------- round robin


def test_round_robin_cycles_evenly(ws_backend, routes_proxy):
    a, b, c = ws_backend("a"), ws_backend("b"), ws_backend("c")
    proxy = one_route(routes_proxy, [a.address, b.address, c.address], "round_robin")
    names = sequence(proxy, 30)
    assert Counter(names) == {"a": 10, "b": 10, "c": 10}, names
    assert len(set(names[:3])) == 3, names
    assert all(names[i] == names[i % 3] for i in range(30)), f"not a strict cycle: {names}"


def test_weighted_round_robin_is_exact_and_smooth(ws_backend, routes_proxy):
    a, b, c = ws_backend("a"), ws_backend("b"), ws_backend("c")
    proxy = one_route(
        routes_proxy,
        [{"address": a.address, "weight": 5}, b.address, {"address": c.address, "weight": 1}],
        "round_robin",
    )
    names = sequence(proxy, 70)
    assert Counter(names) == {"a": 50, "b": 10, "c": 10}, names
    # smooth: each full cycle of total weight 7 carries exactly 5/1/1
    for k in range(0, 70, 7):
        block = names[k : k + 7]
        assert Counter(block) == {"a": 5, "b": 1, "c": 1}, f"requests {k}..{k + 6}: {block}"


def test_weighted_round_robin_mixed_upstream_forms(ws_backend, routes_proxy):
    """The spec's form: a plain address next to an inline table with a weight."""
    a, b = ws_backend("a"), ws_backend("b")
    proxy = one_route(routes_proxy, [a.address, {"address": b.address, "weight": 3}], "round_robin")
    names = sequence(proxy, 40)
    assert Counter(names) == {"a": 10, "b": 30}, names


def test_unhealthy_upstream_is_skipped_and_comes_back(ws_backend, routes_proxy):
    a, b, c = ws_backend("a"), ws_backend("b"), ws_backend("c")
    proxy = one_route(
        routes_proxy,
        [a.address, b.address, c.address],
        "round_robin",
        health_path="/health",
        health_interval="0.1s",
        health_fails=1,
        health_passes=1,
    )
    admin = proxy.admin

    def healthy(address: str, want: bool):
        def check(route) -> bool:
            (u,) = [u for u in route["upstreams"] if u["address"] == address]
            return u["healthy"] is want

        return check

    b.set_health(503)
    admin.wait_until(healthy(b.address, False), f"{b.address} marked unhealthy", "app", WAIT)
    names = sequence(proxy, 20)
    assert Counter(names) == {"a": 10, "c": 10}, f"an unhealthy upstream got traffic: {names}"

    b.set_health(200)
    admin.wait_until(healthy(b.address, True), f"{b.address} healthy again", "app", WAIT)
    names = sequence(proxy, 30)
    assert Counter(names) == {"a": 10, "b": 10, "c": 10}, names


def test_dead_upstream_is_skipped_by_round_robin(ws_backend, routes_proxy):
    a, b, c = ws_backend("a"), ws_backend("b"), ws_backend("c")
    proxy = one_route(
        routes_proxy, [a.address, b.address, c.address], "round_robin", fail_duration="60s"
    )
    assert Counter(sequence(proxy, 6)) == {"a": 2, "b": 2, "c": 2}
    b.kill()
    # every request succeeds: a connect refused is retried on another upstream
    names = sequence(proxy, 20)
    assert set(names) == {"a", "c"}, names
    assert abs(names.count("a") - names.count("c")) <= 1, names


# --------------------------------------------------------------------------- least_conn


def test_least_conn_prefers_the_upstream_with_fewer_exchanges(start_backend, routes_proxy):
    backends = [start_backend("lc0"), start_backend("lc1")]
    proxy = one_route(routes_proxy, [b.address for b in backends], "least_conn")
    conns = []
    try:
        # one held exchange: that backend is the slow one
        conns.append(proxy.conn(timeout=WAIT))
        conns[-1].send(build_request("GET", "/hold?key=k1"))
        wait_for(lambda: sum(hold_counts(backends)) == 1, timeout=WAIT, what="k1 at a backend")
        slow_i = hold_counts(backends).index(1)
        slow, fast = backends[slow_i], backends[1 - slow_i]
        slow.wait_held("k1")

        for _ in range(20):
            assert proxy.get("/status/200").status == 200
        assert fast.stats()["paths"].get("/status/200", 0) == 20
        assert slow.stats()["paths"].get("/status/200", 0) == 0, (
            "a request went to the upstream with an exchange in progress while the other had none"
        )

        # a second held request goes to the fast one (0 < 1); then 1 each
        conns.append(proxy.conn(timeout=WAIT))
        conns[-1].send(build_request("GET", "/hold?key=k2"))
        fast.wait_held("k2")
        assert hold_counts([slow, fast]) == [1, 1]

        # a third: whichever, it makes 2 against 1; new requests go to the one with 1
        conns.append(proxy.conn(timeout=WAIT))
        conns[-1].send(build_request("GET", "/hold?key=k3"))
        wait_for(lambda: sum(hold_counts(backends)) == 3, timeout=WAIT, what="k3 at a backend")
        counts = hold_counts(backends)
        busier = backends[counts.index(2)]
        lighter = backends[counts.index(1)]
        busier.wait_held("k3")
        before = lighter.stats()["paths"].get("/status/204", 0)
        for _ in range(10):
            assert proxy.get("/status/204").status == 204
        assert lighter.stats()["paths"].get("/status/204", 0) - before == 10
        assert busier.stats()["paths"].get("/status/204", 0) == 0

        slow.release("k1")
        fast.release("k2")
        busier.release("k3")
        for conn, key in zip(conns, ["k1", "k2", "k3"], strict=True):
            resp = conn.read_response()
            assert resp.status == 200 and resp.body == f"released {key}\n".encode(), resp
    finally:
        for conn in conns:
            conn.close()


# --------------------------------------------------------------------------- random_two


def test_random_two_spreads_over_all_upstreams(ws_backend, routes_proxy):
    a, b, c = ws_backend("a"), ws_backend("b"), ws_backend("c")
    proxy = one_route(routes_proxy, [a.address, b.address, c.address], "random_two")
    names = sequence(proxy, 90)
    counts = Counter(names)
    assert set(counts) == {"a", "b", "c"}, f"not every upstream got traffic: {counts}"


def test_random_two_avoids_the_busier_upstream(start_backend, routes_proxy):
    """Of the two picked, the less loaded wins: while one upstream has an exchange in
    progress and the others none, it gets no new request; the others share them."""
    backends = [start_backend(f"r2{i}") for i in range(3)]
    proxy = one_route(routes_proxy, [b.address for b in backends], "random_two")
    conn = proxy.conn(timeout=WAIT)
    try:
        conn.send(build_request("GET", "/hold?key=busy"))
        wait_for(lambda: sum(hold_counts(backends)) == 1, timeout=WAIT, what="the held request")
        busy = backends[hold_counts(backends).index(1)]
        busy.wait_held("busy")
        for _ in range(40):
            assert proxy.get("/status/200").status == 200
        got = [b.stats()["paths"].get("/status/200", 0) for b in backends]
        assert got[backends.index(busy)] == 0, f"the busy upstream got new requests: {got}"
        assert all(n > 0 for i, n in enumerate(got) if backends[i] is not busy), got
        busy.release("busy")
        resp = conn.read_response()
        assert resp.status == 200, resp
    finally:
        conn.close()


# --------------------------------------------------------------------------- first


def test_first_uses_the_first_upstream_then_the_next_when_down(ws_backend, routes_proxy):
    a, b, c = ws_backend("a"), ws_backend("b"), ws_backend("c")
    proxy = one_route(routes_proxy, [a.address, b.address, c.address], "first")
    assert [served_by(proxy) for _ in range(10)] == ["a"] * 10
    a.kill()
    assert [served_by(proxy) for _ in range(10)] == ["b"] * 10
    b.kill()
    assert [served_by(proxy) for _ in range(10)] == ["c"] * 10


# --------------------------------------------------------------------------- ip_hash


def test_ip_hash_keeps_a_client_on_one_upstream_and_moves_it_when_down(ws_backend, routes_proxy):
    backends = {name: ws_backend(name) for name in ("a", "b", "c")}
    proxy = one_route(routes_proxy, [b.address for b in backends.values()], "ip_hash")
    names = [served_by(proxy) for _ in range(15)]
    assert len(set(names)) == 1, f"one client IP went to several upstreams: {names}"
    home = names[0]
    # the same on one keep-alive connection
    assert set(sequence(proxy, 10)) == {home}

    backends[home].kill()
    moved = [served_by(proxy) for _ in range(15)]
    assert len(set(moved)) == 1, f"after {home} went down the client wandered: {moved}"
    assert moved[0] != home
    new_home = moved[0]
    assert set(sequence(proxy, 10)) == {new_home}


# --------------------------------------------------------------------------- cookie

COOKIE = re.compile(r"^fp_shop=([^;\s]+); Path=/; HttpOnly; SameSite=Lax$")


def affinity_cookie(resp) -> str | None:
    """The token of the route's affinity cookie set by ``resp`` (None if none)."""
    values = [v for v in resp.get_all("Set-Cookie") if v.startswith("fp_")]
    if not values:
        return None
    assert len(values) == 1, f"several affinity cookies: {values}"
    m = COOKIE.match(values[0])
    assert m, f"affinity cookie not as specified: {values[0]!r}"
    return m.group(1)


def test_cookie_affinity(ws_backend, routes_proxy):
    backends = {name: ws_backend(name) for name in ("a", "b", "c")}
    proxy = one_route(routes_proxy, [b.address for b in backends.values()], "cookie", name="shop")

    # clients without the cookie are spread (round robin) and each gets a cookie
    token_of: dict[str, str] = {}
    for _ in range(6):
        resp = proxy.get("/cart")
        assert resp.status == 200, resp
        name = resp.get("X-Backend")
        token = affinity_cookie(resp)
        assert token, f"no affinity cookie in {resp!r}"
        assert token_of.setdefault(name, token) == token, "one upstream, two different tokens"
    assert set(token_of) == {"a", "b", "c"}, token_of
    assert len(set(token_of.values())) == 3, token_of

    # a client sending its cookie back stays on that upstream
    for name, token in token_of.items():
        for cookie in (f"fp_shop={token}", f"theme=dark; fp_shop={token}; lang=en"):
            for _ in range(4):
                resp = proxy.get("/cart", headers=[("Cookie", cookie)])
                assert resp.status == 200, resp
                assert resp.get("X-Backend") == name, f"Cookie: {cookie} -> {resp!r}"
                again = affinity_cookie(resp)
                assert again in (None, token), f"pinned client re-pinned elsewhere: {resp!r}"

    # an unknown token or another route's cookie pins nothing: a new cookie
    for cookie in ("fp_shop=0123456789abcdef", f"fp_other={token_of['a']}"):
        resp = proxy.get("/cart", headers=[("Cookie", cookie)])
        assert resp.status == 200
        assert affinity_cookie(resp) in token_of.values(), resp

    # its upstream down: the client goes elsewhere and gets a new cookie for it
    backends["b"].kill()
    resp = proxy.get("/cart", headers=[("Cookie", f"fp_shop={token_of['b']}")])
    assert resp.status == 200, resp
    moved_to = resp.get("X-Backend")
    assert moved_to in ("a", "c"), resp
    new_token = affinity_cookie(resp)
    assert new_token == token_of[moved_to], f"no new cookie for {moved_to}: {resp!r}"
    for _ in range(5):
        resp = proxy.get("/cart", headers=[("Cookie", f"fp_shop={new_token}")])
        assert resp.status == 200 and resp.get("X-Backend") == moved_to, resp


@pytest.mark.parametrize("lb", ["first", "ip_hash"])
def test_all_requests_answered_while_an_upstream_dies(ws_backend, routes_proxy, lb):
    """Killing the chosen upstream between requests loses none: the connect refused is
    retried on the next one (and keep-alive clients are not disturbed)."""
    a, b = ws_backend("a"), ws_backend("b")
    proxy = one_route(routes_proxy, [a.address, b.address], lb)
    home = served_by(proxy)
    (a if home == "a" else b).kill()
    results = []
    with proxy.conn() as conn:
        for i in range(10):
            conn.send(build_request("GET", f"/lb?i={i}"))
            resp = conn.read_response()
            results.append((resp.status, resp.get("X-Backend")))
    other = "b" if home == "a" else "a"
    assert results == [(200, other)] * 10, results
