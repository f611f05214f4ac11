"""Host and path routing across several routes.

The most specific host group wins first (exact name, then the longest matching
``*.suffix`` wildcard, then routes without ``hosts``), and within it the longest
matching ``path_prefix`` (segment-aware); a host group with no matching prefix falls
through to the next group. Hosts match case-insensitively and without the port. No
match is a 404; two routes matching exactly the same requests are a config error.

Every route's upstream is its own backend process (``tests/ws_support.py`` answers
plain requests with ``X-Backend: NAME`` and the target it saw), so a response says
which route served it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import build_request, free_port
from ws_support import ProxySet, render_config, start_ws_backends

pytest_plugins = ["ws_support"]  # fixtures: ws_backend, routes_proxy

ROUTE_NAMES = ["api", "api_v2", "shop", "wild", "eu", "docs", "docs_api", "default"]


def routes_for(b: dict) -> list[dict]:
    return [
        {"name": "api", "hosts": ["api.example.com"], "upstreams": [b["api"].address]},
        {
            "name": "api_v2",
            "hosts": ["api.example.com"],
            "path_prefix": "/v2",
            "upstreams": [b["api_v2"].address],
        },
        # an exact host with only a prefixed route: other paths fall through
        {
            "name": "shop",
            "hosts": ["shop.example.com"],
            "path_prefix": "/cart",
            "upstreams": [b["shop"].address],
        },
        {"name": "wild", "hosts": ["*.example.com"], "upstreams": [b["wild"].address]},
        # a longer wildcard (and an exact host) with only a prefixed route
        {
            "name": "eu",
            "hosts": ["*.eu.example.com", "eu.example.org"],
            "path_prefix": "/eu",
            "upstreams": [b["eu"].address],
        },
        {"name": "docs", "path_prefix": "/docs", "upstreams": [b["docs"].address]},
        {"name": "docs_api", "path_prefix": "/docs/api", "upstreams": [b["docs_api"].address]},
        {"name": "default", "upstreams": [b["default"].address]},
    ]


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """One proxy with all the routes above, shared by the table-driven tests."""
    tmp = tmp_path_factory.mktemp("routing")
    backends = dict(zip(ROUTE_NAMES, start_ws_backends(tmp, *ROUTE_NAMES), strict=True))
    proxies = ProxySet(tmp)
    try:
        proxy = proxies.launch(routes_for(backends))
        yield proxy, backends
    finally:
        problems = proxies.close()
        for b in backends.values():
            b.kill()
    assert not problems, "\n".join(problems)


def get(proxy, host: str | None, target: str, version: str = "HTTP/1.1"):
    return proxy.request(build_request("GET", target, host=host, version=version))


CASES = [
    # exact host; case and port do not matter
    ("api.example.com", "/users", "api"),
    ("API.Example.COM", "/users", "api"),
    ("api.example.com:8443", "/users", "api"),
    ("Api.EXAMPLE.com:80", "/", "api"),
    # within the exact host's group, the longest matching prefix, segment-aware
    ("api.example.com", "/v2", "api_v2"),
    ("api.example.com", "/v2/", "api_v2"),
    ("api.example.com", "/v2/users?id=7", "api_v2"),
    ("api.example.com", "/v2?q=1", "api_v2"),
    ("API.EXAMPLE.COM:9000", "/v2/users", "api_v2"),
    ("api.example.com", "/v2x", "api"),
    ("api.example.com", "/v22/users", "api"),
    ("api.example.com", "/v", "api"),
    # the exact host group wins over a longer prefix in a less specific group
    ("api.example.com", "/docs/api/x", "api"),
    ("api.example.com", "/eu/x", "api"),
    # exact host with only a prefixed route: other paths fall through to the wildcard
    ("shop.example.com", "/cart", "shop"),
    ("shop.example.com", "/cart/items/3", "shop"),
    ("SHOP.example.com:8080", "/cart?x=1", "shop"),
    ("shop.example.com", "/checkout", "wild"),
    ("shop.example.com", "/cartx", "wild"),
    # wildcard: any subdomain depth, case and port ignored, not the bare domain,
    # not a name that merely ends in the same letters
    ("www.example.com", "/", "wild"),
    ("a.b.c.example.com", "/x", "wild"),
    ("WWW.EXAMPLE.COM:8080", "/path", "wild"),
    ("www.example.com", "/docs/api", "wild"),
    ("example.com", "/", "default"),
    ("notexample.com", "/", "default"),
    ("example.com", "/docs/x", "docs"),
    # the longest matching wildcard first; without a matching prefix there, the next
    ("x.eu.example.com", "/eu", "eu"),
    ("x.EU.example.com:443", "/eu/page?lang=de", "eu"),
    ("x.eu.example.com", "/other", "wild"),
    ("x.eu.example.com", "/europe", "wild"),
    ("eu.example.com", "/eu", "wild"),
    # exact host whose only route has a prefix: other paths fall through to hostless
    ("eu.example.org", "/eu/x", "eu"),
    ("eu.example.org", "/docs/api/v1", "docs_api"),
    ("eu.example.org", "/", "default"),
    # routes without hosts: longest prefix, segment-aware, else the default
    ("other.test", "/docs", "docs"),
    ("other.test", "/docs/", "docs"),
    ("other.test", "/docs/intro", "docs"),
    ("other.test", "/docs?page=2", "docs"),
    ("other.test", "/docs/api", "docs_api"),
    ("other.test", "/docs/api/", "docs_api"),
    ("other.test", "/docs/api/ref?x=1", "docs_api"),
    ("other.test", "/docs/apix", "docs"),
    ("other.test", "/docsx", "default"),
    ("other.test", "/", "default"),
    ("127.0.0.1:8080", "/anything", "default"),
]


@pytest.mark.parametrize(("host", "target", "route"), CASES)
def test_route_chosen(routed, host, target, route):
    proxy, _backends = routed
    resp = get(proxy, host, target)
    assert resp.status == 200, f"Host: {host}, target {target}: {resp!r}"
    assert resp.get("X-Backend") == route, (
        f"Host: {host}, target {target}: expected route {route!r}, "
        f"served by {resp.get('X-Backend')!r}"
    )
    seen = resp.json()
    assert seen["target"] == target, "the target must be forwarded unchanged (no strip)"
    hosts = [v for k, v in seen["headers"] if k.lower() == "host"]
    assert hosts == [host], f"the Host header must be forwarded as sent: {hosts}"


def test_request_without_host_uses_hostless_routes(routed):
    proxy, _backends = routed
    resp = get(proxy, None, "/docs/api/x", version="HTTP/1.0")
    assert resp.status == 200, resp
    assert resp.get("X-Backend") == "docs_api"
    resp = get(proxy, None, "/", version="HTTP/1.0")
    assert resp.status == 200, resp
    assert resp.get("X-Backend") == "default"


def test_routes_on_one_keep_alive_connection(routed):
    """Each request on a connection is routed on its own."""
    proxy, _backends = routed
    sequence = [
        ("api.example.com", "/v2/a", "api_v2"),
        ("www.example.com", "/b", "wild"),
        ("api.example.com", "/c", "api"),
        ("other.test", "/docs/d", "docs"),
        ("x.eu.example.com", "/eu/e", "eu"),
        ("other.test", "/f", "default"),
    ]
    with proxy.conn() as conn:
        for host, target, route in sequence:
            conn.send(build_request("GET", target, host=host))
            resp = conn.read_response()
            assert resp.status == 200, resp
            assert resp.get("X-Backend") == route, (host, target, resp)
            assert not resp.closes, "the proxy closed a keep-alive client connection"


# --------------------------------------------------------------------------- 404


def test_no_matching_route_is_404(ws_backend_pair):
    (api, docs), launch = ws_backend_pair
    proxy = launch(
        [
            {"name": "api", "hosts": ["api.example.com"], "upstreams": [api.address]},
            {"name": "docs", "path_prefix": "/docs", "upstreams": [docs.address]},
        ]
    )
    for host, target in [
        ("other.test", "/"),
        ("other.test", "/docsx"),
        ("www.api.example.com", "/x"),
        ("example.com", "/doc"),
    ]:
        with proxy.conn() as conn:
            conn.send(build_request("GET", target, host=host))
            resp = conn.read_response()
            assert resp.status == 404, f"Host: {host}, target {target}: {resp!r}"
            assert resp.get("X-Backend") is None, resp
            assert 0 < len(resp.body) <= 512, f"expected a short message: {resp!r}"
            if not resp.closes:  # the connection carries on
                conn.send(build_request("GET", "/docs/ok", host=host))
                again = conn.read_response()
                assert again.status == 200 and again.get("X-Backend") == "docs", again
    assert get(proxy, "API.example.com:1234", "/x").get("X-Backend") == "api"
    assert api.stats()["plain"] == 1, "a 404 must not reach any backend"
    docs_paths = docs.stats()["paths"]
    assert set(docs_paths) == {"/docs/ok"}, docs_paths


@pytest.fixture
def ws_backend_pair(ws_backend, routes_proxy):
    return (ws_backend("api"), ws_backend("docs")), routes_proxy


# --------------------------------------------------------------------------- strip prefix


def inspect_target(resp) -> str:
    assert resp.status == 200, resp
    return resp.json()["target"]


def test_strip_path_prefix(backend, routes_proxy):
    """``/v1/x`` is forwarded as ``/x``, ``/v1`` as ``/``; a route without
    ``strip_path_prefix`` (``/inspect``) forwards the target unchanged. The real
    backend's ``/inspect`` reports the target it received."""
    proxy = routes_proxy(
        [
            {
                "name": "v1",
                "path_prefix": "/v1",
                "strip_path_prefix": True,
                "upstreams": [backend.address],
            },
            {"name": "inspect", "path_prefix": "/inspect", "upstreams": [backend.address]},
        ]
    )
    cases = [
        ("/v1/inspect", "/inspect"),
        ("/v1/inspect?x=1&y=/v1", "/inspect?x=1&y=/v1"),
        ("/v1/inspect/a/b", "/inspect/a/b"),
        ("/v1/inspect/", "/inspect/"),
        ("/v1/inspect/v1/again", "/inspect/v1/again"),
        ("/inspect", "/inspect"),
        ("/inspect/v1/x?q=1", "/inspect/v1/x?q=1"),
    ]
    for sent, expected in cases:
        resp = proxy.get(sent)
        assert inspect_target(resp) == expected, f"sent {sent}"

    # /v1 alone (and with a query, and with a trailing slash) becomes "/": the backend
    # answers 404 for "/", and counts the path it saw
    before = backend.stats()["paths"].get("/", 0)
    for sent in ["/v1", "/v1?q=1", "/v1/"]:
        proxy.get(sent)
    after = backend.stats()["paths"]
    assert after.get("/", 0) - before == 3, f"backend paths: {after}"
    assert not any(p.startswith("/v1") for p in after), f"prefix not stripped: {after}"

    # /v1x is not under /v1: no route, and nothing reaches the backend
    heads = backend.stats()["heads"]
    resp = proxy.get("/v1x/inspect")
    assert resp.status == 404, resp
    assert backend.stats()["heads"] == heads


