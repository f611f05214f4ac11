"""The configuration file: TOML in, validated frozen dataclasses out.

Every mistake a user can make becomes a ``ConfigError`` naming the file, the
key path and the problem (``config.toml: routes[0].upstreams[1]: invalid
address 'foo': expected HOST:PORT``), because a proxy that starts with a
half-understood config fails later, under traffic, far from the typo.
"""

import difflib
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import Any, Literal

from fastpause._core import LB_POLICIES, normalize_path
from fastpause.inputs import InputError, parse_toml, read_file
from fastpause.tls import TLS_VERSIONS, Certificate, CertificateError, check_ca, read_certificate
from fastpause.units import describe, parse_duration, parse_size, parse_whole_seconds
from fastpause.wire import plain

AccessLogFormat = Literal["common", "json"]
# Turns one TOML value into a config value, or raises ValueError saying what is wrong.
Parser = Callable[[Any], Any]


class ConfigError(Exception):
    """A config the proxy refuses to run with, located as precisely as possible."""

    def __init__(self, source: str | None, path: str, problem: str) -> None:
        super().__init__(source, path, problem)
        self.source = source
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.path, self.problem) if part)


@plain
@dataclass(frozen=True)
class Address:
    """A TCP endpoint as written in the config; ``host`` is a name or an IP literal."""

    host: str
    port: int
    tls: bool = False  # "https://": connections start with a TLS handshake

    def __str__(self) -> str:
        """``HOST:PORT``, ``https://HOST:PORT`` for TLS (as written in the config)."""
        text = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"https://{text}" if self.tls else text

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def authority(self) -> str:
        """``HOST:PORT`` without the scheme (a Host header's value)."""
        return str(replace(self, tls=False))


