# Declarations for the fastpause data plane. The implementation is split into
# .pxi pieces included by _core.pyx; everything the hot path touches is typed here.

from libc.string cimport memchr, memcmp, memcpy, memset
from libc.stdlib cimport malloc, realloc, free
from libc.stdint cimport uint64_t


cdef enum:
    MAX_FIELDS_CAP = 1024
    MAX_CHUNK_LINE = 4096
    MAX_TRAILER_BYTES = 16384
    # Body lengths, counted in significant digits (leading zeros are free): a
    # Content-Length below 10**18, a chunk size below 2**60. Both leave a signed
    # 64-bit value 8x headroom; anything longer is refused, never wrapped.
    MAX_CONTENT_LENGTH_DIGITS = 18
    MAX_CHUNK_SIZE_DIGITS = 15
    MAX_HOST_NAME = 255      # uri-host bytes (port aside) a request may name


cdef enum FieldDrop:           # Field.drop: why a field is not forwarded (bits)
    DROP_NAMED = 1             # named by a Connection option (RFC 9110 §7.6.1)
    DROP_UNDERSCORE = 2        # a name with '_': dropped unless the route keeps them


cdef enum HeaderKind:
    H_OTHER = 0
    H_HOST
    H_CONTENT_LENGTH
    H_TRANSFER_ENCODING
    H_CONNECTION
    H_KEEP_ALIVE
    H_PROXY_CONNECTION
    H_TE
    H_UPGRADE
    H_EXPECT
    H_TRAILER
    H_X_FORWARDED_FOR
    H_X_FORWARDED_PROTO
    H_X_FORWARDED_HOST
    H_X_REQUEST_ID


cdef enum TargetForm:
    FORM_ORIGIN
    FORM_ABSOLUTE
    FORM_ASTERISK
    FORM_AUTHORITY


cdef enum BodyKind:
    BODY_NONE
    BODY_LENGTH
    BODY_CHUNKED
    BODY_CLOSE


cdef enum ConnectionHeader:
    CONN_NONE
    CONN_CLOSE
    CONN_KEEP_ALIVE
    CONN_UPGRADE


cdef enum UpstreamState:
    U_CONNECTING
    U_ACTIVE
    U_IDLE
    U_TUNNEL    # after 101 Switching Protocols: raw bytes both ways
    U_CLOSED


cdef enum UpstreamFailure:
    F_CONNECT   # no connection to an upstream: nothing was sent
    F_STALE     # a pooled connection closed under the request before any answer
    F_SENT      # the request went out on a fresh connection and got no (usable) answer


cdef enum ChunkResult:
    CH_DATA
    CH_MORE
    CH_DONE
    CH_ERROR


cdef struct Field:
    Py_ssize_t line_start      # the name starts the line
    Py_ssize_t name_len
    Py_ssize_t value_start
    Py_ssize_t value_len
    Py_ssize_t line_end        # just past the CRLF
    int kind
    int drop                   # FieldDrop bits


cdef struct RequestHead:
    Field* fields
    int nfields
    Py_ssize_t head_len
    Py_ssize_t method_len      # the method starts the head
    Py_ssize_t target_start
    Py_ssize_t target_len
    Py_ssize_t path_start      # origin-form path (the target itself unless absolute-form)
    Py_ssize_t path_len
    const unsigned char* norm_path  # what is routed on and forwarded: the path (query
    Py_ssize_t norm_len             # included) in normal form; points into the head
                                    # unless normalising changed it (request_path.pxi)
    int target_marks           # the target has a '.' or '%': its path may need normalising
    Py_ssize_t authority_start
    Py_ssize_t authority_len   # > 0 only for absolute-form
    Py_ssize_t host_start      # the uri-host routed on (absolute-form authority, else
    Py_ssize_t host_len        # Host), port aside; host_len 0 when there is none
    int target_form
    int version                # 10 or 11
    int body_kind
    long long content_length
    int host_count
    int host_index
    int has_content_length
    int has_transfer_encoding
    int chunked
    int te_other
    int conn_close
    int conn_keep_alive
    int conn_other
    int keep_alive
    int expect_continue
    int te_trailers
    int has_request_id
    int upgrade_index
    int conn_upgrade
    int is_upgrade
    const char* error


