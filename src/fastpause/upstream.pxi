# The upstream side of an exchange: connecting, sending the request, framing the
# response and streaming it to the client, then returning to the pool.

cdef enum:
    MAX_RESPONSE_HEAD = 65536
    INLINE_BODY_MAX = 16384  # bodies up to this size are copied next to the head
    WRITE_HIGH = 256 * 1024
    WRITE_LOW = 64 * 1024


cdef inline const unsigned char* _ptr(object buf):
    if type(buf) is bytes:
        return <const unsigned char*>PyBytes_AS_STRING(buf)
    return <const unsigned char*>PyByteArray_AS_STRING(buf)


cdef inline object _slice(object buf, Py_ssize_t start, Py_ssize_t end):
    if start == 0 and end == len(buf):
        return buf
    return buf[start:end]


cdef class UpstreamProtocol:
    """One TCP connection to an upstream, carrying one exchange at a time."""

    def __cinit__(self, Upstream upstream, Engine engine):
        self.upstream = upstream
        self.engine = engine
        self.deadline = Deadline(engine.timers, self._on_deadline_cb)
        self.state = U_CONNECTING
        self.chunks = ChunkedDecoder()
        self.salvage_fd = -1

    # -- connection management ---------------------------------------------------

    cdef void start_connect(self, double timeout):
        """Open a new connection; the client waits in ``self.client``.

        A Task per *connection* (not per request): keep-alive makes this rare.
        """
        loop = self.engine.loop
        self.upstream.n_connecting += 1
        self.connecting = True
        if self.upstream.ssl is None:
            connecting = loop.create_connection(
                self._self_factory, self.upstream.host, self.upstream.port)
        else:
            connecting = loop.create_connection(
                self._self_factory, self.upstream.host, self.upstream.port,
                ssl=self.upstream.ssl, server_hostname=self.upstream.server_hostname,
                ssl_handshake_timeout=timeout)
        self.connect_task = loop.create_task(connecting)
        self.connect_task.add_done_callback(self._connect_done)
        self.deadline.set(_timeout_clock() + timeout)

    def _self_factory(self):
        return self

    cdef void _connect_ended(self):
        if self.connecting:
            self.connecting = False
            self.upstream.n_connecting -= 1

    def _connect_done(self, task):
        cdef ClientProtocol c
        self.connect_task = None
        self._connect_ended()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._connect_failed(f"upstream {self.upstream.address} is unreachable "
                                 f"({_describe(exc)})")

    cdef void _connect_failed(self, str why):
        """Nothing was sent: the client may try elsewhere or wait (invariant 2)."""
        cdef ClientProtocol c = self.client
        self.client = None
        self.upstream.n_connect_failures += 1
        self.close()
        if c is not None:
            self.upstream.mark_failed(self.engine, _monotonic(), c.route.fail_duration)
            c.upstream_failed(502, why, F_CONNECT, True)

    def connection_made(self, transport):
        self.transport = transport
        self.out = SocketWriter(transport)
        cdef bint news = self.upstream.n_connects == 0 or self.upstream.down_until != 0.0
        try:
            transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
            self.upstream.n_connects += 1
            self.upstream.down_until = 0.0
            self.upstream.conns.add(self)
            self._connect_ended()
            self.deadline.clear()
            if self.client is not None:
                self.attach(self.client)
            else:
                # a probe, or the client left while connecting: pool the connection
                self.state = U_ACTIVE
                self.upstream.release(self)
            self.engine.upstream_up(self.upstream, news)
        except BaseException:
            self.out.detach()  # uvloop then closes the socket without a connection_lost
            raise

    cdef int make_idle(self) except -1:
        self.state = U_IDLE
        self.client = None
        self.rbuf = None
        if self.reading_paused:
            self.resume_upstream_reading()
        self.deadline.set(_timeout_clock() + self.upstream.keepalive_timeout)

    cdef int attach(self, ClientProtocol client) except -1:
        """Start an exchange for ``client``; it then writes the request through ``out``."""
        self.client = client
        self.state = U_ACTIVE
        self.rbuf = None
        self.scan_pos = 0
        self.got_response_bytes = False
        self.head_done = False
        self.request_done = False
        self.reusable = False
        self.deadline.clear()
        self.upstream.n_requests += 1
        self.upstream.n_active += 1
        self.in_exchange = True
        if client.write_paused:  # its client reads no faster than before (invariant 6)
            self.pause_upstream_reading()
        if client.body_kind != BODY_NONE and (not client.req_done
                                              or client.pending_bytes > INLINE_BODY_MAX):
            self._keep_salvage_fd()  # body writes may still fail on an early answer
        client.upstream_ready(self)

    cdef int _end_exchange(self) except -1:
        self._drop_salvage_fd()
        if self.in_exchange:
            self.in_exchange = False
            self.upstream.n_active -= 1

    cdef int request_complete(self) except -1:
        """The whole request has been written: the response-header clock starts."""
        self.request_done = True
        if not self.head_done and self.state == U_ACTIVE:
            self.deadline.set(_timeout_clock() + self.client.route.response_header_timeout)

    cdef void detach_abort(self):
        """The client is gone mid-exchange: this connection's state is unknown, drop it
        (a tunnel's end is a clean end: what the client sent last still goes out)."""
        self.client = None
        if self.state == U_CONNECTING:
            return  # finish connecting and join the pool
        if self.state == U_TUNNEL:
            self._shut(False)
        else:
            self.close()

    cdef void close(self):
        self._shut(True)

    cdef void _shut(self, bint abort):
        """Close (``abort``: at once, dropping unsent bytes) and leave every book."""
        if self.state == U_IDLE:
            self.upstream.forget(self)
        self._end_exchange()
        self.upstream.conns.discard(self)
        self.state = U_CLOSED
        self.client = None
        self.deadline.dispose()
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
            self._connect_ended()
        if self.transport is not None:
            self.out.detach()
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    cdef void pause_upstream_reading(self):
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
            if self.state == U_ACTIVE:
                self.deadline.clear()  # the client's send timeout governs now

    cdef void resume_upstream_reading(self):
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
            if self.state == U_ACTIVE and self.head_done:
                self.deadline.set(_timeout_clock() + self.client.route.upstream_body_timeout)

    # -- asyncio protocol callbacks ------------------------------------------------

    def data_received(self, bytes data not None):
        if self.state == U_TUNNEL:
            self.tunnel_seen = _timeout_clock()
            self.client.write_body(data, len(data))
        elif self.state == U_ACTIVE and self.client is not None:
            self._on_data(data)
        else:
            # bytes on an idle connection: the upstream broke the protocol; never reuse it
            self.close()

    def eof_received(self):
        if self.state == U_TUNNEL:
            # the upstream is done sending; the tunnel ends once the client is done too
            self.peer_eof = True
            if self.client.eof:
                self.client._close()
            else:
                self.client.half_close()
            return True
        if self.state == U_ACTIVE and self.client is not None:
            if self.head_done and self.body_kind == BODY_CLOSE:
                self._finish()
            elif self.head_done:
                self._fail(502, "upstream closed the connection mid-response")
            else:
                self._fail(502, "upstream closed the connection before responding")
        else:
            self.close()
        return False

    def connection_lost(self, exc):
        cdef ClientProtocol c
        if self.out is not None:
            self.out.detach()
        if self.salvage_fd >= 0 and self.state == U_ACTIVE and not self.head_done:
            self._salvage()
        if self.state == U_TUNNEL:
            c = self.client
            self.client = None
            c._close()
        elif self.state == U_ACTIVE and self.client is not None:
            if self.head_done and self.body_kind == BODY_CLOSE and exc is None:
                self._finish()
            else:
                self._fail(502, "upstream connection reset"
                           if exc is not None else "upstream closed the connection")
        if self.state == U_IDLE:
            self.upstream.forget(self)
        self._end_exchange()
        self.upstream.conns.discard(self)
        self.state = U_CLOSED
        self.client = None
        self.deadline.dispose()

    cdef void cut(self):
        """End this connection now, whatever it carries (an upstream's drain deadline)."""
        cdef ClientProtocol c = self.client
        if self.state == U_ACTIVE and c is not None:
            self._fail(502, f"upstream {self.upstream.address} was removed")
        else:
            self.close()
            if c is not None:
                c._close()

    cdef void half_close(self):
        if self.transport is not None and self.transport.can_write_eof():
            self.out.detach()
            self.transport.write_eof()

    def pause_writing(self):
        self.write_stalled = True
        if self.client is not None:
            self.client._pause(P_UPSTREAM)
            self.deadline.set(_timeout_clock() + self.client.route.upstream_body_timeout)

    def resume_writing(self):
        self.write_stalled = False
        if self.client is not None:
            self.client._resume(P_UPSTREAM)
            if self.client.spooling:  # the body comes from its file, not the client
                self.deadline.clear()
                self.client.pump_spool(self)
            elif self.state == U_TUNNEL:
                self._arm_tunnel_idle()
            elif not self.head_done and self.request_done:
                self.request_complete()
            elif not self.head_done:
                self.deadline.clear()

    # -- response ------------------------------------------------------------------

    cdef int _on_data(self, object data) except -1:
        self.got_response_bytes = True
        if self.head_done:
            self._forward_body(data, 0)
            return 0
        if self.rbuf is None:
            self.rbuf = data
        else:
            if type(self.rbuf) is bytes:
                self.rbuf = bytearray(self.rbuf)
            self.rbuf += data
        self._parse_head()

    cdef int _parse_head(self):
        """Consume interim (1xx) heads and the final head; 1 when the body may follow."""
        cdef ResponseHead r
        cdef int status = 0
        cdef Py_ssize_t end, n
        cdef const unsigned char* p
        cdef ClientProtocol c = self.client
        while True:
            buf = self.rbuf
            n = len(buf)
            p = _ptr(buf)
            end = _scan_head_end(p, self.scan_pos, n, &status)
            if end == -2:
                self._fail(502, "invalid response head from upstream (bare LF)")
                return -1
            if end == -1 or end > MAX_RESPONSE_HEAD:
                if n > MAX_RESPONSE_HEAD:
                    self._fail(502, "response head from upstream too large")
                    return -1
                self.scan_pos = n
                return 0
            if parse_response(p, end, &r, _fields, MAX_FIELDS_CAP) != 0:
                self._fail(502, f"invalid response from upstream: {r.error.decode()}")
                return -1
            self.scan_pos = 0
            if r.status < 200:
                if r.status == 101:
                    if not c.upgrade:
                        self._fail(502, "upstream switched protocols without an upgrade request")
                        return -1
                    self._start_tunnel(buf, p, &r, end, n)
                    return 1
                if r.status != 100 and c.version == 11:
                    # 100 Continue is the proxy's own business (it answers Expect itself)
                    c.interim_response(build_response_head(p, &r, False, CONN_NONE, None))
                if end == n:
                    self.rbuf = None
                    return 0
                self.rbuf = buf[end:]
                continue
            break
        self.head_done = True
        self._drop_salvage_fd()
        self.status = r.status
        self.body_kind = response_body_kind(&r, c.is_head)
        self.reusable = (not r.conn_close and (r.version == 11 or r.conn_keep_alive)
                         and self.body_kind != BODY_CLOSE)
        if (self.body_kind == BODY_LENGTH and r.content_length <= n - end
                and r.content_length <= INLINE_BODY_MAX):
            # the whole (small) body came with the head: both leave in one write
            if r.content_length < n - end:
                self.reusable = False  # bytes after the declared body: never reuse
            c.start_response(p, &r, self.body_kind, p + end, <Py_ssize_t>r.content_length)
            self.rbuf = None
            if self.client is not None:
                self._finish()
            return 1
        self.client_chunked = c.start_response(p, &r, self.body_kind, NULL, 0)
        self.rbuf = None
        if self.client is None:
            return -1  # the client went away while the head was written
        if self.body_kind == BODY_NONE:
            if end != n:
                self.reusable = False  # bytes after a body-less response: never reuse
            self._finish()
            return 1
        if self.body_kind == BODY_LENGTH:
            self.body_left = r.content_length
        elif self.body_kind == BODY_CHUNKED:
            self.chunks.reset()
        if not self.reading_paused:
            self.deadline.set(_timeout_clock() + c.route.upstream_body_timeout)
        if end < n:
            self._forward_body(buf, end)
        return 1

    cdef void _start_tunnel(self, object buf, const unsigned char* p, ResponseHead* r,
                            Py_ssize_t end, Py_ssize_t n):
        """101: from now on bytes flow both ways untouched, with backpressure both ways."""
        cdef ClientProtocol c = self.client
        self.head_done = True
        self._drop_salvage_fd()
        self.state = U_TUNNEL
        self.rbuf = None
        self.tunnel_seen = _timeout_clock()
        self._arm_tunnel_idle()
        c.start_tunnel(build_response_head(p, r, False, CONN_UPGRADE, None))
        if end < n and self.client is not None:
            c.write_body(buf[end:], n - end)

    cdef bint _arm_tunnel_idle(self) except -1:
        """Point the deadline at the end of the tunnel's idle time; False if it passed.

        Traffic only stamps ``tunnel_seen`` (no timer work per read): the deadline
        looks at it when it fires and moves on if anything moved since.
        """
        cdef double when = self.tunnel_seen + self.client.route.tunnel_idle_timeout
        if when <= _timeout_clock():
            return False
        self.deadline.set(when)
        return True

    cdef void _forward_body(self, object data, Py_ssize_t pos):
        cdef ClientProtocol c = self.client
        cdef Py_ssize_t n = len(data), take, ds, dl
        cdef const unsigned char* p
        cdef int rc
        cdef list out
        if not self.reading_paused:
            self.deadline.set(_timeout_clock() + c.route.upstream_body_timeout)
        if self.body_kind == BODY_LENGTH:
            take = n - pos
            if take > self.body_left:
                take = <Py_ssize_t>self.body_left
                self.reusable = False  # more bytes than the response declared
            self.body_left -= take
            c.write_body(_slice(data, pos, pos + take), take)
            if self.body_left == 0:
                self._finish()
            return
        if self.body_kind == BODY_CLOSE:
            take = n - pos
            if self.client_chunked:
                c.write_body_pieces([chunk_header(take), _slice(data, pos, n), b"\r\n"], take)
            else:
                c.write_body(_slice(data, pos, n), take)
            return
        # chunked: decode, and either re-frame (HTTP/1.1 client) or unwrap (HTTP/1.0)
        p = _ptr(data)
        out = []
        take = 0
        while True:
            rc = self.chunks.next(p, n, pos, &ds, &dl, &pos)
            if rc == CH_DATA:
                if self.client_chunked:
                    out.append(chunk_header(dl))
                    out.append(_slice(data, ds, ds + dl))
                    out.append(b"\r\n")
                else:
                    out.append(_slice(data, ds, ds + dl))
                take += dl
            elif rc == CH_MORE:
                break
            elif rc == CH_DONE:
                if self.client_chunked:
                    out.append(b"0\r\n")
                    if self.chunks.trailers is not None:
                        out.append(bytes(self.chunks.trailers))
                    out.append(b"\r\n")
                if pos != n:
                    self.reusable = False
                break
            else:
                if out:
                    c.write_body_pieces(out, take)
                self._fail(502, f"invalid chunked body from upstream: "
                                f"{self.chunks.error.decode()}")
                return
        if out:
            c.write_body_pieces(out, take)
        if rc == CH_DONE and self.client is not None:
            self._finish()

    cdef int _finish(self) except -1:
        """The response is complete: hand the connection back through the client."""
        cdef ClientProtocol c = self.client
        if self.body_kind == BODY_CLOSE and self.client_chunked:
            c.write_body(b"0\r\n\r\n", 0)
        self.client = None
        self.deadline.clear()
        self._end_exchange()
        self.reused = True  # if pooled, a later failure may just mean it went stale
        c.response_done(self.reusable and self.request_done)

    cdef void _fail(self, int status, str why):
        """The exchange broke: discard the connection; tell the client what it can still do."""
        cdef ClientProtocol c = self.client
        cdef bint retryable
        self.client = None
        self.engine.n_upstream_errors += 1
        self.close()
        if c is None:
            return
        if self.head_done:
            c.response_broken(why)
            return
        if not self.got_response_bytes:
            if self.reused:
                # a pooled connection died under the request: its idle siblings are
                # likely stale too (the upstream restarting); the replay dials afresh
                self.upstream.close_idle()
            else:
                # a fresh connection reset before any answer: the upstream is in trouble
                self.upstream.mark_failed(self.engine, _monotonic(), c.route.fail_duration)
        # RFC 9110 §9.2.2 / invariant 2: bytes went out, so only an idempotent
        # request without a body that saw no response byte may be replayed.
        retryable = (status == 502 and not self.got_response_bytes and c.idempotent
                     and c.body_kind == BODY_NONE)
        c.upstream_failed(status, why, F_STALE if self.reused and not self.got_response_bytes
                          else F_SENT, retryable)

    # -- early responses ----------------------------------------------------------

    cdef void _keep_salvage_fd(self):
        """While a request body goes out, keep a second descriptor of the socket.

        An upstream may answer before the body is complete (413 to an upload) and close;
        its reset then makes our next body write fail, and uvloop closes the socket
        without reading the answer that is already in the receive queue. The duplicate
        keeps that queue readable until ``connection_lost`` (``_salvage``). One dup and
        one close per request with a body; requests without one never pay it.
        """
        if self.salvage_fd < 0 and self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                self.salvage_fd = fd_dup(sock.fileno())

    cdef int _drop_salvage_fd(self) except -1:
        if self.salvage_fd >= 0:
            fd_close(self.salvage_fd)
            self.salvage_fd = -1

    cdef void _salvage(self):
        """The connection broke before its response was read: read whatever answer
        the upstream managed to send (RFC 9112 §9.5: a client sending a body should
        watch for an early response), so the client gets it instead of a 502. What is
        queued is bounded by the socket's receive buffer, so it is relayed without
        waiting for the client to read (invariant 6 bends by at most that much)."""
        cdef int fd = self.salvage_fd
        self.salvage_fd = -1
        while self.client is not None and self.state == U_ACTIVE:
            try:
                data = os.read(fd, 65536)  # non-blocking: uvloop set O_NONBLOCK
            except OSError:
                break  # nothing (more) queued, or the reset itself
            if not data:
                break
            self._on_data(data)
        fd_close(fd)

    def _on_deadline_cb(self):
        self._on_deadline()

    cdef void _on_deadline(self):
        cdef ClientProtocol c
        if self.state == U_CONNECTING:
            self._connect_failed(f"connecting to upstream {self.upstream.address} timed out")
        elif self.state == U_TUNNEL:
            if self.write_stalled or not self._arm_tunnel_idle():
                self.cut()  # the upstream stopped reading, or nothing moved for too long
        elif self.state == U_ACTIVE:
            if not self.head_done and self.request_done:
                self._fail(504, f"upstream {self.upstream.address} did not send a response "
                                f"head in time")
            else:
                self._fail(504, f"upstream {self.upstream.address} stalled")
        else:
            self.close()


cdef str _describe(object exc):
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