# --------------------------------------------------------------------------- ambiguity

AMBIGUOUS = {
    "same-host-same-prefix": (
        {"hosts": ["api.example.com"], "path_prefix": "/v1"},
        {"hosts": ["www.example.com", "api.example.com"], "path_prefix": "/v1"},
    ),
    "same-host-no-prefix": ({"hosts": ["api.example.com"]}, {"hosts": ["api.example.com"]}),
    "host-case-differs": ({"hosts": ["API.Example.com"]}, {"hosts": ["api.example.com"]}),
    "same-wildcard": (
        {"hosts": ["*.example.com"], "path_prefix": "/x"},
        {"hosts": ["*.example.com"], "path_prefix": "/x"},
    ),
    "two-defaults": ({}, {}),
    "hostless-same-prefix": ({"path_prefix": "/v1"}, {"path_prefix": "/v1"}),
}

NOT_AMBIGUOUS = {
    "same-host-other-prefix": (
        {"hosts": ["api.example.com"], "path_prefix": "/v1"},
        {"hosts": ["api.example.com"], "path_prefix": "/v2"},
    ),
    "same-prefix-other-host": (
        {"hosts": ["a.example.com"], "path_prefix": "/v1"},
        {"hosts": ["b.example.com"], "path_prefix": "/v1"},
    ),
    "exact-and-wildcard": ({"hosts": ["api.example.com"]}, {"hosts": ["*.example.com"]}),
    "prefix-and-default": ({"path_prefix": "/v1"}, {}),
    "host-and-default": ({"hosts": ["api.example.com"]}, {}),
}

