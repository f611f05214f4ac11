# Rewriting heads: the request head sent upstream and the response head sent to
# the client are assembled in one scratch buffer (kept fields are copied as whole
# line runs) and become one bytes object: one allocation, one write.

from cpython.bytes cimport PyBytes_FromStringAndSize

cdef char* _out = NULL
cdef Py_ssize_t _out_cap = 0
cdef Py_ssize_t _out_len = 0


cdef int _out_begin(Py_ssize_t need) except -1:
    global _out, _out_cap, _out_len
    cdef char* grown
    if need > _out_cap:
        grown = <char*>realloc(_out, need)
        if grown == NULL:
            raise MemoryError()
        _out = grown
        _out_cap = need
    _out_len = 0
    return 0


cdef inline void _put(const void* p, Py_ssize_t n) noexcept nogil:
    """Append; callers reserve enough room up front with ``_out_begin``."""
    global _out_len
    memcpy(_out + _out_len, p, n)
    _out_len += n


cdef inline void _put_dec(long long v) noexcept nogil:
    cdef char tmp[24]
    cdef int i = 24
    if v == 0:
        _put(b"0", 1)
        return
    while v > 0:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
    _put(tmp + i, 24 - i)


cdef inline bytes _out_bytes():
    return PyBytes_FromStringAndSize(_out, _out_len)


cdef void _put_kept_fields(const unsigned char* p, Field* fields, int nfields,
                           bint (*keep)(Field*) noexcept nogil, int drop) noexcept nogil:
    """Copy the field lines ``keep`` takes that carry none of the ``drop`` bits
    (FieldDrop), merging adjacent ones into a single memcpy."""
    cdef int i
    cdef Py_ssize_t run_start = -1, run_end = -1
    cdef Field* f
    for i in range(nfields):
        f = &fields[i]
        if f.drop & drop or not keep(f):
            continue
        if f.line_start != run_end:
            if run_start >= 0:
                _put(p + run_start, run_end - run_start)
            run_start = f.line_start
        run_end = f.line_end
    if run_start >= 0:
        _put(p + run_start, run_end - run_start)


cdef bint _put_field_values(const unsigned char* p, Field* fields, int nfields,
                            int kind) noexcept nogil:
    """Write the values of every field of ``kind`` as one comma-separated list."""
    cdef int i
    cdef bint wrote = False
    cdef Field* f
    for i in range(nfields):
        f = &fields[i]
        if f.kind == kind and f.value_len > 0:
            if wrote:
                _put(b", ", 2)
            _put(p + f.value_start, f.value_len)
            wrote = True
    return wrote


cdef inline bint _hop_by_hop(int kind) noexcept nogil:
    """Fields that describe one connection, never forwarded (RFC 9110 §7.6.1).

    Content-Length and Transfer-Encoding are included because the proxy
    re-frames every body it forwards and writes its own framing field.
    """
    return (kind == H_CONNECTION or kind == H_KEEP_ALIVE or kind == H_PROXY_CONNECTION
            or kind == H_TE or kind == H_TRANSFER_ENCODING or kind == H_UPGRADE
            or kind == H_CONTENT_LENGTH)


cdef bint _keep_request_field(Field* f) noexcept nogil:
    # Host, Expect and the X-Forwarded-* set are written by the proxy itself.
    return not (_hop_by_hop(f.kind) or f.kind == H_HOST or f.kind == H_EXPECT
                or f.kind == H_X_FORWARDED_FOR or f.kind == H_X_FORWARDED_PROTO
                or f.kind == H_X_FORWARDED_HOST)


cdef bint _keep_response_field(Field* f) noexcept nogil:
    return not _hop_by_hop(f.kind)


