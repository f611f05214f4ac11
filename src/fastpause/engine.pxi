# The data-plane root: the current routing snapshot, the client connections,
# and the counters the control plane reads.

import functools
import os


cdef class Engine:
    """Owns the routing snapshot and every client connection of one process."""

    def __init__(self, loop, RoutingTable table, access_log=None, *,
                 long long max_held_bytes=256 << 20, long long max_connections=0,
                 on_capacity=None):
        cdef bytes seed = os.urandom(16)
        self.loop = loop
        self.timers = TimerWheel(loop)
        self.max_held_bytes = max_held_bytes
        self.on_capacity = on_capacity
        self.on_upstream_up = None
        self.on_upstream_down = None
        self._max_connections = max_connections
        self.access_log = access_log
        self.clients = set()
        self.shutting_down = False
        self.lame_duck = False
        self.on_idle = None
        self.relay_tls = None
        self.drained = None
        self.rng_state0 = (<uint64_t*><char*>seed)[0] | 1
        self.rng_state1 = (<uint64_t*><char*>seed)[1] | 1
        self.table = table

    @property
    def table(self):
        return self._table

    @table.setter
    def table(self, RoutingTable table):
        """Swap the routing snapshot (one reference); route states join this engine."""
        cdef Route route
        cdef RoutingTable old = self._table
        for route in table.routes:
            route.state.bind(self)
        self._table = table
        if old is not None:
            self._reroute_held(old)

    cdef void _reroute_held(self, RoutingTable old):
        """Late binding (invariant 1): requests held while the snapshot changed
        are routed again against the new one, which may name other upstreams."""
        cdef Route route
        cdef RouteState rs
        current = set()
        for route in self._table.routes:
            current.add(route.state)
        for route in self._table.routes:
            rs = route.state
            if rs.head is not None and rs.mode == MODE_RUNNING:
                rs.unavailable = False
                rs.release_all()
        for route in old.routes:
            rs = route.state
            if rs not in current and rs.head is not None:
                rs.mode = MODE_RUNNING  # its route is gone: the new table decides
                rs.release_rate = 0.0
                rs.release_all()

    def set_upstream_health(self, Upstream up, bint healthy):
        """An active health check's verdict; a healthy upstream releases held requests."""
        up.healthy = healthy
        if healthy:
            up.down_until = 0.0
            self.upstream_up(up, False)

    def upstream_reachable(self, Upstream up):
        """Another worker connected to ``up``: release what waits for it here too."""
        up.down_until = 0.0
        self.upstream_up(up, False)

    def upstream_unreachable(self, Upstream up, double fail_duration):
        """Another worker failed to reach ``up``: keep requests away from it here too."""
        up.down_until = max(up.down_until, _monotonic() + fail_duration)

    cdef void upstream_up(self, Upstream up, bint news):
        """A connection to ``up`` succeeded: routes waiting for it release their queues.

        ``news``: the first connection to ``up``, or the first after a failure. That,
        or a queue released here, is what other workers may be waiting for, so it goes
        to ``on_upstream_up`` (set in worker processes: rare, never per request).
        """
        cdef Route route
        cdef bint released = False
        for route in self._table.routes:
            if route.state.unavailable and up in route.upstreams:
                route.state.upstream_up(up)
                released = True
        if (news or released) and self.on_upstream_up is not None:
            self.on_upstream_up(up.address)

    def protocol_factory(self, str scheme="http"):
        """A factory for ``loop.create_server``: one ClientProtocol per connection."""
        if scheme not in ("http", "https"):
            raise ValueError(f"unknown scheme {scheme!r}")
        return functools.partial(ClientProtocol, self, scheme == "https")

    cdef int count_response(self, int status) except -1:
        cdef int cls = status // 100
        self.n_responses[cls if 1 <= cls <= 5 else 0] += 1

    def share_counts(self, SharedCounts shared):
        """Publish the held body bytes in ``shared`` and check ``max_held_bytes``
        against every worker's (see ``SharedCounts``)."""
        self.shared = shared
        shared.publish(HELD_BYTES, self.n_held_bytes)

    cdef void add_held_bytes(self, long long n):
        """Held body bytes came in (``n`` > 0) or left (``n`` < 0)."""
        self.n_held_bytes += n
        if self.shared is not None:
            self.shared.publish(HELD_BYTES, self.n_held_bytes)

    cdef long long held_bytes_total(self):
        """Held body bytes of the whole proxy (what ``max_held_bytes`` caps)."""
        if self.shared is None:
            return self.n_held_bytes
        return self.shared.total(HELD_BYTES)

    @property
    def max_connections(self):
        return self._max_connections

    @max_connections.setter
    def max_connections(self, long long limit):
        """A new limit (reload) takes effect at once: at or over it stops accepting,
        under it (or 0, no limit) accepts again."""
        if limit < 0:
            raise ValueError("max_connections must be >= 0")
        self._max_connections = limit
        full = limit > 0 and len(self.clients) >= limit
        if full != self.at_capacity:
            self.at_capacity = full
            if self.on_capacity is not None:
                self.on_capacity(full)

    cdef void client_opened(self, ClientProtocol c):
        self.clients.add(c)
        self.n_connections_total += 1
        if (self._max_connections and not self.at_capacity
                and len(self.clients) >= self._max_connections):
            self.at_capacity = True
            if self.on_capacity is not None:
                self.on_capacity(True)

    cdef void client_closed(self, ClientProtocol c):
        self.clients.discard(c)
        if self.at_capacity and len(self.clients) < self._max_connections * 9 // 10:
            # hysteresis: accepting resumes once a tenth of the connections are gone
            self.at_capacity = False
            if self.on_capacity is not None:
                self.on_capacity(False)
        if not self.clients and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    cdef void fill_request_id(self, char* out):
        """32 hex digits from xorshift128+: unique enough to trace, not a secret."""
        cdef uint64_t s1, s0, word
        cdef int i, j
        for i in range(2):
            s1 = self.rng_state0
            s0 = self.rng_state1
            self.rng_state0 = s0
            s1 ^= s1 << 23
            self.rng_state1 = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
            word = self.rng_state1 + s0
            for j in range(16):
                out[i * 16 + j] = _HEXDIGITS[(word >> (4 * j)) & 15]

    def shutdown(self):
        """Graceful stop: idle keep-alive connections close now, busy ones after their
        response. A connection accepted but not yet sent a request is not idle: its
        request may be on the wire (closing would reset it), so it gets its first
        request answered (with ``Connection: close``), within its head timeout.
        Returns how many connections are left to finish (those closed here leave
        ``clients`` a moment later, when their close completes)."""
        cdef ClientProtocol c
        cdef Route route
        cdef Py_ssize_t left = 0
        self.shutting_down = True
        for route in self._table.routes:
            route.state.fail_all(503, "the proxy is shutting down")
        for c in list(self.clients):
            if c.state == C_IDLE and c.started and not c._give_to_successor():
                c._close()
            if c.state != C_CLOSED:
                left += 1
        return left

    def hand_over(self):
        """Give a successor (``fastpause upgrade``) every connection it can take: the
        held requests, route by route in arrival order, then the idle connections.
        Returns ``[(fd, replay, hold_left, held_age, https)]`` and the number of held
        requests that stay (a chunked body cut where it cannot resume): the caller stopped
        accepting first."""
        cdef ClientProtocol c
        cdef Route route
        cdef list given = []
        cdef int stay = 0
        for route in self._table.routes:
            c = route.state.head
            while c is not None:
                following = c.held_next
                one = c._hand_over(True)
                if one is None:
                    stay += 1
                else:
                    given.append(one)
                c = following
        for c in list(self.clients):
            if c.state != C_CLOSED and c.held_queue is None:
                one = c._hand_over(False)
                if one is not None:
                    given.append(one)
        return given, stay

    def close_all(self):
        """Cut every client connection and every pooled upstream connection."""
        cdef ClientProtocol c
        cdef Route route
        cdef Upstream up
        for c in list(self.clients):
            c._abort()
        for route in self._table.routes:
            for up in route.upstreams:
                up.close_idle()

    def wait_drained(self):
        """A future that resolves once no client connection is left."""
        if self.drained is None or self.drained.done():
            self.drained = self.loop.create_future()
        if not self.clients:
            self.drained.set_result(None)
        return self.drained

    def connections(self):
        return len(self.clients)

    def in_flight(self):
        return self.n_in_flight

    def stats(self):
        return {
            "connections": len(self.clients),
            "connections_total": self.n_connections_total,
            "requests_total": self.n_requests,
            "in_flight": self.n_in_flight,
            "responses_1xx": self.n_responses[1],
            "responses_2xx": self.n_responses[2],
            "responses_3xx": self.n_responses[3],
            "responses_4xx": self.n_responses[4],
            "responses_5xx": self.n_responses[5],
            "bytes_in": self.n_bytes_in,
            "bytes_out": self.n_bytes_out,
            "upstream_errors": self.n_upstream_errors,
            "held_bytes": self.n_held_bytes,
            "at_capacity": self.at_capacity,
        }
