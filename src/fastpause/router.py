"""Turn a ``Config`` into the data plane's immutable ``RoutingTable`` snapshot.

Host names are resolved here, once per build, so the hot path only ever dials
IP addresses and a name that does not resolve is a config error at start (or at
reload), not a 502 under traffic.

A route's runtime state (paused, stopped, its held requests) is not config: each
build hands the new route the ``RouteState`` of the previous table's route of the
same name, so a reload neither resumes a paused route nor drops what it holds.
"""

import ipaddress
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from fastpause import _core
from fastpause.config import Address, Config, ConfigError, RouteConfig, redirect_port
from fastpause.tls import client_context

# An upstream's identity for reuse: same address as written, same resolved IP,
# same pool settings, same TLS settings. Anything else gets a fresh pool.
UpstreamKey = tuple[str, str, int, int, float, tuple[object, ...]]
# An https:// upstream's TLS settings: (ca file, verify, name checked); () for plain.
TlsKey = tuple[object, ...]
# The IP to dial for each upstream address, keyed by the address as written.
Resolved = Mapping[str, str]


def build_table(
    config: Config,
    previous: _core.RoutingTable | None = None,
    resolved: Resolved | None = None,
) -> _core.RoutingTable:
    """Build a routing table, reusing ``previous``'s upstreams where nothing changed.

    Reuse keeps warm keep-alive connections (and health verdicts) across a reload;
    an upstream whose address, resolved IP or pool settings changed starts with an
    empty pool. ``resolved`` lets a caller resolve names off the event loop first
    (``resolve_upstreams``); without it names are resolved here, blocking.
    """
    ips = resolved if resolved is not None else resolve_upstreams(config)
    reusable = _reusable(previous)
    states = {route.name: route.state for route in previous.routes} if previous else {}
    built: dict[UpstreamKey, _core.Upstream] = {}
    contexts: dict[TlsKey, ssl.SSLContext] = {}  # one per TLS settings: the CA read once
    routes = []
    for index, route in enumerate(config.routes):
        upstreams = []
        for address in route.upstreams:
            key = (
                str(address),
                ips[str(address)],
                address.port,
                route.upstream_keepalive,
                route.upstream_keepalive_timeout,
                _tls_key(route, address),
            )
            if key not in built:
                if key in reusable:
                    built[key] = reusable[key]
                else:
                    built[key] = _new_upstream(key, address.authority, contexts)
            upstreams.append(built[key])
        state = states.get(route.name) or _core.RouteState(route.name)
        with _refused_by_core(config, f"routes[{index}]"):
            routes.append(_route(config, route, upstreams, state))
    with _refused_by_core(config, "routes"):
        return _core.RoutingTable(
            routes,
            max_head_size=config.max_head_size,
            max_headers=config.max_headers,
            max_uri_size=config.max_uri_size,
            client_head_timeout=config.client_head_timeout,
            client_body_timeout=config.client_body_timeout,
            keepalive_timeout=config.keepalive_timeout,
            send_timeout=config.send_timeout,
        )


@contextmanager
def _refused_by_core(config: Config, path: str) -> Iterator[None]:
    """The data plane checks routes too (two routes matching the same requests, say);
    what it refuses that validation let through is a ``ConfigError`` all the same,
    never a traceback."""
    try:
        yield
    except ValueError as error:
        raise ConfigError(config.source, path, str(error)) from None


def resolve_upstreams(config: Config) -> dict[str, str]:
    """The IP of every upstream of ``config``; a name that fails is a ``ConfigError``
    naming its key. Blocking: the running proxy calls it in an executor."""
    resolved: dict[str, str] = {}
    for index, route in enumerate(config.routes):
        for position, address in enumerate(route.upstreams):
            if str(address) not in resolved:
                path = f"routes[{index}].upstreams[{position}]"
                resolved[str(address)] = resolve(address, config.source, path)
    return resolved


def dialed(table: _core.RoutingTable) -> dict[str, str]:
    """The IP each upstream address of ``table`` dials: what a rebuild that must not
    resolve again (a deploy's unchanged routes) passes as ``resolved``."""
    return {
        upstream.address: upstream.host for route in table.routes for upstream in route.upstreams
    }


