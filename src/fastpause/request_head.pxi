# The strict RFC 9112 request-head parser. It fills a RequestHead struct with
# offsets into the receive buffer; no Python object is made per header.


cdef int _parse_request_line(const unsigned char* p, Py_ssize_t n, RequestHead* h,
                             Py_ssize_t max_uri, Py_ssize_t* line_end) noexcept nogil:
    """Parse ``method SP request-target SP HTTP-version CRLF``; returns 0 or a status."""
    cdef Py_ssize_t pos = 0, ts
    while pos < n and TCHAR[p[pos]]:
        pos += 1
    if pos == 0 or pos >= n or p[pos] != 32:
        h.error = b"invalid request method"
        return 400
    h.method_len = pos
    pos += 1
    ts = pos
    while pos < n and TARGET_CHAR[p[pos]] == TARGET_PLAIN:
        pos += 1
    if pos < n and TARGET_CHAR[p[pos]] == TARGET_MARK:  # the path may need normalising
        h.target_marks = 1
        while pos < n and TARGET_CHAR[p[pos]]:
            pos += 1
    if pos - ts > max_uri:
        h.error = b"request target too long"
        return 414
    if pos == ts or pos >= n or p[pos] != 32:
        h.error = b"invalid request target"
        return 400
    h.target_start = ts
    h.target_len = pos - ts
    pos += 1
    if n - pos < 10 or memcmp(p + pos, b"HTTP/", 5) != 0 or p[pos + 6] != 46 \
            or p[pos + 8] != 13 or p[pos + 9] != 10:
        h.error = b"invalid HTTP version"
        return 400
    if not (48 <= p[pos + 5] <= 57 and 48 <= p[pos + 7] <= 57):
        h.error = b"invalid HTTP version"
        return 400
    if p[pos + 5] != 49 or (p[pos + 7] != 48 and p[pos + 7] != 49):
        h.error = b"HTTP version not supported"
        return 505
    h.version = 10 + (p[pos + 7] - 48)
    line_end[0] = pos + 10
    return 0


cdef int _classify_target(const unsigned char* p, RequestHead* h) noexcept nogil:
    """Decide the request-target form (RFC 9112 §3.2) and locate path and authority."""
    cdef const unsigned char* t = p + h.target_start
    cdef Py_ssize_t n = h.target_len, i, skip
    cdef int status
    cdef bint is_connect = h.method_len == 7 and memcmp(p, b"CONNECT", 7) == 0
    h.path_start = h.target_start
    h.path_len = n
    h.authority_len = 0
    if is_connect:
        # authority-form (RFC 9112 §3.2.3): uri-host ":" port, and nothing else
        i = n - 1
        while i >= 0 and 48 <= t[i] <= 57:
            i -= 1
        if i < 1 or i == n - 1 or t[i] != 58:
            h.error = b"CONNECT needs an authority-form target (host:port)"
            return 400
        for skip in range(i):
            if not HOST_CHAR[t[skip]] or t[skip] == 64:
                h.error = b"CONNECT needs an authority-form target (host:port)"
                return 400
        h.target_form = FORM_AUTHORITY
        return 0
    if t[0] == 47:
        h.target_form = FORM_ORIGIN
        return 0
    if n == 1 and t[0] == 42:
        if h.method_len == 7 and memcmp(p, b"OPTIONS", 7) == 0:
            h.target_form = FORM_ASTERISK
            return 0
        h.error = b"asterisk-form target is only valid for OPTIONS"
        return 400
    skip = 0
    if n > 7 and _ieq(t, 7, b"http://", 7):
        skip = 7
    elif n > 8 and _ieq(t, 8, b"https://", 8):
        skip = 8
    if skip == 0:
        h.error = b"invalid request target"
        return 400
    i = skip
    while i < n and t[i] != 47 and t[i] != 63:
        i += 1
    if i == skip:
        h.error = b"absolute-form target without a host"
        return 400
    status = _check_host(t + skip, i - skip, &h.host_len)
    if status:
        h.error = (b"host name in request target longer than 255 bytes" if status == HOST_TOO_LONG
                   else b"invalid authority in request target")
        return 400
    h.target_form = FORM_ABSOLUTE
    h.authority_start = h.target_start + skip
    h.authority_len = i - skip
    h.host_start = h.authority_start
    h.path_start = h.target_start + i
    h.path_len = n - i
    return 0


