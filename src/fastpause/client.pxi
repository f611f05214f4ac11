# The client side: one protocol object per client connection, driving the
# request lifecycle (READING_HEAD -> ROUTED -> DISPATCH -> SENT -> RESPONDING ->
# DONE -> READING_HEAD) with protocol callbacks only: no Task, no coroutine.
#
# Requests on one connection are served one at a time, so pipelined requests
# are answered in order: bytes of the next request wait in ``rbuf`` (bounded:
# reading pauses) until the current response is complete.

import tempfile


cdef enum ClientState:
    C_IDLE    # between requests; nothing of the next one received
    C_HEAD    # part of a request head received
    C_BODY    # request dispatched, body still arriving
    C_WAIT    # request complete, response under way
    C_TUNNEL  # upgraded (101): raw bytes both ways until either side closes
    C_CLOSED

cdef enum PauseReason:
    P_UPSTREAM = 1     # the upstream's write buffer is full
    P_CONNECTING = 2   # body bytes are waiting for an upstream connection
    P_PIPELINE = 4     # the next request is buffered while this response is served
    P_WRITE = 8        # the client is not reading its responses: no next request yet

cdef enum:
    PENDING_LIMIT = 256 * 1024
    SPOOL_AT = 64 * 1024  # request_buffering = "disk": bodies past this wait in a file
    SPOOL_BLOCK = 256 * 1024  # read from the file per write to the upstream
    MAX_SENDS = 4  # fresh-connection sends of a replayable request left unanswered


# After an answer sent before its request's body came in: how long the rest is read
# and discarded before the connection is cut (NGINX's lingering_timeout).
cdef double LINGER = 5.0


cdef inline bytearray _body_buffer():
    """An empty body buffer, made directly: ``bytearray()`` goes through the type's
    call and argument parsing, a few hundred instructions on every request."""
    return PyByteArray_FromStringAndSize(NULL, 0)


cdef str _too_large_to_buffer(long long limit):
    return f"request body larger than {limit} bytes, the most this service buffers"