cdef bytes build_upstream_head(const unsigned char* p, RequestHead* h, Route route,
                               bytes client_ip, bint https, bytes fallback_host, Engine engine):
    """The request head as the upstream sees it (RFC 9110 §7.6: hop-by-hop removed)."""
    cdef Py_ssize_t host_start = 0, host_len = 0, extra = 0
    cdef const unsigned char* host_p = NULL
    cdef const unsigned char* hv
    cdef Py_ssize_t hv_len
    cdef Field* f
    cdef int i
    cdef bint first_xff = True
    cdef char rid[32]
    cdef const unsigned char* path_p
    cdef Py_ssize_t path_n, strip
    # what the client asked for: the absolute-form authority wins over Host (RFC 9112 §3.2.2)
    if h.authority_len > 0:
        host_p = p + h.authority_start
        host_len = h.authority_len
    elif h.host_index >= 0:
        f = &h.fields[h.host_index]
        host_p = p + f.value_start
        host_len = f.value_len
    if route.host_header is not None:
        hv = route.host_header
        hv_len = len(route.host_header)
    elif host_p != NULL:
        hv = host_p
        hv_len = host_len
    else:
        hv = fallback_host
        hv_len = len(fallback_host)
    for i in range(h.nfields):
        if h.fields[i].kind == H_X_FORWARDED_FOR or h.fields[i].kind == H_TRANSFER_ENCODING:
            extra += h.fields[i].value_len + 2
    _out_begin(h.head_len * 2 + extra + hv_len + host_len + len(client_ip) + 256)
    _put(p, h.method_len)
    _put(b" ", 1)
    if h.target_form == FORM_ASTERISK:
        _put(b"*", 1)
    else:
        path_p = h.norm_path  # the path routing compared, in normal form
        path_n = h.norm_len
        if route.strip_path_prefix:
            strip = len(route.path_prefix)
            if route.path_prefix[strip - 1] == 47:
                strip -= 1  # keep the slash that starts what follows
            path_p += strip
            path_n -= strip
        if path_n == 0 or path_p[0] != 47:
            _put(b"/", 1)
        _put(path_p, path_n)
    _put(b" HTTP/1.1\r\n", 11)
    # names with '_' are dropped unless the route keeps them (NGINX's underscores_in_headers):
    # a backend that reads '_' as '-' (CGI, WSGI) would take X_Forwarded_For for the real one
    _put_kept_fields(p, h.fields, h.nfields, _keep_request_field,
                     DROP_NAMED if route.underscores_in_headers else DROP_NAMED | DROP_UNDERSCORE)
    _put(b"Host: ", 6)
    _put(hv, hv_len)
    _put(b"\r\n", 2)
    if h.body_kind == BODY_CHUNKED and h.te_other:
        # other codings (e.g. gzip) describe the payload and pass through; the
        # chunked framing under them is re-made by the proxy
        _put(b"Transfer-Encoding: ", 19)
        _put_field_values(p, h.fields, h.nfields, H_TRANSFER_ENCODING)
        _put(b"\r\n", 2)
    elif h.body_kind == BODY_CHUNKED:
        _put(b"Transfer-Encoding: chunked\r\n", 28)
    elif h.has_content_length:
        _put(b"Content-Length: ", 16)
        _put_dec(h.content_length)
        _put(b"\r\n", 2)
    if h.te_trailers:
        _put(b"TE: trailers\r\n", 14)
    if h.is_upgrade:
        _put(b"Connection: upgrade\r\nUpgrade: ", 30)
        _put(p + h.fields[h.upgrade_index].value_start, h.fields[h.upgrade_index].value_len)
        _put(b"\r\n", 2)
    _put(b"X-Forwarded-For: ", 17)
    if _put_field_values(p, h.fields, h.nfields, H_X_FORWARDED_FOR):
        _put(b", ", 2)
    _put(<const char*>client_ip, len(client_ip))
    if https:
        _put(b"\r\nX-Forwarded-Proto: https\r\n", 28)
    else:
        _put(b"\r\nX-Forwarded-Proto: http\r\n", 27)
    if host_p != NULL:
        _put(b"X-Forwarded-Host: ", 18)
        _put(host_p, host_len)
        _put(b"\r\n", 2)
    if route.request_id and not h.has_request_id:
        engine.fill_request_id(rid)
        _put(b"X-Request-ID: ", 14)
        _put(rid, 32)
        _put(b"\r\n", 2)
    _put(b"\r\n", 2)
    return _out_bytes()


cdef bytes build_response_head(const unsigned char* p, ResponseHead* r, bint chunked,
                               int connection, bytes extra,
                               const unsigned char* body=NULL, Py_ssize_t body_len=0):
    """The response head as the client sees it; ``connection`` is CONN_* (what to announce),
    ``extra`` (or None) is more header lines the proxy adds, ``body`` a whole body to
    append so that head and body leave in one write."""
    _out_begin(r.head_len * 2 + 128 + (len(extra) if extra is not None else 0) + body_len)
    # RFC 9112 §4: HTTP-version SP status-code SP [ reason-phrase ], whatever came in
    _put(b"HTTP/1.1 ", 9)
    _put(p + 9, 3)
    _put(b" ", 1)
    if r.status_line_len > 13:
        _put(p + 13, r.status_line_len - 13)
    _put(b"\r\n", 2)
    _put_kept_fields(p, r.fields, r.nfields, _keep_response_field, DROP_NAMED)
    if r.has_content_length and r.status != 204 and r.status >= 200 and not chunked:
        _put(b"Content-Length: ", 16)
        _put_dec(r.content_length)
        _put(b"\r\n", 2)
    if chunked:
        _put(b"Transfer-Encoding: chunked\r\n", 28)
    if connection == CONN_CLOSE:
        _put(b"Connection: close\r\n", 19)
    elif connection == CONN_KEEP_ALIVE:
        _put(b"Connection: keep-alive\r\n", 24)
    elif connection == CONN_UPGRADE:
        _put(b"Connection: upgrade\r\nUpgrade: ", 30)
        _put_field_values(p, r.fields, r.nfields, H_UPGRADE)
        _put(b"\r\n", 2)
    if extra is not None:
        _put(<const char*>extra, len(extra))
    _put(b"\r\n", 2)
    if body_len:
        _put(body, body_len)
    return _out_bytes()


cdef const char* _HEXDIGITS = b"0123456789abcdef"


cdef bytes chunk_header(Py_ssize_t n):
    """``<hex size> CRLF`` for one re-framed chunk."""
    cdef char tmp[20]
    cdef int i = 18
    tmp[18] = 13
    tmp[19] = 10
    while True:
        i -= 1
        tmp[i] = _HEXDIGITS[n & 15]
        n >>= 4
        if n == 0:
            break
    return PyBytes_FromStringAndSize(tmp + i, 20 - i)


_REASONS = {
    200: "OK", 301: "Moved Permanently", 308: "Permanent Redirect", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    417: "Expectation Failed", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


cdef bytes plain_head(int status, Py_ssize_t length, int retry_after):
    """Status line and fields of a response the proxy makes itself (no blank line yet)."""
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {length}\r\n"
            f"Cache-Control: no-store\r\n")
    if retry_after > 0:
        head += f"Retry-After: {retry_after}\r\n"
    return head.encode("ascii")


cdef bytes error_body(int status, str why):
    """One short sentence saying what went wrong."""
    return f"{status} {_REASONS.get(status, 'Error')}: {why}\n".encode("utf-8", "replace")
