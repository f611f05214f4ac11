"""The state file (top-level ``state_file``): deployed upstreams and pause/stop state
are written atomically after each change and restored when fastpause starts again;
an unusable state file is reported and fastpause starts from its config.

Restarts are real: SIGTERM, wait for exit 0, start ``python -m fastpause run`` again
with the same config file. Every wait polls the admin ``GET /status`` or a process's
output against a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import json
import threading

import pytest
from deploy_support import (
    ConfigFile,
    deploy_cli,
    describe,
    proxy_output,
    route_addresses,
    wait_for,
)
from helpers import build_request
from hold_support import Admin, in_thread

pytest_plugins = ["hold_support", "deploy_support"]  # hold_proxy, identity_backend, ...
pytestmark = pytest.mark.workers_variants

IGNORING = "fastpause: ignoring state file"


@pytest.fixture
def state_path(tmp_path):
    return tmp_path / "state" / "fastpause-state.json"


def stateful_proxy(hold_proxy, state_path, upstreams):
    state_path.parent.mkdir(exist_ok=True)
    return hold_proxy(top={"state_file": str(state_path)}, upstreams=upstreams)


def restart(proxy, tmp_path, extra_proxies, name: str = "restarted"):
    """SIGTERM ``proxy`` (it must exit 0), then start the same config again."""
    rc = proxy.stop()
    assert rc == 0, f"proxy exited {rc} on SIGTERM:\n{proxy.describe()}"
    again = type(proxy)(proxy.config_path, tmp_path, name)
    extra_proxies.append(again)
    again.admin = Admin(ConfigFile(proxy.config_path).top["admin"], again)
    again.admin.wait_ready()
    return again


def test_paused_and_deployed_state_survives_a_restart(
    hold_proxy, identity_backend, state_path, tmp_path, extra_proxies
):
    a, b = identity_backend("A"), identity_backend("B")
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    proxy.admin.pause(max_hold="60s")
    done = deploy_cli(proxy.admin, "app", b.address, health_path="/health")
    assert done.returncode == 0, f"{describe(done)}\n{proxy.describe()}"
    entry = proxy.admin.route()
    assert entry["mode"] == "paused" and route_addresses(entry) == [b.address], entry
    assert state_path.exists(), "no state file written after pause and deploy"

    again = restart(proxy, tmp_path, extra_proxies)
    assert IGNORING not in again.stderr(), again.describe()
    entry = again.admin.route()
    assert entry["mode"] == "paused", f"pause not restored: {entry}"
    assert route_addresses(entry) == [b.address], f"deployed upstream not restored: {entry}"

    held = in_thread(again.port, build_request("GET", "/after-restart"), timeout=90)
    again.admin.wait_held(1)
    again.admin.resume()
    resp = held.result(timeout=30)
    assert resp.status == 200, resp
    assert resp.get("X-Backend") == "B", resp
    resp = again.get("/more")
    assert resp.status == 200 and resp.get("X-Backend") == "B", resp
    assert a.requests() == 0


def test_deployed_upstream_survives_a_restart(
    hold_proxy, identity_backend, state_path, tmp_path, extra_proxies
):
    a, b = identity_backend("A"), identity_backend("B")
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    done = deploy_cli(proxy.admin, "app", b.address, health_path="/health")
    assert done.returncode == 0, describe(done)
    again = restart(proxy, tmp_path, extra_proxies)
    entry = again.admin.route()
    assert entry["mode"] == "running" and route_addresses(entry) == [b.address], entry
    resp = again.get("/x")
    assert resp.status == 200 and resp.get("X-Backend") == "B", resp


def test_stopped_state_and_message_survive_a_restart(
    hold_proxy, identity_backend, state_path, tmp_path, extra_proxies
):
    a = identity_backend("A")
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    proxy.admin.stop(message="upgrading the database")
    again = restart(proxy, tmp_path, extra_proxies)
    entry = again.admin.route()
    assert entry["mode"] == "stopped", entry
    resp = again.get("/x")
    assert resp.status == 503, resp
    assert "upgrading the database" in resp.text, resp
    again.admin.start()
    resp = again.get("/x")
    assert resp.status == 200 and resp.get("X-Backend") == "A", resp
    # ... and "running" is what the next start restores
    third = restart(again, tmp_path, extra_proxies, "third")
    assert third.admin.route()["mode"] == "running"
    assert third.get("/y").status == 200


def test_resume_is_saved_too(hold_proxy, identity_backend, state_path, tmp_path, extra_proxies):
    a = identity_backend("A")
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    proxy.admin.pause()
    proxy.admin.resume()
    again = restart(proxy, tmp_path, extra_proxies)
    assert again.admin.route()["mode"] == "running"
    assert again.get("/x").status == 200


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff\xfegarbage\x13\x37 not json at all \xc3\x28",
        b'{"version": 1, "routes": {"app": {"upstreams": ["127.0.0.1:1"], "mode": "pau',
        b'{"version": 999, "routes": []}',
        b"",
    ],
    ids=["garbage", "truncated", "wrong-version", "empty"],
)
def test_unusable_state_file_is_reported_and_the_config_is_used(
    hold_proxy, identity_backend, state_path, content
):
    a = identity_backend("A")
    state_path.parent.mkdir(exist_ok=True)
    state_path.write_bytes(content)
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    lines = [line for line in proxy.stderr().splitlines() if line.startswith(IGNORING)]
    assert lines, f"no {IGNORING!r} line:\n{proxy.describe()}"
    assert str(state_path) in lines[0], lines
    assert "Traceback" not in proxy.stderr()
    entry = proxy.admin.route()
    assert entry["mode"] == "running" and route_addresses(entry) == [a.address], entry
    resp = proxy.get("/x")
    assert resp.status == 200 and resp.get("X-Backend") == "A", resp
    # the next change replaces the unusable file with a good one
    proxy.admin.pause()
    json.loads(state_path.read_bytes())


def test_state_file_that_is_a_directory_is_reported(hold_proxy, identity_backend, state_path):
    a = identity_backend("A")
    state_path.mkdir(parents=True)
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    assert IGNORING in proxy.stderr(), proxy.describe()
    assert proxy.get("/x").status == 200


def test_no_state_file_yet_starts_from_the_config_and_writes_one_after_a_change(
    hold_proxy, identity_backend, state_path
):
    a = identity_backend("A")
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    assert IGNORING not in proxy.stderr(), proxy.describe()
    assert proxy.get("/x").status == 200
    proxy.admin.pause()
    assert state_path.exists(), "pause did not write the state file"
    json.loads(state_path.read_bytes())


def test_state_file_is_replaced_atomically(hold_proxy, identity_backend, state_path):
    """A reader that keeps reading the file while it is rewritten after every command
    only ever sees complete JSON documents."""
    a = identity_backend("A")
    proxy = stateful_proxy(hold_proxy, state_path, [a.address])
    proxy.admin.pause()
    stop = threading.Event()
    reads, torn = [0], []

    def reader() -> None:
        while not stop.is_set():
            try:
                data = state_path.read_bytes()
            except FileNotFoundError:
                torn.append("file missing during a rewrite")
                continue
            reads[0] += 1
            try:
                json.loads(data)
            except ValueError:
                torn.append(data[:200])

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for _ in range(40):
            proxy.admin.resume()
            proxy.admin.pause()
    finally:
        stop.set()
        t.join(10)
    assert reads[0] > 0
    assert torn == [], torn[:3]


def test_state_file_that_cannot_be_written_is_reported_and_commands_still_work(
    hold_proxy, identity_backend, tmp_path
):
    a = identity_backend("A")
    path = tmp_path / "no-such-dir" / "state.json"
    proxy = hold_proxy(top={"state_file": str(path)}, upstreams=[a.address])
    proxy.admin.pause()
    assert proxy.admin.route()["mode"] == "paused"
    proxy.admin.resume()
    assert proxy.get("/x").status == 200
    wait_for(lambda: str(path) in proxy_output(proxy), "a line about the state file")
    assert proxy.proc.poll() is None