def retired(old: _core.RoutingTable, new: _core.RoutingTable) -> list[_core.Upstream]:
    """The upstreams of ``old`` that no route of ``new`` uses: they are to be drained."""
    kept = {id(upstream) for route in new.routes for upstream in route.upstreams}
    gone = {
        id(upstream): upstream
        for route in old.routes
        for upstream in route.upstreams
        if id(upstream) not in kept
    }
    return list(gone.values())


def describe_match(hosts: Sequence[str], path_prefix: str | None, strip_path_prefix: bool) -> str:
    """The requests a route takes, for people: ``api.example.com,www.example.com/v2``,
    ``/docs (stripped)``, ``*.example.com``; ``*`` when it takes any request."""
    match = ",".join(hosts) + (path_prefix or "")
    if strip_path_prefix:
        match += " (stripped)"
    return match or "*"


def path_prefix(route: _core.Route) -> str | None:
    """The route's ``path_prefix`` as written in the config (the core keeps bytes)."""
    return route.path_prefix.decode("ascii") if route.path_prefix is not None else None


def resolve(address: Address, source: str | None, path: str) -> str:
    """Return the IP to dial for ``address``; an unresolvable name is a ``ConfigError``.

    When a name has both IPv4 and IPv6 addresses (``localhost`` often does), IPv4
    wins: most backends listen on 127.0.0.1 or 0.0.0.0, which ::1 would miss.
    """
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        pass
    else:
        return address.host
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        problem = f"cannot resolve host '{address.host}': {error.strerror}"
        raise ConfigError(source, path, problem) from None
    ipv4_first = sorted(infos, key=lambda info: info[0] != socket.AF_INET)  # stable sort
    return str(ipv4_first[0][4][0])


def _reusable(previous: _core.RoutingTable | None) -> dict[UpstreamKey, _core.Upstream]:
    """The upstreams of ``previous`` by key; one being drained never takes traffic again."""
    if previous is None:
        return {}
    return {
        (u.address, u.host, u.port, u.keepalive, u.keepalive_timeout, u.tls): u
        for route in previous.routes
        for u in route.upstreams
        if not u.draining
    }


def _new_upstream(
    key: UpstreamKey, authority: str, contexts: dict[TlsKey, ssl.SSLContext]
) -> _core.Upstream:
    """A fresh upstream with an empty keep-alive pool."""
    address, ip, port, keepalive, keepalive_timeout, tls = key
    context, server_name = None, None
    if tls:
        if tls not in contexts:
            contexts[tls] = client_context(ca=tls[0], verify=tls[1])
        context, server_name = contexts[tls], tls[2]
    return _core.Upstream(
        address,
        ip,
        port,
        keepalive=keepalive,
        keepalive_timeout=keepalive_timeout,
        ssl=context,
        server_hostname=server_name,
        tls=tls,
        authority=authority,
    )


def _tls_key(route: RouteConfig, address: Address) -> TlsKey:
    """The TLS settings ``route`` dials ``address`` with: the name checked is
    ``tls_server_name``, else the address's host (a name, or an IP for IP SANs)."""
    if not address.tls:
        return ()
    return (route.ca, route.tls_verify, route.tls_server_name or address.host)


def _route(
    config: Config, route: RouteConfig, upstreams: list[_core.Upstream], state: _core.RouteState
) -> _core.Route:
    """The data plane's view of one route."""
    return _core.Route(
        route.name,
        upstreams,
        max_body_size=route.max_body_size,
        host_header=route.host_header,
        request_id=route.request_id,
        connect_timeout=route.connect_timeout,
        response_header_timeout=route.response_header_timeout,
        upstream_body_timeout=route.upstream_body_timeout,
        tunnel_idle_timeout=route.tunnel_idle_timeout,
        state=state,
        try_duration=route.try_duration,
        try_interval=route.try_interval,
        max_held=route.max_held,
        max_held_body=route.max_held_body,
        health_path=route.health_path,
        hold_time_header=route.hold_time_header,
        retry_after=route.retry_after,
        fail_duration=route.fail_duration,
        hosts=route.hosts,
        path_prefix=route.path_prefix,
        strip_path_prefix=route.strip_path_prefix,
        underscores_in_headers=route.underscores_in_headers,
        request_buffer=route.request_buffer_size if route.request_buffering != "off" else 0,
        spool_dir=config.request_buffer_dir if route.request_buffering == "disk" else None,
        lb=route.lb,
        weights=route.upstream_weights(),
        https_redirect_port=redirect_port(config) if route.redirect_https else None,
        hsts=route.hsts,
    )
