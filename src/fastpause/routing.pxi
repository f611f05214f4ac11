# Routing snapshot objects built by the control plane.


cdef double PROBE_CONNECT_TIMEOUT = 2.0


cdef class Upstream:
    """One backend address and its pool of idle keep-alive connections.

    The pool is a stack (most recently used first, so idle connections beyond
    what the load needs age out) bounded by ``keepalive``.
    """

    def __init__(self, str address, str host, int port, *, int keepalive=64,
                 double keepalive_timeout=60.0, ssl=None, str server_hostname=None,
                 tuple tls=(), str authority=None):
        if keepalive < 0:
            raise ValueError("keepalive must be >= 0")
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.tls = tls
        self.address = address
        self.authority = authority or address
        self.address_b = self.authority.encode("ascii")
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.idle = []
        self.conns = set()
        self.healthy = True

    def __repr__(self):
        return f"<Upstream {self.address}>"

    cdef UpstreamProtocol pop_idle(self):
        cdef UpstreamProtocol conn
        while self.idle:
            conn = self.idle.pop()
            if conn.state != U_IDLE:  # a connection that closed left the pool already
                continue
            if conn.out.has_unread():
                # it sent something while idle (late bytes after its response, or its
                # close): never reuse it, that would be read as the next response
                conn.close()
                continue
            return conn
        return None

    cdef bint available(self, double now):
        """Eligible for new requests: healthy, not failing, not being drained."""
        return self.healthy and not self.draining and self.down_until <= now

    cdef void mark_failed(self, Engine engine, double now, double fail_duration):
        """Passive health: a connect failure or reset keeps requests away for a while.

        The first failure of a spell goes to ``engine.on_upstream_down`` (set in worker
        processes), so the other workers keep away from it too.
        """
        if fail_duration <= 0:
            return
        if self.down_until <= now and engine.on_upstream_down is not None:
            engine.on_upstream_down(self.address, fail_duration)
        self.down_until = now + fail_duration

    cdef int release(self, UpstreamProtocol conn) except -1:
        """Take back a connection whose exchange completed cleanly."""
        if len(self.idle) >= self.keepalive or conn.engine.shutting_down or self.draining:
            conn.close()
            return 0
        conn.make_idle()
        self.idle.append(conn)

    cdef void probe(self, Engine engine):
        """Try to open one connection (no request on it); success releases held requests.

        Skipped while another connection attempt to this upstream is under way.
        """
        if self.n_connecting == 0 and self.healthy and not self.draining:
            UpstreamProtocol(self, engine).start_connect(PROBE_CONNECT_TIMEOUT)

    cdef void forget(self, UpstreamProtocol conn):
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close_idle(self):
        """Close every pooled idle connection (reload, shutdown)."""
        cdef UpstreamProtocol conn
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def drain(self):
        """Take no new requests; pooled connections close now, busy ones when done."""
        self.draining = True
        self.close_idle()

    def close_all(self):
        """Cut every connection, busy ones included (the end of a drain)."""
        cdef UpstreamProtocol conn
        self.close_idle()
        for conn in list(self.conns):
            conn.cut()

    def close_tunnels(self):
        """Cut the upgraded (WebSocket) connections now, as kamal-proxy does on deploy;
        ordinary exchanges are left to drain."""
        cdef UpstreamProtocol conn
        for conn in list(self.conns):
            if conn.state == U_TUNNEL:
                conn.cut()

    @property
    def active(self):
        """Exchanges in progress on this upstream."""
        return self.n_active

    @property
    def down(self):
        """Marked down by a recent connect failure or reset (passive health)."""
        return self.down_until > 0 and self.down_until > _monotonic()

    def stats(self):
        return {
            "address": self.address,
            "healthy": self.healthy,
            "down": self.down,
            "draining": self.draining,
            "active": self.n_active,
            "idle": len(self.idle),
            "requests": self.n_requests,
            "connects": self.n_connects,
            "connect_failures": self.n_connect_failures,
        }


