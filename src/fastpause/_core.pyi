"""Type stub for the Cython data plane ``fastpause._core``.

This is the boundary between the two planes (see DESIGN.md): the control plane
builds ``Upstream``/``Route``/``RoutingTable`` objects from the config and hands
the table to the ``Engine`` by assigning ``engine.table``. The engine never
reads files or parses config.
"""

import asyncio
import ssl
from collections.abc import Callable, Sequence
from typing import Any

LB_POLICIES: tuple[str, ...]
"""round_robin (smooth weighted), least_conn, random_two, first, ip_hash, cookie"""

class HeadError(Exception):
    """A request head was rejected; ``status`` is the HTTP status to answer."""

    status: int
    reason: str

def parse_request_head(
    data: bytes,
    max_head_size: int = 32768,
    max_headers: int = 100,
    max_uri_size: int = 8192,
) -> tuple[bytes, bytes, tuple[int, int], list[tuple[bytes, bytes]]]:
    """Parse one complete request head (ending in CRLF CRLF) with the proxy's parser.

    Returns ``(method, target, (major, minor), [(name, value), ...])`` or raises
    ``HeadError``. Diagnostic/test entry point; the hot path never builds these
    Python objects.
    """

def parse_response_head(
    data: bytes, head_request: bool = False
) -> tuple[tuple[int, int], int, str, int, list[tuple[bytes, bytes]]]:
    """Parse one complete upstream response head (ending in CRLF CRLF) as the proxy judges it.

    Returns ``((major, minor), status, framing, content_length, [(name, value), ...])``;
    ``framing`` is "none", "length", "chunked" or "close" (RFC 9112 6.3; for a HEAD
    request when ``head_request``), ``content_length`` -1 when absent. Raises
    ``HeadError`` (status 502). Diagnostic/test entry point.
    """

def decode_chunked(data: bytes, piece: int = 0) -> tuple[bytes, bytes, int, int]:
    """Decode the chunked body at the start of ``data`` with the proxy's decoder,
    fed ``piece`` bytes at a time (0: at once).

    Returns ``(body, trailer_section, end, waiting)``: ``end`` is -1 when more bytes
    are needed, and then ``waiting`` is how many data bytes of the current chunk are
    still to come. Raises ``ValueError`` with the reason when the body is refused.
    Diagnostic/test entry point.
    """

def request_framing(data: bytes) -> tuple[str, int]:
    """How the proxy delimits the body of a request with this complete head:
    ``(framing, content_length)``, framing "none", "length" or "chunked",
    content_length -1 when absent. Raises ``HeadError``. Diagnostic/test entry point.
    """

def normalize_path(path: bytes) -> bytes:
    """``path`` (starting with '/', maybe with a query) in the normal form requests are
    routed on and forwarded in: dot segments removed (``%2e`` read as '.'),
    percent-encoded unreserved characters decoded, other percent-encodings in
    uppercase hex, the query untouched. ValueError saying why when a request with that
    path is refused (400): it climbs above the root, hides a dot segment behind %2F,
    '\\' or ';', or has broken percent-encoding."""

class Upstream:
    """One backend address with its idle keep-alive connection pool."""

    address: str
    host: str
    port: int
    keepalive: int
    keepalive_timeout: float
    def __init__(
        self,
        address: str,
        host: str,
        port: int,
        *,
        keepalive: int = 64,
        keepalive_timeout: float = 60.0,
        ssl: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        tls: tuple[object, ...] = (),
        authority: str | None = None,
    ) -> None: ...
    authority: str  # HOST:PORT, the address without its scheme
    ssl: ssl.SSLContext | None  # an https:// upstream's client context
    server_hostname: str | None  # the name its certificate is checked for
    tls: tuple[object, ...]  # its TLS settings, compared on reload
    healthy: bool  # the active health check's verdict; set it through Engine.set_upstream_health
    draining: bool
    active: int  # exchanges in progress
    down: bool  # marked down by a recent connect failure or reset (passive health)
    def stats(self) -> dict[str, int | str | bool]: ...
    def close_idle(self) -> None: ...
    def drain(self) -> None:
        """Take no new requests; idle connections close now, busy ones when done."""
    def close_all(self) -> None:
        """Cut every connection, busy ones included (the end of a drain)."""
    def close_tunnels(self) -> None:
        """Cut upgraded (WebSocket) connections now; ordinary exchanges drain."""