cdef struct ResponseHead:
    Field* fields
    int nfields
    Py_ssize_t head_len
    Py_ssize_t status_line_len
    int version
    int status
    long long content_length
    int has_content_length
    int has_transfer_encoding
    int chunked
    int conn_close
    int conn_keep_alive
    int conn_other
    const char* error


cdef class ChunkedDecoder:
    cdef int state
    cdef long long remaining
    cdef int line_bytes
    cdef Py_ssize_t trailer_line
    cdef Py_ssize_t trailers_dropped  # bytes of dropped trailer lines (they count to the cap)
    cdef bytearray trailers
    cdef const char* error
    cdef void reset(self)
    cdef int _fail(self, const char* why)
    cdef int next(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t pos,
                  Py_ssize_t* data_start, Py_ssize_t* data_len, Py_ssize_t* new_pos)
    cdef int _check_trailer_line(self)


cdef class Deadline


cdef class TimerBucket:
    cdef long long tick
    cdef Deadline head
    cdef object handle


cdef class TimerWheel:
    cdef object loop
    cdef dict buckets
    cdef void link(self, Deadline d, double when)
    cdef void unlink(self, Deadline d)


cdef class Deadline:
    cdef TimerWheel wheel
    cdef TimerBucket bucket
    cdef Deadline prev
    cdef Deadline next
    cdef double when
    cdef object callback
    cdef int set(self, double when) except -1
    cdef int clear(self) except -1
    cdef void dispose(self)


cdef class Upstream:
    cdef readonly str address
    cdef readonly str authority  # HOST:PORT: the Host of a request that came without one
    cdef bytes address_b
    cdef readonly str host
    cdef readonly int port
    cdef readonly int keepalive
    cdef readonly double keepalive_timeout
    # an https:// upstream: the client context and the name its certificate is checked
    # for (None for a plain one); ``tls`` identifies the settings, for reuse on reload
    cdef readonly object ssl
    cdef readonly str server_hostname
    cdef readonly tuple tls
    cdef list idle
    cdef set conns
    cdef public bint healthy
    cdef readonly bint draining
    cdef double down_until
    cdef long long n_active
    cdef long long n_requests
    cdef long long n_connects
    cdef long long n_connect_failures
    cdef int n_connecting
    cdef bint available(self, double now)
    cdef void mark_failed(self, Engine engine, double now, double fail_duration)
    cdef UpstreamProtocol pop_idle(self)
    cdef void probe(self, Engine engine)
    cdef int release(self, UpstreamProtocol conn) except -1
    cdef void forget(self, UpstreamProtocol conn)


cdef class Balancer:
    cdef int policy
    cdef readonly str policy_name
    cdef list upstreams
    cdef Py_ssize_t n
    cdef long long* weights
    cdef long long* current
    cdef uint64_t* seeds
    cdef Py_ssize_t* candidates
    cdef list tokens
    cdef uint64_t rng
    cdef bytes cookie_name
    cdef Py_ssize_t _collect(self, double now)
    cdef Upstream pick(self, double now, bytes client_ip)
    cdef Py_ssize_t _smooth_weighted(self, Py_ssize_t k) noexcept
    cdef bint _less_loaded(self, Py_ssize_t a, Py_ssize_t b)
    cdef Py_ssize_t _least_conn(self, Py_ssize_t k)
    cdef Py_ssize_t _random_two(self, Py_ssize_t k)
    cdef Py_ssize_t _rendezvous(self, Py_ssize_t k, bytes client_ip)
    cdef uint64_t _next_random(self) noexcept
    cdef Upstream sticky(self, double now, const unsigned char* p, RequestHead* h)
    cdef bytes set_cookie_field(self, Upstream up)