@plain
@dataclass(frozen=True)
class UnixAddress:
    """A Unix socket path, written ``unix:/path.sock`` in the config and on the command line."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


# Where the admin API listens: a Unix socket, a TCP endpoint, or None (off).
AdminAddress = UnixAddress | Address


@plain
@dataclass(frozen=True)
class RouteConfig:
    """One ``[[routes]]`` table: where requests go and the limits on the way."""

    name: str
    upstreams: tuple[Address, ...]
    # One weight per upstream, or () when every upstream has weight 1 (the common
    # case, and what a deploy's targets get).
    weights: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()  # lowercase names and "*.suffix" wildcards; () is any host
    path_prefix: str | None = None
    strip_path_prefix: bool = False
    underscores_in_headers: bool = False
    lb: str = "round_robin"
    max_body_size: int = 1 << 30
    # "memory" or "disk": whole bodies are read before an upstream is chosen ("disk":
    # bodies past 64 KiB wait in an unlinked file in the config's request_buffer_dir)
    request_buffering: str = "off"
    request_buffer_size: int = 1 << 20
    host_header: str | None = None
    request_id: bool = False
    connect_timeout: float = 5.0
    response_header_timeout: float = 60.0
    upstream_body_timeout: float = 60.0
    tunnel_idle_timeout: float = 3600.0
    upstream_keepalive: int = 64
    upstream_keepalive_timeout: float = 60.0
    try_duration: float = 30.0
    try_interval: float = 0.25
    max_held: int = 10_000
    max_held_body: int = 1 << 20
    health_path: str | None = None
    health_interval: float = 1.0
    health_timeout: float = 2.0
    health_passes: int = 1
    health_fails: int = 2
    fail_duration: float = 10.0
    hold_time_header: str | None = None
    retry_after: int = 5
    redirect_https: bool = False  # plain-HTTP requests get a redirect to HTTPS
    hsts: str | None = None  # Strict-Transport-Security on HTTPS responses
    # https:// upstreams: verify their certificates (against ``ca``, else the system's
    # store) for ``tls_server_name``, else the name in the address
    tls_verify: bool = True
    ca: str | None = None
    tls_server_name: str | None = None

    def upstream_weights(self) -> list[int]:
        """The weight of each upstream, in order (1 where none was given)."""
        return list(self.weights) or [1] * len(self.upstreams)


def default_admin_address() -> UnixAddress:
    """The admin socket both ``fastpause run`` and the admin commands use unless told.

    ``$XDG_RUNTIME_DIR`` is private to the user; the ``/tmp`` fallback carries the
    uid so two users on one host do not collide.
    """
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return UnixAddress(os.path.join(runtime_dir, "fastpause.sock"))
    return UnixAddress(f"/tmp/fastpause-{os.getuid()}.sock")


@plain
@dataclass(frozen=True)
class Config:
    """The whole proxy configuration; ``source`` names where it came from for errors."""

    routes: tuple[RouteConfig, ...]
    listen: tuple[Address, ...] = (Address("127.0.0.1", 8080),)
    max_head_size: int = 32 * 1024
    max_headers: int = 100
    max_uri_size: int = 8 * 1024
    client_head_timeout: float = 15.0
    client_body_timeout: float = 60.0
    keepalive_timeout: float = 60.0
    send_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    # After SIGTERM, health checks answer 503 this long before the proxy stops accepting.
    shutdown_delay: float = 0.0
    access_log: str | None = None
    access_log_format: AccessLogFormat = "common"
    max_held_bytes: int = 256 << 20
    max_connections: int = 0  # 0: no limit
    # Processes serving the data plane ("auto": one per usable CPU); >1 adds a supervisor.
    workers: int = field(default_factory=lambda: usable_cpus())
    worker_timeout: float = 10.0  # a worker that has not answered a command by then is replaced
    drain_timeout: float = 30.0
    state_file: str | None = None
    request_buffer_dir: str = field(default_factory=tempfile.gettempdir)
    admin: AdminAddress | None = field(default_factory=default_admin_address)
    admin_token: str | None = None
    certificates: tuple[Certificate, ...] = ()
    tls_min_version: str = "1.2"
    tls_handshake_timeout: float = 10.0
    https_port: int = 0  # where redirect_https points; 0: the first https:// listener's
    source: str | None = field(default=None, compare=False)


DEFAULT_UPSTREAM = "127.0.0.1:8003"
DEFAULT_LISTEN = "127.0.0.1:8080"

_NO_ROUTE = "at least one route is required: add a [[routes]] table"
_ADDRESS_HELP = "expected HOST:PORT (IPv6 in brackets, e.g. '[::1]:8080')"
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HOST_WITH_PORT = re.compile(r".+:[0-9]*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# What may follow "Host:" on the wire: a uri-host with an optional port, nothing
# that could end the header line or smuggle a second one.
_HOST_HEADER = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+")
# An origin-form path (RFC 3986 pchars and "/"), no query: the data plane compares
# it byte for byte with the request path.
_PATH = re.compile(r"/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Response headers the proxy itself frames the response with: a header added
# under one of these names would corrupt the response.
_FRAMING_HEADERS = frozenset(
    ["connection", "content-length", "keep-alive", "trailer", "transfer-encoding", "upgrade"]
)
# The kernel's limit on a Unix socket path (sun_path is 108 bytes with the NUL on Linux).
_UNIX_PATH_MAX = 107
_ADMIN_HELP = "expected 'unix:/path/to.sock', 'HOST:PORT' or 'off'"
_ADMIN_TOKEN_MIN = 16


def load(path: str | PathLike[str]) -> Config:
    """Read and validate a TOML config file; every failure is a ``ConfigError``."""
    source = str(path)
    try:
        raw = read_file(path)
    except FileNotFoundError as error:
        raise ConfigError(source, "", f"cannot read file: {error.strerror}") from None
    except InputError as error:
        raise ConfigError(source, "", str(error)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(source, "", f"not UTF-8 text (byte {error.start})") from None
    try:
        data = parse_toml(text)
    except InputError as error:
        raise ConfigError(source, "", str(error)) from None
    return parse(data, source)


def parse(data: Mapping[str, Any], source: str | None) -> Config:
    """Validate an already-decoded TOML document."""
    try:
        values = _read_table(data, _TOP_LEVEL)
        if "routes" not in values:
            raise _Invalid("routes", _NO_ROUTE)
        config = Config(**values, source=source)
        with _at("admin"):
            check_admin_access(config)
        _check_tls(config)
    except _Invalid as error:
        raise ConfigError(source, error.where, error.problem) from None
    return config


def default_config() -> Config:
    """The embedded config ``fastpause run`` uses without arguments."""
    return quick_config([], [])


def quick_config(listen: Sequence[str], to: Sequence[str]) -> Config:
    """A one-route config from ``--listen ADDR`` and repeated ``--to HOST:PORT`` options."""
    source = "command line"
    try:
        with _at("--listen"):
            listeners = _addresses(listen=True)(list(listen) or [DEFAULT_LISTEN])
            if any(address.tls for address in listeners):
                raise ValueError(
                    "an https:// listener needs a certificate: use --config with a "
                    "[[certificates]] table"
                )
        with _at("--to"):
            upstreams = _addresses(listen=False)(list(to) or [DEFAULT_UPSTREAM])
    except _Invalid as error:
        option = error.where.partition("[")[0]  # "--to[1]" -> "--to": the value is in the text
        raise ConfigError(source, option, error.problem) from None
    route = RouteConfig(name="default", upstreams=upstreams)
    return Config(listen=listeners, routes=(route,), source=source)


def with_admin(config: Config, text: str) -> Config:
    """``config`` with the admin address from ``run --admin``, checked like the file's."""
    try:
        admin = parse_admin_address(text)
        updated = replace(config, admin=admin)
        check_admin_access(updated)
    except ValueError as error:
        raise ConfigError("command line", "--admin", str(error)) from None
    return updated


