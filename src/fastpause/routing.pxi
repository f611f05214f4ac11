# Routing snapshot objects built by the control plane, and the per-connection
# lazy deadline timer.


cdef class Deadline:
    """One lazily re-armed timer per connection.

    Moving a deadline later (the common case: every request or body read pushes
    it forward) only stores a double; the loop timer fires at the old time, sees
    the later deadline and re-arms once. So a keep-alive connection costs one
    timer per timeout period, not one per request.
    """

    def __cinit__(self, loop, callback):
        self.loop = loop
        self.callback = callback
        self.handle = None
        self.when = 0.0
        self.armed_at = 0.0

    cdef void set(self, double when):
        self.when = when
        if self.handle is None or self.armed_at > when:
            if self.handle is not None:
                self.handle.cancel()
            self.armed_at = when
            self.handle = self.loop.call_at(when, self._fire)

    cdef void clear(self):
        self.when = 0.0

    def dispose(self):
        """Cancel the timer and drop the callback (breaks the reference cycle)."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.when = 0.0
        self.callback = None

    def _fire(self):
        self.handle = None
        if self.when == 0.0 or self.callback is None:
            return
        if _monotonic() < self.when:
            self.armed_at = self.when
            self.handle = self.loop.call_at(self.when, self._fire)
            return
        self.when = 0.0
        self.callback()


cdef double PROBE_CONNECT_TIMEOUT = 2.0


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_MONOTONIC


cdef inline double _monotonic() noexcept nogil:
    """The event loop's clock without a Python call: libuv's loop time (what
    ``loop.call_at`` counts in) is CLOCK_MONOTONIC too, read once per iteration."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class Upstream:
    """One backend address and its pool of idle keep-alive connections.

    The pool is a stack (most recently used first, so idle connections beyond
    what the load needs age out) bounded by ``keepalive``.
    """

    def __init__(self, str address, str host, int port, *, int keepalive=64,
                 double keepalive_timeout=60.0):
        if keepalive < 0:
            raise ValueError("keepalive must be >= 0")
        self.address = address
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
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    cdef bint available(self, double now):
        """Eligible for new requests: healthy, not failing, not being drained."""
        return self.healthy and not self.draining and self.down_until <= now

    cdef void mark_failed(self, double now, double fail_duration):
        """Passive health: a connect failure or reset keeps requests away for a while."""
        if fail_duration > 0:
            self.down_until = now + fail_duration

    cdef void release(self, UpstreamProtocol conn):
        """Take back a connection whose exchange completed cleanly."""
        if len(self.idle) >= self.keepalive or conn.engine.shutting_down or self.draining:
            conn.close()
            return
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
                 RouteState state=None, double try_duration=30.0, double try_interval=0.25,
                 int max_held=10000, long long max_held_body=1 << 20, str health_path=None,
                 str hold_time_header=None, int retry_after=5, double fail_duration=10.0):
        if not upstreams:
            raise ValueError(f"route {name!r} needs at least one upstream")
        for u in upstreams:
            if not isinstance(u, Upstream):
                raise TypeError("upstreams must be Upstream objects")
        if max_body_size < 0:
            raise ValueError("max_body_size must be >= 0")
        self.name = name
        self.upstreams = list(upstreams)
        self.max_body_size = max_body_size
        self.host_header = host_header.encode("ascii") if host_header else None
        self.request_id = request_id
        self.connect_timeout = connect_timeout
        self.response_header_timeout = response_header_timeout
        self.upstream_body_timeout = upstream_body_timeout
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
        self.retry_after = retry_after
        self.fail_duration = fail_duration
        self.rr = 0

    def __repr__(self):
        return f"<Route {self.name} -> {', '.join(u.address for u in self.upstreams)}>"

    @property
    def host_header_value(self):
        return self.host_header.decode("ascii") if self.host_header else None

    cdef Upstream pick(self, double now):
        """Round robin over available upstreams; None when none may take requests.

        When every upstream is only passively marked down, they are tried anyway
        (as NGINX does): a connect attempt is then the quickest way to notice one
        is back. Load-balancing policies arrive with multi-route support.
        """
        cdef Py_ssize_t n = len(self.upstreams), i
        cdef Upstream u
        for i in range(n):
            u = self.upstreams[(self.rr + i) % n]
            if u.available(now):
                self.rr = (self.rr + i + 1) % n
                return u
        for i in range(n):
            u = self.upstreams[(self.rr + i) % n]
            if u.healthy and not u.draining:
                self.rr = (self.rr + i + 1) % n
                return u
        return None


cdef class RoutingTable:
    """Immutable snapshot the data plane routes against; swapped whole on reload."""

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

    cdef Route match(self, const unsigned char* p, RequestHead* h):
        """The route for a request; host/path matching arrives with multi-route support."""
        return self.routes[0]