class SharedCounts:
    """Counts every worker publishes (its own row) and every worker sums (a column):
    held body bytes (column 0) and held requests per route (columns 1 and up), in
    memory the workers share, so ``max_held`` and ``max_held_bytes`` cap the whole
    proxy (overshoot at most ``workers - 1``)."""

    def __init__(self, buffer: Any, workers: int, index: int, columns: int) -> None:
        """``buffer``: writable, ``workers * columns`` 64-bit counts; row ``index`` is
        this worker's and starts at zero."""
    def __getitem__(self, column: int) -> int:
        """The whole proxy's count in ``column``."""

class RouteState:
    """A route's runtime state: running/paused/stopped and its hold queue.

    It outlives routing snapshots: the control plane keeps one per route name and
    passes it to every ``Route`` of that name, so pause state survives a reload.
    """

    name: str
    mode_name: str  # "running" | "paused" | "stopped"
    held: int
    def share_counts(self, shared: SharedCounts, column: int) -> None:
        """Publish the held count in ``column`` and cap it with every worker's."""
    oldest_held_age: float | None
    in_flight: int
    max_hold: float
    stop_message: str
    stop_retry_after: int  # 0: the route's retry_after
    def __init__(self, name: str) -> None: ...
    def pause(self, max_hold: float = 30.0) -> None:
        """Hold new requests (each for at most ``max_hold`` seconds)."""
    def resume(self, rate: float = 0.0) -> None:
        """Release held requests in arrival order; ``rate`` > 0 paces them (requests/s)."""
    def stop(self, message: str = "", retry_after: int = 0) -> None:
        """Answer held and new requests with 503 + Retry-After + ``message``."""
    def start(self) -> None: ...
    def wait_drained(self) -> asyncio.Future[None]:
        """Resolves when no dispatched request of the route is in flight."""
    def stats(self) -> dict[str, object]:
        """mode, held, in_flight, held_total, released_total, expired_total,
        rejected_full_total, rejected_body_total, hold_seconds_sum,
        hold_seconds_buckets: [(upper_bound, count), ...] (not cumulative; last is +inf)."""

class Route:
    name: str
    upstreams: list[Upstream]
    state: RouteState
    try_duration: float
    try_interval: float
    max_held: int
    max_held_body: int
    retry_after: int
    def __init__(
        self,
        name: str,
        upstreams: list[Upstream],
        *,
        max_body_size: int = 1 << 30,
        host_header: str | None = None,
        request_id: bool = False,
        connect_timeout: float = 5.0,
        response_header_timeout: float = 60.0,
        upstream_body_timeout: float = 60.0,
        tunnel_idle_timeout: float = 3600.0,
        state: RouteState | None = None,
        try_duration: float = 30.0,
        try_interval: float = 0.25,
        max_held: int = 10000,
        max_held_body: int = 1 << 20,
        health_path: str | None = None,
        hold_time_header: str | None = None,
        retry_after: int = 5,
        fail_duration: float = 10.0,
        hosts: Sequence[str] = (),
        path_prefix: str | None = None,
        strip_path_prefix: bool = False,
        underscores_in_headers: bool = False,
        request_buffer: int = 0,
        spool_dir: str | None = None,
        lb: str = "round_robin",
        weights: Sequence[int] | None = None,
        https_redirect_port: int | None = None,
        hsts: str | None = None,
    ) -> None:
        """ValueError for an unknown ``lb`` (see LB_POLICIES), bad weights or hosts, or a
        ``path_prefix`` not in normal form (see ``normalize_path``)."""
    hosts: tuple[str, ...]
    path_prefix: bytes | None
    strip_path_prefix: bool
    underscores_in_headers: bool
    request_buffer: int  # 0: bodies stream; N: read whole (at most N bytes) before dispatch
    spool_dir: str | None  # with request_buffer: bodies past 64 KiB wait in a file here
    lb: str

# Upgrade requests (WebSocket and others; h2c is refused by forwarding the request
# without it) keep their Upgrade/Connection fields; on 101 the client and upstream
# connections become a raw tunnel with backpressure both ways, in flight (and held
# like any request while paused) until either side closes.

class RoutingTable:
    """An immutable snapshot: routes plus the listener-wide limits and timeouts.

    Requests go to the most specific host group (exact name, then the longest
    ``*.suffix`` wildcard, then routes without hosts) and within it the longest
    matching path prefix; no match -> 404. Raises ValueError naming both routes
    when two would match exactly the same requests.
    """

    routes: list[Route]
    def __init__(
        self,
        routes: list[Route],
        *,
        max_head_size: int = 32768,
        max_headers: int = 100,
        max_uri_size: int = 8192,
        client_head_timeout: float = 15.0,
        client_body_timeout: float = 60.0,
        keepalive_timeout: float = 60.0,
        send_timeout: float = 60.0,
    ) -> None: ...