cdef int _apply_framing_field(const unsigned char* p, RequestHead* h, Field* f) noexcept nogil:
    """Fold one framing/connection-relevant field into the head's facts; 0 or a status."""
    cdef Py_ssize_t pos, end, s, ln
    cdef int kind = f.kind, status
    if kind == H_CONTENT_LENGTH:
        if _parse_content_length(p, f.value_start, f.value_len, &h.content_length) != 0:
            h.error = b"invalid or conflicting Content-Length"
            return 400
        h.has_content_length = 1
    elif kind == H_TRANSFER_ENCODING:
        pos = f.value_start
        end = f.value_start + f.value_len
        while True:
            pos = _next_list_item(p, pos, end, &s, &ln)
            if ln == 0:
                break
            if h.chunked:
                h.error = b"chunked must be the final transfer coding, applied once"
                return 400
            if not _is_token(p + s, ln):
                h.error = b"invalid transfer coding"
                return 400
            if _ieq(p + s, ln, b"chunked", 7):
                h.chunked = 1
            else:
                h.te_other = 1
        h.has_transfer_encoding = 1
    elif kind == H_HOST:
        h.host_count += 1
        h.host_index = f - h.fields
        status = _check_host(p + f.value_start, f.value_len, &ln)
        if status:
            h.error = (b"Host name longer than 255 bytes" if status == HOST_TOO_LONG
                       else b"invalid Host header")
            return 400
        if h.authority_len == 0:  # the absolute-form authority wins (RFC 9112 §3.2.2)
            h.host_start = f.value_start
            h.host_len = ln
    elif kind == H_CONNECTION:
        pos = f.value_start
        end = f.value_start + f.value_len
        while True:
            pos = _next_list_item(p, pos, end, &s, &ln)
            if ln == 0:
                break
            if _ieq(p + s, ln, b"close", 5):
                h.conn_close = 1
            elif _ieq(p + s, ln, b"keep-alive", 10):
                h.conn_keep_alive = 1
            else:
                if _ieq(p + s, ln, b"upgrade", 7):
                    h.conn_upgrade = 1
                h.conn_other = 1
    elif kind == H_EXPECT:
        if _ieq(p + f.value_start, f.value_len, b"100-continue", 12):
            h.expect_continue = 1
        else:
            h.error = b"unsupported expectation"
            return 417
    elif kind == H_TE:
        pos = f.value_start
        end = f.value_start + f.value_len
        while True:
            pos = _next_list_item(p, pos, end, &s, &ln)
            if ln == 0:
                break
            if ln >= 8 and _ieq(p + s, 8, b"trailers", 8) and (ln == 8 or p[s + 8] == 59
                                                              or _is_ows(p[s + 8])):
                h.te_trailers = 1
    elif kind == H_UPGRADE:
        h.upgrade_index = f - h.fields
    elif kind == H_X_REQUEST_ID:
        h.has_request_id = 1
    return 0


cdef void _drop_connection_named(const unsigned char* p, Field* fields, int nfields) noexcept nogil:
    """Mark for removal every field named by a Connection option (RFC 9110 §7.6.1)."""
    cdef int i, j
    cdef Field* c
    cdef Field* f
    cdef Py_ssize_t pos, end, s, ln
    for i in range(nfields):
        c = &fields[i]
        if c.kind != H_CONNECTION:
            continue
        pos = c.value_start
        end = c.value_start + c.value_len
        while True:
            pos = _next_list_item(p, pos, end, &s, &ln)
            if ln == 0:
                break
            for j in range(nfields):
                f = &fields[j]
                if f.kind == H_OTHER and f.name_len == ln and _ieq_ci(p + f.line_start, p + s, ln):
                    f.drop |= DROP_NAMED