FIRST, SECOND = "zeta_first", "omega_second"


def write_pair(tmp_path, first: dict, second: dict, listen: str = "127.0.0.1:9"):
    routes = [
        {"name": FIRST, "upstreams": ["127.0.0.1:9"], **first},
        {"name": SECOND, "upstreams": ["127.0.0.1:9"], **second},
    ]
    path = tmp_path / "pair.toml"
    path.write_text(render_config({"listen": [listen], "admin": "off"}, routes))
    return path


def fastpause(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastpause", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("case", list(AMBIGUOUS))
def test_ambiguous_routes_are_rejected_by_validate(tmp_path, case):
    path = write_pair(tmp_path, *AMBIGUOUS[case])
    done = fastpause("validate", str(path))
    out = done.stdout + done.stderr
    assert done.returncode == 2, f"validate exited {done.returncode}: {out}"
    assert FIRST in out and SECOND in out, f"the message must name both routes: {out!r}"
    assert "Traceback" not in out, out


@pytest.mark.parametrize("case", ["same-host-same-prefix", "two-defaults"])
def test_ambiguous_routes_are_rejected_by_run(tmp_path, case):
    port = free_port()
    path = write_pair(tmp_path, *AMBIGUOUS[case], listen=f"127.0.0.1:{port}")
    try:
        done = fastpause("run", "--config", str(path), timeout=30)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"run started with ambiguous routes (killed after 30s): {e.stdout!r}")
    out = done.stdout + done.stderr
    assert done.returncode == 2, f"run exited {done.returncode}: {out}"
    assert FIRST in out and SECOND in out, f"the message must name both routes: {out!r}"
    assert "listening on" not in done.stdout, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("case", list(NOT_AMBIGUOUS))