cdef class Route:
    """A named route: its upstreams and per-route limits and timeouts."""

    def __init__(self, str name, list upstreams, *, long long max_body_size=1 << 30,
                 str host_header=None, bint request_id=False, double connect_timeout=5.0,
                 double response_header_timeout=60.0, double upstream_body_timeout=60.0,
                 double tunnel_idle_timeout=3600.0,
                 RouteState state=None, double try_duration=30.0, double try_interval=0.25,
                 int max_held=10000, long long max_held_body=1 << 20, str health_path=None,
                 str hold_time_header=None, int retry_after=5, double fail_duration=10.0,
                 hosts=(), str path_prefix=None, bint strip_path_prefix=False,
                 bint underscores_in_headers=False, long long request_buffer=0,
                 str spool_dir=None, str lb="round_robin", weights=None,
                 https_redirect_port=None, str hsts=None):
        if not upstreams:
            raise ValueError(f"route {name!r} needs at least one upstream")
        for u in upstreams:
            if not isinstance(u, Upstream):
                raise TypeError("upstreams must be Upstream objects")
        if max_body_size < 0 or request_buffer < 0:
            raise ValueError("max_body_size and request_buffer must be >= 0")
        self.name = name
        self.upstreams = list(upstreams)
        self.max_body_size = max_body_size
        self.host_header = host_header.encode("ascii") if host_header else None
        self.request_id = request_id
        self.connect_timeout = connect_timeout
        self.response_header_timeout = response_header_timeout
        self.upstream_body_timeout = upstream_body_timeout
        self.tunnel_idle_timeout = tunnel_idle_timeout
        if try_duration < 0 or try_interval <= 0 or max_held < 0 or max_held_body < 0:
            raise ValueError("try_duration, max_held and max_held_body must be >= 0 "
                             "and try_interval > 0")
        self.state = state if state is not None else RouteState(name)
        self.try_duration = try_duration
        self.try_interval = try_interval
        self.max_held = max_held
        self.max_held_body = max_held_body
        self.health_path = health_path.encode("ascii") if health_path else None
        self.hold_time_header = hold_time_header.encode("ascii") if hold_time_header else None
        self.https_redirect = (None if https_redirect_port is None
                               else b"" if https_redirect_port == 443
                               else b":%d" % https_redirect_port)
        self.hsts_field = (b"Strict-Transport-Security: %s\r\n" % hsts.encode("ascii")
                           if hsts else None)
        self.retry_after = retry_after
        self.fail_duration = fail_duration
        self.hosts = tuple(_normal_host(h) for h in hosts)
        self.path_prefix = _normal_prefix(name, path_prefix) if path_prefix else None
        self.strip_path_prefix = strip_path_prefix and self.path_prefix is not None
        self.underscores_in_headers = underscores_in_headers
        self.request_buffer = request_buffer
        self.spool_dir = spool_dir if request_buffer else None
        self.balancer = Balancer(lb, self.upstreams, weights, f"fp_{name}")

    def __repr__(self):
        return f"<Route {self.name} -> {', '.join(u.address for u in self.upstreams)}>"

    @property
    def host_header_value(self):
        return self.host_header.decode("ascii") if self.host_header else None

    @property
    def lb(self):
        return self.balancer.policy_name

    cdef Upstream pick(self, double now, ClientProtocol c, const unsigned char* p,
                       RequestHead* h):
        """The upstream for this request (``p`` is NULL on a retry: no affinity then).

        With the cookie policy a client whose cookie names a usable upstream stays
        there; otherwise it gets a new cookie with the response.
        """
        cdef Upstream up
        if self.balancer.policy != LB_COOKIE:
            return self.balancer.pick(now, c.client_ip_b)
        c.set_cookie = None
        if p != NULL:
            up = self.balancer.sticky(now, p, h)
            if up is not None:
                return up
        up = self.balancer.pick(now, c.client_ip_b)
        if up is not None:
            c.set_cookie = self.balancer.set_cookie_field(up)
        return up


cdef bytes _normal_prefix(str route, str prefix):
    """A path prefix, which must be in the normal form request paths are compared in."""
    cdef bytes raw = prefix.encode("ascii")
    try:
        normal = normalize_path(raw)
    except ValueError as error:
        raise ValueError(f"route {route!r}: invalid path_prefix {prefix!r}: {error}") from None
    if normal != raw:
        raise ValueError(f"route {route!r}: path_prefix {prefix!r} is not in normal form "
                         f"(request paths are compared as {normal.decode()!r})")
    return raw


cdef str _normal_host(str host):
    """Hosts match case-insensitively and without a trailing dot; ``*.`` makes a wildcard."""
    host = host.strip().lower().rstrip(".")
    body = host[2:] if host.startswith("*.") else host
    if not body or "*" in body or ":" in body or "/" in body:
        raise ValueError(f"invalid host {host!r}: expected a name like app.example.com "
                         f"or *.example.com")
    return host


