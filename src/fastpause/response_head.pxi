# Parser for upstream response heads (RFC 9112 §4 and §6.3). Anything the proxy
# cannot frame unambiguously makes the response invalid: the client gets 502 and
# the upstream connection is discarded.


cdef int parse_response(const unsigned char* p, Py_ssize_t n, ResponseHead* r, Field* fields,
                        int max_fields) noexcept nogil:
    """Parse a complete response head p[0:n]; returns 0 or -1 with ``r.error`` set."""
    cdef Py_ssize_t pos, line_start, eol, s, it, ln, end
    cdef Field* f
    memset(r, 0, sizeof(ResponseHead))
    r.fields = fields
    r.content_length = -1
    if n < 14 or memcmp(p, b"HTTP/1.", 7) != 0 or not (48 <= p[7] <= 57) or p[8] != 32:
        r.error = b"invalid status line"
        return -1
    r.version = 10 if p[7] == 48 else 11
    if not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57):
        r.error = b"invalid status code"
        return -1
    r.status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    if r.status < 100:
        r.error = b"invalid status code"
        return -1
    pos = 12
    if p[pos] == 32:
        while p[pos] != 13:
            if not FIELD_VCHAR[p[pos]]:
                r.error = b"invalid reason phrase"
                return -1
            pos += 1
    if p[pos] != 13 or p[pos + 1] != 10:
        r.error = b"invalid status line"
        return -1
    r.status_line_len = pos
    pos += 2
    while True:
        line_start = pos
        if p[pos] == 13:
            if p[pos + 1] != 10:
                r.error = b"bare CR in response header section"
                return -1
            break
        if r.nfields >= max_fields:
            r.error = b"too many response header fields"
            return -1
        f = &fields[r.nfields]
        eol = _scan_field_line(p, line_start, n, f, &r.error)
        if eol < 0:
            return -1
        r.nfields += 1
        pos = eol + 2
        if f.kind == H_CONTENT_LENGTH:
            if _parse_content_length(p, f.value_start, f.value_len, &r.content_length) != 0:
                r.error = b"invalid or conflicting Content-Length"
                return -1
            r.has_content_length = 1
        elif f.kind == H_TRANSFER_ENCODING:
            end = f.value_start + f.value_len
            s = f.value_start
            while True:
                s = _next_list_item(p, s, end, &it, &ln)
                if ln == 0:
                    break
                if r.chunked or not _ieq(p + it, ln, b"chunked", 7):
                    r.error = b"unsupported transfer coding"
                    return -1
                r.chunked = 1
            r.has_transfer_encoding = 1
        elif f.kind == H_CONNECTION:
            end = f.value_start + f.value_len
            s = f.value_start
            while True:
                s = _next_list_item(p, s, end, &it, &ln)
                if ln == 0:
                    break
                if _ieq(p + it, ln, b"close", 5):
                    r.conn_close = 1
                elif _ieq(p + it, ln, b"keep-alive", 10):
                    r.conn_keep_alive = 1
                else:
                    r.conn_other = 1
    r.head_len = n
    if r.has_transfer_encoding and r.has_content_length:
        r.error = b"Content-Length together with Transfer-Encoding"
        return -1
    if r.has_transfer_encoding and not r.chunked:
        r.error = b"unsupported transfer coding"
        return -1
    if r.has_transfer_encoding and r.version == 10:
        r.error = b"Transfer-Encoding in an HTTP/1.0 response"  # RFC 9112 §6.1: faulty framing
        return -1
    if r.conn_other:
        _drop_connection_named(p, r.fields, r.nfields)
    return 0


cdef int response_body_kind(ResponseHead* r, bint request_was_head) noexcept nogil:
    """RFC 9112 §6.3: how the response body is delimited."""
    if request_was_head or r.status < 200 or r.status == 204 or r.status == 304:
        return BODY_NONE
    if r.chunked:
        return BODY_CHUNKED
    if r.has_content_length:
        return BODY_LENGTH if r.content_length > 0 else BODY_NONE
    return BODY_CLOSE


def parse_response_head(bytes data, bint head_request=False):
    """Parse one complete response head (ending in CRLF CRLF) as an upstream's answer
    is judged (tests and diagnostics; the hot path builds none of these objects).

    Returns ``((major, minor), status, framing, content_length, [(name, value), ...])``
    with ``framing`` one of "none", "length", "chunked", "close" (RFC 9112 §6.3, for
    a HEAD request when ``head_request``) and ``content_length`` -1 when absent, or
    raises ``HeadError`` with status 502.
    """
    cdef ResponseHead r
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = len(data), end
    cdef int status = 0
    end = _scan_head_end(p, 0, n, &status)
    if end == -2:
        raise HeadError(502, "bare LF in response head")
    if end != n:
        raise HeadError(502, "incomplete or trailing bytes after the head")
    if n > MAX_RESPONSE_HEAD:
        raise HeadError(502, "response head too large")
    if parse_response(p, n, &r, _fields, MAX_FIELDS_CAP) != 0:
        raise HeadError(502, r.error.decode())
    headers = [(data[r.fields[i].line_start:r.fields[i].line_start + r.fields[i].name_len],
                data[r.fields[i].value_start:r.fields[i].value_start + r.fields[i].value_len])
               for i in range(r.nfields)]
    return ((1, r.version - 10), r.status, _BODY_KIND_NAMES[response_body_kind(&r, head_request)],
            r.content_length, headers)
