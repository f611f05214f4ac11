"""Config loading: units, the TOML schema, and error messages that locate the mistake.

Every error test asserts the whole message shape, ``FILE: KEY.PATH: problem``,
because an error that does not say where is the error users file issues about.
"""

import os
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from fastpause import _core, router
from fastpause.config import (
    Address,
    Config,
    ConfigError,
    RouteConfig,
    UnixAddress,
    default_admin_address,
    default_config,
    load,
    parse,
    parse_admin_address,
    quick_config,
    with_admin,
)
from fastpause.deploy import Deployment, apply_deployments
from fastpause.units import parse_duration, parse_size, parse_whole_seconds

ROUTE = """
[[routes]]
name = "app"
upstreams = ["127.0.0.1:9001"]
"""

# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), ("0s", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("30", "expected a duration string with a unit: ms, s, m or h"),
        (
            30,
            "expected a duration string with a unit: ms, s, m or h (e.g. '250ms', '30s', '2m'), "
            "got integer 30",
        ),
        ("0", "expected a duration string with a unit"),
        ("1d", "invalid duration '1d': expected a duration string with a unit"),
        ("5S", "invalid duration '5S'"),
        ("-1s", "invalid duration '-1s': must not be negative"),
        ("1e3s", "invalid duration '1e3s'"),
        ("721h", "must be at most 720h"),
    ],
)
def test_bad_durations(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512B", 512),
        ("10KB", 10_000),
        ("32KiB", 32 * 1024),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("2MB", 2_000_000),
        ("1.5KiB", 1536),
        ("32 kib", 32 * 1024),
        (4096, 4096),
        (0, 0),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("32", "invalid size '32': expected a size: an integer number of bytes, or a string"),
        ("1PB", "KiB, MiB, GiB, TiB (powers of 1024)"),
        ("1.5B", "not a whole number of bytes"),
        (-1, "invalid size -1: must not be negative"),
        ("-1KiB", "must not be negative"),
        (True, "got boolean true"),
        (1.5, "got float 1.5"),
        ("2000TiB", "must be at most 1024TiB"),
    ],
)
def test_bad_sizes(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert problem in str(caught.value)


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1), ("30s", 30), ("2m", 120)])
def test_whole_seconds(text: str, seconds: int) -> None:
    assert parse_whole_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0s", "500ms", "1.5s"])
def test_whole_seconds_refuses_fractions_and_zero(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_whole_seconds(text)
    assert "Retry-After is a whole number of seconds, at least '1s'" in str(caught.value)


# ---------------------------------------------------------------- loading


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, ROUTE))
    assert config == Config(
        routes=(RouteConfig(name="app", upstreams=(Address("127.0.0.1", 9001),)),)
    )
    assert config.listen == (Address("127.0.0.1", 8080),)
    assert (config.max_head_size, config.max_headers, config.max_uri_size) == (32768, 100, 8192)
    assert (config.client_head_timeout, config.client_body_timeout) == (15.0, 60.0)
    assert (config.keepalive_timeout, config.send_timeout, config.shutdown_timeout) == (60, 60, 10)
    assert (config.access_log, config.access_log_format) == (None, "common")
    route = config.routes[0]
    assert (route.max_body_size, route.host_header, route.request_id) == (1 << 30, None, False)
    assert (route.connect_timeout, route.response_header_timeout) == (5.0, 60.0)
    assert (route.upstream_body_timeout, route.upstream_keepalive) == (60.0, 64)
    assert (route.upstream_keepalive_timeout, route.tunnel_idle_timeout) == (60.0, 3600.0)
    assert (route.try_duration, route.try_interval, route.max_held) == (30.0, 0.25, 10_000)
    assert (route.max_held_body, route.health_path, route.hold_time_header) == (1 << 20, None, None)
    assert route.retry_after == 5
    assert (route.hosts, route.path_prefix, route.strip_path_prefix) == ((), None, False)
    assert route.underscores_in_headers is False
    assert (route.lb, route.weights, route.upstream_weights()) == ("round_robin", (), [1])
    assert (route.health_interval, route.health_timeout) == (1.0, 2.0)
    assert (route.health_passes, route.health_fails, route.fail_duration) == (1, 2, 10.0)
    assert (config.max_held_bytes, config.max_connections) == (256 << 20, 0)
    assert (config.drain_timeout, config.state_file) == (30.0, None)
    assert (config.admin, config.admin_token) == (default_admin_address(), None)