cdef class RoutingTable:
    """Immutable snapshot the data plane routes against; swapped whole on reload.

    Routing picks the most specific host first (exact name, then the longest
    matching ``*.suffix`` wildcard, then routes without ``hosts``) and within it
    the longest matching ``path_prefix``; a host group with no matching prefix
    falls through to the next. Two routes that would match exactly the same
    requests are rejected here, naming both.
    """

    def __init__(self, list routes, *, Py_ssize_t max_head_size=32768, int max_headers=100,
                 Py_ssize_t max_uri_size=8192, double client_head_timeout=15.0,
                 double client_body_timeout=60.0, double keepalive_timeout=60.0,
                 double send_timeout=60.0):
        if not routes:
            raise ValueError("a routing table needs at least one route")
        if not 1 <= max_headers <= MAX_FIELDS_CAP:
            raise ValueError(f"max_headers must be between 1 and {MAX_FIELDS_CAP}")
        if max_head_size < 64 or max_uri_size < 1:
            raise ValueError("max_head_size must be >= 64 and max_uri_size >= 1")
        self.routes = list(routes)
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_uri_size = max_uri_size
        self.client_head_timeout = client_head_timeout
        self.client_body_timeout = client_body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self._index()

    def _index(self):
        cdef Route route
        exact, wildcards, hostless, seen = {}, {}, [], {}
        for route in self.routes:
            for host in route.hosts or (None,):
                key = (host, route.path_prefix)
                if key in seen:
                    raise ValueError(
                        f"routes {seen[key].name!r} and {route.name!r} both match "
                        f"{'host ' + host if host else 'any host'} and "
                        f"{'path prefix ' + route.path_prefix.decode() if route.path_prefix else 'any path'}")
                seen[key] = route
                if host is None:
                    hostless.append(route)
                elif host.startswith("*."):
                    wildcards.setdefault(host[1:].encode("ascii"), []).append(route)
                else:
                    exact.setdefault(host.encode("ascii"), []).append(route)
        by_prefix = lambda r: -len((<Route>r).path_prefix or b"")
        self.exact = {host: sorted(rs, key=by_prefix) for host, rs in exact.items()}
        self.wildcards = sorted(((suffix, sorted(rs, key=by_prefix))
                                 for suffix, rs in wildcards.items()),
                                key=lambda item: -len(item[0]))
        self.hostless = sorted(hostless, key=by_prefix)
        only = self.routes[0] if len(self.routes) == 1 else None
        self.only = only if only is not None and not only.hosts and only.path_prefix is None \
            else None

    cdef Route match(self, const unsigned char* p, RequestHead* h):
        """The route for a request, or None (answered 404)."""
        cdef Route route
        cdef bytes host
        cdef bytes suffix
        if self.only is not None:
            return self.only
        if self.exact or self.wildcards:
            host = _request_host(p, h)
            routes = self.exact.get(host)
            if routes is not None:
                route = _longest_prefix(routes, p, h)
                if route is not None:
                    return route
            for suffix, routes in self.wildcards:
                if len(host) > len(suffix) and host.endswith(suffix):
                    route = _longest_prefix(routes, p, h)
                    if route is not None:
                        return route
        return _longest_prefix(self.hostless, p, h)


cdef Route _longest_prefix(list routes, const unsigned char* p, RequestHead* h):
    """The first route (they are sorted longest prefix first) whose prefix matches the
    path in normal form (request_path.pxi)."""
    cdef Route route
    for route in routes:
        if route.path_prefix is None or _prefix_matches(route.path_prefix, h.norm_path,
                                                        h.norm_len):
            return route
    return None


cdef bint _prefix_matches(bytes prefix, const unsigned char* path, Py_ssize_t n):
    """Segment-aware: ``/api`` matches ``/api``, ``/api/x`` and ``/api?q``, not ``/apix``."""
    cdef Py_ssize_t plen = len(prefix)
    if n < plen or memcmp(path, <const char*>prefix, plen) != 0:
        return False
    return n == plen or prefix[plen - 1] == 47 or path[plen] == 47 or path[plen] == 63


cdef bytes _request_host(const unsigned char* p, RequestHead* h):
    """The request's host, lowercased, without port or trailing dot (b"" when none).

    The parser refused a host it could not read whole (``_check_host``); this reads
    all of it, never a part.
    """
    cdef const unsigned char* v = p + h.host_start
    cdef Py_ssize_t n = h.host_len, i
    cdef bytes host
    cdef char* out
    if n > 0 and v[n - 1] == 46:
        n -= 1
    host = PyBytes_FromStringAndSize(NULL, n)
    out = PyBytes_AS_STRING(host)
    for i in range(n):
        out[i] = _lower(v[i])
    return host