def test_distinct_routes_validate(tmp_path, case):
    path = write_pair(tmp_path, *NOT_AMBIGUOUS[case])
    done = fastpause("validate", str(path))
    assert done.returncode == 0, f"validate exited {done.returncode}: {done.stdout}{done.stderr}"


# --------------------------------------------------------------------------- host length

# A wildcard route's suffix at the end of a host name longer than 255 bytes: the
# proxy must read the whole name (the backend would), never a name cut at 255.
LONG_HOST_HIDING_SUFFIX = "a" * 243 + ".example.com" + ".evil.test"


@pytest.mark.parametrize(
    "raw",
    [
        build_request("GET", "/x", host=LONG_HOST_HIDING_SUFFIX),
        build_request("GET", f"http://{LONG_HOST_HIDING_SUFFIX}/x"),
        build_request("GET", "/x", host=LONG_HOST_HIDING_SUFFIX + ":8080"),
        build_request("GET", "/x", host="a" * 244 + ".example.com"),  # 256 bytes
        # a ':' that is not a port separator: no reading of it is safe to route on
        build_request("GET", "/x", host="evil.test:x.example.com"),
        build_request("GET", "http://evil.test:x.example.com/x"),
        build_request("GET", "/x", host="www.example.com:80x"),
        build_request("GET", "/x", host="[::1]x.example.com"),
    ],
    ids=[
        "host",
        "absolute-form",
        "host-port",
        "256-bytes",
        "colon",
        "abs-colon",
        "port-x",
        "literal-then-name",
    ],
)
def test_host_routing_never_reads_part_of_a_host(routed, raw):
    """An over-long host name (over 255 bytes, port aside) or a host that is not
    ``uri-host[:port]`` is refused with 400 before routing, and no backend sees it."""
    proxy, backends = routed
    before = {name: b.stats()["plain"] for name, b in backends.items()}
    resp = proxy.request(raw)
    assert resp.status == 400, resp
    assert resp.closes, resp
    after = {name: b.stats()["plain"] for name, b in backends.items()}
    assert after == before, "a refused request reached a backend"


def test_host_of_255_bytes_is_routed_whole(routed):
    proxy, _backends = routed
    host = "a" * 243 + ".example.com"
    assert len(host) == 255
    resp = get(proxy, host + ":8080", "/x")
    assert resp.status == 200, resp
    assert resp.get("X-Backend") == "wild", resp


# --------------------------------------------------------------------------- dot segments

PATH_ROUTES = ["api", "admin", "site"]


@pytest.fixture(scope="module")
def path_routed(tmp_path_factory):
    """/api (stripped), /admin and everything else, each on its own backend."""
    tmp = tmp_path_factory.mktemp("paths")
    backends = dict(zip(PATH_ROUTES, start_ws_backends(tmp, *PATH_ROUTES), strict=True))
    proxies = ProxySet(tmp)
    try:
        proxy = proxies.launch(
            [
                {
                    "name": "api",
                    "path_prefix": "/api",
                    "strip_path_prefix": True,
                    "upstreams": [backends["api"].address],
                },
                {
                    "name": "admin",
                    "path_prefix": "/admin",
                    "upstreams": [backends["admin"].address],
                },
                {"name": "site", "upstreams": [backends["site"].address]},
            ]
        )
        yield proxy, backends
    finally:
        problems = proxies.close()
        for b in backends.values():
            b.kill()
    assert not problems, "\n".join(problems)


