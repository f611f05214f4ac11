"""The admin API end to end: a real proxy process, its admin socket, real HTTP.

Covers the endpoints' shapes, route actions and what they do to traffic, every
refusal (404, 405, 400, 413, 431, 401), the listener's safety (mode 0600, stale
socket replaced, a live one refused, removed at exit) and the TCP form with a
token. Waits poll the status with a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from admin_support import AdminHttp, raw_exchange
from helpers import build_request, chunked, free_port
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

pytest_plugins = ["ws_support"]  # fixtures: ws_backend, routes_proxy
pytestmark = pytest.mark.workers_variants

TOKEN = "s3cret-token-0123456789"
WAIT = 30.0


@pytest.fixture
def admin_proxy(proxy_factory, tmp_path):
    """``admin_proxy(route=..., top=...)``: a proxy with its own admin socket in tmp."""
    count = 0

    def start(route: dict | None = None, top: dict | None = None):
        nonlocal count
        spec = f"unix:{tmp_path}/admin{count}.sock"
        count += 1
        proxy = proxy_factory(route=route, top={"admin": spec, **(top or {})})
        proxy.admin = AdminHttp(spec)
        return proxy

    return start


def run_fastpause(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastpause", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def write_config(tmp_path: Path, name: str, admin: str, backend_address: str) -> Path:
    path = tmp_path / name
    path.write_text(
        f'listen = ["127.0.0.1:0"]\nadmin = "{admin}"\n'
        f'[[routes]]\nname = "app"\nupstreams = ["{backend_address}"]\n'
    )
    return path


def bound_unix_file(path: Path) -> None:
    """Leave a socket file nothing listens on, as a proxy killed with SIGKILL does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


# ---------------------------------------------------------------- status


def test_status_shape(admin_proxy, backend, proxy_workers):
    proxy = admin_proxy()
    status = proxy.admin.status()
    assert set(status) == {
        "version",
        "pid",
        "uptime_seconds",
        "workers",
        "worker_pids",
        "worker_restarts",
        "worker_details",
        "listeners",
        "accepting",
        "connections",
        "max_connections",
        "routes",
    }
    assert status["pid"] == proxy.pid
    assert status["uptime_seconds"] >= 0
    assert (status["workers"], status["worker_restarts"]) == (proxy_workers, 0)
    if proxy_workers == 1:
        assert status["worker_pids"] == status["worker_details"] == []  # the proxy serves
    else:
        assert len(set(status["worker_pids"]) - {proxy.pid}) == proxy_workers
        details = status["worker_details"]
        assert [(d["index"], d["pid"]) for d in details] == list(
            enumerate(status["worker_pids"])
        ), details
    assert status["listeners"] == [proxy.url]
    assert (status["accepting"], status["connections"], status["max_connections"]) == (True, 0, 0)
    [route] = status["routes"]
    upstreams = route.pop("upstreams")
    assert route == {
        "name": "app",
        "hosts": [],
        "path_prefix": None,
        "strip_path_prefix": False,
        "lb": "round_robin",
        "mode": "running",
        "held": 0,
        "oldest_held_age_seconds": None,
        "in_flight": 0,
        "max_hold_seconds": 30.0,
        "stop_message": None,
    }
    [upstream] = upstreams  # Upstream.stats() of the core, whatever else it reports
    assert (
        upstream.items()
        >= {
            "address": backend.address,
            "requests": 0,
            "connects": 0,
            "healthy": True,
            "down": False,
            "draining": False,
            "active": 0,
            "weight": 1,
        }.items()
    )
    assert proxy.get("/inspect").status == 200
    [upstream] = proxy.admin.route()["upstreams"]
    assert (upstream["requests"], upstream["connects"]) == (1, 1)


