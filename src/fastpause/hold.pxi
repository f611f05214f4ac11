# Holding: a route's runtime state (running / paused / stopped) and its FIFO of
# held requests. A held request is its client connection itself, linked into
# the queue through two fields (O(1) append and O(1) removal when the client
# leaves). It keeps its raw head and buffered body and no upstream choice, so a
# release re-runs routing against the snapshot current at that moment.
#
# One deadline timer per queue. Entries are appended in hold order, and most share
# one max hold, so the queue head almost always expires first. When one is pushed
# with an earlier deadline than the tail's (a request held again after its upstream
# failed it keeps the deadline of its arrival; a pause's max hold can shrink), the
# queue is marked unordered and its expiry scans the whole queue until it empties.

cdef enum:
    MODE_RUNNING = 0
    MODE_PAUSED = 1
    MODE_STOPPED = 2

cdef double[14] HOLD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                10.0, 30.0, 60.0, 120.0]
_MODE_NAMES = ("running", "paused", "stopped")
_RELEASE_TICK = 0.01
cdef Py_ssize_t RELEASE_WINDOW = 64  # the default upstream keep-alive pool size


cdef class RouteState:
    """What a route is doing now; outlives routing snapshots (kept by route name)."""

    def __init__(self, str name):
        self.name = name
        self.mode = MODE_RUNNING
        self.max_hold = 30.0
        self.stop_message = ""
        self.release_rate = 0.0

    cdef void bind(self, Engine engine):
        if self.engine is None:
            self.engine = engine
            self.expiry = Deadline(engine.timers, self._expire_cb)

    def share_counts(self, SharedCounts shared, int column):
        """Publish this route's held count in ``column`` of ``shared`` and check
        ``max_held`` against every worker's (see ``SharedCounts``)."""
        if not HELD_BYTES < column < shared.columns:
            raise ValueError(f"column {column} is not a route's")
        self.shared = shared
        self.shared_column = column
        shared.publish(column, self.count)

    cdef Py_ssize_t held_total(self):
        """Requests held in this route by the whole proxy (what ``max_held`` caps)."""
        if self.shared is None:
            return self.count
        return <Py_ssize_t>self.shared.total(self.shared_column)

    # -- the queue -----------------------------------------------------------------

    cdef void push(self, ClientProtocol c, double deadline):
        c.held_queue = self
        c.hold_deadline = deadline
        c.held_since = _monotonic()
        c.held_next = None
        c.held_prev = self.tail
        if self.tail is None:
            self.head = c
            self.expiry.set(deadline)
        else:
            if deadline < self.tail.hold_deadline:
                self.unordered = True
                if deadline < self.expiry.when:
                    self.expiry.set(deadline)
            self.tail.held_next = c
        self.tail = c
        self.count += 1
        self.n_held_total += 1
        if self.shared is not None:
            self.shared.publish(self.shared_column, self.count)

    cdef void unlink(self, ClientProtocol c):
        if c.held_prev is None:
            self.head = c.held_next
        else:
            c.held_prev.held_next = c.held_next
        if c.held_next is None:
            self.tail = c.held_prev
        else:
            c.held_next.held_prev = c.held_prev
        c.held_prev = None
        c.held_next = None
        c.held_queue = None
        self.count -= 1
        if self.shared is not None:
            self.shared.publish(self.shared_column, self.count)
        if self.head is None:
            self.expiry.clear()
            self.unavailable = False
            self.unordered = False
        elif not self.unordered and self.head.hold_deadline > self.expiry.when:
            self.expiry.set(self.head.hold_deadline)

    cdef ClientProtocol pop(self):
        cdef ClientProtocol c = self.head
        if c is not None:
            self.unlink(c)
            self._observe(_monotonic() - c.held_since)
        return c

    cdef void _observe(self, double seconds):
        cdef int i
        self.hold_seconds_sum += seconds
        for i in range(14):
            if seconds <= HOLD_BUCKETS[i]:
                self.hold_buckets[i] += 1
                return
        self.hold_buckets[14] += 1

    # -- events ----------------------------------------------------------------------

    def _expire_cb(self):
        cdef ClientProtocol c
        cdef double now = _monotonic()
        if self.unordered:
            self._expire_unordered(now)
            return
        while self.head is not None and self.head.hold_deadline <= now:
            c = self.pop()
            self.n_expired += 1
            c.hold_expired()
        if self.head is not None:
            self.expiry.set(self.head.hold_deadline)

    cdef void _expire_unordered(self, double now):
        """Expire every entry whose deadline passed, wherever it sits; re-arm for the
        earliest left. O(queue), only while an out-of-order entry may be queued."""
        cdef ClientProtocol c = self.head, after
        cdef double earliest = 0.0
        while c is not None:
            after = c.held_next
            if c.hold_deadline <= now:
                self.unlink(c)
                self._observe(now - c.held_since)
                self.n_expired += 1
                c.hold_expired()
            elif earliest == 0.0 or c.hold_deadline < earliest:
                earliest = c.hold_deadline
            c = after
        if self.head is not None:
            self.expiry.set(earliest)

    cdef void release_all(self):
        """Send every held request on, in arrival order (or start paced release).

        Released requests go out through a window of RELEASE_WINDOW in flight: each
        completed exchange releases the next, over the keep-alive connection it
        just freed. Opening one upstream connection per held request at once would
        make the first answer wait for thousands of connects.
        """
        if self.release_rate > 0:
            self._start_pacing()
            return
        self.draining = True
        self._top_up()

    cdef void _top_up(self):
        """Release the next held requests while the window has room.

        A released request that must wait for a new upstream connection stops the
        loop until its request is written (or it ends): the next one could
        otherwise take a pooled connection and reach the upstream first. Requests
        leave in arrival order and reach the upstream in arrival order.
        """
        cdef ClientProtocol c
        cdef Py_ssize_t n = self.count  # those that go straight back in wait for next time
        while (n > 0 and self.head is not None and self.mode == MODE_RUNNING
               and self.in_flight < RELEASE_WINDOW and self.blocker is None):
            n -= 1
            c = self.pop()
            self.n_released += 1
            c.release()
            if c.upstream is not None and c.pending is not None:  # still connecting
                self.blocker = c
                c.releaser = self
        if self.head is None or self.mode != MODE_RUNNING:
            self.draining = False

    cdef void unblock(self):
        """The request that held up the release went out (or ended): go on."""
        self.blocker = None
        if self.draining:
            self._top_up()

    cdef void _start_pacing(self):
        if self.pacer is None and self.head is not None:
            self.pacer = self.engine.loop.call_later(0, self._pace)

    def _pace(self):
        cdef ClientProtocol c
        cdef double per_tick = self.release_rate * _RELEASE_TICK
        self.pacer = None
        if self.mode != MODE_RUNNING:
            return
        self.release_credit += per_tick if per_tick > 0 else 1e18
        while self.release_credit >= 1.0 and self.head is not None:
            self.release_credit -= 1.0
            c = self.pop()
            self.n_released += 1
            c.release()
        if self.head is None:
            self.release_rate = 0.0
            self.release_credit = 0.0
        else:
            self.pacer = self.engine.loop.call_later(_RELEASE_TICK, self._pace)

    cdef void note_unavailable(self, Route route):
        """No upstream took a connection: probe on the retry interval until one does.

        A release in progress stops here: what it would send next would only find
        the same closed door, so the queue waits for the next release event.
        """
        self.unavailable = True
        self.draining = False
        self.probe_route = route  # the current snapshot's route: a reload may change it
        if self.prober is None:
            self.prober = self.engine.loop.call_later(route.try_interval, self._probe)

    def _probe(self):
        cdef Route route = self.probe_route
        self.prober = None
        if not self.unavailable or self.head is None or route is None:
            self.probe_route = None
            return
        for up in route.upstreams:
            (<Upstream>up).probe(self.engine)
        self.prober = self.engine.loop.call_later(route.try_interval, self._probe)

    cdef void upstream_up(self, Upstream up):
        """An upstream of this route accepted a connection: release what waits for it."""
        if self.unavailable and self.mode == MODE_RUNNING:
            self.unavailable = False
            self.release_all()

    cdef void fail_all(self, int status, str why):
        cdef ClientProtocol c
        while self.head is not None:
            c = self.pop()
            c.hold_failed(status, why, self.stop_retry_after)

    # -- control (called by the control plane) ----------------------------------------

    def pause(self, double max_hold=30.0):
        """Hold new requests; requests already in flight finish (see ``wait_drained``)."""
        if max_hold <= 0:
            raise ValueError("max_hold must be positive")
        self.mode = MODE_PAUSED
        self.max_hold = max_hold
        self._cancel_pacing()

    def resume(self, double rate=0.0):
        """Release held requests in arrival order; ``rate`` > 0 paces them (requests/s)."""
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.mode = MODE_RUNNING
        self.release_rate = rate
        self.release_credit = 0.0
        if self.engine is not None:
            self.release_all()

    def stop(self, str message="", int retry_after=0):
        """Maintenance: answer held and new requests with 503 and ``message``."""
        self.mode = MODE_STOPPED
        self.stop_message = message
        self.stop_retry_after = retry_after
        self.draining = False
        self._cancel_pacing()
        if self.engine is not None:
            self.fail_all(503, message or "the service is stopped for maintenance")

    def start(self):
        """Leave maintenance (or a pause) and serve normally again."""
        self.mode = MODE_RUNNING
        if self.engine is not None:
            self.release_all()

    def wait_drained(self):
        """A future resolved once no request of this route is in flight (held ones aside)."""
        fut = self.engine.loop.create_future()
        if self.in_flight == 0:
            fut.set_result(None)
        else:
            if self.drain_waiters is None:
                self.drain_waiters = []
            self.drain_waiters.append(fut)
        return fut

    cdef int request_started(self) except -1:
        self.in_flight += 1

    cdef int request_ended(self) except -1:
        self.in_flight -= 1
        if self.draining and self.blocker is None:
            self._top_up()
        if self.in_flight == 0 and self.drain_waiters is not None:
            waiters, self.drain_waiters = self.drain_waiters, None
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    cdef void _cancel_pacing(self):
        if self.pacer is not None:
            self.pacer.cancel()
            self.pacer = None

    @property
    def mode_name(self):
        return _MODE_NAMES[self.mode]

    @property
    def held(self):
        return self.count

    @property
    def oldest_held_age(self):
        """Seconds the oldest held request has waited, or None."""
        if self.head is None:
            return None
        return _monotonic() - self.head.held_since

    def stats(self):
        return {
            "mode": _MODE_NAMES[self.mode],
            "held": self.count,
            "in_flight": self.in_flight,
            "held_total": self.n_held_total,
            "released_total": self.n_released,
            "expired_total": self.n_expired,
            "rejected_full_total": self.n_rejected_full,
            "rejected_body_total": self.n_rejected_body,
            "hold_seconds_sum": self.hold_seconds_sum,
            "hold_seconds_buckets": [(HOLD_BUCKETS[i], self.hold_buckets[i]) for i in range(14)]
                                    + [(float("inf"), self.hold_buckets[14])],
        }