# (target sent, route that must serve it, target its backend must receive)
NORMALIZED = [
    ("/api/../admin", "admin", "/admin"),
    ("/api/%2e%2e/admin", "admin", "/admin"),
    ("/api/%2E%2e/admin/x", "admin", "/admin/x"),
    ("/api/.%2e/admin", "admin", "/admin"),
    ("/api/%2e./admin", "admin", "/admin"),
    ("/api/./../admin", "admin", "/admin"),
    ("/api/%2e/../admin", "admin", "/admin"),
    ("/api/x/y/../../../admin?next=/../x", "admin", "/admin?next=/../x"),
    ("/api/x/./y/../z", "api", "/x/z"),
    ("/api/./", "api", "/"),
    ("/api/.", "api", "/"),
    ("/api/..", "site", "/"),
    ("/api/x/..?q=1", "api", "/?q=1"),
    ("/admin/./", "admin", "/admin/"),
    ("/admin/a/../", "admin", "/admin/"),
    ("/%61pi/x", "api", "/x"),
    ("/%61dmin", "admin", "/admin"),
    ("/admin%2Fx", "site", "/admin%2Fx"),
    ("/admin/a%2fb", "admin", "/admin/a%2Fb"),
    ("/admin/caf%c3%a9", "admin", "/admin/caf%C3%A9"),
    ("/admin/%7euser/file.txt", "admin", "/admin/~user/file.txt"),
    ("/admin/...", "admin", "/admin/..."),
    ("/ADMIN", "site", "/ADMIN"),
    ("http://example.test/api/../admin", "admin", "/admin"),
    ("http://example.test/admin/x/.././y", "admin", "/admin/y"),
]


@pytest.mark.parametrize(("target", "route", "forwarded"), NORMALIZED)
def test_path_routing_resolves_dot_segments(path_routed, target, route, forwarded):
    """A path is routed on its RFC 3986 normal form (dot segments removed, %2e read as
    '.', percent-encoded unreserved characters decoded), and that form is what the
    backend receives, with the query as sent: the route and the backend read one path."""
    proxy, _backends = path_routed
    resp = get(proxy, "example.test", target)
    assert resp.status == 200, resp
    assert resp.get("X-Backend") == route, f"{target}: served by {resp.get('X-Backend')}"
    assert resp.json()["target"] == forwarded


REFUSED_PATHS = [
    "/..",
    "/../admin",
    "/%2e%2e/admin",
    "/api/../../admin",
    "/api/%2e%2e/%2E%2E/admin",
    "/admin/../..",
    # a dot segment that only a reader splitting at more than '/' would see
    "/api/..%2fadmin",
    "/api/..%2Fadmin",
    "/api/%2e%2e%2fadmin",
    "/api/x%2f..%2f..%2fadmin",
    "/api/..\\admin",
    "/api/.%2e\\admin",
    "/api/..%5cadmin",
    "/api/..;/admin",
    "/api/..;x=1/admin",
    "/api/.;/../admin",
    # a fragment is not part of a request target (RFC 9112 3.2)
    "/admin#/../api",
    "/api#x",
    # broken percent-encoding in the path
    "/api/%zz",
    "/api/%2",
    "/api/x%",
    "http://example.test/../admin",
]


@pytest.mark.parametrize("target", REFUSED_PATHS)
def test_path_climbing_or_ambiguous_is_refused(path_routed, target):
    """A target that climbs above the root, hides a dot segment behind an encoded slash,
    a backslash or a ';' parameter, has a fragment or broken percent-encoding: 400, and
    no backend sees it."""
    proxy, backends = path_routed
    before = {name: b.stats()["plain"] for name, b in backends.items()}
    resp = get(proxy, "example.test", target)
    assert resp.status == 400, f"{target}: {resp!r}"
    assert resp.closes, resp
    assert 0 < len(resp.body) <= 512, resp
    after = {name: b.stats()["plain"] for name, b in backends.items()}
    assert after == before, f"{target} reached a backend"


def test_held_request_is_routed_again_on_its_normal_path(path_routed):
    """A held request is re-parsed and re-routed at release: still on the normal form."""
    proxy, _backends = path_routed
    proxy.admin.pause("admin")
    try:
        with proxy.conn() as conn:
            conn.send(build_request("GET", "/api/../admin/held", host="example.test"))
            proxy.admin.wait_held(1, "admin")
            proxy.admin.resume("admin")
            resp = conn.read_response()
    finally:
        if proxy.admin.route("admin")["mode"] == "paused":
            proxy.admin.resume("admin")
    assert resp.status == 200, resp
    assert resp.get("X-Backend") == "admin", resp
    assert resp.json()["target"] == "/admin/held"