def test_status_shows_how_each_route_matches(routes_proxy, backend, start_backend):
    other = start_backend("other")
    proxy = routes_proxy(
        [
            {
                "name": "api",
                "hosts": ["API.example.com", "*.example.org"],
                "path_prefix": "/v2",
                "strip_path_prefix": True,
                "lb": "cookie",
                "upstreams": [{"address": backend.address, "weight": 4}, other.address],
            },
            {"name": "app", "upstreams": [backend.address]},
        ]
    )
    api, app = proxy.admin.status()["routes"]
    assert (api["name"], api["hosts"], api["path_prefix"]) == (
        "api",
        ["api.example.com", "*.example.org"],
        "/v2",
    )
    assert (api["strip_path_prefix"], api["lb"]) == (True, "cookie")
    assert [(u["address"], u["weight"]) for u in api["upstreams"]] == [
        (backend.address, 4),
        (other.address, 1),
    ]
    assert (app["hosts"], app["path_prefix"], app["strip_path_prefix"], app["lb"]) == (
        [],
        None,
        False,
        "round_robin",
    )
    # both routes use the backend: one pool, shown in each route
    assert app["upstreams"][0]["address"] == backend.address


def test_admin_line_comes_before_listening(admin_proxy, tmp_path):
    proxy = admin_proxy()
    lines = proxy.output.snapshot()
    admin_line = f"fastpause: admin on unix:{tmp_path}/admin0.sock"
    assert admin_line in lines
    assert lines.index(admin_line) < next(
        i for i, line in enumerate(lines) if line.startswith("fastpause: listening on")
    )


# ---------------------------------------------------------------- route actions


def test_pause_resume_roundtrip(admin_proxy, backend):
    proxy = admin_proxy()
    admin = proxy.admin
    reply = admin.ok("app", "pause", {"max_hold": "20s"})
    assert reply == {
        "route": "app",
        "mode": "paused",
        "drained": True,
        "in_flight": 0,
        "waited_seconds": reply["waited_seconds"],
    }
    assert 0 <= reply["waited_seconds"] < 1
    with proxy.conn() as first, proxy.conn() as second:
        first.send(build_request("GET", "/inspect?first"))
        admin.wait_held(1)
        second.send(build_request("GET", "/inspect?second"))
        entry = admin.wait_held(2)
        assert (entry["mode"], entry["max_hold_seconds"]) == ("paused", 20.0)
        assert entry["oldest_held_age_seconds"] >= 0
        assert backend.stats()["heads"] == 0

        assert admin.ok("app", "resume") == {
            "route": "app",
            "mode": "running",
            "released": 2,
            "rate": None,
        }
        for conn, target in ((first, "/inspect?first"), (second, "/inspect?second")):
            response = conn.read_response()
            assert response.status == 200, response
            assert response.json()["target"] == target
    entry = admin.wait_held(0)
    assert (entry["mode"], entry["oldest_held_age_seconds"]) == ("running", None)


def test_paced_resume_reports_its_rate(admin_proxy, backend):
    proxy = admin_proxy()
    proxy.admin.ok("app", "pause")
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/inspect"))
        proxy.admin.wait_held(1)
        reply = proxy.admin.ok("app", "resume", {"rate": 50})
        assert (reply["released"], reply["rate"]) == (1, 50)
        assert conn.read_response().status == 200


def test_stop_and_start(admin_proxy, backend):
    proxy = admin_proxy(route={"retry_after": "7s"})
    admin = proxy.admin
    admin.ok("app", "pause")
    with proxy.conn() as held:
        held.send(build_request("GET", "/inspect?held"))
        admin.wait_held(1)
        reply = admin.ok("app", "stop", {"message": "back at noon", "retry_after": "30s"})
        assert reply == {"route": "app", "mode": "stopped", "answered": 1}
        response = held.read_response()
    assert response.status == 503
    assert response.get("Retry-After") == "30"
    assert "back at noon" in response.text
    entry = admin.route()
    assert (entry["mode"], entry["held"], entry["stop_message"]) == ("stopped", 0, "back at noon")
    assert proxy.get("/inspect?while-stopped").status == 503

    assert admin.ok("app", "start") == {"route": "app", "mode": "running"}
    assert proxy.get("/inspect?after").status == 200
    assert backend.stats()["paths"] == {"/inspect": 1}


def test_stop_without_retry_after_uses_the_routes(admin_proxy, backend):
    proxy = admin_proxy(route={"retry_after": "7s"})
    proxy.admin.ok("app", "stop")
    response = proxy.get("/")
    assert (response.status, response.get("Retry-After")) == (503, "7")
    proxy.admin.ok("app", "start")