def with_workers(config: Config, text: str) -> Config:
    """``config`` with the number of workers from ``run --workers``."""
    try:
        return replace(config, workers=parse_workers(text))
    except ValueError as error:
        raise ConfigError("command line", "--workers", str(error)) from None


@dataclass(frozen=True)
class Overrides:
    """``run`` options that override the config file, at start and at every reload."""

    admin: str | None = None  # --admin
    workers: str | None = None  # --workers

    def apply(self, config: Config) -> Config:
        if self.admin is not None:
            config = with_admin(config, self.admin)
        if self.workers is not None:
            config = with_workers(config, self.workers)
        return config


def parse_admin_address(text: str) -> AdminAddress | None:
    """``unix:/path.sock``, ``HOST:PORT`` (port 0 picks a free one) or ``off`` (None)."""
    if text == "off":
        return None
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise ValueError(f"invalid admin address {text!r}: the socket path is missing")
        if "\0" in path:
            raise ValueError(f"invalid admin address {text!r}: the path contains a NUL byte")
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise ValueError(
                f"invalid admin address {text!r}: a Unix socket path must be at most "
                f"{_UNIX_PATH_MAX} bytes"
            )
        return UnixAddress(path)
    if ":" not in text:
        raise ValueError(f"invalid admin address {text!r}: {_ADMIN_HELP}")
    return parse_address(text, allow_port_zero=True)


def check_admin_access(config: Config) -> None:
    """Refuse an admin API that other hosts can reach without a token.

    Whoever reaches the admin API can pause or stop every route; a Unix socket is
    protected by its file mode and loopback by the host, anything else by the token.
    """
    admin = config.admin
    if isinstance(admin, Address) and config.admin_token is None and not _is_loopback(admin):
        raise ValueError(
            f"{admin} can be reached from other hosts: set admin_token, or listen on "
            "loopback (127.0.0.1) or a Unix socket"
        )


def _check_tls(config: Config) -> None:
    """An ``https://`` listener needs a certificate to present; a redirect to HTTPS
    needs a port to point at."""
    for index, address in enumerate(config.listen):
        if address.tls and not config.certificates:
            raise _Invalid(
                f"listen[{index}]",
                f"{address} needs a certificate: add a [[certificates]] table with cert and key",
            )
    for index, route in enumerate(config.routes):
        if route.redirect_https and not redirect_port(config):
            raise _Invalid(
                f"routes[{index}].redirect_https",
                "no https:// listener with a fixed port to redirect to: add one to listen, "
                "or set https_port",
            )


def unverified_upstreams(config: Config) -> list[str]:
    """A warning per route that dials https:// upstreams without checking their
    certificates (``tls_verify = false``): said at every start and reload."""
    return [
        f"route {route.name}: tls_verify = false: the certificates of its https:// "
        "upstreams are NOT checked (anyone on the path can read and change its traffic)"
        for route in config.routes
        if not route.tls_verify and any(address.tls for address in route.upstreams)
    ]