def test_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen = ["0.0.0.0:80", "[::1]:8080", "localhost:0"]
        max_head_size = "64KiB"
        max_headers = 50
        max_uri_size = 4096
        client_head_timeout = "5s"
        client_body_timeout = "500ms"
        keepalive_timeout = "2m"
        send_timeout = "1h"
        shutdown_timeout = "0s"
        access_log = "/var/log/fastpause.log"
        access_log_format = "json"
        max_held_bytes = "1GiB"
        max_connections = 5000
        drain_timeout = "0s"
        state_file = "/var/lib/fastpause/state.json"
        admin = "0.0.0.0:9900"
        admin_token = "0123456789abcdef0123"

        [[routes]]
        name = "web-1.prod_a"
        upstreams = [
            "10.0.0.1:8000",
            { address = "app_server:8000", weight = 3 },
            { address = "[2001:db8::1]:80" },
        ]
        hosts = ["App.Example.com", "*.example.com", "www.example.org."]
        path_prefix = "/api/v1"
        strip_path_prefix = true
        underscores_in_headers = true
        lb = "least_conn"
        max_body_size = 0
        host_header = "example.com:8080"
        request_id = true
        connect_timeout = "1.5s"
        response_header_timeout = "30s"
        upstream_body_timeout = "2m"
        tunnel_idle_timeout = "5m"
        upstream_keepalive = 0
        upstream_keepalive_timeout = "90s"
        try_duration = "0s"
        try_interval = "1s"
        max_held = 0
        max_held_body = "64KiB"
        health_path = "/up"
        health_interval = "250ms"
        health_timeout = "1s"
        health_passes = 3
        health_fails = 5
        fail_duration = "0s"
        hold_time_header = "X-Fastpause-Held-Ms"
        retry_after = "1m"
        """,
    )
    config = load(path)
    assert config.listen == (
        Address("0.0.0.0", 80),
        Address("::1", 8080),
        Address("localhost", 0),
    )
    assert [str(address) for address in config.listen] == [
        "0.0.0.0:80",
        "[::1]:8080",
        "localhost:0",
    ]
    assert (config.max_head_size, config.max_headers, config.max_uri_size) == (65536, 50, 4096)
    assert (config.client_head_timeout, config.client_body_timeout) == (5.0, 0.5)
    assert (config.keepalive_timeout, config.send_timeout, config.shutdown_timeout) == (
        120,
        3600,
        0,
    )
    assert (config.access_log, config.access_log_format) == ("/var/log/fastpause.log", "json")
    assert (config.max_held_bytes, config.max_connections) == (1 << 30, 5000)
    assert (config.drain_timeout, config.state_file) == (0.0, "/var/lib/fastpause/state.json")
    assert (config.admin, config.admin_token) == (Address("0.0.0.0", 9900), "0123456789abcdef0123")
    assert config.routes == (
        RouteConfig(
            name="web-1.prod_a",
            upstreams=(
                Address("10.0.0.1", 8000),
                Address("app_server", 8000),
                Address("2001:db8::1", 80),
            ),
            weights=(1, 3, 1),
            hosts=("app.example.com", "*.example.com", "www.example.org"),
            path_prefix="/api/v1",
            strip_path_prefix=True,
            underscores_in_headers=True,
            lb="least_conn",
            max_body_size=0,
            host_header="example.com:8080",
            request_id=True,
            connect_timeout=1.5,
            response_header_timeout=30.0,
            upstream_body_timeout=120.0,
            tunnel_idle_timeout=300.0,
            upstream_keepalive=0,
            upstream_keepalive_timeout=90.0,
            try_duration=0.0,
            try_interval=1.0,
            max_held=0,
            max_held_body=64 * 1024,
            health_path="/up",
            health_interval=0.25,
            health_timeout=1.0,
            health_passes=3,
            health_fails=5,
            fail_duration=0.0,
            hold_time_header="X-Fastpause-Held-Ms",
            retry_after=60,
        ),
    )


@pytest.mark.parametrize(("value", "expected"), [('"off"', None), ('"stdout"', "stdout")])
def test_access_log_targets(tmp_path: Path, value: str, expected: str | None) -> None:
    assert load(write(tmp_path, f"access_log = {value}\n{ROUTE}")).access_log == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("unix:/run/fastpause.sock", UnixAddress("/run/fastpause.sock")),
        ("unix:admin.sock", UnixAddress("admin.sock")),
        ("127.0.0.1:9900", Address("127.0.0.1", 9900)),
        ("[::1]:0", Address("::1", 0)),
        ("off", None),
    ],
)
def test_admin_addresses(tmp_path: Path, value: str, expected: object) -> None:
    assert load(write(tmp_path, f"admin = '{value}'\n{ROUTE}")).admin == expected
    assert parse_admin_address(value) == expected
    if expected is not None:
        assert str(expected) == value


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "[::1]", "localhost"])
def test_loopback_tcp_admin_needs_no_token(tmp_path: Path, host: str) -> None:
    assert load(write(tmp_path, f"admin = '{host}:9900'\n{ROUTE}")).admin_token is None


def test_default_admin_socket_is_in_the_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_admin_address() == UnixAddress("/run/user/1000/fastpause.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_admin_address() == UnixAddress(f"/tmp/fastpause-{os.getuid()}.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert default_admin_address() == UnixAddress(f"/tmp/fastpause-{os.getuid()}.sock")


def test_admin_from_the_command_line_is_checked_like_the_file() -> None:
    config = with_admin(default_config(), "unix:/tmp/x.sock")
    assert config.admin == UnixAddress("/tmp/x.sock")
    assert with_admin(config, "off").admin is None
    with pytest.raises(ConfigError) as caught:
        with_admin(config, "0.0.0.0:9900")
    assert str(caught.value) == (
        "command line: --admin: 0.0.0.0:9900 can be reached from other hosts: set admin_token, "
        "or listen on loopback (127.0.0.1) or a Unix socket"
    )


# Each case: TOML text, the key path the message must name, the problem it must state.
ERRORS = [
    pytest.param(
        f"{ROUTE}health_interval = '0s'\n",
        "routes[0].health_interval",
        "invalid duration '0s': must be greater than 0",
        id="health-interval-zero",
    ),
    pytest.param(
        f"{ROUTE}health_timeout = 2\n",
        "routes[0].health_timeout",
        "expected a duration string with a unit",
        id="health-timeout-bare-number",
    ),
    pytest.param(
        f"{ROUTE}health_passes = 0\n",
        "routes[0].health_passes",
        "0 is out of range: expected 1 to 1000",
        id="health-passes-zero",
    ),
    pytest.param(
        f"{ROUTE}health_fails = '2'\n",
        "routes[0].health_fails",
        "expected an integer, got string '2'",
        id="health-fails-string",
    ),
    pytest.param(
        f"{ROUTE}fail_duration = '-1s'\n",
        "routes[0].fail_duration",
        "invalid duration '-1s': must not be negative",
        id="fail-duration-negative",
    ),
    pytest.param(
        f"{ROUTE}health_intervall = '1s'\n",
        "routes[0]",
        "unknown key 'health_intervall' (did you mean 'health_interval'?)",
        id="health-key-typo",
    ),
    pytest.param(
        f"drain_timeout = 'soon'\n{ROUTE}",
        "drain_timeout",
        "invalid duration 'soon'",
        id="drain-timeout-bad",
    ),
    pytest.param(
        f"state_file = ''\n{ROUTE}",
        "state_file",
        "must not be empty",
        id="state-file-empty",
    ),
    pytest.param(
        f"state_file = true\n{ROUTE}",
        "state_file",
        "expected a string, got boolean true",
        id="state-file-not-a-string",
    ),
    pytest.param(
        """
        [[routes]]
        name = "app"
        upstreams = ["127.0.0.1:9001", "foo"]
        """,
        "routes[0].upstreams[1]",
        "invalid address 'foo': expected HOST:PORT",
        id="bad-upstream-address",
    ),
    pytest.param(
        f'listen = ["::1:8080"]\n{ROUTE}',
        "listen[0]",
        "invalid address '::1:8080': expected HOST:PORT (IPv6 in brackets, e.g. '[::1]:8080')",
        id="ipv6-without-brackets",
    ),
    pytest.param(
        f'listen = ["[::g]:8080"]\n{ROUTE}',
        "listen[0]",
        "'::g' is not an IPv6 address",
        id="bad-ipv6",
    ),
    pytest.param(
        f'listen = ["bad host:8080"]\n{ROUTE}',
        "listen[0]",
        "'bad host' is not a host name or IP address",
        id="bad-host",
    ),
    pytest.param(
        f'listen = ["127.0.0.1:65536"]\n{ROUTE}',
        "listen[0]",
        "port must be a number from 0 to 65535",
        id="port-too-big",
    ),
    pytest.param(
        """
        [[routes]]
        name = "app"
        upstreams = ["127.0.0.1:0"]
        """,
        "routes[0].upstreams[0]",
        "port must be a number from 1 to 65535",
        id="upstream-port-zero",
    ),
    pytest.param(
        f'listen = "127.0.0.1:8080"\n{ROUTE}',
        "listen",
        """expected an array of HOST:PORT strings like ["127.0.0.1:8080"], got string""",
        id="listen-not-a-list",
    ),
    pytest.param(
        f"listen = [8080]\n{ROUTE}",
        "listen[0]",
        "expected a HOST:PORT string, got integer 8080",
        id="listen-item-not-a-string",
    ),
    pytest.param(
        f'listen = ["127.0.0.1:80", "127.0.0.1:80"]\n{ROUTE}',
        "listen[1]",
        "duplicate address '127.0.0.1:80'",
        id="duplicate-listener",
    ),
    pytest.param(
        f"listen = []\n{ROUTE}",
        "listen",
        "must list at least one address",
        id="no-listener",
    ),
    pytest.param(
        f"listn = []\n{ROUTE}",
        "",
        "unknown key 'listn' (did you mean 'listen'?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        f"{ROUTE}upstream_timeout = '5s'\n",
        "routes[0]",
        "unknown key 'upstream_timeout'",
        id="unknown-route-key",
    ),
    pytest.param(
        f"{ROUTE}upstream = ['127.0.0.1:1']\n",
        "routes[0]",
        "unknown key 'upstream' (did you mean 'upstreams'?)",
        id="unknown-route-key-with-suggestion",
    ),
    pytest.param(
        f'max_headers = "100"\n{ROUTE}',
        "max_headers",
        "expected an integer, got string '100'",
        id="wrong-type-integer",
    ),
    pytest.param(
        f"max_headers = 0\n{ROUTE}",
        "max_headers",
        "0 is out of range: expected 1 to 1000",
        id="integer-out-of-range",
    ),
    pytest.param(
        f"{ROUTE}request_id = 'yes'\n",
        "routes[0].request_id",
        "expected true or false, got string 'yes'",
        id="wrong-type-boolean",
    ),
    pytest.param(
        f"{ROUTE}connect_timeout = 5\n",
        "routes[0].connect_timeout",
        "expected a duration string with a unit: ms, s, m or h",
        id="duration-without-unit",
    ),
    pytest.param(
        f"keepalive_timeout = '0s'\n{ROUTE}",
        "keepalive_timeout",
        "invalid duration '0s': must be greater than 0",
        id="zero-timeout",
    ),
    pytest.param(
        f"send_timeout = '-5s'\n{ROUTE}",
        "send_timeout",
        "invalid duration '-5s': must not be negative",
        id="negative-timeout",
    ),
    pytest.param(
        f"{ROUTE}max_body_size = -1\n",
        "routes[0].max_body_size",
        "invalid size -1: must not be negative",
        id="negative-size",
    ),
    pytest.param(
        f"max_head_size = '100B'\n{ROUTE}",
        "max_head_size",
        "invalid size '100B': must be at least 1KiB",
        id="head-size-too-small",
    ),
    pytest.param(
        f"max_uri_size = '2MiB'\n{ROUTE}",
        "max_uri_size",
        "invalid size '2MiB': must be at most 1MiB",
        id="uri-size-too-big",
    ),
    pytest.param(
        f"{ROUTE}host_header = 'a.example\\r\\nX-Evil: 1'\n",
        "routes[0].host_header",
        "invalid host_header",
        id="host-header-injection",
    ),
    pytest.param(
        f"access_log = ''\n{ROUTE}",
        "access_log",
        "must not be empty",
        id="empty-access-log",
    ),
    pytest.param(
        f"access_log_format = 'xml'\n{ROUTE}",
        "access_log_format",
        "expected 'common' or 'json', got string 'xml'",
        id="bad-log-format",
    ),
    pytest.param(
        f"{ROUTE}try_interval = '0s'\n",
        "routes[0].try_interval",
        "invalid duration '0s': must be greater than 0",
        id="zero-try-interval",
    ),
    pytest.param(
        f"{ROUTE}try_duration = 30\n",
        "routes[0].try_duration",
        "expected a duration string with a unit",
        id="try-duration-without-unit",
    ),
    pytest.param(
        f"{ROUTE}max_held = -1\n",
        "routes[0].max_held",
        "-1 is out of range: expected 0 to 1000000000",
        id="negative-max-held",
    ),
    pytest.param(
        f"{ROUTE}max_held_body = '1XB'\n",
        "routes[0].max_held_body",
        "invalid size '1XB'",
        id="bad-max-held-body",
    ),
    pytest.param(
        f"{ROUTE}health_path = 'up'\n",
        "routes[0].health_path",
        "invalid health_path 'up': must start with '/'",
        id="health-path-not-absolute",
    ),
    pytest.param(
        f"{ROUTE}health_path = '/up?full=1'\n",
        "routes[0].health_path",
        "expected a URL path without query, spaces or control characters",
        id="health-path-with-query",
    ),
    pytest.param(
        f"{ROUTE}hold_time_header = 'X Held'\n",
        "routes[0].hold_time_header",
        "invalid header name 'X Held': use letters, digits and '-'",
        id="hold-time-header-not-a-token",
    ),
    pytest.param(
        f"{ROUTE}hold_time_header = 'Content-Length'\n",
        "routes[0].hold_time_header",
        "the proxy frames responses with it",
        id="hold-time-header-framing",
    ),
    pytest.param(
        f"{ROUTE}retry_after = '1.5s'\n",
        "routes[0].retry_after",
        "Retry-After is a whole number of seconds",
        id="fractional-retry-after",
    ),
    pytest.param(
        f"{ROUTE}retry_after = '0s'\n",
        "routes[0].retry_after",
        "at least '1s'",
        id="zero-retry-after",
    ),
    pytest.param(
        f"max_held_bytes = -1\n{ROUTE}",
        "max_held_bytes",
        "invalid size -1: must not be negative",
        id="negative-max-held-bytes",
    ),
    pytest.param(
        f"admin = '0.0.0.0:9900'\n{ROUTE}",
        "admin",
        "0.0.0.0:9900 can be reached from other hosts: set admin_token",
        id="public-admin-without-token",
    ),
    pytest.param(
        f"admin = 'admin.example.com:9900'\n{ROUTE}",
        "admin",
        "can be reached from other hosts: set admin_token",
        id="named-admin-host-without-token",
    ),
    pytest.param(
        f"admin = 'socket.sock'\n{ROUTE}",
        "admin",
        "invalid admin address 'socket.sock': expected 'unix:/path/to.sock', 'HOST:PORT' or 'off'",
        id="admin-path-without-unix-prefix",
    ),
    pytest.param(
        f"admin = 'unix:'\n{ROUTE}",
        "admin",
        "invalid admin address 'unix:': the socket path is missing",
        id="admin-unix-without-path",
    ),
    pytest.param(
        f"admin = 'unix:/{'x' * 120}.sock'\n{ROUTE}",
        "admin",
        "a Unix socket path must be at most 107 bytes",
        id="admin-unix-path-too-long",
    ),
    pytest.param(
        f"admin = 'localhost:99999'\n{ROUTE}",
        "admin",
        "port must be a number from 0 to 65535",
        id="admin-bad-port",
    ),
    pytest.param(
        f"admin = 9900\n{ROUTE}",
        "admin",
        "expected 'unix:/path/to.sock', 'HOST:PORT' or 'off', got integer 9900",
        id="admin-not-a-string",
    ),
    pytest.param(
        f"admin_token = 'short'\n{ROUTE}",
        "admin_token",
        "too short (5 characters): use at least 16",
        id="short-admin-token",
    ),
    pytest.param(
        f"admin_token = 'with space 0123456789'\n{ROUTE}",
        "admin_token",
        "must be visible ASCII characters without spaces",
        id="admin-token-with-space",
    ),
    pytest.param(
        "listen = ['127.0.0.1:8080']\n",
        "routes",
        "at least one route is required: add a [[routes]] table",
        id="no-routes",
    ),
    pytest.param(
        "[routes]\nname = 'app'\n",
        "routes",
        "expected an array of tables ([[routes]]), got table",
        id="routes-not-an-array",
    ),
    pytest.param(
        "[[routes]]\nupstreams = ['127.0.0.1:1']\n",
        "routes[0]",
        "missing required key 'name'",
        id="missing-name",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\n",
        "routes[0]",
        "missing required key 'upstreams'",
        id="missing-upstreams",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = []\n",
        "routes[0].upstreams",
        "must list at least one address",
        id="empty-upstreams",
    ),
    pytest.param(
        "[[routes]]\nname = ''\nupstreams = ['127.0.0.1:1']\n",
        "routes[0].name",
        "must not be empty",
        id="empty-name",
    ),
    pytest.param(
        "[[routes]]\nname = 'my app'\nupstreams = ['127.0.0.1:1']\n",
        "routes[0].name",
        "invalid name 'my app': use only letters, digits, '_', '.' and '-'",
        id="bad-name",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = ['127.0.0.1:1', '127.0.0.1:1']\n",
        "routes[0].upstreams[1]",
        "duplicate address '127.0.0.1:1'",
        id="duplicate-upstream",
    ),
    pytest.param(
        f"{ROUTE}{ROUTE}",
        "routes[1].name",
        "duplicate route name 'app'",
        id="duplicate-route-name",
    ),
    pytest.param(
        f"{ROUTE}{ROUTE.replace('app', 'api')}",
        "routes[1]",
        "route 'api' and routes[0] ('app') both match any host and any path: "
        "give one of them other hosts or another path_prefix",
        id="two-routes-for-everything",
    ),
    pytest.param(
        f"{ROUTE}hosts = ['a.example.com', 'B.example.com']\npath_prefix = '/v1'\n"
        f"{ROUTE.replace('app', 'api')}hosts = ['b.example.com.']\npath_prefix = '/v1'\n",
        "routes[1]",
        "route 'api' and routes[0] ('app') both match host b.example.com and path prefix /v1",
        id="routes-sharing-a-host-and-prefix",
    ),
    pytest.param(
        f"{ROUTE}path_prefix = '/v1'\n{ROUTE.replace('app', 'api')}"
        f"{ROUTE.replace('app', 'web')}path_prefix = '/v1'\n",
        "routes[2]",
        "route 'web' and routes[0] ('app') both match any host and path prefix /v1",
        id="routes-sharing-a-prefix",
    ),
    pytest.param(
        f"{ROUTE}hosts = 'app.example.com'\n",
        "routes[0].hosts",
        "expected an array of host names like",
        id="hosts-not-an-array",
    ),
    pytest.param(
        f"{ROUTE}hosts = []\n",
        "routes[0].hosts",
        "must list at least one host name (leave hosts out to match any host)",
        id="hosts-empty",
    ),
    pytest.param(
        f"{ROUTE}hosts = ['app.example.com:8080']\n",
        "routes[0].hosts[0]",
        "invalid host 'app.example.com:8080': hosts match whatever the port, leave it out "
        "('app.example.com')",
        id="host-with-port",
    ),
    pytest.param(
        f"{ROUTE}hosts = ['ok.example.com', '*']\n",
        "routes[0].hosts[1]",
        "invalid host '*': expected a name like 'app.example.com' or '*.example.com'",
        id="host-bare-star",
    ),
    pytest.param(
        f"{ROUTE}hosts = ['a.*.example.com']\n",
        "routes[0].hosts[0]",
        "invalid host 'a.*.example.com'",
        id="host-star-inside",
    ),
    pytest.param(
        f"{ROUTE}hosts = ['bad host.com']\n",
        "routes[0].hosts[0]",
        "invalid host 'bad host.com'",
        id="host-with-space",
    ),
    pytest.param(
        f"{ROUTE}hosts = [7]\n",
        "routes[0].hosts[0]",
        "expected a string, got integer 7",
        id="host-not-a-string",
    ),
    pytest.param(
        f"{ROUTE}hosts = ['app.example.com', 'APP.example.com']\n",
        "routes[0].hosts[1]",
        "duplicate host 'APP.example.com'",
        id="duplicate-host",
    ),
    pytest.param(
        f"{ROUTE}path_prefix = 'api'\n",
        "routes[0].path_prefix",
        "invalid path_prefix 'api': must start with '/'",
        id="path-prefix-not-absolute",
    ),
    pytest.param(
        f"{ROUTE}path_prefix = '/api?x=1'\n",
        "routes[0].path_prefix",
        "invalid path_prefix '/api?x=1': expected a URL path without query",
        id="path-prefix-with-query",
    ),
    pytest.param(
        f"{ROUTE}path_prefix = '/api/../admin'\n",
        "routes[0].path_prefix",
        "invalid path_prefix '/api/../admin': request paths are compared in normal form, "
        "write it '/admin'",
        id="path-prefix-dot-segments",
    ),
    pytest.param(
        f"{ROUTE}path_prefix = '/%61pi/caf%c3%a9'\n",
        "routes[0].path_prefix",
        "write it '/api/caf%C3%A9'",
        id="path-prefix-not-normal-encoding",
    ),
    pytest.param(
        f"{ROUTE}path_prefix = '/..'\n",
        "routes[0].path_prefix",
        "invalid path_prefix '/..': the path climbs above the root ('..')",
        id="path-prefix-climbs",
    ),
    pytest.param(
        f"{ROUTE}health_path = '/x/./up'\n",
        "routes[0].health_path",
        "write it '/x/up'",
        id="health-path-dot-segment",
    ),
    pytest.param(
        f"{ROUTE}underscores_in_headers = 'on'\n",
        "routes[0].underscores_in_headers",
        "expected true or false, got string 'on'",
        id="underscores-not-a-boolean",
    ),
    pytest.param(
        f"underscores_in_headers = true\n{ROUTE}",
        "",
        "unknown key 'underscores_in_headers'",
        id="underscores-is-a-route-key",
    ),
    pytest.param(
        f"{ROUTE}strip_path_prefix = true\n",
        "routes[0].strip_path_prefix",
        "nothing to strip: the route has no path_prefix",
        id="strip-without-prefix",
    ),
    pytest.param(
        f"{ROUTE}path_prefix = '/api'\nstrip_path_prefix = 'yes'\n",
        "routes[0].strip_path_prefix",
        "expected true or false, got string 'yes'",
        id="strip-not-a-boolean",
    ),
    pytest.param(
        f"{ROUTE}lb = 'roundrobin'\n",
        "routes[0].lb",
        "expected one of round_robin, least_conn, random_two, first, ip_hash, cookie, "
        "got string 'roundrobin'",
        id="unknown-lb-policy",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = [{ address = '127.0.0.1:1', weight = 0 }]\n",
        "routes[0].upstreams[0].weight",
        "0 is out of range: expected 1 to 1000",
        id="weight-zero",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = [{ address = '127.0.0.1:1', weight = 1.5 }]\n",
        "routes[0].upstreams[0].weight",
        "expected an integer, got float 1.5",
        id="weight-not-an-integer",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = ['127.0.0.1:1', { weight = 2 }]\n",
        "routes[0].upstreams[1]",
        "missing required key 'address'",
        id="weighted-upstream-without-address",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = [{ address = '127.0.0.1:1', weigth = 2 }]\n",
        "routes[0].upstreams[0]",
        "unknown key 'weigth' (did you mean 'weight'?)",
        id="weighted-upstream-key-typo",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = [{ address = 'nowhere', weight = 2 }]\n",
        "routes[0].upstreams[0].address",
        "invalid address 'nowhere': expected HOST:PORT",
        id="weighted-upstream-bad-address",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\n"
        "upstreams = ['127.0.0.1:1', { address = '127.0.0.1:1', weight = 2 }]\n",
        "routes[0].upstreams[1]",
        "duplicate address '127.0.0.1:1'",
        id="duplicate-upstream-in-both-forms",
    ),
    pytest.param(
        "[[routes]]\nname = 'app'\nupstreams = [8080]\n",
        "routes[0].upstreams[0]",
        'expected a HOST:PORT string or a table like { address = "127.0.0.1:3000", '
        "weight = 2 }, got integer 8080",
        id="upstream-neither-string-nor-table",
    ),
    pytest.param(
        f"max_connections = -1\n{ROUTE}",
        "max_connections",
        "-1 is out of range: expected 0 to 10000000",
        id="negative-max-connections",
    ),
    pytest.param(
        f"max_connections = '100'\n{ROUTE}",
        "max_connections",
        "expected an integer, got string '100'",
        id="max-connections-string",
    ),
]


@pytest.mark.parametrize(("text", "key_path", "problem"), ERRORS)
def test_errors_name_file_key_and_problem(
    tmp_path: Path, text: str, key_path: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    prefix = f"{path}: {key_path}: " if key_path else f"{path}: "
    message = str(caught.value)
    assert message.startswith(prefix), message
    assert problem in message.removeprefix(prefix), message
    assert caught.value.path == key_path


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, f"{ROUTE}max_headers 100\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 5, column 13" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: cannot read file: No such file or directory"


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: cannot read file: it is a directory, not a regular file"
    )


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"# caf\xe9\n" + ROUTE.encode())
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 5)"


def test_parse_without_a_file_names_only_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"routes": [{"name": "app", "upstreams": ["x"]}]}, None)
    assert str(caught.value).startswith("routes[0].upstreams[0]: invalid address 'x'")


# ---------------------------------------------------------------- built-in configs


def test_default_config() -> None:
    config = default_config()
    assert config.listen == (Address("127.0.0.1", 8080),)
    assert config.routes == (RouteConfig(name="default", upstreams=(Address("127.0.0.1", 8003),)),)


def test_quick_config() -> None:
    config = quick_config(["[::1]:9000"], ["127.0.0.1:1", "localhost:2"])
    assert config.listen == (Address("::1", 9000),)
    assert config.routes[0].upstreams == (Address("127.0.0.1", 1), Address("localhost", 2))
    assert quick_config([], ["127.0.0.1:1"]).listen == (Address("127.0.0.1", 8080),)


@pytest.mark.parametrize(
    ("listen", "to", "message"),
    [
        ([], ["127.0.0.1:1", "nope"], "command line: --to: invalid address 'nope'"),
        (["127.0.0.1"], [], "command line: --listen: invalid address '127.0.0.1'"),
    ],
)
def test_quick_config_errors_name_the_option(
    listen: list[str], to: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        quick_config(listen, to)
    assert str(caught.value).startswith(message)


# ---------------------------------------------------------------- routing table


def test_table_carries_the_config() -> None:
    config = quick_config([], ["127.0.0.1:9001", "localhost:9002"])
    table = router.build_table(config)
    [route] = table.routes
    assert route.name == "default"
    assert [(u.address, u.host, u.port) for u in route.upstreams] == [
        ("127.0.0.1:9001", "127.0.0.1", 9001),
        ("localhost:9002", "127.0.0.1", 9002),
    ]


def test_unresolvable_upstream_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[[routes]]\nname = 'a'\nupstreams = ['no-such-host.invalid:80']\n")
    with pytest.raises(ConfigError) as caught:
        router.build_table(load(path))
    assert str(caught.value).startswith(
        f"{path}: routes[0].upstreams[0]: cannot resolve host 'no-such-host.invalid'"
    )


def test_rebuild_reuses_unchanged_upstreams() -> None:
    config = quick_config([], ["127.0.0.1:9001", "127.0.0.1:9002"])
    first = router.build_table(config)
    second = router.build_table(config, first)
    assert [id(u) for u in second.routes[0].upstreams] == [id(u) for u in first.routes[0].upstreams]

    added = quick_config([], ["127.0.0.1:9002", "127.0.0.1:9003"])
    third = router.build_table(added, second)
    assert third.routes[0].upstreams[0] is second.routes[0].upstreams[1]
    assert third.routes[0].upstreams[1] not in second.routes[0].upstreams


def test_rebuild_with_new_pool_settings_gets_fresh_upstreams() -> None:
    config = quick_config([], ["127.0.0.1:9001"])
    first = router.build_table(config)
    [route] = config.routes
    changed = Config(routes=(RouteConfig(route.name, route.upstreams, upstream_keepalive=8),))
    second = router.build_table(changed, first)
    assert second.routes[0].upstreams[0] is not first.routes[0].upstreams[0]


def test_route_state_survives_a_rebuild() -> None:
    """A reload must not resume a paused route or drop what it holds."""
    config = quick_config([], ["127.0.0.1:9001"])
    first = router.build_table(config)
    first.routes[0].state.pause(5.0)
    second = router.build_table(config, first)
    assert second.routes[0].state is first.routes[0].state
    assert second.routes[0].state.mode_name == "paused"
    assert router.build_table(config).routes[0].state.mode_name == "running"


def test_table_carries_the_holding_settings() -> None:
    route = RouteConfig(
        "app",
        (Address("127.0.0.1", 9001),),
        try_duration=2.0,
        try_interval=0.5,
        max_held=7,
        max_held_body=100,
        retry_after=9,
    )
    [built] = router.build_table(Config(routes=(route,))).routes
    assert (built.try_duration, built.try_interval, built.max_held) == (2.0, 0.5, 7)
    assert (built.max_held_body, built.retry_after, built.state.name) == (100, 9, "app")


def test_table_carries_the_passive_health_setting() -> None:
    route = RouteConfig("app", (Address("127.0.0.1", 9001),), fail_duration=0.0)
    [built] = router.build_table(Config(routes=(route,))).routes
    assert built.fail_duration == 0.0


def test_rebuild_never_reuses_a_draining_upstream() -> None:
    """A drained upstream takes no new requests: a reload that brings its address back
    needs a fresh one."""
    config = quick_config([], ["127.0.0.1:9001"])
    first = router.build_table(config)
    first.routes[0].upstreams[0].drain()
    second = router.build_table(config, first)
    assert second.routes[0].upstreams[0] is not first.routes[0].upstreams[0]
    assert not second.routes[0].upstreams[0].draining


def test_build_with_resolved_addresses_does_not_resolve() -> None:
    config = quick_config([], ["no-such-host.invalid:9001"])
    table = router.build_table(config, resolved={"no-such-host.invalid:9001": "10.0.0.7"})
    [upstream] = table.routes[0].upstreams
    assert (upstream.address, upstream.host, upstream.port) == (
        "no-such-host.invalid:9001",
        "10.0.0.7",
        9001,
    )


def test_retired_upstreams_are_those_no_route_uses() -> None:
    first = router.build_table(quick_config([], ["127.0.0.1:9001", "127.0.0.1:9002"]))
    second = router.build_table(quick_config([], ["127.0.0.1:9002", "127.0.0.1:9003"]), first)
    assert router.retired(first, second) == [first.routes[0].upstreams[0]]
    assert router.retired(second, second) == []


def test_build_without_previous_never_reuses() -> None:
    config = quick_config([], ["127.0.0.1:9001"])
    first = router.build_table(config)
    assert router.build_table(config).routes[0].upstreams[0] is not first.routes[0].upstreams[0]


def test_several_routes_each_with_their_own_settings(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            """
            [[routes]]
            name = "api"
            hosts = ["api.example.com"]
            upstreams = [{ address = "127.0.0.1:9001", weight = 5 }, "127.0.0.1:9002"]
            lb = "round_robin"
            try_duration = "5s"

            [[routes]]
            name = "api_v2"
            hosts = ["api.example.com"]
            path_prefix = "/v2"
            strip_path_prefix = true
            upstreams = ["127.0.0.1:9003"]
            max_body_size = "1KiB"

            [[routes]]
            name = "default"
            upstreams = ["127.0.0.1:9001"]
            lb = "cookie"
            """,
        )
    )
    api, v2, default = config.routes
    assert (api.name, api.hosts, api.path_prefix, api.weights) == (
        "api",
        ("api.example.com",),
        None,
        (5, 1),
    )
    assert (api.try_duration, v2.try_duration) == (5.0, 30.0)
    assert (v2.path_prefix, v2.strip_path_prefix, v2.max_body_size) == ("/v2", True, 1024)
    assert (default.hosts, default.lb, default.max_body_size) == ((), "cookie", 1 << 30)


@pytest.mark.parametrize("lb", _core.LB_POLICIES)
def test_every_lb_policy_is_accepted(tmp_path: Path, lb: str) -> None:
    assert load(write(tmp_path, f"{ROUTE}lb = '{lb}'\n")).routes[0].lb == lb


def test_weights_of_one_are_the_default(tmp_path: Path) -> None:
    """Writing weight = 1 everywhere is the same config as writing no weights."""
    path = write(
        tmp_path,
        """
        [[routes]]
        name = "app"
        upstreams = [{ address = "127.0.0.1:9001", weight = 1 }, "127.0.0.1:9002"]
        """,
    )
    [route] = load(path).routes
    assert route == RouteConfig(
        name="app", upstreams=(Address("127.0.0.1", 9001), Address("127.0.0.1", 9002))
    )
    assert route.upstream_weights() == [1, 1]


DISTINCT_ROUTES = [
    pytest.param(
        {"hosts": ["api.example.com"], "path_prefix": "/v1"},
        {"hosts": ["api.example.com"], "path_prefix": "/v2"},
        id="same-host-other-prefix",
    ),
    pytest.param({"hosts": ["api.example.com"]}, {"hosts": ["*.example.com"]}, id="exact-wildcard"),
    pytest.param({"path_prefix": "/v1"}, {}, id="prefix-and-default"),
    pytest.param({"path_prefix": "/v1"}, {"path_prefix": "/v1/"}, id="trailing-slash-differs"),
    pytest.param(
        {"hosts": ["a.example.com"], "path_prefix": "/v1"},
        {"path_prefix": "/v1"},
        id="host-and-hostless",
    ),
]


@pytest.mark.parametrize(("first", "second"), DISTINCT_ROUTES)
def test_routes_that_differ_in_host_or_prefix_are_accepted(first: dict, second: dict) -> None:
    routes = [
        {"name": "one", "upstreams": ["127.0.0.1:9001"], **first},
        {"name": "two", "upstreams": ["127.0.0.1:9001"], **second},
    ]
    config = parse({"routes": routes}, "config.toml")
    table = router.build_table(config)  # the data plane agrees
    assert [route.name for route in table.routes] == ["one", "two"]


def test_the_data_plane_refusing_a_table_is_a_config_error() -> None:
    """Validation catches ambiguous routes first; a config built without it still gets
    a located error, naming both routes, rather than a traceback."""
    route = RouteConfig("one", (Address("127.0.0.1", 9001),), hosts=("a.example.com",))
    config = Config(routes=(route, replace(route, name="two")), source="built.toml")
    with pytest.raises(ConfigError) as caught:
        router.build_table(config)
    assert caught.value.source == "built.toml"
    assert caught.value.path == "routes"
    assert "'one'" in caught.value.problem and "'two'" in caught.value.problem


def test_table_carries_the_routing_settings() -> None:
    route = RouteConfig(
        "app",
        (Address("127.0.0.1", 9001), Address("127.0.0.1", 9002)),
        weights=(4, 1),
        hosts=("app.example.com", "*.example.org"),
        path_prefix="/app",
        strip_path_prefix=True,
        underscores_in_headers=True,
        lb="ip_hash",
    )
    [built] = router.build_table(Config(routes=(route,))).routes
    assert built.hosts == ("app.example.com", "*.example.org")
    assert (built.path_prefix, built.strip_path_prefix, built.lb) == (b"/app", True, "ip_hash")
    assert built.underscores_in_headers is True
    assert router.path_prefix(built) == "/app"


def test_the_data_plane_refuses_a_path_prefix_not_in_normal_form() -> None:
    """A config built without validation still gets a located error: a prefix that no
    request path (compared in normal form) could ever match is refused."""
    route = RouteConfig("app", (Address("127.0.0.1", 9001),), path_prefix="/a/./b")
    with pytest.raises(ConfigError) as caught:
        router.build_table(Config(routes=(route,), source="built.toml"))
    assert caught.value.path == "routes[0]"
    assert "'/a/./b' is not in normal form" in caught.value.problem
    assert "'/a/b'" in caught.value.problem


def test_routes_sharing_an_upstream_share_its_pool() -> None:
    shared = Address("127.0.0.1", 9001)
    config = Config(
        routes=(
            RouteConfig("a", (shared,), path_prefix="/a"),
            RouteConfig("b", (shared, Address("127.0.0.1", 9002)), weights=(2, 1)),
        )
    )
    a, b = router.build_table(config).routes
    assert a.upstreams[0] is b.upstreams[0]


@pytest.mark.parametrize(
    ("hosts", "prefix", "strip", "text"),
    [
        ((), None, False, "*"),
        (("api.example.com",), None, False, "api.example.com"),
        (("api.example.com", "*.example.org"), "/v2", False, "api.example.com,*.example.org/v2"),
        ((), "/docs", True, "/docs (stripped)"),
    ],
)
def test_describe_match(hosts: tuple[str, ...], prefix: str | None, strip: bool, text: str) -> None:
    assert router.describe_match(hosts, prefix, strip) == text


# ---------------------------------------------------------------- deploy overrides


def test_a_deploy_outlives_a_config_whose_upstreams_did_not_change() -> None:
    config = quick_config([], ["127.0.0.1:9001"])
    deployed = Deployment((Address("127.0.0.1", 9002),), (Address("127.0.0.1", 9001),))
    effective, kept, notes = apply_deployments(config, {"default": deployed})
    assert effective.routes[0].upstreams == (Address("127.0.0.1", 9002),)
    assert (kept, notes) == ({"default": deployed}, [])


def test_the_config_wins_once_its_upstreams_changed() -> None:
    config = quick_config([], ["127.0.0.1:9003"])
    deployed = Deployment((Address("127.0.0.1", 9002),), (Address("127.0.0.1", 9001),))
    effective, kept, notes = apply_deployments(config, {"default": deployed})
    assert effective == config
    assert kept == {}
    assert notes == [
        "route default: upstreams changed in the config since the deploy to 127.0.0.1:9002; "
        "using the config's 127.0.0.1:9003"
    ]


def test_a_config_updated_to_the_deployed_upstreams_drops_the_deploy_quietly() -> None:
    config = quick_config([], ["127.0.0.1:9002"])
    deployed = Deployment((Address("127.0.0.1", 9002),), (Address("127.0.0.1", 9001),))
    assert apply_deployments(config, {"default": deployed}) == (config, {}, [])


def test_deployed_targets_have_weight_one() -> None:
    """The config's weights belong to the config's upstreams, not to deployed targets."""
    route = RouteConfig(
        "default", (Address("127.0.0.1", 9001), Address("127.0.0.1", 9002)), weights=(3, 1)
    )
    deployed = Deployment((Address("127.0.0.1", 9003), Address("127.0.0.1", 9004)), route.upstreams)
    effective, _, _ = apply_deployments(Config(routes=(route,)), {"default": deployed})
    assert effective.routes[0].upstreams == deployed.upstreams
    assert effective.routes[0].upstream_weights() == [1, 1]


def test_deploys_of_routes_that_are_gone_are_dropped() -> None:
    config = quick_config([], ["127.0.0.1:9001"])
    deployed = Deployment((Address("127.0.0.1", 9002),), (Address("127.0.0.1", 9001),))
    assert apply_deployments(config, {"gone": deployed}) == (config, {}, [])