def test_pause_waits_for_in_flight_until_drain_timeout(admin_proxy, backend):
    proxy = admin_proxy()
    with proxy.conn() as busy:
        busy.send(build_request("GET", "/hold?key=slow"))
        backend.wait_held("slow")
        started = time.monotonic()
        reply = proxy.admin.ok("app", "pause", {"drain_timeout": 0.2})
        assert time.monotonic() - started >= 0.2
        assert (reply["mode"], reply["drained"], reply["in_flight"]) == ("paused", False, 1)
        assert reply["waited_seconds"] >= 0.2
        backend.release("slow")
        assert busy.read_response().status == 200
    assert proxy.admin.wait_route(lambda r: r["in_flight"] == 0, "drained")["mode"] == "paused"
    assert proxy.admin.ok("app", "pause", {"drain_timeout": "1s"})["drained"] is True
    proxy.admin.ok("app", "resume")


def test_pause_returns_once_drained(admin_proxy, backend):
    proxy = admin_proxy()
    with proxy.conn() as busy, ThreadPoolExecutor(max_workers=1) as pool:
        busy.send(build_request("GET", "/hold?key=inflight"))
        backend.wait_held("inflight")
        pause = pool.submit(proxy.admin.ok, "app", "pause", {"drain_timeout": "30s"})
        proxy.admin.wait_route(lambda r: r["mode"] == "paused", "paused mode")
        assert not pause.done()
        backend.release("inflight")
        assert busy.read_response().status == 200
        reply = pause.result(WAIT)
    assert (reply["drained"], reply["in_flight"]) == (True, 0)
    proxy.admin.ok("app", "resume")


# ---------------------------------------------------------------- refusals


def test_unknown_route_is_404(admin_proxy):
    admin = admin_proxy().admin
    for action in ("pause", "resume", "stop", "start"):
        reply = admin.action("nope", action)
        assert (reply.status, reply.json()) == (404, {"error": "no route named 'nope'"})


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/"),
        ("GET", "/statusx"),
        ("POST", "/routes/app/restart"),
        ("POST", "/routes/app"),
        ("POST", "/routes//pause"),
        ("GET", "/routes/app/pause/extra"),
    ],
)
def test_unknown_path_is_404(admin_proxy, method, target):
    reply = admin_proxy().admin.call(method, target)
    assert reply.status == 404
    assert reply.json()["error"].startswith("no such endpoint")


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        ("POST", "/status", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("GET", "/routes/app/pause", "POST"),
        ("PUT", "/routes/app/stop", "POST"),
        ("GET", "/reload", "POST"),
        ("GET", "/routes/app/deploy", "POST"),
    ],
)
def test_wrong_method_is_405(admin_proxy, method, target, allowed):
    admin = admin_proxy().admin
    reply = admin.call(method, target)
    assert reply.status == 405
    assert reply.headers["Allow"] == allowed
    assert reply.json() == {"error": f"use {allowed} for this endpoint"}
    assert admin.route()["mode"] == "running"


@pytest.mark.parametrize(
    ("action", "body", "error"),
    [
        ("pause", b"{not json", "the body is not valid JSON"),
        ("pause", b"\xff\xfe", "the body is not valid JSON"),
        ("pause", b"[1, 2]", "the body must be a JSON object"),
        ("pause", b'{"max_hold": "soon"}', "max_hold: invalid duration 'soon'"),
        ("pause", b'{"max_hold": 0}', "max_hold: must be greater than 0"),
        (
            "pause",
            b'{"max_hold": true}',
            "max_hold: expected a duration like '30s' or a number of seconds, got True",
        ),
        ("pause", b'{"drain_timeout": -1}', "drain_timeout: -1 is out of range"),
        (
            "pause",
            b'{"max_pause": "1s"}',
            "unknown field 'max_pause' (known: max_hold, drain_timeout)",
        ),
        ("resume", b'{"rate": 0}', "rate: must be a number greater than 0"),
        ("resume", b'{"rate": "fast"}', "rate: expected a number of requests per second"),
        ("stop", b'{"message": 5}', "message: expected a string"),
        ("stop", b'{"retry_after": "1.5s"}', "retry_after: invalid duration '1.5s'"),
        ("stop", b'{"retry_after": 0}', "retry_after: 0 is out of range"),
        ("start", b'{"now": true}', "unknown field 'now' (known: none)"),
    ],
)
def test_bad_body_is_400(admin_proxy, action, body, error):
    admin = admin_proxy().admin
    reply = admin.call("POST", f"/routes/app/{action}", body)
    assert reply.status == 400, reply
    assert reply.json()["error"].startswith(error), reply.json()
    assert admin.route()["mode"] == "running"