def redirect_port(config: Config) -> int:
    """The port ``redirect_https`` sends clients to: ``https_port``, else the first
    ``https://`` listener's (0 when neither says)."""
    if config.https_port:
        return config.https_port
    return next((address.port for address in config.listen if address.tls), 0)


def _is_loopback(address: Address) -> bool:
    """Only ``localhost`` and loopback IP literals: any other name may resolve anywhere."""
    if address.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``HOST:PORT``; port 0 ("any free port") only makes sense for listeners."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text:
        raise ValueError(f"invalid address {text!r}: {_ADDRESS_HELP}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {text!r}: '{host}' is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"invalid address {text!r}: {_ADDRESS_HELP}")
    elif not _is_hostname(host):
        raise ValueError(f"invalid address {text!r}: '{host}' is not a host name or IP address")
    lowest = 0 if allow_port_zero else 1
    if not port_text.isascii() or not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"invalid address {text!r}: port must be a number from {lowest} to 65535")
    return Address(host, int(port_text))


def parse_url_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """A listener or an upstream: ``https://HOST:PORT`` (TLS), ``http://HOST:PORT`` or
    ``HOST:PORT`` (plain HTTP); port 0 ("any free port") only for listeners."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        return parse_address(text, allow_port_zero=allow_port_zero)
    if scheme not in ("http", "https"):
        raise ValueError(f"invalid address {text!r}: the scheme must be http:// or https://")
    if "/" in rest:
        raise ValueError(f"invalid address {text!r}: no path here, only the scheme, host and port")
    address = parse_address(rest, allow_port_zero=allow_port_zero)
    return replace(address, tls=scheme == "https")


def _is_hostname(host: str) -> bool:
    """DNS names and IPv4 literals; underscores allowed (Docker service names use them)."""
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


# ---- locating errors: parsers raise ValueError about the value in hand; each
# level that descends into a table or array adds its step to the key path.


class _Invalid(ValueError):
    """A problem at ``where``, a key path relative to the value being parsed."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(problem)
        self.where = where
        self.problem = problem


@contextmanager
def _at(step: str) -> Iterator[None]:
    """Prefix the path of any error raised inside with ``step`` (a key or ``[index]``)."""
    try:
        yield
    except _Invalid as error:
        raise _Invalid(_join(step, error.where), error.problem) from None
    except ValueError as error:
        raise _Invalid(step, str(error)) from None


def _join(step: str, where: str) -> str:
    """``routes`` + ``[0]`` -> ``routes[0]``; ``[0]`` + ``name`` -> ``[0].name``."""
    if not step or not where or where.startswith("["):
        return step + where
    return f"{step}.{where}"


def _read_table(table: Mapping[str, Any], parsers: Mapping[str, Parser]) -> dict[str, Any]:
    """Apply ``parsers`` to the keys present; unknown keys are errors with a suggestion."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        parser = parsers.get(key)
        if parser is None:
            close = difflib.get_close_matches(key, list(parsers), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _Invalid("", f"unknown key '{key}'{hint}")
        with _at(key):
            values[key] = parser(value)
    return values


# ---- field parsers: each turns one TOML value into a Config value or raises
# ValueError saying what is wrong with it (the key path is added by the caller).


def _duration(*, allow_zero: bool) -> Parser:
    """A duration parser; most timeouts must be positive because 0 would fail every request."""

    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds == 0 and not allow_zero:
            raise ValueError(f"invalid duration {value!r}: must be greater than 0")
        return seconds

    return parse


def _size(*, at_least: str, at_most: str | None = None) -> Parser:
    """A size parser with bounds written the way the user writes sizes ("1KiB")."""
    low = parse_size(at_least)
    high = parse_size(at_most) if at_most is not None else None

    def parse(value: Any) -> int:
        size = parse_size(value)
        if size < low:
            raise ValueError(f"invalid size {value!r}: must be at least {at_least}")
        if high is not None and size > high:
            raise ValueError(f"invalid size {value!r}: must be at most {at_most}")
        return size

    return parse


def _integer(low: int, high: int) -> Parser:
    """An integer parser with an inclusive range; TOML booleans are not integers here."""

    def parse(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {describe(value)}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range: expected {low} to {high}")
        return value

    return parse


MAX_WORKERS = 256


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as a container sees it)."""
    return len(os.sched_getaffinity(0))