AccessRecord = tuple[str, str, str, str, int, int, float, str]
"""(client_ip, method, target, http_version, status, response_bytes, seconds, upstream)"""

class TimerWheel:
    """Deadlines share one loop timer per 50 ms tick (a deadline fires up to 50 ms late,
    never early)."""
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def pending(self) -> int:
        """Ticks with a loop timer armed."""
    def next_due(self) -> float | None:
        """Loop time of the earliest armed tick."""

class Deadline:
    """One connection's (or hold queue's) deadline in a TimerWheel."""
    def __init__(self, wheel: TimerWheel, callback: Callable[[], object]) -> None: ...
    def arm(self, when: float) -> None:
        """Fire ``callback`` at loop time ``when`` (moving it later is lazy and cheap)."""
    def disarm(self) -> None: ...
    def close(self) -> None:
        """Leave the wheel for good and drop the callback."""
    @property
    def linked(self) -> bool: ...

class ClientProtocol(asyncio.Protocol):
    """One client connection (what ``Engine.protocol_factory`` makes)."""

    def replay(self, data: bytes, hold_left: float, held_age: float) -> None:
        """An adopted connection (``fastpause upgrade``): read ``data`` as if it had
        just arrived; a request it holds waits at most ``hold_left`` seconds more and
        counts as held for ``held_age`` already."""

class Engine:
    table: RoutingTable
    """Assigning swaps the snapshot; held requests are routed again against it."""
    access_log: Callable[[AccessRecord], None] | None
    max_held_bytes: int
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        table: RoutingTable,
        access_log: Callable[[AccessRecord], None] | None = None,
        *,
        max_held_bytes: int = 256 << 20,
        max_connections: int = 0,
        on_capacity: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_capacity(True)`` when ``max_connections`` client connections are open
        (stop accepting), ``on_capacity(False)`` once below 90% of it (accept again)."""
    max_connections: int
    """Setting it re-checks the open connections at once (on_capacity if that flips)."""
    on_capacity: Callable[[bool], None] | None
    # Called with an upstream's address when a connection to it succeeded for the first
    # time, the first time after a failure, or released held requests (workers only).
    on_upstream_up: Callable[[str], None] | None
    # Called with an upstream's address and the route's fail_duration when a connection
    # to it failed and it was not already marked down (workers only).
    on_upstream_down: Callable[[str, float], None] | None
    at_capacity: bool
    lame_duck: bool
    """Set for ``shutdown_delay`` before a shutdown: a route's ``health_path`` answers
    503 (whatever the route's mode) while every other request is served."""
    def share_counts(self, shared: SharedCounts) -> None:
        """Publish the held body bytes and cap them with every worker's."""
    on_idle: Callable[[tuple[int, bytes, float, float, bool]], None] | None
    relay_tls: Callable[[asyncio.BaseTransport], int] | None
    """Set after ``hand_over``: every connection that goes idle here from then on
    (its exchange finished in this process) is given to it instead of closed."""
    def hand_over(self) -> tuple[list[tuple[int, bytes, float, float]], int]:
        """For ``fastpause upgrade``: every connection a successor can take - held
        requests whose whole request is in (route by route, in arrival order), idle
        ones - as (socket fd duplicate, bytes to read again, seconds left to hold,
        seconds held so far),
        forgotten here; and how many held requests stay (bodies still arriving)."""
    def set_upstream_health(self, upstream: Upstream, healthy: bool) -> None:
        """An active health check's verdict; healthy releases requests held for it."""
    def upstream_reachable(self, upstream: Upstream) -> None:
        """Another worker connected to ``upstream``: release requests held for it."""
    def upstream_unreachable(self, upstream: Upstream, fail_duration: float) -> None:
        """Another worker failed to reach ``upstream``: avoid it for ``fail_duration``."""
    def protocol_factory(self, scheme: str = "http") -> Callable[[], asyncio.Protocol]: ...
    def shutdown(self) -> int:
        """Graceful: close idle connections now, busy ones after their current response;
        returns how many are left to finish."""
    def close_all(self) -> None:
        """Cut every client and upstream connection."""
    def wait_drained(self) -> asyncio.Future[None]:
        """Resolves when no client connection is left."""
    def connections(self) -> int: ...
    def in_flight(self) -> int: ...
    def stats(self) -> dict[str, int]: ...