def test_oversized_body_is_413(admin_proxy):
    admin = admin_proxy().admin
    body = b'{"message": "' + b"x" * (64 * 1024) + b'"}'
    reply = admin.call("POST", "/routes/app/stop", body)
    assert (reply.status, reply.json()) == (413, {"error": "request body larger than 65536 bytes"})
    assert admin.route()["mode"] == "running"


def test_oversized_chunked_body_is_413(admin_proxy):
    admin = admin_proxy().admin
    head = build_request(
        "POST", "/routes/app/stop", [("Transfer-Encoding", "chunked")], host="localhost"
    )
    answer = raw_exchange(admin.spec, head + chunked(b"x" * 40_000, b"y" * 40_000))
    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n") or answer.startswith(
        b"HTTP/1.1 413 Request Entity Too Large\r\n"
    ), answer[:200]
    assert admin.route()["mode"] == "running"


def test_oversized_head_is_431(admin_proxy):
    admin = admin_proxy().admin
    request = build_request("GET", "/status", [("X-Padding", "p" * 17_000)], host="localhost")
    answer = raw_exchange(admin.spec, request)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert b'"error": "request head larger than 16384 bytes"' in answer


def test_head_that_never_ends_is_431(admin_proxy):
    admin = admin_proxy().admin
    unfinished = b"GET /status HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"p" * 17_000
    answer = raw_exchange(admin.spec, unfinished)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]