def parse_workers(value: Any) -> int:
    """``"auto"`` (one worker per usable CPU) or a number of worker processes."""
    if value == "auto":
        return usable_cpus()
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 4:
        value = int(value)  # the command line's --workers 2
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f'expected "auto" or a number of processes, got {describe(value)}')
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"{value} is out of range: expected 1 to {MAX_WORKERS}")
    return value


def _boolean(value: Any) -> bool:
    """A TOML boolean; strings like "yes" are refused rather than guessed at."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe(value)}")
    return value


def _string(value: Any) -> str:
    """A non-empty TOML string."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    if not value:
        raise ValueError("must not be empty")
    return value


def _route_name(value: Any) -> str:
    """Route names appear in logs and, later, in admin commands: keep them plain."""
    name = _string(value)
    if not _ROUTE_NAME.fullmatch(name):
        raise ValueError(f"invalid name {name!r}: use only letters, digits, '_', '.' and '-'")
    return name


def _host_header(value: Any) -> str:
    """The Host value sent upstream; refuse anything that is not a valid authority."""
    host = _string(value)
    if not _HOST_HEADER.fullmatch(host):
        raise ValueError(f"invalid host_header {host!r}: expected a host name with optional :port")
    return host


def parse_health_path(value: Any) -> str:
    """The path upstreams are checked at, answered by the proxy itself while a route
    is paused or stopped; a plain origin-form path, since it is sent as given."""
    return _url_path("health_path", value)


def _path_prefix(value: Any) -> str:
    """The path a route takes requests under; compared with the request's path in normal
    form, byte for byte, segment by segment (``/api`` takes ``/api`` and ``/api/x``, not
    ``/apix``), so it must be a plain path in normal form."""
    return _url_path("path_prefix", value)


def _url_path(key: str, value: Any) -> str:
    """An origin-form path without query, in the normal form request paths are compared
    in (no dot segments, no encoded unreserved characters, uppercase hex): what the data
    plane compares or sends as is."""
    path = _string(value)
    if not path.startswith("/"):
        raise ValueError(f"invalid {key} {path!r}: must start with '/'")
    if not _PATH.fullmatch(path):
        raise ValueError(
            f"invalid {key} {path!r}: expected a URL path without query, spaces "
            "or control characters"
        )
    try:
        normal = normalize_path(path.encode("ascii")).decode("ascii")
    except ValueError as error:
        raise ValueError(f"invalid {key} {path!r}: {error}") from None
    if normal != path:
        raise ValueError(
            f"invalid {key} {path!r}: request paths are compared in normal form, "
            f"write it {normal!r}"
        )
    return path


def _hosts(value: Any) -> tuple[str, ...]:
    """The host names a route takes requests for; leaving ``hosts`` out means any host."""
    if not isinstance(value, list):
        example = '["app.example.com", "*.example.com"]'
        raise ValueError(f"expected an array of host names like {example}, got {describe(value)}")
    if not value:
        raise ValueError("must list at least one host name (leave hosts out to match any host)")
    hosts: list[str] = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            host = _host(item)
            if host in hosts:
                raise ValueError(f"duplicate host {item!r}")
            hosts.append(host)
    return tuple(hosts)


def _host(value: Any) -> str:
    """One ``hosts`` entry, in the form requests are compared in: lowercase, no trailing
    dot. ``*.example.com`` takes every name under example.com, not example.com itself."""
    text = _string(value)
    host = text.lower().removesuffix(".")
    name = host.removeprefix("*.")
    if _HOST_WITH_PORT.fullmatch(name):
        raise ValueError(
            f"invalid host {text!r}: hosts match whatever the port, leave it out "
            f"({text.rpartition(':')[0]!r})"
        )
    if not _is_hostname(name):
        raise ValueError(
            f"invalid host {text!r}: expected a name like 'app.example.com' or '*.example.com'"
        )
    return host


def _lb(value: Any) -> str:
    """A load-balancing policy of the data plane (``_core.LB_POLICIES``)."""
    if not isinstance(value, str) or value not in LB_POLICIES:
        raise ValueError(f"expected one of {', '.join(LB_POLICIES)}, got {describe(value)}")
    return value


REQUEST_BUFFERING = ("off", "memory", "disk")


