"""Reloading the config of a running proxy (``fastpause reload``, SIGHUP, admin
``POST /reload``), end to end.

The signature case: a request held while its backend is down is released to the
backend the *reloaded* config names (late binding), where Caddy answers it 502.
Also: an invalid config is refused and the old one keeps serving; upstreams that
disappear drain (bounded by ``drain_timeout``); listeners are opened and closed;
pause and stop survive a reload; a reload under load loses nothing.

Every wait polls the admin ``GET /status``, a backend's counters or a process's output
against a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import os
import signal

import pytest
from deploy_support import (
    ConfigFile,
    LoadGenerator,
    admin_reload,
    connect_refused,
    describe,
    edit_config,
    proxy_output,
    reload_cli,
    route_addresses,
    upstream_entries,
    wait_drained,
    wait_for,
)
from helpers import IncompleteResponse, build_request, free_port, request
from hold_support import in_thread

pytest_plugins = ["hold_support", "deploy_support"]  # hold_proxy, late_backend, identity_backend
pytestmark = pytest.mark.workers_variants


def two_free_ports() -> tuple[int, int]:
    a = free_port()
    while (b := free_port()) == a:
        pass
    return a, b


def reload_ok(proxy, how: str = "cli") -> None:
    """Ask ``proxy`` to reload its config file by ``how`` (cli, sighup or admin)."""
    if how == "cli":
        done = reload_cli(proxy.admin)
        assert done.returncode == 0, f"{describe(done)}\n{proxy.describe()}"
    elif how == "cli-config":
        done = reload_cli(proxy.admin, proxy.config_path)
        assert done.returncode == 0, f"{describe(done)}\n{proxy.describe()}"
    elif how == "sighup":
        os.kill(proxy.pid, signal.SIGHUP)
    elif how == "admin":
        resp = admin_reload(proxy.admin)
        assert resp.status == 200, f"{resp!r}\n{proxy.describe()}"
    else:
        raise AssertionError(how)


def finished(pending) -> bool:
    return not pending._thread.is_alive()


def answer(pending, proxy, timeout: float = 30.0):
    """The response of a request sent in a thread; on a timeout, the proxy's status."""
    try:
        return pending.result(timeout=timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; proxy status: {proxy.admin.status()}") from None


def wait_upstreams(proxy, addresses: list[str]) -> dict:
    return proxy.admin.wait_until(
        lambda r: route_addresses(r) == addresses, f"the route's upstreams to become {addresses}"
    )


# --------------------------------------------------------------------------- late binding


@pytest.mark.parametrize("how", ["cli", "cli-config", "sighup", "admin"])
def test_held_request_goes_to_the_backend_named_by_the_reload(hold_proxy, late_backend, how):
    """The seed scenario: the route points at port A where nothing listens; a request is
    held; the config is edited to port B and reloaded; then a backend starts on B. The
    held request is answered by B (Caddy answers it 502)."""
    port_a, port_b = two_free_ports()
    proxy = hold_proxy(
        route={"try_duration": "120s", "try_interval": "100ms"},
        upstreams=[f"127.0.0.1:{port_a}"],
    )
    held = in_thread(proxy.port, build_request("GET", "/inspect?seed"), timeout=90)
    proxy.admin.wait_held(1)

    edit_config(proxy, route={"upstreams": [f"127.0.0.1:{port_b}"]})
    reload_ok(proxy, how)
    # released against the new snapshot, B refuses too: held again (not answered)
    proxy.admin.wait_until(
        lambda r: route_addresses(r) == [f"127.0.0.1:{port_b}"] and r["held"] == 1,
        "the reload to take effect with the request held again",
    )
    assert not finished(held), f"the reload answered the held request: {held.result()!r}"

    b = late_backend(port_b)
    resp = answer(held, proxy)
    assert resp.status == 200, f"{resp!r}\n{proxy.describe()}"
    assert resp.json()["target"] == "/inspect?seed"  # answered by B's /inspect
    assert b.stats()["paths"] == {"/inspect": 1}
    proxy.admin.wait_held(0)


@pytest.mark.parametrize("how", ["cli", "sighup"])
def test_reload_to_a_backend_already_up_releases_held_requests_at_once(
    hold_proxy, start_backend, how
):
    """B is already up when the reload happens: the reload itself releases the held
    requests to B (probes are a minute apart, so nothing else would)."""
    port_a = free_port()
    b = start_backend("b")
    proxy = hold_proxy(
        route={"try_duration": "120s", "try_interval": "60s"}, upstreams=[f"127.0.0.1:{port_a}"]
    )
    pending = []
    for i in range(3):
        pending.append(in_thread(proxy.port, build_request("GET", f"/inspect?up={i}"), timeout=90))
        proxy.admin.wait_held(i + 1)

    edit_config(proxy, route={"upstreams": [b.address]})
    reload_ok(proxy, how)
    for i, p in enumerate(pending):
        resp = answer(p, proxy)
        assert resp.status == 200, f"{resp!r}\n{proxy.describe()}"
        assert resp.json()["target"] == f"/inspect?up={i}"
    assert b.stats()["paths"] == {"/inspect": 3}
    proxy.admin.wait_held(0)
    assert route_addresses(proxy.admin.route()) == [b.address]


def test_new_requests_after_a_reload_go_to_the_new_upstream(hold_proxy, backend, start_backend):
    b = start_backend("b")
    proxy = hold_proxy(upstreams=[backend.address])
    assert proxy.get("/inspect").status == 200
    edit_config(proxy, route={"upstreams": [b.address]})
    reload_ok(proxy)
    wait_upstreams(proxy, [b.address])
    for _ in range(5):
        assert proxy.get("/inspect").status == 200
    assert b.stats()["paths"] == {"/inspect": 5}
    assert backend.stats()["paths"] == {"/inspect": 1}


# --------------------------------------------------------------------------- invalid configs

BROKEN = {
    "bad-address": (
        lambda cfg: cfg.route.__setitem__("upstreams", ["nope"]),
        ["routes[0].upstreams[0]", "invalid address"],
    ),
    "unknown-key": (
        lambda cfg: cfg.route.__setitem__("try_duraton", "5s"),
        ["routes[0]", "try_duraton"],
    ),
    "bad-duration": (
        lambda cfg: cfg.top.__setitem__("drain_timeout", "soon"),
        ["drain_timeout", "soon"],
    ),
}


def break_config(proxy, kind: str) -> list[str]:
    """Make the proxy's config file invalid; the texts the error must contain."""
    if kind == "toml-syntax":
        proxy.config_path.write_text(proxy.config_path.read_text() + "\n[[routes]\nname = \n")
        return [proxy.config_path.name, "TOML"]
    change, texts = BROKEN[kind]
    cfg = ConfigFile(proxy.config_path)
    change(cfg)
    cfg.save()
    return [proxy.config_path.name, *texts]


@pytest.mark.parametrize("kind", ["bad-address", "unknown-key", "bad-duration", "toml-syntax"])
def test_invalid_config_is_refused_and_the_old_one_keeps_serving(
    hold_proxy, backend, start_backend, kind
):
    b = start_backend("b")
    proxy = hold_proxy(upstreams=[backend.address])
    good = proxy.config_path.read_text()
    edit_config(proxy, route={"upstreams": [b.address]})  # the change the reload would make
    texts = break_config(proxy, kind)

    done = reload_cli(proxy.admin)
    assert done.returncode != 0, describe(done)
    out = done.stdout + done.stderr
    for text in texts:
        assert text in out, f"reload error does not mention {text!r}:\n{describe(done)}"
    assert "Traceback" not in out, describe(done)

    assert route_addresses(proxy.admin.route()) == [backend.address]
    for _ in range(3):
        resp = proxy.get("/inspect")
        assert resp.status == 200, resp
    assert backend.stats()["paths"] == {"/inspect": 3}
    assert b.stats()["paths"] == {}

    # once fixed, the same proxy reloads fine
    proxy.config_path.write_text(good)
    edit_config(proxy, route={"upstreams": [b.address]})
    reload_ok(proxy)
    wait_upstreams(proxy, [b.address])
    assert proxy.get("/inspect").status == 200
    assert b.stats()["paths"] == {"/inspect": 1}


def test_invalid_config_through_the_admin_api_is_refused_with_the_problem(hold_proxy, backend):
    proxy = hold_proxy(upstreams=[backend.address])
    texts = break_config(proxy, "bad-address")
    resp = admin_reload(proxy.admin)
    assert 400 <= resp.status < 500, resp
    error = resp.json().get("error", "")
    for text in texts:
        assert text in error, f"admin reload error does not mention {text!r}: {resp!r}"
    assert proxy.get("/inspect").status == 200
    assert route_addresses(proxy.admin.route()) == [backend.address]


def test_sighup_with_an_invalid_config_keeps_serving_and_says_why(
    hold_proxy, start_backend, late_backend
):
    """SIGHUP with a broken file: a failure line naming the file and the key; the proxy
    keeps serving, held requests stay held; a later good SIGHUP releases them."""
    port_a = free_port()
    b = start_backend("b")
    proxy = hold_proxy(route={"try_duration": "120s"}, upstreams=[f"127.0.0.1:{port_a}"])
    held = in_thread(proxy.port, build_request("GET", "/inspect?through-sighups"), timeout=90)
    proxy.admin.wait_held(1)

    texts = break_config(proxy, "bad-address")
    os.kill(proxy.pid, signal.SIGHUP)
    wait_for(
        lambda: any(all(t in line for t in texts) for line in proxy_output(proxy).splitlines()),
        f"a line with {texts} in the proxy's output",
    )
    assert proxy.proc.poll() is None, proxy.describe()
    entry = proxy.admin.route()
    assert entry["held"] == 1 and route_addresses(entry) == [f"127.0.0.1:{port_a}"], entry

    # the old config still serves (its upstream comes up: the held request goes there)
    a = late_backend(port_a)
    resp = held.result(timeout=60)
    assert resp.status == 200, resp
    assert a.stats()["paths"] == {"/inspect": 1}

    cfg = ConfigFile(proxy.config_path)
    cfg.route["upstreams"] = [b.address]
    cfg.save()
    os.kill(proxy.pid, signal.SIGHUP)
    wait_upstreams(proxy, [b.address])
    assert proxy.get("/inspect").status == 200
    assert b.stats()["paths"] == {"/inspect": 1}


# --------------------------------------------------------------------------- draining


def test_requests_in_flight_to_a_removed_upstream_finish(hold_proxy, backend, start_backend):
    """A request already at the old upstream when the reload happens is answered; new
    requests meanwhile go to the new upstream."""
    b = start_backend("b")
    proxy = hold_proxy(upstreams=[backend.address])
    slow = in_thread(proxy.port, build_request("GET", "/hold?key=inflight"), timeout=90)
    backend.wait_held("inflight")

    edit_config(proxy, route={"upstreams": [b.address]})
    reload_ok(proxy)
    wait_upstreams(proxy, [b.address])
    assert proxy.get("/inspect").status == 200
    assert b.stats()["paths"] == {"/inspect": 1}

    backend.release("inflight")
    resp = slow.result(timeout=30)
    assert resp.status == 200, resp
    wait_drained(proxy.admin, backend.address)


def test_drain_of_a_removed_upstream_is_bounded_by_drain_timeout(
    hold_proxy, backend, start_backend
):
    """A request stuck at the old upstream is cut once ``drain_timeout`` passes."""
    b = start_backend("b")
    proxy = hold_proxy(top={"drain_timeout": "1s"}, upstreams=[backend.address])
    stuck = in_thread(proxy.port, build_request("GET", "/hold?key=stuck"), timeout=90)
    backend.wait_held("stuck")

    edit_config(proxy, route={"upstreams": [b.address]})
    reload_ok(proxy)
    wait_upstreams(proxy, [b.address])
    backend.wait_closed("stuck")  # the proxy closed its connection to the old upstream
    wait_drained(proxy.admin, backend.address)
    try:
        resp = stuck.result(timeout=30)
    except IncompleteResponse:
        pass  # cut without an answer: acceptable
    else:
        assert resp.status >= 500, resp
    assert proxy.get("/inspect").status == 200


def test_reload_under_load_loses_nothing(hold_proxy, identity_backend):
    """64 keep-alive clients send continuously while the config moves the route from A
    to B; A is killed once drained; every request is answered 200, no connection
    fails, and B serves everything sent after the drain."""
    a = identity_backend("A")
    b = identity_backend("B")
    proxy = hold_proxy(upstreams=[a.address])
    load = LoadGenerator(proxy.port, connections=64, max_seconds=90).start()
    try:
        load.wait_completed(500)
        load.phase = "during"
        edit_config(proxy, route={"upstreams": [b.address]})
        reload_ok(proxy)
        wait_drained(proxy.admin, a.address)
        load.phase = "after"
        before_kill = load.completed
        served_by_a = a.requests()
        a.kill()
        load.phase = "killed"
        load.wait_completed(before_kill + 3000)
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
    assert served_by_a >= load.by_phase("before")["A"]


# --------------------------------------------------------------------------- listeners


def test_reload_opens_added_and_closes_removed_listeners(hold_proxy, backend):
    proxy = hold_proxy(upstreams=[backend.address])
    first = ConfigFile(proxy.config_path).top["listen"][0]
    port2 = free_port()
    second = f"127.0.0.1:{port2}"

    kept = proxy.conn()  # a keep-alive connection on the first listener
    kept.send(build_request("GET", "/inspect?kept=1"))
    assert kept.read_response().status == 200

    edit_config(proxy, top={"listen": [first, second]})
    reload_ok(proxy)
    resp = wait_for(
        lambda: not connect_refused(port2) and request(port2, build_request("GET", "/inspect")),
        f"the added listener {second} to accept",
    )
    assert resp.status == 200, resp
    assert f"http://{second}" in proxy.admin.status()["listeners"]
    kept.send(build_request("GET", "/inspect?kept=2"))  # not interrupted by the reload
    assert kept.read_response().status == 200
    kept.close()

    edit_config(proxy, top={"listen": [second]})
    reload_ok(proxy)
    wait_for(lambda: connect_refused(proxy.port), f"the removed listener {first} to close")
    assert proxy.admin.status()["listeners"] == [f"http://{second}"]
    for _ in range(3):
        assert request(port2, build_request("GET", "/inspect")).status == 200
    assert proxy.proc.poll() is None


# --------------------------------------------------------------------------- pause and stop


def test_pause_survives_a_reload(hold_proxy, backend, start_backend):
    """A paused route stays paused across a reload, its held requests stay held, and on
    resume they go to the upstream the reloaded config names."""
    b = start_backend("b")
    proxy = hold_proxy(upstreams=[backend.address])
    proxy.admin.pause()
    first = in_thread(proxy.port, build_request("GET", "/inspect?held=1"), timeout=90)
    proxy.admin.wait_held(1)

    edit_config(proxy, route={"upstreams": [b.address], "try_duration": "45s"})
    reload_ok(proxy)
    entry = wait_upstreams(proxy, [b.address])
    assert entry["mode"] == "paused", entry
    assert entry["held"] == 1, entry

    second = in_thread(proxy.port, build_request("GET", "/inspect?held=2"), timeout=90)
    entry = proxy.admin.wait_held(2)
    assert entry["mode"] == "paused", entry

    proxy.admin.resume()
    for i, p in enumerate([first, second], 1):
        resp = p.result(timeout=30)
        assert resp.status == 200, resp
        assert resp.json()["target"] == f"/inspect?held={i}"
    assert b.stats()["paths"] == {"/inspect": 2}
    assert backend.stats()["paths"] == {}


def test_stop_survives_a_reload(hold_proxy, backend):
    proxy = hold_proxy(upstreams=[backend.address])
    proxy.admin.stop(message="back soon")
    edit_config(proxy, route={"retry_after": "7s"})
    reload_ok(proxy)  # the command returns once the reload is applied
    entry = proxy.admin.route()
    assert entry["mode"] == "stopped", entry
    resp = proxy.get("/inspect")
    assert resp.status == 503, resp
    assert "back soon" in resp.text, resp
    proxy.admin.start()
    assert proxy.get("/inspect").status == 200
    assert upstream_entries(proxy.admin.status(), backend.address)


def test_reload_with_a_listen_address_in_use_fails_and_keeps_serving(hold_proxy, backend):
    """A listener the reload cannot open fails the reload (naming the address); the
    proxy keeps serving on the listeners it has."""
    import socket

    proxy = hold_proxy(upstreams=[backend.address])
    first = ConfigFile(proxy.config_path).top["listen"][0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        edit_config(proxy, top={"listen": [first, busy]})
        done = reload_cli(proxy.admin)
        assert done.returncode != 0, describe(done)
        assert busy in done.stdout + done.stderr, describe(done)
        assert proxy.proc.poll() is None, proxy.describe()
        assert proxy.get("/inspect").status == 200
        assert proxy.admin.status()["listeners"] == [f"http://{first}"]