cdef inline bint _ieq_ci(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(a[i]) != _lower(b[i]):
            return False
    return True


cdef int parse_request(const unsigned char* p, Py_ssize_t n, RequestHead* h, Field* fields,
                       int max_fields, Py_ssize_t max_uri) noexcept nogil:
    """Parse the head at the start of p[0:n]; returns 0 or an HTTP status.

    ``p[0:n]`` must end in CRLF CRLF. The head ends at its first empty line, which
    may come before ``n`` (more requests, or a body, follow in the same bytes):
    ``h.head_len`` says where. On error ``h.error`` names the problem. Framing
    follows RFC 9112 §6.3: anything ambiguous is rejected, never guessed.
    """
    cdef Py_ssize_t pos, line_start, eol
    cdef int status
    cdef Field* f
    memset(h, 0, sizeof(RequestHead))
    h.fields = fields
    h.content_length = -1
    h.host_index = -1
    h.upgrade_index = -1
    status = _parse_request_line(p, n, h, max_uri, &pos)
    if status:
        return status
    status = _classify_target(p, h)
    if status:
        return status
    h.norm_path = p + h.path_start
    h.norm_len = h.path_len
    if h.target_marks and h.target_form != FORM_AUTHORITY:
        status = normalize_request_path(h, n - h.path_start)
        if status:
            return status
    while True:
        line_start = pos
        if p[pos] == 13:
            if p[pos + 1] != 10:
                h.error = b"bare CR in header section"
                return 400
            h.head_len = pos + 2
            break
        if h.nfields >= max_fields:
            h.error = b"too many header fields"
            return 431
        f = &fields[h.nfields]
        eol = _scan_field_line(p, line_start, n, f, &h.error)
        if eol < 0:
            return 400
        h.nfields += 1
        if f.kind != H_OTHER:
            status = _apply_framing_field(p, h, f)
            if status:
                return status
        pos = eol + 2
    return _check_request_framing(p, h)


cdef int _check_request_framing(const unsigned char* p, RequestHead* h) noexcept nogil:
    """Whole-head checks that need every field: framing, Host, Connection options."""
    if h.has_transfer_encoding:
        if h.version == 10:
            h.error = b"Transfer-Encoding is not allowed in HTTP/1.0"
            return 400
        if h.has_content_length:
            h.error = b"Content-Length together with Transfer-Encoding"
            return 400
        if not h.chunked:
            h.error = b"the final transfer coding must be chunked"
            return 400
        h.body_kind = BODY_CHUNKED
    elif h.has_content_length and h.content_length > 0:
        h.body_kind = BODY_LENGTH
    else:
        h.body_kind = BODY_NONE
    if h.host_count > 1:
        h.error = b"more than one Host header"
        return 400
    if h.host_count == 0 and h.version == 11:
        h.error = b"missing Host header"
        return 400
    if h.conn_other:
        _drop_connection_named(p, h.fields, h.nfields)
    if h.version == 11:
        h.keep_alive = not h.conn_close
    else:
        h.keep_alive = h.conn_keep_alive and not h.conn_close
    h.is_upgrade = (h.conn_upgrade and h.upgrade_index >= 0 and h.version == 11
                    and h.body_kind == BODY_NONE and not _offers_h2c(p, &h.fields[h.upgrade_index]))
    return 0


cdef bint _offers_h2c(const unsigned char* p, Field* f) noexcept nogil:
    """HTTP/2 over cleartext is refused: such a request goes on as plain HTTP/1.1."""
    cdef Py_ssize_t pos = f.value_start, end = f.value_start + f.value_len, s, ln
    while True:
        pos = _next_list_item(p, pos, end, &s, &ln)
        if ln == 0:
            return False
        if _ieq(p + s, ln, b"h2c", 3):
            return True


cdef inline bint _method_is(const unsigned char* p, RequestHead* h, const char* m, Py_ssize_t n) noexcept nogil:
    return h.method_len == n and memcmp(p, m, n) == 0


cdef bint _method_idempotent(const unsigned char* p, RequestHead* h) noexcept nogil:
    """RFC 9110 §9.2.2: safe to replay when no response byte has arrived."""
    return (_method_is(p, h, b"GET", 3) or _method_is(p, h, b"HEAD", 4)
            or _method_is(p, h, b"OPTIONS", 7) or _method_is(p, h, b"PUT", 3)
            or _method_is(p, h, b"DELETE", 6) or _method_is(p, h, b"TRACE", 5))


cdef bint _is_health_check(const unsigned char* p, RequestHead* h, bytes path) noexcept:
    """GET or HEAD of exactly ``path`` (query ignored): answered by the proxy while held."""
    cdef const unsigned char* t = h.norm_path
    cdef Py_ssize_t n = 0, plen = len(path)
    if not (_method_is(p, h, b"GET", 3) or _method_is(p, h, b"HEAD", 4)):
        return False
    while n < h.norm_len and t[n] != 63:
        n += 1
    return n == plen and memcmp(t, <const char*>path, n) == 0


# A module-wide scratch field table: the data plane is single-threaded and a head
# is parsed and rewritten in one go, so one table serves every connection.
cdef Field* _fields = <Field*>malloc(sizeof(Field) * MAX_FIELDS_CAP)


class HeadError(Exception):
    """A request head was rejected; ``status`` is the HTTP status to answer."""

    def __init__(self, int status, str reason):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


cdef int _parse_whole_head(bytes data, RequestHead* h, Py_ssize_t max_head_size, int max_headers,
                           Py_ssize_t max_uri_size) except -1:
    """The diagnostic entry points' parse: 0, or HeadError raised as the proxy would answer."""
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = len(data), end
    cdef int status = 0
    if max_headers > MAX_FIELDS_CAP:
        raise ValueError(f"max_headers may be at most {MAX_FIELDS_CAP}")
    end = _scan_head_end(p, 0, n, &status)
    if end == -2:
        raise HeadError(400, "bare LF in header section")
    if end == -1 or end != n:
        if n > max_head_size:
            raise HeadError(431, "request header section too large")
        raise HeadError(400, "incomplete or trailing bytes after the head")
    if n > max_head_size:
        raise HeadError(431, "request header section too large")
    status = parse_request(p, n, h, _fields, max_headers, max_uri_size)
    if status:
        raise HeadError(status, h.error.decode())
    return 0


def parse_request_head(bytes data, Py_ssize_t max_head_size=32768, int max_headers=100,
                       Py_ssize_t max_uri_size=8192):
    """Parse one complete request head with the proxy's parser (tests and diagnostics).

    Returns ``(method, target, (major, minor), [(name, value), ...])`` or raises
    ``HeadError``. The hot path never builds these Python objects.
    """
    cdef RequestHead h
    cdef int i
    _parse_whole_head(data, &h, max_head_size, max_headers, max_uri_size)
    headers = []
    for i in range(h.nfields):
        f = &h.fields[i]
        headers.append((data[f.line_start:f.line_start + f.name_len],
                        data[f.value_start:f.value_start + f.value_len]))
    return (data[:h.method_len], data[h.target_start:h.target_start + h.target_len],
            (1, h.version - 10), headers)


_BODY_KIND_NAMES = {BODY_NONE: "none", BODY_LENGTH: "length", BODY_CHUNKED: "chunked",
                    BODY_CLOSE: "close"}


def request_framing(bytes data):
    """How the proxy delimits the body of the request whose complete head is ``data``
    (tests and diagnostics): ``(framing, content_length)``, framing "none", "length" or
    "chunked", content_length the parsed value (-1 when absent); or ``HeadError``."""
    cdef RequestHead h
    _parse_whole_head(data, &h, 32768, 100, 8192)
    return _BODY_KIND_NAMES[h.body_kind], h.content_length