def test_malformed_request_is_400(admin_proxy):
    admin = admin_proxy().admin
    answer = raw_exchange(admin.spec, b"GET /status HTTP/1.1\r\nHost localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
    assert b"malformed request" in answer
    assert admin.status()["routes"]  # still serving


def test_each_response_closes_the_connection(admin_proxy):
    admin = admin_proxy().admin
    two = build_request("GET", "/status", host="localhost") * 2
    answer = raw_exchange(admin.spec, two)
    assert answer.count(b"HTTP/1.1 ") == 1
    assert b"\r\nConnection: close\r\n" in answer


# ---------------------------------------------------------------- reload


def test_reload_applies_the_changed_config(admin_proxy, backend, start_backend):
    proxy = admin_proxy()
    other = start_backend("other")
    path = proxy.config_path
    path.write_text(path.read_text().replace(backend.address, other.address))
    reply = proxy.admin.call("POST", "/reload")
    assert (reply.status, reply.json()) == (200, {"config": str(path), "routes": 1, "notes": []})
    assert proxy.output.wait_for(lambda line: line.startswith("fastpause: reloaded")) == (
        f"fastpause: reloaded {path}: 1 route"
    )
    [upstream] = proxy.admin.route()["upstreams"]
    assert upstream["address"] == other.address
    assert proxy.get("/inspect").status == 200
    assert other.stats()["paths"] == {"/inspect": 1}


def test_reload_of_another_file(admin_proxy, backend, start_backend, tmp_path):
    proxy = admin_proxy()
    other = start_backend("other")
    path = tmp_path / "elsewhere.toml"
    path.write_text(proxy.config_path.read_text().replace(backend.address, other.address))
    reply = proxy.admin.call("POST", "/reload", {"config": str(path)})
    assert (reply.status, reply.json()["config"]) == (200, str(path))
    assert proxy.admin.route()["upstreams"][0]["address"] == other.address
    # the file given is the one later reloads read
    path.write_text(path.read_text().replace(other.address, backend.address))
    assert proxy.admin.call("POST", "/reload").json()["config"] == str(path)
    assert proxy.admin.route()["upstreams"][0]["address"] == backend.address


def test_invalid_config_is_400_and_the_old_one_keeps_running(admin_proxy, backend):
    proxy = admin_proxy()
    path = proxy.config_path
    path.write_text("max_headers = 'lots'\n" + path.read_text())
    reply = proxy.admin.call("POST", "/reload")
    error = f"{path}: max_headers: expected an integer, got string 'lots'"
    assert (reply.status, reply.json()) == (400, {"error": error})
    assert f"fastpause: reload failed: {error}; still serving the previous config" in (
        proxy.stderr()
    )
    assert proxy.get("/inspect").status == 200
    assert proxy.admin.route()["upstreams"][0]["address"] == backend.address


def test_reload_adds_routes_and_refuses_ambiguous_ones(admin_proxy, backend, start_backend):
    proxy = admin_proxy()
    other = start_backend("other")
    path = proxy.config_path
    single = path.read_text()
    route = f'\n[[routes]]\nname = "{{name}}"\n{{prefix}}upstreams = ["{other.address}"]\n'
    path.write_text(single + route.format(name="docs", prefix='path_prefix = "/status"\n'))
    reply = proxy.admin.call("POST", "/reload")
    assert (reply.status, reply.json()["routes"]) == (200, 2), reply
    assert [route["name"] for route in proxy.admin.status()["routes"]] == ["app", "docs"]
    assert proxy.get("/status/204").status == 204
    assert proxy.get("/inspect").status == 200
    assert other.stats()["paths"] == {"/status/204": 1}
    assert backend.stats()["paths"].get("/status/204") is None

    path.write_text(single + route.format(name="app2", prefix=""))
    reply = proxy.admin.call("POST", "/reload")
    assert reply.status == 400, reply
    assert reply.json()["error"] == (
        f"{path}: routes[1]: route 'app2' and routes[0] ('app') both match any host and any "
        "path: give one of them other hosts or another path_prefix"
    )
    assert [route["name"] for route in proxy.admin.status()["routes"]] == ["app", "docs"]


def test_reload_refuses_to_change_the_admin_address(admin_proxy, tmp_path):
    proxy = admin_proxy()
    path = proxy.config_path
    path.write_text(path.read_text().replace("admin0.sock", "moved.sock"))
    reply = proxy.admin.call("POST", "/reload")
    assert reply.status == 400
    assert reply.json()["error"] == (
        f"{path}: admin: the admin address cannot change by reload (running on "
        f"unix:{tmp_path}/admin0.sock, the file says unix:{tmp_path}/moved.sock); "
        "restart fastpause to change it"
    )
    assert proxy.admin.route()["mode"] == "running"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b'{"file": "/x.toml"}', "unknown field 'file' (known: config)"),
        (b'{"config": "relative.toml"}', "config: 'relative.toml' is not an absolute path"),
        (b'{"config": 5}', "config: expected a file path, got 5"),
        (b'{"config": "/no/such/file.toml"}', "/no/such/file.toml: cannot read file"),
    ],
)
def test_bad_reload_request_is_400(admin_proxy, body, error):
    admin = admin_proxy().admin
    reply = admin.call("POST", "/reload", body)
    assert reply.status == 400, reply
    assert reply.json()["error"].startswith(error), reply.json()


# ---------------------------------------------------------------- deploy


def deploy_events(admin: AdminHttp, route: str, body: dict) -> list[dict]:
    """POST a deploy and return its NDJSON events once the stream ends."""
    reply = admin.call("POST", f"/routes/{route}/deploy", body)
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    assert reply.headers["Transfer-Encoding"] == "chunked"
    return [json.loads(line) for line in reply.body.splitlines()]


def test_deploy_switches_to_a_healthy_target(admin_proxy, backend, start_backend):
    proxy = admin_proxy()
    other = start_backend("other")
    events = deploy_events(
        proxy.admin, "app", {"to": [other.address], "health_path": "/status/200"}
    )
    assert events == [
        {"event": "checking", "targets": [other.address], "health_path": "/status/200"},
        {"event": "healthy", "target": other.address},
        {"event": "switched", "from": [backend.address], "to": [other.address], "held_released": 0},
        {
            "event": "draining",
            "upstreams": [backend.address],
            "in_flight": 0,
            "tunnels_closed": False,
        },
        {"event": "done", "drained": True},
    ]
    assert proxy.get("/inspect").status == 200
    assert other.stats()["paths"].get("/inspect") == 1
    assert proxy.admin.route()["upstreams"][0]["address"] == other.address