def _request_buffering(value: Any) -> str:
    """Whether request bodies are read whole before an upstream is chosen, and where."""
    if not isinstance(value, str) or value not in REQUEST_BUFFERING:
        raise ValueError(f"expected 'off', 'memory' or 'disk', got {describe(value)}")
    return value


def _writable_directory(value: Any) -> str:
    """A directory the proxy can create files in (checked at load: a reload that names
    a missing one is refused, not discovered at the first upload)."""
    path = _string(value)
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{path!r} is not writable by this user")
    return os.path.abspath(path)


def _hold_time_header(value: Any) -> str:
    """A response header name; framing headers would break the response they are added to."""
    name = _string(value)
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}: use letters, digits and '-'")
    if name.lower() in _FRAMING_HEADERS:
        raise ValueError(f"invalid header name {name!r}: the proxy frames responses with it")
    return name


def _admin(value: Any) -> AdminAddress | None:
    """Where the admin API listens; see ``parse_admin_address``."""
    if not isinstance(value, str):
        raise ValueError(f"{_ADMIN_HELP}, got {describe(value)}")
    return parse_admin_address(value)


def _admin_token(value: Any) -> str:
    """A bearer token: visible ASCII, long enough not to be guessed."""
    token = _string(value)
    if not all("!" <= char <= "~" for char in token):
        raise ValueError("must be visible ASCII characters without spaces")
    if len(token) < _ADMIN_TOKEN_MIN:
        raise ValueError(
            f"too short ({len(token)} characters): use at least {_ADMIN_TOKEN_MIN}, "
            "e.g. from 'openssl rand -hex 16'"
        )
    return token


def _access_log(value: Any) -> str | None:
    """``"off"`` disables the log; ``"stdout"`` and file paths are kept as given."""
    target = _string(value)
    return None if target == "off" else target


def _access_log_format(value: Any) -> AccessLogFormat:
    """Common Log Format for existing tooling, JSON lines for log pipelines."""
    if value not in ("common", "json"):
        raise ValueError(f"expected 'common' or 'json', got {describe(value)}")
    return value


def _addresses(*, listen: bool) -> Parser:
    """A parser for a non-empty array of distinct ``HOST:PORT`` strings."""

    def parse(value: Any) -> tuple[Address, ...]:
        if not isinstance(value, list):
            example = '["127.0.0.1:8080"]'
            raise ValueError(
                f"expected an array of HOST:PORT strings like {example}, got {describe(value)}"
            )
        if not value:
            raise ValueError("must list at least one address")
        addresses: list[Address] = []
        for index, item in enumerate(value):
            with _at(f"[{index}]"):
                if not isinstance(item, str):
                    raise ValueError(f"expected a HOST:PORT string, got {describe(item)}")
                address = parse_url_address(item, allow_port_zero=listen)
                same = [a for a in addresses if (a.host, a.port) == (address.host, address.port)]
                if same and address.port != 0:  # each :0 is its own free port
                    raise ValueError(f"duplicate address '{item}'")
                addresses.append(address)
        return tuple(addresses)

    return parse


@dataclass(frozen=True)
class _Upstreams:
    """A route's ``upstreams`` array: the addresses and, in the same order, their weights."""

    addresses: tuple[Address, ...]
    weights: tuple[int, ...]


def _upstreams(value: Any) -> _Upstreams:
    """``"HOST:PORT"`` strings and ``{ address = "HOST:PORT", weight = 3 }`` tables, mixed."""
    if not isinstance(value, list):
        example = '["127.0.0.1:3000"]'
        raise ValueError(
            f"expected an array of HOST:PORT strings like {example}, got {describe(value)}"
        )
    if not value:
        raise ValueError("must list at least one address")
    addresses: list[Address] = []
    weights: list[int] = []
    for index, item in enumerate(value):
        with _at(f"[{index}]"):
            address, weight = _upstream(item)
            if address in addresses:
                raise ValueError(f"duplicate address '{address}'")
            addresses.append(address)
            weights.append(weight)
    return _Upstreams(tuple(addresses), tuple(weights))


