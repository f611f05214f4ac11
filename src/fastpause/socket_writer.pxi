# Writing to a connection: straight to its socket while the transport has nothing
# queued, through the transport otherwise.

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int setsockopt(int fd, int level, int name, const void* value, unsigned int size)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT
    int MSG_PEEK
    int SOL_SOCKET
    int SO_LINGER
    struct linger:
        int l_onoff
        int l_linger


cdef enum:
    FD_NOT_YET = -2  # the socket is looked up at the second write
    FD_NONE = -1     # every write goes through the transport


cdef class SocketWriter:
    """Everything written to one connection goes through here.

    uvloop's ``transport.write`` starts with the same non-blocking send(2), but
    reaches it through about a thousand instructions of buffer bookkeeping (a list
    append, a method call to empty it again), and a proxied request makes two such
    writes: 13 % of its user-space instructions, 4 % of its CPU time. Here a write
    while the transport has nothing queued is that send(2) alone.

    Order and flow control stay the transport's: once anything goes through it (a
    partial send or EAGAIN leaves the rest there, ``writelines`` always goes there)
    every later write does too, until its buffer is empty again. Errors are the
    transport's as well: a failed send hands the data to it, and it meets the error
    and closes the connection as it always did.

    The socket belongs to the transport, which closes it right after calling
    ``connection_lost`` (or, when ``connection_made`` raised, without calling it),
    and a closed descriptor's number goes to the next accepted connection. So the
    descriptor is forgotten (``detach``) in ``connection_lost``, when
    ``connection_made`` raises, and before the protocol asks the transport to close,
    abort or shut down writing: from then on everything goes through the transport,
    which knows its own state.

    The first write of a connection goes through the transport, and the socket is
    looked up at the second: the look-up (uvloop makes a socket object for it, with a
    getsockname call) costs more than the transport's bookkeeping for one write, and
    with a new connection per request there is no second write to save it on.
    """

    def __cinit__(self, transport):
        self.transport = transport
        self.transport_write = transport.write
        self.queued = False
        self.fd = FD_NOT_YET

    cdef int write(self, object data) except -1:
        cdef Py_ssize_t n, sent
        if self.fd == FD_NOT_YET and self.queued:  # the second write: look the socket up
            self.fd = self._socket_fd()
        if self.fd >= 0 and type(data) is bytes and (not self.queued or self._drained()):
            n = PyBytes_GET_SIZE(data)
            sent = send(self.fd, PyBytes_AS_STRING(data), n, MSG_NOSIGNAL | MSG_DONTWAIT)
            if sent == n:
                return 0
            if sent > 0:
                data = data[sent:]
        self.queued = True
        self.transport_write(data)
        return 0

    cdef int _socket_fd(self) except -2:
        sock = self.transport.get_extra_info("socket")
        # a TLS transport also reports its socket: its bytes must not bypass it
        if sock is None or self.transport.get_extra_info("sslcontext") is not None:
            return FD_NONE
        return sock.fileno()

    cdef int writelines(self, list pieces) except -1:
        self.queued = True
        self.transport.writelines(pieces)
        return 0

    cdef bint _drained(self) except -1:
        """Whether the transport has sent all it was given (then writes go direct again)."""
        if self.transport.get_write_buffer_size() == 0:
            self.queued = False
        return not self.queued

    cdef bint has_unread(self) except -1:
        """Whether the peer sent anything (bytes, a FIN, a reset) not read yet.

        One non-blocking peek, made before a pooled connection carries another
        request: bytes an upstream sent after its response that the loop has not
        read yet would otherwise be read as the start of the next response.
        """
        cdef char c
        if self.fd == FD_NOT_YET:
            self.fd = self._socket_fd()
        if self.fd < 0:
            return False
        return recv(self.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0

    cdef void detach(self) noexcept:
        """Stop touching the socket: the transport is closing it."""
        self.fd = FD_NONE


cdef void reset_on_close(object transport):
    """Make the transport's coming abort send a TCP reset instead of a FIN.

    A connection cut in the middle of a response must not look like a complete one:
    an HTTP/1.0 client (or any close-delimited body) takes a clean FIN as the body's
    end, a reset it cannot mistake. Only aborts pay for this look-up.
    """
    cdef linger lg
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    lg.l_onoff = 1
    lg.l_linger = 0
    setsockopt(sock.fileno(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