def test_deploy_with_close_tunnels_cuts_the_old_targets_websockets(admin_proxy, ws_backend):
    """Without ``close_tunnels`` a tunnel to the old target would hold the drain open
    for the whole drain_timeout (ten minutes here); with it the tunnel is cut at the
    switch, so the drain ends at once and the deploy reports it drained."""
    old, new = ws_backend("old"), ws_backend("new")
    proxy = admin_proxy(route={"upstreams": [old.address]})
    with ws_connect(f"ws://{proxy.host}:{proxy.port}/headers", proxy=None) as tunnel:
        assert json.loads(tunnel.recv(WAIT))["backend"] == "old"
        assert proxy.admin.route()["in_flight"] == 1
        events = deploy_events(
            proxy.admin,
            "app",
            {
                "to": [new.address],
                "health_path": "/health",
                "drain_timeout": "10m",
                "close_tunnels": True,
            },
        )
        assert [event["event"] for event in events] == [
            "checking",
            "healthy",
            "switched",
            "draining",
            "done",
        ]
        assert events[3]["tunnels_closed"] is True
        assert events[4] == {"event": "done", "drained": True}
        with pytest.raises(ConnectionClosed):
            tunnel.recv(WAIT)
    assert proxy.get("/plain").get("X-Backend") == "new"


def test_deploy_to_an_unhealthy_target_changes_nothing(admin_proxy, backend):
    proxy = admin_proxy()
    dead = f"127.0.0.1:{free_port()}"
    events = deploy_events(proxy.admin, "app", {"to": [dead], "deploy_timeout": "100ms"})
    assert events == [
        {"event": "checking", "targets": [dead], "health_path": "/up"},
        {
            "event": "failed",
            "error": f"{dead} did not pass the health check at /up within 0.1s: connection refused",
        },
    ]
    assert proxy.admin.route()["upstreams"][0]["address"] == backend.address
    assert proxy.get("/inspect").status == 200


def test_deploy_to_an_unknown_route_is_404(admin_proxy, backend):
    reply = admin_proxy().admin.call("POST", "/routes/nope/deploy", {"to": [backend.address]})
    assert (reply.status, reply.json()) == (404, {"error": "no route named 'nope'"})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "to: required: new target (HOST:PORT)"),
        (b"[]", "the body must be a JSON object"),
        (b'{"to": []}', "to: expected a non-empty list of HOST:PORT strings, got []"),
        (b'{"to": "127.0.0.1:1"}', "to: expected a non-empty list of HOST:PORT strings"),
        (b'{"to": [5]}', "to: expected a HOST:PORT string, got 5"),
        (b'{"to": ["nowhere"]}', "to: invalid address 'nowhere'"),
        (b'{"to": ["127.0.0.1:0"]}', "to: invalid address '127.0.0.1:0'"),
        (b'{"to": ["127.0.0.1:1", "127.0.0.1:1"]}', "to: duplicate target '127.0.0.1:1'"),
        (b'{"to": ["127.0.0.1:1"], "health_path": "up"}', "health_path: invalid health_path"),
        (b'{"to": ["127.0.0.1:1"], "deploy_timeout": 0}', "deploy_timeout: must be greater"),
        (b'{"to": ["127.0.0.1:1"], "drain_timeout": "x"}', "drain_timeout: invalid duration"),
        (
            b'{"to": ["127.0.0.1:1"], "targets": []}',
            "unknown field 'targets' (known: to, health_path, deploy_timeout, drain_timeout, "
            "close_tunnels)",
        ),
        (b'{"to": ["127.0.0.1:1"], "close_tunnels": 1}', "close_tunnels: expected true or false"),
    ],
)
def test_bad_deploy_request_is_400(admin_proxy, backend, body, error):
    admin = admin_proxy().admin
    reply = admin.call("POST", "/routes/app/deploy", body)
    assert reply.status == 400, reply
    assert reply.json()["error"].startswith(error), reply.json()
    assert admin.route()["upstreams"][0]["address"] == backend.address


# ---------------------------------------------------------------- health checks


def test_failing_health_checks_show_in_the_status(admin_proxy, backend):
    proxy = admin_proxy(
        route={"health_path": "/status/503", "health_interval": "10ms", "health_fails": 1}
    )
    line = proxy.output.wait_for(lambda line: " is down " in line)
    assert line == f"fastpause: upstream {backend.address} of route app is down (status 503)"
    [upstream] = proxy.admin.route()["upstreams"]
    assert upstream["healthy"] is False


# ---------------------------------------------------------------- TCP and the token