cdef class Route:
    cdef readonly str name
    cdef readonly list upstreams
    cdef readonly long long max_body_size
    cdef bytes host_header
    cdef readonly bint request_id
    cdef readonly double connect_timeout
    cdef readonly double response_header_timeout
    cdef readonly double upstream_body_timeout
    cdef readonly double tunnel_idle_timeout
    cdef readonly RouteState state
    cdef readonly double try_duration
    cdef readonly double try_interval
    cdef readonly int max_held
    cdef readonly long long max_held_body
    cdef bytes health_path
    cdef bytes hold_time_header
    # redirect_https: None, or what follows the host in the Location (":8443", or b""
    # for 443); hsts: the whole Strict-Transport-Security field line, or None
    cdef readonly bytes https_redirect
    cdef bytes hsts_field
    cdef readonly int retry_after
    cdef readonly double fail_duration
    cdef readonly tuple hosts
    cdef readonly bytes path_prefix
    cdef readonly bint strip_path_prefix
    cdef readonly bint underscores_in_headers
    # request_buffering: 0 streams a body to the upstream as it arrives; N > 0 reads
    # the whole body (at most N bytes) before an upstream is chosen
    cdef readonly long long request_buffer
    cdef readonly str spool_dir  # request_buffering = "disk": where bodies wait; else None
    cdef readonly Balancer balancer
    cdef Upstream pick(self, double now, ClientProtocol c, const unsigned char* p,
                       RequestHead* h)


cdef enum:
    HELD_BYTES = 0  # the SharedCounts column of held body bytes; routes' come after


cdef class SharedCounts:
    cdef unsigned char[::1] view
    cdef long long* base
    cdef long long* row
    cdef int workers
    cdef int columns
    cdef inline void publish(self, int column, long long value)
    cdef long long total(self, int column)


cdef class RouteState:
    cdef readonly str name
    cdef SharedCounts shared  # None: this process is the whole proxy
    cdef int shared_column
    cdef Engine engine
    cdef int mode
    cdef readonly double max_hold
    cdef readonly str stop_message
    cdef readonly int stop_retry_after
    cdef double release_rate
    cdef double release_credit
    cdef object pacer
    cdef bint draining
    cdef ClientProtocol blocker
    cdef object prober
    cdef Route probe_route
    cdef bint unavailable
    cdef bint unordered
    cdef Deadline expiry
    cdef ClientProtocol head
    cdef ClientProtocol tail
    cdef Py_ssize_t count
    cdef readonly long long in_flight
    cdef list drain_waiters
    cdef long long n_held_total
    cdef long long n_released
    cdef long long n_expired
    cdef long long n_rejected_full
    cdef long long n_rejected_body
    cdef double hold_seconds_sum
    cdef long long hold_buckets[15]
    cdef void bind(self, Engine engine)
    cdef Py_ssize_t held_total(self)
    cdef void push(self, ClientProtocol c, double deadline)
    cdef void unlink(self, ClientProtocol c)
    cdef ClientProtocol pop(self)
    cdef void _observe(self, double seconds)
    cdef void _expire_unordered(self, double now)
    cdef void release_all(self)
    cdef void _top_up(self)
    cdef void unblock(self)
    cdef void _start_pacing(self)
    cdef void note_unavailable(self, Route route)
    cdef void upstream_up(self, Upstream up)
    cdef void fail_all(self, int status, str why)
    cdef int request_started(self) except -1
    cdef int request_ended(self) except -1
    cdef void _cancel_pacing(self)


cdef class RoutingTable:
    cdef readonly list routes
    cdef readonly Py_ssize_t max_head_size
    cdef readonly int max_headers
    cdef readonly Py_ssize_t max_uri_size
    cdef readonly double client_head_timeout
    cdef readonly double client_body_timeout
    cdef readonly double keepalive_timeout
    cdef readonly double send_timeout
    cdef dict exact
    cdef list wildcards
    cdef list hostless
    cdef Route only
    cdef Route match(self, const unsigned char* p, RequestHead* h)


cdef class Engine:
    cdef object loop
    cdef readonly TimerWheel timers
    cdef RoutingTable _table
    cdef public object access_log
    cdef public long long max_held_bytes
    cdef long long _max_connections
    cdef public object on_capacity
    cdef public object on_upstream_up
    cdef public object on_upstream_down
    cdef readonly bint at_capacity
    cdef public bint lame_duck  # shutting down soon: health checks answer 503
    cdef public object on_idle  # set by an upgrade: takes connections as they go idle
    # set by an upgrade: takes a TLS client's transport over (it relays the decrypted
    # bytes to a socket) and returns the descriptor of that socket's other end
    cdef public object relay_tls
    cdef long long n_held_bytes
    cdef SharedCounts shared  # None: this process is the whole proxy
    cdef set clients
    cdef bint shutting_down
    cdef object drained
    cdef uint64_t rng_state0
    cdef uint64_t rng_state1
    cdef long long n_connections_total
    cdef long long n_requests
    cdef long long n_in_flight
    cdef long long n_responses[6]
    cdef long long n_bytes_in
    cdef long long n_bytes_out
    cdef long long n_upstream_errors
    cdef int count_response(self, int status) except -1
    cdef void add_held_bytes(self, long long n)
    cdef long long held_bytes_total(self)
    cdef void client_opened(self, ClientProtocol c)
    cdef void client_closed(self, ClientProtocol c)
    cdef void fill_request_id(self, char* out)
    cdef void upstream_up(self, Upstream up, bint news)
    cdef void _reroute_held(self, RoutingTable old)