def _upstream(item: Any) -> tuple[Address, int]:
    """One upstream and its weight (1 unless a table gives one)."""
    if isinstance(item, str):
        return parse_url_address(item), 1
    if not isinstance(item, dict):
        example = '{ address = "127.0.0.1:3000", weight = 2 }'
        raise ValueError(
            f"expected a HOST:PORT string or a table like {example}, got {describe(item)}"
        )
    fields = _read_table(item, _WEIGHTED_UPSTREAM)
    if "address" not in fields:
        raise _Invalid("", "missing required key 'address'")
    return fields["address"], fields.get("weight", 1)


def _upstream_address(value: Any) -> Address:
    if not isinstance(value, str):
        raise ValueError(f"expected a HOST:PORT string, got {describe(value)}")
    return parse_url_address(value)


def _routes(value: Any) -> tuple[RouteConfig, ...]:
    """The ``[[routes]]`` array: distinct names, and no two routes taking the same requests."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"expected an array of tables ([[routes]]), got {describe(value)}")
    if not value:
        raise ValueError(_NO_ROUTE)
    routes: list[RouteConfig] = []
    for index, table in enumerate(value):
        with _at(f"[{index}]"):
            route = _route(table)
            if any(route.name == seen.name for seen in routes):
                raise _Invalid("name", f"duplicate route name '{route.name}'")
            routes.append(route)
    _check_unambiguous(routes)
    return tuple(routes)


def _check_unambiguous(routes: Sequence[RouteConfig]) -> None:
    """Refuse two routes that match the same host with the same path prefix: which one
    served those requests would be an accident. The data plane refuses such a table
    too; found here, the error names both routes' key paths."""
    claimed: dict[tuple[str | None, str | None], int] = {}
    for index, route in enumerate(routes):
        for host in route.hosts or (None,):
            first = claimed.setdefault((host, route.path_prefix), index)
            if first != index:
                hosts = f"host {host}" if host else "any host"
                path = f"path prefix {route.path_prefix}" if route.path_prefix else "any path"
                raise _Invalid(
                    f"[{index}]",
                    f"route '{route.name}' and routes[{first}] ('{routes[first].name}') both "
                    f"match {hosts} and {path}: give one of them other hosts or another "
                    "path_prefix",
                )


def _route(table: Mapping[str, Any]) -> RouteConfig:
    """One route table; ``name`` and ``upstreams`` are required."""
    values = _read_table(table, _ROUTE)
    for required in ("name", "upstreams"):
        if required not in values:
            raise _Invalid("", f"missing required key '{required}'")
    if values.get("strip_path_prefix") and "path_prefix" not in values:
        raise _Invalid("strip_path_prefix", "nothing to strip: the route has no path_prefix")
    upstreams: _Upstreams = values.pop("upstreams")
    weights = upstreams.weights if any(w != 1 for w in upstreams.weights) else ()
    return RouteConfig(**values, upstreams=upstreams.addresses, weights=weights)


def _certificates(value: Any) -> tuple[Certificate, ...]:
    """The ``[[certificates]]`` array: each checked now (files, PEM, key matching), at
    most one ``default``."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"expected an array of tables ([[certificates]]), got {describe(value)}")
    certificates: list[Certificate] = []
    for index, table in enumerate(value):
        with _at(f"[{index}]"):
            certificate = _certificate(table)
            if certificate.default and any(seen.default for seen in certificates):
                raise _Invalid("default", "only one certificate can be the default")
            certificates.append(certificate)
    return tuple(certificates)


def _certificate(table: Mapping[str, Any]) -> Certificate:
    values = _read_table(table, _CERTIFICATE)
    for required in ("cert", "key"):
        if required not in values:
            raise _Invalid("", f"missing required key '{required}'")
    try:
        return read_certificate(
            values["cert"], values["key"], values.get("hosts", ()), values.get("default", False)
        )
    except CertificateError as error:
        raise _Invalid(error.field, str(error)) from None


def _hsts(value: Any) -> str:
    """A Strict-Transport-Security value, e.g. ``max-age=31536000; includeSubDomains``."""
    text = _string(value)
    if not text.startswith("max-age=") or not all(" " <= char <= "~" for char in text):
        raise ValueError(
            f"invalid value {text!r}: expected e.g. 'max-age=31536000; includeSubDomains'"
        )
    return text


def _tls_version(value: Any) -> str:
    if value not in TLS_VERSIONS:
        raise ValueError(f"expected '1.2' or '1.3', got {describe(value)}")
    return value


def _server_name(value: Any) -> str:
    """The name an HTTPS upstream's certificate is checked for (and sent as SNI)."""
    name = _host(value)
    if name.startswith("*."):
        raise ValueError(f"invalid name {value!r}: a certificate is checked for one name")
    return name