cdef class ClientProtocol:
    """asyncio protocol for one client connection."""

    def __cinit__(self, Engine engine, bint https):
        self.engine = engine
        self.https = https
        self.deadline = Deadline(engine.timers, self._on_deadline_cb)
        self.state = C_IDLE

    # -- asyncio protocol callbacks ------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.out = SocketWriter(transport)
        try:
            transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0] if isinstance(peer, tuple) and peer else "unix"
            self.client_ip_b = self.client_ip.encode("ascii", "replace")
            self.table = self.engine._table
            self.engine.client_opened(self)
            self.deadline.set(_timeout_clock() + self.table.client_head_timeout)
        except BaseException:
            self.out.detach()  # uvloop then closes the socket without a connection_lost
            raise

    def data_received(self, bytes data not None):
        if self.state == C_TUNNEL:
            self.engine.n_bytes_in += len(data)
            self.upstream.tunnel_seen = _timeout_clock()
            self.upstream.out.write(data)
            return
        if self.state == C_CLOSED:
            return
        self.engine.n_bytes_in += len(data)
        if self.rbuf is None:
            self.rbuf = data
            self.rpos = 0
        else:
            self._append(data)
        self._advance()

    def eof_received(self):
        self.eof = True
        if self.state == C_TUNNEL:
            # the client is done sending; the tunnel ends once the upstream is done too
            if self.upstream.peer_eof:
                self._close()
                return False
            self.upstream.half_close()
            return True
        if self.state == C_WAIT and self.held_queue is None:
            return True  # half-closed: still deliver the response, then close
        # A held request whose client hung up is gone (invariant 5): like
        # NGINX, a FIN is taken as the client leaving, and it never reaches a backend.
        self._close()
        return False

    def connection_lost(self, exc):
        self.out.detach()
        self.state = C_CLOSED
        self._drop_upstream()
        if self.route is not None:
            if not self.resp_started:
                self.status = 499  # NGINX's "client closed request"
            self._end_request()
        self.deadline.dispose()
        self.rbuf = None
        self.pending = None
        self.engine.client_closed(self)

    def pause_writing(self):
        self.write_paused = True
        self.stalled_since = _timeout_clock()
        if self.upstream is not None:
            self.upstream.pause_upstream_reading()
        if self.state == C_IDLE:
            self._pause(P_WRITE)
        self._rearm()

    def resume_writing(self):
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.resume_upstream_reading()
        if self.pause_reasons & P_WRITE:
            self._resume(P_WRITE)
            if self.rbuf is not None and self.state == C_IDLE:
                self._advance()  # the pipelined request that waited for the client
                return
        self._rearm()

    # -- reading requests ----------------------------------------------------------

    cdef void _append(self, object data):
        """Keep unconsumed bytes plus ``data`` in one growable buffer."""
        if type(self.rbuf) is bytes or self.rpos > 0:
            self.rbuf = bytearray(memoryview(self.rbuf)[self.rpos:])
            self.scan_pos -= self.rpos
            self.rpos = 0
        self.rbuf += data

    cdef int _advance(self) except -1:
        """Read what the buffer holds: the next head, body bytes, pipelined requests.

        A loop, not recursion: a request the proxy answers itself (a 404, a health
        check while paused) ends inside ``_read_head``, and ``_next_request`` then
        leaves the next pipelined request to the next turn here. Called back from
        there, 10,000 pipelined 404s in one read took 7 MB of C stack (~700 bytes a
        request) and a larger read would overflow it.
        """
        if self.advancing:
            return 0
        self.advancing = True
        try:
            while self._advance_once():
                pass
        finally:
            self.advancing = False

    cdef bint _advance_once(self) except -1:
        """One step of ``_advance``: True when a request ended and another may follow."""
        if self.state == C_IDLE or self.state == C_HEAD:
            if self._read_head() <= 0:
                return False
        if self.state == C_BODY and self.rbuf is not None:
            self._consume_body()
        if self.state == C_WAIT and self.rbuf is not None:
            if len(self.rbuf) - self.rpos > self.table.max_head_size:
                self._pause(P_PIPELINE)
        return self.state == C_IDLE and self.rbuf is not None and not self.write_paused

    cdef int _read_head(self):
        """Parse the next head if complete: 1 when a request started, 0 for more, -1 closed."""
        cdef RequestHead h
        cdef int status = 0
        cdef object buf = self.rbuf
        cdef Py_ssize_t n, start, end
        cdef const unsigned char* p
        if buf is None:
            return 0
        n = len(buf)
        p = _ptr(buf)
        start = self.rpos
        if self.state == C_IDLE:
            # RFC 9112 §2.2: ignore empty lines received before a request line
            while n - start >= 2 and p[start] == 13 and p[start + 1] == 10:
                start += 2
            if start == n:
                self.rbuf = None
                self.rpos = 0
                return 0
            self.table = self.engine._table
            self.rpos = start
            self.scan_pos = start
            self.state = C_HEAD
            self._new_exchange()
            self.deadline.set(self.started + self.table.client_head_timeout)
        if (self.scan_pos == start and n - start <= self.table.max_head_size
                and _ends_in_blank_line(p + start, n - start)):
            # The usual read: it ends where a head ends. The parser stops at the first
            # empty line itself, so the bytes need no separate scan for it.
            end = n - start
        else:
            end = _scan_head_end(p + start, self.scan_pos - start, n - start, &status)
            if end == -2:
                self._send_error(400, "bare LF in request head", True, 0)
                return -1
            if end == -1 or end > self.table.max_head_size:
                if n - start > self.table.max_head_size or end > 0:
                    if _first_line_len(p + start, n - start) > self.table.max_uri_size:
                        self._send_error(414, "request line too long", True, 0)
                    else:
                        self._send_error(431, "request header section too large", True, 0)
                    return -1
                self.scan_pos = n
                return 0
        status = parse_request(p + start, end, &h, _fields, self.table.max_headers,
                               self.table.max_uri_size)
        if status:
            if h.version:
                self.version = h.version
                self._note_request_line(p + start, &h)
            self._send_error(status, h.error.decode("ascii"), True, 0)
            return -1
        end = h.head_len
        self.rpos = start + end
        if self.rpos == n:  # all read is consumed: the next read starts a new buffer
            self.rbuf = None
            self.rpos = 0
        self.head_src = buf  # the head stays readable there: a held request re-parses it
        self.head_off = start
        self.head_len = end
        self._start_request(p + start, &h)
        return 1 if self.state != C_CLOSED else -1

    cdef int _start_request(self, const unsigned char* p, RequestHead* h) except -1:
        cdef Route route = self.table.match(p, h)
        cdef Upstream up
        self.engine.n_requests += 1
        self.version = h.version
        self.keep_alive = h.keep_alive and not self.engine.shutting_down
        self.is_head = h.method_len == 4 and memcmp(p, b"HEAD", 4) == 0
        self.idempotent = _method_idempotent(p, h)
        self.body_kind = h.body_kind
        self.body_left = h.content_length if h.body_kind == BODY_LENGTH else 0
        self.body_seen = 0
        self.req_done = h.body_kind == BODY_NONE
        self.expect_continue = h.expect_continue and h.version == 11 and not self.req_done
        self.upgrade = h.is_upgrade
        self.attempts = 1
        self.unanswered = 0
        self._note_request_line(p, h)
        if h.target_form == FORM_AUTHORITY:
            self._send_error(405, "CONNECT is not supported", True, 0)
            return 0
        if route is None:
            self._send_error(404, "no route matches this host and path", False, 0)
            return 0
        self.route = route
        self.engine.n_in_flight += 1
        if (h.body_kind == BODY_LENGTH and route.max_body_size
                and h.content_length > route.max_body_size):
            self._send_error(413, f"request body larger than {route.max_body_size} bytes", True, 0)
            return 0
        if (h.body_kind == BODY_LENGTH and route.request_buffer
                and h.content_length > route.request_buffer):
            self._send_error(413, _too_large_to_buffer(route.request_buffer), True, 0)
            return 0
        self.buffering = False
        if h.body_kind == BODY_CHUNKED:
            # made on first use: most connections never carry a chunked request body
            if self.chunks is None:
                self.chunks = ChunkedDecoder()
            else:
                self.chunks.reset()
        self.pending = _body_buffer()
        self.pending_bytes = 0
        self.held_for = 0.0
        self.was_held = False
        self.set_cookie = None
        self.state = C_WAIT if self.req_done else C_BODY
        self._rearm()
        self._route_request(p, h, False)

    cdef int _route_request(self, const unsigned char* p, RequestHead* h, bint released) except -1:
        """Dispatch now, hold, or answer for the route (ROUTED -> DISPATCH|HELD).

        While requests wait for an unavailable upstream, a new one still tries to
        connect: its success is one of the events that release the queue.
        """
        cdef Route route = self.route
        cdef RouteState rs = route.state
        cdef Upstream up
        if route.https_redirect is not None and not self.https:
            self._redirect_to_https(p, h, route.https_redirect)
            return 0
        if route.health_path is not None \
                and (rs.mode != MODE_RUNNING or self.engine.lame_duck) \
                and _is_health_check(p, h, route.health_path):
            if self.engine.lame_duck:  # an outer load balancer stops sending here first
                self._send_error(503, "this proxy is shutting down", True, 0)
            else:
                self._send_plain(200, b"OK\n")
            return 0
        if rs.mode == MODE_STOPPED:
            self._send_error(503, rs.stop_message or "the service is stopped for maintenance",
                             False, rs.stop_retry_after or route.retry_after)
            return 0
        if rs.mode == MODE_PAUSED or (not released and (rs.pacer is not None or rs.draining)):
            # paused, or others are still being released: wait behind them (FIFO)
            self._hold(_monotonic() + rs.max_hold)
            return 0
        if route.request_buffer and not self.req_done:
            self._buffer_body()
            return 0
        up = route.pick(_monotonic(), self, p, h)
        if up is None:
            self.upstream_failed(502, f"no upstream of route {route.name} is available",
                                 F_CONNECT, False)
            return 0
        self.upstream_head = build_upstream_head(p, h, route, self.client_ip_b, self.https,
                                                 up.address_b, self.engine)
        if not self.route_active:
            self.route_active = True
            rs.request_started()
        self._dispatch(up)

    cdef void _hold(self, double deadline):
        """Park this request in its route's queue (HELD); the connection just waits."""
        cdef Route route = self.route
        cdef RouteState rs = route.state
        if self.hold_until:  # handed over by an upgrade: it keeps its old deadline
            deadline = self.hold_until
            self.hold_until = 0.0
        self._release_may_go_on()
        if self.route_active:
            self.route_active = False
            rs.request_ended()
        self.upstream_head = None
        if rs.held_total() >= route.max_held:
            rs.n_rejected_full += 1
            self._send_error(503, "too many requests are waiting for this service",
                             False, route.retry_after)
            return
        if self.body_kind == BODY_LENGTH and route.max_held_body >= 0 and \
                self.pending_bytes + self.body_left > route.max_held_body:
            self._reject_held_body()
            return
        rs.push(self, deadline)
        self.was_held = True
        self.engine.add_held_bytes(self.pending_bytes)
        if self._held_bytes_over():
            return
        self._resume(P_CONNECTING)  # the body keeps arriving, bounded by max_held_body

    cdef void _leave_queue(self, RouteState rs):
        """Out of ``rs``'s queue without a release: its held body bytes stop counting."""
        self.engine.add_held_bytes(-self.pending_bytes)
        rs.unlink(self)

    cdef bint _held_bytes_over(self):
        """The proxy-wide cap on buffered held bodies; answers 503 when crossed."""
        if self.engine.held_bytes_total() <= self.engine.max_held_bytes:
            return False
        self.route.state.n_rejected_body += 1
        self._send_error(503, "the proxy is holding too much request data; try again shortly",
                         False, self.route.retry_after)
        return True

    cdef void _reject_held_body(self):
        self.route.state.n_rejected_body += 1
        self._send_error(503, f"the request body is larger than {self.route.max_held_body} "
                              f"bytes, too large to hold and replay while the service is "
                              f"unavailable", False, self.route.retry_after)

    cdef void release(self):
        """Leave the queue: route again against the current snapshot (late binding)."""
        cdef RequestHead h
        cdef const unsigned char* p = _ptr(self.head_src) + self.head_off
        self.engine.add_held_bytes(-self.pending_bytes)
        self.held_for += _monotonic() - self.held_since
        if self.state == C_CLOSED:
            return
        parse_request(p, self.head_len, &h, _fields, MAX_FIELDS_CAP, self.head_len)
        self.route = self.engine._table.match(p, &h)
        self.attempts = 1
        self._route_request(p, &h, True)

    cdef void hold_expired(self):
        self.engine.add_held_bytes(-self.pending_bytes)
        self.held_for += _monotonic() - self.held_since
        self._send_error(503, "waited too long for the backend to become available",
                         False, self.route.retry_after)

    cdef void hold_failed(self, int status, str why, int retry_after):
        self.engine.add_held_bytes(-self.pending_bytes)
        self._send_error(status, why, False, retry_after or self.route.retry_after)

    cdef int _new_exchange(self) except -1:
        """Reset what describes one request/response exchange, from its first byte on."""
        self.started = _monotonic()
        self.resp_started = False
        self.status = 0
        self.resp_bytes = 0
        self.version = 11
        self.last_upstream = None
        self.log_method = None
        self.log_target = None

    cdef void _note_request_line(self, const unsigned char* p, RequestHead* h):
        if self.engine.access_log is not None:
            self.log_method = p[:h.method_len].decode("latin-1")
            self.log_target = p[h.target_start:h.target_start + h.target_len].decode("latin-1")

    cdef int _dispatch(self, Upstream up) except -1:
        """Send the request to ``up``: over a pooled connection, or a new one."""
        cdef UpstreamProtocol conn = up.pop_idle()
        self.last_upstream = up
        if conn is not None:
            self.upstream = conn
            conn.attach(self)
            return 0
        conn = UpstreamProtocol(up, self.engine)
        self.upstream = conn
        conn.client = self
        conn.start_connect(self.route.connect_timeout)

    cdef void _consume_body(self):
        """Forward the body bytes available in ``rbuf`` (re-framing chunked bodies)."""
        cdef object buf = self.rbuf
        cdef Py_ssize_t n = len(buf), pos = self.rpos, take, ds, dl
        cdef const unsigned char* p
        cdef bint done = False
        cdef int rc
        cdef list out
        if self.body_kind == BODY_LENGTH:
            take = n - pos
            if take > self.body_left:
                take = <Py_ssize_t>self.body_left
            if take > 0:
                self.body_left -= take
                self._forward_body(_slice(buf, pos, pos + take), take)
                pos += take
            done = self.body_left == 0
        else:
            p = _ptr(buf)
            out = []
            take = 0
            while True:
                rc = self.chunks.next(p, n, pos, &ds, &dl, &pos)
                if rc == CH_DATA:
                    self.body_seen += dl
                    if self.route.max_body_size and self.body_seen > self.route.max_body_size:
                        self._request_broken(413, f"request body larger than "
                                                  f"{self.route.max_body_size} bytes")
                        return
                    if self.buffering and self.body_seen > self.route.request_buffer:
                        self._request_broken(413,
                                             _too_large_to_buffer(self.route.request_buffer))
                        return
                    out.append(chunk_header(dl))
                    out.append(_slice(buf, ds, ds + dl))
                    out.append(b"\r\n")
                    take += dl + 8
                elif rc == CH_MORE:
                    break
                elif rc == CH_DONE:
                    out.append(b"0\r\n")
                    if self.chunks.trailers is not None:
                        out.append(bytes(self.chunks.trailers))
                    out.append(b"\r\n")
                    done = True
                    break
                else:
                    self._request_broken(400, f"invalid chunked body: "
                                              f"{self.chunks.error.decode('ascii')}")
                    return
            if out:
                self._forward_pieces(out, take)
        if self.state == C_CLOSED:
            return
        if pos >= n:
            self.rbuf = None
            self.rpos = 0
        else:
            self.rpos = pos
        if done:
            self._body_complete()
        else:
            self._rearm()

    cdef void _forward_body(self, object piece, Py_ssize_t n):
        if self.pending is None:
            self.upstream.out.write(piece)
        else:
            self.pending += piece
            self._hold_pending(n)

    cdef void _forward_pieces(self, list pieces, Py_ssize_t n):
        """Re-framed chunks: written as they are, or copied into the one buffer of the
        body while it waits, so what is held is what is counted (not a few Python
        objects per chunk: a body of 1-byte chunks took ~8x the bytes counted)."""
        cdef Py_ssize_t before
        if self.pending is None:
            self.upstream.out.writelines(pieces)
        else:
            before = len(self.pending)
            for piece in pieces:
                self.pending += piece
            self._hold_pending(len(self.pending) - before)

    cdef void _hold_pending(self, Py_ssize_t n):
        """Body bytes wait for an upstream connection (bounded by pausing the client)
        or, while held, in the queue (bounded by max_held_body and the proxy-wide cap)."""
        cdef RouteState rs = self.held_queue
        self.pending_bytes += n
        if rs is not None:
            self.engine.add_held_bytes(n)
            if self.route.max_held_body >= 0 and self.pending_bytes > self.route.max_held_body:
                self._leave_queue(rs)
                self._reject_held_body()
            elif self._held_bytes_over():
                pass
        elif self.buffering:
            if self.route.spool_dir is not None and len(self.pending) >= SPOOL_AT:
                self._spool_pending()
        elif self.pending_bytes > PENDING_LIMIT:
            self._pause(P_CONNECTING)

    cdef void _body_complete(self):
        self.req_done = True
        self.state = C_WAIT
        self._rearm()
        if self.buffering:
            self._route_buffered()
        elif self.upstream is not None and self.pending is None:
            self.upstream.request_complete()

    cdef void _buffer_body(self):
        """request_buffering: read the whole body before taking an upstream connection
        (as NGINX's proxy_request_buffering does), so a client that sends its body
        slowly never ties up a backend worker. The body waits re-framed in ``pending``,
        bounded by the route's ``request_buffer``; ``client_body_timeout`` still bounds
        each pause in it. A client waiting for ``100 Continue`` gets it from the proxy."""
        self.buffering = True
        if self.expect_continue:
            self.expect_continue = False
            self.out.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._resume(P_CONNECTING)

    cdef int _route_buffered(self) except -1:
        """The whole body is here: route the request as if it had just arrived with it
        (the route may have been paused or reloaded meanwhile: late binding)."""
        cdef RequestHead h
        cdef const unsigned char* p = _ptr(self.head_src) + self.head_off
        self.buffering = False
        if self.spool is not None and self.pending and not self._spool_pending():
            return 0
        parse_request(p, self.head_len, &h, _fields, MAX_FIELDS_CAP, self.head_len)
        self._route_request(p, &h, False)

    cdef bint _spool_pending(self):
        """Move the body bytes in memory to the request's file (made on first use,
        unlinked at once: nothing is left behind however the request or the proxy
        ends). A local write, blocking as NGINX's are; False (and 500) if it fails."""
        try:
            if self.spool is None:
                self.spool = tempfile.TemporaryFile(dir=self.route.spool_dir)
            self.spool.write(self.pending)
        except OSError as error:
            self._request_broken(500, f"cannot buffer the request body: "
                                      f"{error.strerror or error}")
            return False
        self.pending = _body_buffer()
        return True

    cdef int pump_spool(self, UpstreamProtocol up) except -1:
        """Copy the body from its file to ``up`` while ``up`` takes writes; called at
        the start and again on each ``resume_writing``. At the end of the file the
        request is complete."""
        cdef bytes block
        if not self.spooling or self.upstream is not up:
            return 0
        while not up.write_stalled:
            try:
                block = self.spool.read(SPOOL_BLOCK)
            except OSError as error:
                self.spooling = False
                self._request_broken(500, f"cannot read the buffered request body: "
                                          f"{error.strerror or error}")
                return 0
            if not block:
                self.spooling = False
                up.request_complete()
                return 0
            up.out.write(block)

    cdef void _close_spool(self):
        """The request ended: its body file goes (it was never linked in a directory)."""
        self.spooling = False
        try:
            self.spool.close()
        except OSError:
            pass
        self.spool = None

    cdef void _request_broken(self, int status, str why):
        """The client's body is invalid or too large: the upstream exchange is void."""
        self._drop_upstream()
        self._send_error(status, why, True, 0)

    # -- upstream events -----------------------------------------------------------

    cdef int _release_may_go_on(self) except -1:
        """This request no longer holds up its queue's release (see RouteState._top_up)."""
        cdef RouteState rs = self.releaser
        if rs is not None:
            self.releaser = None
            if rs.blocker is self:
                rs.unblock()

    cdef int upstream_ready(self, UpstreamProtocol up) except -1:
        """An upstream connection is ours: write the head and whatever body arrived."""
        cdef bytearray pending = self.pending
        self.pending = None
        if self.spool is not None:  # a whole body in its file (request_buffering "disk")
            up.out.write(self.upstream_head)
            self.spool.seek(0)  # from the start, also when a failed send is replayed
            self.spooling = True
            self.pump_spool(up)
            self._release_may_go_on()
            return 0
        if self.expect_continue and not self.req_done:
            self.expect_continue = False
            self.out.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if pending:
            up.out.writelines([self.upstream_head, pending])
        else:
            up.out.write(self.upstream_head)
        self._resume(P_CONNECTING)
        if self.req_done:
            up.request_complete()
        self._release_may_go_on()

    cdef void upstream_failed(self, int status, str why, int failure, bint retryable):
        """The exchange failed before any response byte reached the client.

        A request that is safe to replay (``retryable``) is sent again at once, or,
        when the upstream that would take it has just failed it and it may wait
        (``_may_wait_after``), waits for it like a request that found no upstream: a
        backend that restarts closes pooled and queued connections under requests,
        and that must not surface as 502. Bounds: ``attempts`` counts connects since
        the request was routed (each upstream once); ``unanswered`` counts sends on
        fresh connections that got no answer over the request's whole life, so an
        upstream that takes connections but drops every request gets it at most
        MAX_SENDS times. A stale pooled connection does not count (as in NGINX): the
        replay after it goes out on a fresh one, since the pool was just emptied.
        """
        cdef double now = _monotonic()
        cdef bint may_wait
        cdef Upstream up
        self.upstream = None
        if self.state == C_CLOSED:
            return
        may_wait = (self.route.try_duration > 0 and now < self.started + self.route.try_duration)
        if failure != F_CONNECT:
            if self.pending is None:
                self.pending = _body_buffer()  # not written anywhere now (RouteState._top_up)
            if failure == F_SENT:
                self.unanswered += 1
                retryable = retryable and self.unanswered < MAX_SENDS
            may_wait = may_wait and self._may_wait_after()
        if retryable and (failure != F_CONNECT or self.attempts < len(self.route.upstreams)):
            # nothing usable was sent (invariant 2): replay on another connection
            up = self.route.pick(now, self, NULL, NULL)
            if up is not None and (failure == F_CONNECT or up.available(now) or not may_wait):
                self.attempts += 1
                self._dispatch(up)
                return
        if (failure == F_CONNECT or retryable) and may_wait:
            if self.route.state.mode == MODE_PAUSED:
                self._hold(now + self.route.state.max_hold)  # with the others, until resume
            else:
                # wait for an upstream to take it (Caddy's lb_try_duration)
                self.route.state.note_unavailable(self.route)
                self._hold(self.started + self.route.try_duration)
            return
        self._send_error(status, why, False, 0)

    cdef bint _may_wait_after(self):
        """Whether a request its upstream failed may wait in the queue rather than be
        replayed at once (or answered 502): not while shutting down (the queues were
        already answered), not on a stopped route, and not when the queue cannot
        take it (``max_held``: a replayable failure is no reason to answer 503)."""
        cdef RouteState rs = self.route.state
        return (not self.engine.shutting_down and rs.mode != MODE_STOPPED
                and rs.held_total() < self.route.max_held)

    cdef void interim_response(self, bytes head):
        if self.state != C_CLOSED:
            self.out.write(head)
            self.engine.n_bytes_out += len(head)

    cdef bint start_response(self, const unsigned char* p, ResponseHead* r, int body_kind,
                             const unsigned char* body, Py_ssize_t body_len):
        """Write the final response head (and ``body``, a whole small body, in the same
        write); returns whether the body that follows is re-chunked."""
        cdef bint chunked = False
        cdef int conn = CONN_NONE
        cdef bytes head
        self.resp_started = True
        self.status = r.status
        self.upstream_head = None
        if body_kind == BODY_CHUNKED or body_kind == BODY_CLOSE:
            if self.version == 11:
                chunked = True
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not self.req_done or self.eof or self.engine.shutting_down:
            self.keep_alive = False
        if not self.keep_alive:
            conn = CONN_CLOSE
        elif self.version == 10:
            conn = CONN_KEEP_ALIVE
        head = build_response_head(p, r, chunked, conn, self._extra_fields(), body, body_len)
        self.out.write(head)
        self.engine.n_bytes_out += len(head)
        self.resp_bytes += body_len
        return chunked

    cdef bytes _extra_fields(self):
        """Fields the proxy adds to the response: the affinity cookie, the hold time
        (``<hold_time_header>: <ms>``) for a request that was held, and HSTS on HTTPS,
        when configured."""
        cdef bytes fields = self.set_cookie
        if self.was_held and self.route.hold_time_header is not None:
            held = b"%s: %d\r\n" % (self.route.hold_time_header,
                                     <long long>(self.held_for * 1000))
            fields = held if fields is None else fields + held
        if self.https and self.route.hsts_field is not None:
            fields = self.route.hsts_field if fields is None else fields + self.route.hsts_field
        return fields

    cdef void start_tunnel(self, bytes head):
        """The upstream agreed to switch protocols: relay raw bytes from now on.

        The tunnel counts as in flight until either side closes (a deploy's drain
        or shutdown cuts it at the deadline).
        """
        cdef object buf = self.rbuf
        self.resp_started = True
        self.status = 101
        self.upstream_head = None
        self.keep_alive = False
        self.state = C_TUNNEL
        self.out.write(head)
        self.engine.n_bytes_out += len(head)
        self._rearm()
        self._resume(P_PIPELINE)
        if buf is not None and self.rpos < len(buf):
            self.upstream.out.write(buf[self.rpos:])
        self.rbuf = None

    cdef void half_close(self):
        if self.transport.can_write_eof():
            self.out.detach()
            self.transport.write_eof()

    cdef void write_body(self, object piece, Py_ssize_t n):
        self.out.write(piece)
        self.resp_bytes += n
        self.engine.n_bytes_out += len(piece)

    cdef void write_body_pieces(self, list pieces, Py_ssize_t n):
        self.out.writelines(pieces)
        self.resp_bytes += n
        self.engine.n_bytes_out += n

    cdef int response_done(self, bint upstream_reusable) except -1:
        cdef UpstreamProtocol up = self.upstream
        self.upstream = None
        if up is not None:
            if upstream_reusable:
                up.upstream.release(up)
            else:
                up.close()
        self._end_request()
        self._next_request()

    cdef void response_broken(self, str why):
        """The upstream failed mid-response: cut the client, never fake a complete body."""
        self.upstream = None
        self._end_request()
        self._abort()

    # -- ending requests -----------------------------------------------------------

    cdef void _send_plain(self, int status, bytes body):
        """A response made by the proxy itself (health checks while paused)."""
        self._send_response(status, plain_head(status, len(body), 0), body, False)

    cdef void _redirect_to_https(self, const unsigned char* p, RequestHead* h, bytes port):
        """``redirect_https``: the same URL over HTTPS. 301 for GET and HEAD; 308 for
        the other methods, which must be repeated with their body."""
        cdef int status
        if h.host_len == 0:
            self._send_error(400, "a redirect to HTTPS needs a Host header", False, 0)
            return
        status = 301 if self.is_head or (h.method_len == 3 and memcmp(p, b"GET", 3) == 0) \
            else 308
        location = (b"https://" + p[h.host_start:h.host_start + h.host_len] + port
                    + p[h.path_start:h.path_start + h.path_len])
        body = b"%d %s: %s\n" % (status, _REASONS[status].encode("ascii"), location)
        self._send_response(status, plain_head(status, len(body), 0)
                            + b"Location: " + location + b"\r\n", body, False)

    cdef void _send_error(self, int status, str why, bint close, int retry_after):
        cdef bytes body = error_body(status, why)
        self._send_response(status, plain_head(status, len(body), retry_after), body, close)

    cdef void _send_response(self, int status, bytes head, bytes body, bint close):
        """Answer from the proxy: ``head`` is the status line and fields, without the end."""
        cdef bytes data
        if self.state == C_CLOSED:
            return
        if self.resp_started:
            self._abort()
            return
        self._drop_upstream()
        if not self.req_done or not self.keep_alive or self.eof or self.engine.shutting_down:
            close = True
        if close:
            self.keep_alive = False
            head += b"Connection: close\r\n"
        elif self.version == 10:
            head += b"Connection: keep-alive\r\n"
        data = head + b"\r\n" + (b"" if self.is_head else body)
        self.out.write(data)
        self.engine.n_bytes_out += len(data)
        self.status = status
        self.resp_started = True
        self._end_request()
        self._next_request()

    cdef int _end_request(self) except -1:
        """Count and log the request that just ended (also rejected heads)."""
        self._release_may_go_on()
        if self.spool is not None:
            self._close_spool()
        self.engine.count_response(self.status)
        if self.held_queue is not None:
            self._leave_queue(self.held_queue)
        if self.route_active:
            self.route_active = False
            self.route.state.request_ended()
        if self.route is not None:
            self.engine.n_in_flight -= 1
        if self.engine.access_log is not None:
            self._log()
        self.route = None
        self.upstream_head = None
        self.head_src = None
        self.pending = None

    cdef void _log(self):
        self.engine.access_log((
            self.client_ip,
            self.log_method or "-",
            self.log_target or "-",
            "HTTP/1.1" if self.version == 11 else "HTTP/1.0",
            self.status,
            self.resp_bytes,
            _monotonic() - self.started,
            self.last_upstream.address if self.last_upstream is not None else "-",
        ))

    cdef int _next_request(self) except -1:
        """After a complete exchange: keep the connection for the next request, or close."""
        if self.state == C_CLOSED:
            return 0
        if not self.keep_alive or not self.req_done:
            if not self.req_done and not self.eof:
                self._linger()  # the rest of the body is still coming
            else:
                self._close()
            return 0
        self.state = C_IDLE
        if self.write_paused:
            # The client is not reading what it asked for: the next request waits (it
            # stays unread in the socket) until it does, so a pipelining client that
            # never reads costs the write high-water mark plus one response, not one
            # buffered response per request it sent (invariant 6).
            self._pause(P_WRITE)
            self._resume(P_PIPELINE)
            return 0
        if self.engine.on_idle is not None and self._give_to_successor():
            return 0
        self.deadline.set(_timeout_clock() + self.table.keepalive_timeout)
        self._resume(P_PIPELINE)
        if self.rbuf is not None:
            self._advance()

    cdef void _drop_upstream(self):
        """Forget the upstream exchange (the upstream connection is cut, not pooled)."""
        cdef UpstreamProtocol up = self.upstream
        self.upstream = None
        if up is not None:
            up.detach_abort()

    cdef void _linger(self):
        """The answer went out before the request's body came in (413, 400, a failed
        upstream): close only the sending side, then read on and discard, for at most
        ``LINGER``. Closing with unread bytes makes the kernel send a reset, which can
        destroy the answer before the client reads it, and fails the send of a client
        still sending its body. Until the client closes, or ``LINGER`` passes (then a
        reset: ``_on_deadline``). TLS cannot close one side: it closes."""
        if self.https or not self.transport.can_write_eof():
            self._close()
            return
        self.state = C_CLOSED
        self._drop_upstream()
        self.deadline.set(_timeout_clock() + LINGER)
        self.out.detach()
        self.transport.write_eof()  # after what is buffered
        self.rbuf = None
        if self.pause_reasons:  # read on: ``data_received`` drops what comes now
            self.pause_reasons = 0
            self.transport.resume_reading()

    cdef void _close(self):
        """Close after flushing what was written, for at most ``send_timeout`` more.

        A transport closes only once its buffer is sent, and a client that stopped
        reading never lets that happen: the deadline then aborts the connection.
        """
        if self.state == C_CLOSED and self.transport is None:
            return
        self.state = C_CLOSED
        self._drop_upstream()
        if self.out.queued and self.transport.get_write_buffer_size():
            self.deadline.set((self.stalled_since if self.write_paused else _timeout_clock())
                              + self.table.send_timeout)
        else:
            self.deadline.clear()
        self.out.detach()
        self.transport.close()

    cdef void _abort(self):
        """Cut the connection with a reset: whatever it was carrying did not end well."""
        self.state = C_CLOSED
        self._drop_upstream()
        self.deadline.clear()
        self.out.detach()
        reset_on_close(self.transport)
        self.transport.abort()

    # -- handing over to a successor (fastpause upgrade) -----------------------------

    cdef object _hand_over(self, bint held):
        """This connection for a successor process: (a duplicate of its socket, the
        bytes read from it that the successor must read again, the seconds its held
        request may still wait and has waited), and forget it here; None when it cannot
        go (an exchange in progress): it then ends here.

        A TLS connection goes as the other end of a socket this process relays its
        decrypted bytes to (``Engine.relay_tls``), when an upgrade set one.

        Held (``held``): a request waiting in its queue - the successor reads its
        head, its body as it will be sent (the re-framed chunks, so the head's framing
        still holds) and any pipelined bytes after it. A body still arriving goes as
        far as it came, the rest follows on the socket: a length needs nothing more; a
        chunk cut short gets a chunk header for what is left of it (the data and the
        chunk's own CRLF follow). Otherwise an idle connection, or one with part of
        its next head.
        """
        cdef bytes replay
        cdef double left = 0.0, age = 0.0, now
        if self.https and self.engine.relay_tls is None:
            return None  # its TLS session lives in this process, not in the socket
        if self.write_paused or (self.out.queued and self.transport.get_write_buffer_size()):
            return None
        if held:
            if (self.state != C_WAIT and not self._body_resumable()) \
                    or self.spool is not None or self.upstream is not None:
                return None
            replay = (bytes(memoryview(self.head_src)[self.head_off:self.head_off + self.head_len])
                      + (bytes(self.pending) if self.pending is not None else b""))
            if self.state == C_BODY and self.body_kind != BODY_LENGTH \
                    and self.chunks.state == CS_DATA:
                replay += chunk_header(<Py_ssize_t>self.chunks.remaining)
            now = _monotonic()
            left = self.hold_deadline - now
            age = now - self.held_since
            if left <= 0:
                return None
        elif self.state == C_IDLE or self.state == C_HEAD:
            replay = b""
        else:
            return None
        if self.rbuf is not None:
            replay += bytes(memoryview(self.rbuf)[self.rpos:])
        if self.https:  # this process goes on decrypting; the successor gets the bytes
            fd = self.engine.relay_tls(self.transport)
        else:
            fd = os.dup(self.transport.get_extra_info("socket").fileno())
        self._give_away(self.https)
        return (fd, replay, left, age, self.https)

    cdef bint _body_resumable(self):
        """A body still arriving that a successor can read on from the socket: one with
        a length, or chunks not cut inside a size line or a chunk's closing CRLF."""
        if self.state != C_BODY:
            return False
        if self.body_kind == BODY_LENGTH:
            return True
        return self.chunks.state == CS_SIZE_FIRST or self.chunks.state == CS_DATA

    cdef bint _give_to_successor(self):
        """After an upgrade handed the connections over, one that goes idle here
        (its exchange finished in this process) goes to the successor too, instead of
        being closed under a client that may be sending its next request."""
        if self.engine.on_idle is None:
            return False
        one = self._hand_over(False)
        if one is None:
            return False
        self.engine.on_idle(one)
        return True

    cdef void _give_away(self, bint relayed):
        """Forget the connection without ending it: the socket lives on in the
        duplicate a successor holds, so closing ours sends nothing to the client.
        A relayed (TLS) one keeps its transport, now read by the relay: this
        protocol hears nothing more of it, so it ends here as if it were lost."""
        if self.held_queue is not None:
            self._leave_queue(self.held_queue)
        if self.route is not None:
            self.engine.n_in_flight -= 1
            self.route = None  # no access log line here: the successor writes it
        self.state = C_CLOSED
        self.out.detach()
        if relayed:
            self.deadline.dispose()
            self.rbuf = None
            self.pending = None
            self.engine.client_closed(self)
        else:
            self.deadline.clear()
            self.transport.abort()

    def replay(self, bytes data not None, double hold_left, double held_age):
        """A connection adopted from the process this one replaces: read ``data`` as if
        it had just arrived; a request it holds waits at most ``hold_left`` more and
        has been held ``held_age`` already (its age in status and metrics goes on)."""
        if hold_left > 0:
            self.hold_until = _monotonic() + hold_left
        if data:
            self.data_received(data)
        if self.held_queue is not None:
            self.held_since = _monotonic() - held_age

    # -- flow control and timeouts -------------------------------------------------

    cdef void _pause(self, int reason):
        if self.pause_reasons == 0 and self.state != C_CLOSED:
            self.transport.pause_reading()
        self.pause_reasons |= reason
        self._rearm()

    cdef int _resume(self, int reason) except -1:
        if not (self.pause_reasons & reason):
            return 0
        self.pause_reasons &= ~reason
        if self.pause_reasons == 0 and self.state != C_CLOSED:
            self.transport.resume_reading()
        self._rearm()

    cdef int _rearm(self) except -1:
        """Point the deadline at whatever this connection is waiting for now."""
        if self.state == C_CLOSED or self.state == C_HEAD:
            return 0
        if self.write_paused:
            # measured from when writing stalled: new requests do not extend it
            self.deadline.set(self.stalled_since + self.table.send_timeout)
        elif self.state == C_BODY and not (self.pause_reasons & (P_UPSTREAM | P_CONNECTING)):
            self.deadline.set(_timeout_clock() + self.table.client_body_timeout)
        elif self.state == C_IDLE:
            self.deadline.set(_timeout_clock() + self.table.keepalive_timeout)
        else:
            self.deadline.clear()

    def _on_deadline_cb(self):
        self._on_deadline()

    cdef void _on_deadline(self):
        if self.state == C_CLOSED:
            reset_on_close(self.transport)  # closing, but its client stopped reading
            self.transport.abort()
        elif self.write_paused:
            self._abort()  # the client stopped reading the response
        elif self.state == C_IDLE:
            self._close()
        elif self.state == C_HEAD:
            self._send_error(408, "request head not received in time", True, 0)
        elif self.state == C_BODY:
            self._request_broken(408, "request body not received in time")