cdef class SocketWriter:
    cdef int fd  # FD_NOT_YET, FD_NONE (everything through the transport) or the socket
    cdef bint queued  # the transport may still hold bytes: write through it
    cdef object transport
    cdef object transport_write
    cdef int write(self, object data) except -1
    cdef int writelines(self, list pieces) except -1
    cdef int _socket_fd(self) except -2
    cdef bint _drained(self) except -1
    cdef bint has_unread(self) except -1
    cdef void detach(self) noexcept


cdef class UpstreamProtocol:
    cdef Upstream upstream
    cdef Engine engine
    cdef object transport
    cdef SocketWriter out  # every write to the connection
    cdef ClientProtocol client
    cdef object connect_task
    cdef int state
    cdef Deadline deadline
    cdef object rbuf
    cdef Py_ssize_t scan_pos
    cdef bint reused
    cdef bint got_response_bytes
    cdef bint head_done
    cdef bint request_done
    cdef bint reusable
    cdef bint reading_paused
    cdef int body_kind
    cdef long long body_left
    cdef ChunkedDecoder chunks
    cdef bint client_chunked
    cdef int status
    cdef bint connecting
    cdef bint in_exchange
    cdef bint peer_eof
    cdef bint write_stalled     # the upstream is not reading what we send it
    cdef double tunnel_seen     # a tunnel's last traffic, either way (the timeout clock)
    cdef int salvage_fd
    cdef void start_connect(self, double timeout)
    cdef void _connect_ended(self)
    cdef void _connect_failed(self, str why)
    cdef int _end_exchange(self) except -1
    cdef void cut(self)
    cdef void half_close(self)
    cdef void _start_tunnel(self, object buf, const unsigned char* p, ResponseHead* r,
                            Py_ssize_t end, Py_ssize_t n)
    cdef int make_idle(self) except -1
    cdef bint _arm_tunnel_idle(self) except -1
    cdef int attach(self, ClientProtocol client) except -1
    cdef int request_complete(self) except -1
    cdef void detach_abort(self)
    cdef void close(self)
    cdef void _shut(self, bint abort)
    cdef void pause_upstream_reading(self)
    cdef void resume_upstream_reading(self)
    cdef int _on_data(self, object data) except -1
    cdef int _parse_head(self)
    cdef void _forward_body(self, object data, Py_ssize_t pos)
    cdef int _finish(self) except -1
    cdef void _fail(self, int status, str why)
    cdef void _keep_salvage_fd(self)
    cdef int _drop_salvage_fd(self) except -1
    cdef void _salvage(self)
    cdef void _on_deadline(self)