def _ca_bundle(value: Any) -> str:
    """PEM certificates the proxy can read now (checked at load and reload)."""
    path = _path(value)
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    try:
        check_ca(path)
    except CertificateError as error:
        raise ValueError(str(error)) from None
    return path


def _path(value: Any) -> str:
    """A file path, made absolute (a worker or a successor may run elsewhere)."""
    return os.path.abspath(_string(value))


_TOP_LEVEL: dict[str, Parser] = {
    "listen": _addresses(listen=True),
    "routes": _routes,
    # Every connection may buffer a whole head: a large limit is a memory lever
    # for clients, so it is capped (NGINX and HAProxy default to 8-32KiB).
    "max_head_size": _size(at_least="1KiB", at_most="1MiB"),
    "max_headers": _integer(1, 1000),
    "max_uri_size": _size(at_least="1B", at_most="1MiB"),
    "client_head_timeout": _duration(allow_zero=False),
    "client_body_timeout": _duration(allow_zero=False),
    "keepalive_timeout": _duration(allow_zero=False),
    "send_timeout": _duration(allow_zero=False),
    "shutdown_timeout": _duration(allow_zero=True),
    "shutdown_delay": _duration(allow_zero=True),
    "access_log": _access_log,
    "access_log_format": _access_log_format,
    "max_held_bytes": _size(at_least="0B"),
    "max_connections": _integer(0, 10_000_000),  # 0: no limit
    "workers": parse_workers,
    "worker_timeout": _duration(allow_zero=False),
    "drain_timeout": _duration(allow_zero=True),  # 0s: cut at once
    "state_file": _string,
    "request_buffer_dir": _writable_directory,
    "admin": _admin,
    "admin_token": _admin_token,
    "certificates": _certificates,
    "tls_min_version": _tls_version,
    "tls_handshake_timeout": _duration(allow_zero=False),
    "https_port": _integer(1, 65535),
}

_CERTIFICATE: dict[str, Parser] = {
    "cert": _path,
    "key": _path,
    "hosts": _hosts,
    "default": _boolean,
}

_ROUTE: dict[str, Parser] = {
    "name": _route_name,
    "upstreams": _upstreams,
    "hosts": _hosts,
    "path_prefix": _path_prefix,
    "strip_path_prefix": _boolean,
    "underscores_in_headers": _boolean,
    "lb": _lb,
    "max_body_size": _size(at_least="0B"),  # 0: unlimited
    "request_buffering": _request_buffering,
    "request_buffer_size": _size(at_least="1B", at_most="1GiB"),
    "host_header": _host_header,
    "request_id": _boolean,
    "connect_timeout": _duration(allow_zero=False),
    "response_header_timeout": _duration(allow_zero=False),
    "upstream_body_timeout": _duration(allow_zero=False),
    "tunnel_idle_timeout": _duration(allow_zero=False),
    "upstream_keepalive": _integer(0, 65_535),
    "upstream_keepalive_timeout": _duration(allow_zero=False),
    "try_duration": _duration(allow_zero=True),  # 0s: no holding, 502 at once
    "try_interval": _duration(allow_zero=False),
    "max_held": _integer(0, 1_000_000_000),
    "max_held_body": _size(at_least="0B"),
    "health_path": parse_health_path,
    "health_interval": _duration(allow_zero=False),
    "health_timeout": _duration(allow_zero=False),
    "health_passes": _integer(1, 1000),
    "health_fails": _integer(1, 1000),
    "fail_duration": _duration(allow_zero=True),  # 0s: passive health off
    "hold_time_header": _hold_time_header,
    "retry_after": parse_whole_seconds,
    "redirect_https": _boolean,
    "hsts": _hsts,
    "tls_verify": _boolean,
    "ca": _ca_bundle,
    "tls_server_name": _server_name,
}

_WEIGHTED_UPSTREAM: dict[str, Parser] = {
    "address": _upstream_address,
    "weight": _integer(1, 1000),
}
