# Deadlines: every connection has one, and almost none ever fires (the request
# completes first). They share loop timers through a wheel of ticks instead of
# costing a uvloop timer each.

from libc.math cimport ceil

cdef double TIMER_TICK = 0.05  # a deadline fires up to this late, never early
# CLOCK_MONOTONIC counts from boot: no deadline is further than this (32,000 years), so a
# tick always fits a long long however absurd the timeout (a hand-edited state file)
cdef double FAR_FUTURE = 1e12


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int clock_getres(int clk_id, timespec* res)
    int CLOCK_MONOTONIC

cdef extern from *:
    """
    #include <time.h>
    #ifndef CLOCK_MONOTONIC_COARSE  /* Linux only */
    #define CLOCK_MONOTONIC_COARSE CLOCK_MONOTONIC
    #endif
    """
    int CLOCK_MONOTONIC_COARSE


cdef inline double _monotonic() noexcept nogil:
    """The event loop's clock without a Python call: libuv's loop time (what
    ``loop.call_at`` counts in) is CLOCK_MONOTONIC too, read once per iteration."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef double _coarse_lag() noexcept:
    cdef timespec res
    if clock_getres(CLOCK_MONOTONIC_COARSE, &res) != 0:
        return 0.0
    return res.tv_sec + res.tv_nsec * 1e-9


cdef double COARSE_LAG = _coarse_lag()


cdef inline double _timeout_clock() noexcept nogil:
    """Now, for arming a timeout: the kernel's tick clock (CLOCK_MONOTONIC_COARSE)
    plus one tick of it, so never behind ``_monotonic()`` and a timeout still never
    fires early. It reads a counter instead of the TSC (about 4 ns instead of 18 on
    this VM), and a request arms three timeouts; being up to one kernel tick (4 ms)
    ahead is lost in the wheel's 50 ms tick."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9 + COARSE_LAG


cdef inline long long _tick_of(double when) noexcept:
    if not when < FAR_FUTURE:  # also NaN
        when = FAR_FUTURE
    return <long long>ceil(when / TIMER_TICK)


cdef class TimerBucket:
    """The deadlines due in one tick (linked through the deadlines themselves) and
    the one loop timer that fires for all of them."""

    def __cinit__(self, long long tick):
        self.tick = tick
        self.head = None
        self.handle = None


cdef class TimerWheel:
    """One loop timer per tick that has deadlines, shared by all of them.

    A uvloop timer per connection costs a libuv handle, a timer-heap insertion and
    removal and a close callback, for every connection, while connection-per-request
    traffic opens tens of thousands a second. Here arming a deadline links it into
    its tick's bucket (O(1), usually into a bucket that exists already) and a closing
    connection unlinks it (O(1)).
    """

    def __cinit__(self, loop):
        self.loop = loop
        self.buckets = {}

    cdef void link(self, Deadline d, double when):
        cdef long long tick = _tick_of(when)
        cdef TimerBucket bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = TimerBucket(tick)
            bucket.handle = self.loop.call_at(tick * TIMER_TICK, self._fire, bucket)
            self.buckets[tick] = bucket
        d.bucket = bucket
        d.prev = None
        d.next = bucket.head
        if bucket.head is not None:
            bucket.head.prev = d
        bucket.head = d

    cdef void unlink(self, Deadline d):
        cdef TimerBucket bucket = d.bucket
        if d.prev is None:
            bucket.head = d.next
        else:
            d.prev.next = d.next
        if d.next is not None:
            d.next.prev = d.prev
        d.prev = None
        d.next = None
        d.bucket = None
        if bucket.head is None and bucket.handle is not None:
            bucket.handle.cancel()
            bucket.handle = None
            if self.buckets.get(bucket.tick) is bucket:
                del self.buckets[bucket.tick]

    def _fire(self, TimerBucket bucket):
        """Fire what is due; a deadline moved later goes to the bucket of its new tick.

        A callback that raises is reported and the rest of the tick still fires: the
        others are other connections' timeouts. Should anything still escape, what is
        left goes back into the wheel rather than stay linked to this dead bucket.
        """
        cdef Deadline d
        cdef double now = _monotonic()
        bucket.handle = None
        if self.buckets.get(bucket.tick) is bucket:
            del self.buckets[bucket.tick]
        try:
            while bucket.head is not None:
                d = bucket.head
                self.unlink(d)
                if d.when == 0.0 or d.callback is None:
                    continue
                if d.when > now:
                    self.link(d, d.when)
                    continue
                d.when = 0.0
                try:
                    d.callback()
                except Exception as exc:
                    self.loop.call_exception_handler({
                        "message": "fastpause: a timeout handler failed",
                        "exception": exc,
                    })
        finally:
            while bucket.head is not None:
                d = bucket.head
                self.unlink(d)
                if d.when != 0.0 and d.callback is not None:
                    self.link(d, d.when)

    def next_due(self):
        """When the earliest armed loop timer fires (None when none is armed)."""
        return min(self.buckets) * TIMER_TICK if self.buckets else None

    def pending(self):
        """How many ticks have a loop timer armed."""
        return len(self.buckets)


cdef class Deadline:
    """One lazily moved deadline per connection (or hold queue).

    Moving a deadline later (the common case: every request or body read pushes it
    forward) only stores a double; at its old tick the wheel sees the later time and
    moves it once. So a keep-alive connection costs one link per timeout period, not
    one per request. Moving it earlier moves it at once.
    """

    def __cinit__(self, TimerWheel wheel, callback):
        self.wheel = wheel
        self.callback = callback
        self.when = 0.0
        self.bucket = None

    cdef int set(self, double when) except -1:
        self.when = when
        if self.bucket is None:
            self.wheel.link(self, when)
        elif _tick_of(when) < self.bucket.tick:
            self.wheel.unlink(self)
            self.wheel.link(self, when)

    cdef int clear(self) except -1:
        self.when = 0.0

    cdef void dispose(self):
        """Leave the wheel and drop the callback (breaks the reference cycle)."""
        if self.bucket is not None:
            self.wheel.unlink(self)
        self.when = 0.0
        self.callback = None

    # Python-side handles of the same operations (the wheel's own tests use them)
    def arm(self, double when):
        self.set(when)

    def disarm(self):
        self.clear()

    def close(self):
        self.dispose()

    @property
    def linked(self):
        """Whether the deadline sits in a tick of the wheel (armed, or cleared lazily)."""
        return self.bucket is not None