cdef class ClientProtocol:
    cdef Engine engine
    cdef RoutingTable table
    cdef object transport
    cdef SocketWriter out  # every write to the connection
    cdef str client_ip
    cdef bytes client_ip_b
    cdef bint https
    cdef int state
    cdef object rbuf
    cdef Py_ssize_t rpos
    cdef Py_ssize_t scan_pos
    cdef Deadline deadline
    cdef int pause_reasons
    cdef bint write_paused
    cdef bint advancing  # _advance is on the stack: it reads the next request itself
    cdef double stalled_since  # when write_paused was last set (the timeout clock)
    cdef bint eof
    # the request being served
    cdef Route route
    cdef Upstream last_upstream
    cdef UpstreamProtocol upstream
    cdef object upstream_head
    cdef bytearray pending  # the body while it waits for an upstream, re-framed
    cdef Py_ssize_t pending_bytes
    cdef int version
    cdef int attempts
    cdef int unanswered
    cdef bint keep_alive
    cdef bint is_head
    cdef bint idempotent
    cdef bint expect_continue
    cdef bint buffering  # reading the whole body before dispatch (request_buffering)
    cdef object spool  # the body's unlinked temporary file ("disk"), until the request ends
    cdef bint spooling  # the file is being copied to the upstream
    cdef bint upgrade
    cdef int body_kind
    cdef long long body_left
    cdef long long body_seen
    cdef ChunkedDecoder chunks
    cdef bint req_done
    cdef bint resp_started
    cdef int status
    cdef long long resp_bytes
    cdef double started
    cdef object log_method
    cdef object log_target
    # holding: the raw head stays in head_src (re-parsed on release)
    cdef object head_src
    cdef Py_ssize_t head_off
    cdef Py_ssize_t head_len
    cdef RouteState held_queue
    cdef ClientProtocol held_prev
    cdef ClientProtocol held_next
    cdef double hold_deadline
    cdef double held_since
    cdef double held_for
    cdef bint was_held
    cdef bytes set_cookie
    cdef bint route_active
    cdef RouteState releaser
    cdef double hold_until  # an adopted held request's deadline, kept from its old process
    cdef object _hand_over(self, bint held)
    cdef bint _body_resumable(self)
    cdef bint _give_to_successor(self)
    cdef void _give_away(self, bint relayed)
    cdef void _append(self, object data)
    cdef int _advance(self) except -1
    cdef bint _advance_once(self) except -1
    cdef int _read_head(self)
    cdef int _start_request(self, const unsigned char* p, RequestHead* h) except -1
    cdef int _new_exchange(self) except -1
    cdef void _note_request_line(self, const unsigned char* p, RequestHead* h)
    cdef int _route_request(self, const unsigned char* p, RequestHead* h, bint released) except -1
    cdef void _hold(self, double deadline)
    cdef void _leave_queue(self, RouteState rs)
    cdef bint _held_bytes_over(self)
    cdef void _reject_held_body(self)
    cdef void release(self)
    cdef void hold_expired(self)
    cdef void hold_failed(self, int status, str why, int retry_after)
    cdef int _dispatch(self, Upstream up) except -1
    cdef void _consume_body(self)
    cdef void _forward_body(self, object piece, Py_ssize_t n)
    cdef void _forward_pieces(self, list pieces, Py_ssize_t n)
    cdef void _hold_pending(self, Py_ssize_t n)
    cdef void _body_complete(self)
    cdef void _buffer_body(self)
    cdef int _route_buffered(self) except -1
    cdef bint _spool_pending(self)
    cdef int pump_spool(self, UpstreamProtocol up) except -1
    cdef void _close_spool(self)
    cdef void _request_broken(self, int status, str why)
    cdef int _release_may_go_on(self) except -1
    cdef int upstream_ready(self, UpstreamProtocol up) except -1
    cdef void upstream_failed(self, int status, str why, int failure, bint retryable)
    cdef bint _may_wait_after(self)
    cdef void interim_response(self, bytes head)
    cdef bint start_response(self, const unsigned char* p, ResponseHead* r, int body_kind,
                             const unsigned char* body, Py_ssize_t body_len)
    cdef void start_tunnel(self, bytes head)
    cdef void half_close(self)
    cdef void write_body(self, object piece, Py_ssize_t n)
    cdef void write_body_pieces(self, list pieces, Py_ssize_t n)
    cdef int response_done(self, bint upstream_reusable) except -1
    cdef void response_broken(self, str why)
    cdef void _send_plain(self, int status, bytes body)
    cdef void _send_error(self, int status, str why, bint close, int retry_after)
    cdef void _linger(self)
    cdef void _drop_upstream(self)
    cdef void _redirect_to_https(self, const unsigned char* p, RequestHead* h, bytes port)
    cdef void _send_response(self, int status, bytes head, bytes body, bint close)
    cdef bytes _extra_fields(self)
    cdef int _end_request(self) except -1
    cdef void _log(self)
    cdef int _next_request(self) except -1
    cdef void _close(self)
    cdef void _abort(self)
    cdef void _pause(self, int reason)
    cdef int _resume(self, int reason) except -1
    cdef int _rearm(self) except -1
    cdef void _on_deadline(self)