def admin_tcp_address(proxy) -> str:
    [line] = [line for line in proxy.output.snapshot() if line.startswith("fastpause: admin on ")]
    return line.removeprefix("fastpause: admin on ")


def test_tcp_admin_requires_the_token(proxy_factory):
    proxy = proxy_factory(top={"admin": "127.0.0.1:0", "admin_token": TOKEN})
    spec = admin_tcp_address(proxy)
    assert spec.startswith("127.0.0.1:") and not spec.endswith(":0")
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        for method, target in (
            ("GET", "/status"),
            ("GET", "/metrics"),
            ("POST", "/routes/app/stop"),
        ):
            reply = AdminHttp(spec).call(method, target, headers=headers)
            assert reply.status == 401, (headers, target, reply)
            assert reply.headers["WWW-Authenticate"] == "Bearer"
            assert "admin token is required" in reply.json()["error"]
    authorized = AdminHttp(spec, TOKEN)
    assert authorized.route()["mode"] == "running"
    assert authorized.call("GET", "/metrics").status == 200
    assert authorized.ok("app", "stop")["mode"] == "stopped"
    assert authorized.ok("app", "start")["mode"] == "running"


def test_token_is_checked_before_the_route_exists(proxy_factory):
    proxy = proxy_factory(top={"admin": "127.0.0.1:0", "admin_token": TOKEN})
    reply = AdminHttp(admin_tcp_address(proxy)).action("secret-route-name", "pause")
    assert reply.status == 401


def test_public_tcp_admin_without_token_is_refused(tmp_path, backend):
    config = write_config(tmp_path, "public.toml", "0.0.0.0:0", backend.address)
    for command in ("validate", "run"):
        args = (command, str(config)) if command == "validate" else ("run", "--config", str(config))
        result = run_fastpause(*args)
        assert result.returncode == 2, result
        assert result.stderr == (
            f"{config}: admin: 0.0.0.0:0 can be reached from other hosts: set admin_token, "
            "or listen on loopback (127.0.0.1) or a Unix socket\n"
        )


# ---------------------------------------------------------------- the socket file


def test_socket_is_private_to_its_owner(admin_proxy, tmp_path):
    admin_proxy()
    info = os.stat(tmp_path / "admin0.sock")
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()


def test_stale_socket_file_is_replaced(admin_proxy, tmp_path):
    bound_unix_file(tmp_path / "admin0.sock")
    proxy = admin_proxy()
    assert proxy.admin.route()["mode"] == "running"


def test_live_socket_refuses_a_second_proxy(admin_proxy, tmp_path, backend):
    first = admin_proxy()
    config = write_config(tmp_path, "second.toml", first.admin.spec, backend.address)
    result = run_fastpause("run", "--config", str(config))
    assert result.returncode == 1, result
    assert result.stderr == (
        f"fastpause: admin socket {tmp_path}/admin0.sock is in use by another fastpause\n"
    )
    assert "listening on" not in result.stdout
    assert first.admin.route()["mode"] == "running"  # the first one's socket is untouched


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path, backend):
    path = tmp_path / "admin.sock"
    path.write_text("precious")
    config = write_config(tmp_path, "c.toml", f"unix:{path}", backend.address)
    result = run_fastpause("run", "--config", str(config))
    assert result.returncode == 1, result
    assert result.stderr == (
        f"fastpause: cannot use admin socket {path}: the file exists and is not a socket\n"
    )
    assert path.read_text() == "precious"


def test_socket_in_a_missing_directory_fails_to_start(tmp_path, backend):
    path = tmp_path / "missing" / "admin.sock"
    config = write_config(tmp_path, "c.toml", f"unix:{path}", backend.address)
    result = run_fastpause("run", "--config", str(config))
    assert result.returncode == 1, result
    assert result.stderr == (
        f"fastpause: cannot create admin socket {path}: No such file or directory\n"
    )


def test_socket_is_removed_at_exit(admin_proxy, tmp_path):
    proxy = admin_proxy()
    path = tmp_path / "admin0.sock"
    assert path.exists()
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.wait() == 0
    assert not path.exists()


def test_admin_off_binds_nothing(proxy_factory, tmp_path):
    proxy = proxy_factory(top={"admin": "off"})
    assert not any("admin" in line for line in proxy.output.snapshot())
    assert proxy.get("/inspect").status == 200
