# Request paths in normal form: the path routing compares with a route's
# path_prefix is the path the upstream receives, so a backend cannot read a request
# as aimed at another route than the one that took it ("/api/../admin").
#
# The normal form is RFC 3986's (§6.2.2): dot segments removed (§5.2.4), a dot
# written %2e read as a dot, percent-encoded unreserved characters decoded, other
# percent-encodings in uppercase hex. An encoded slash (%2F) stays data, as in RFC
# 3986: it never separates segments. Refused (400): a path that climbs above the
# root, broken percent-encoding, and a dot segment that only a reader splitting at
# more than '/' would see (behind %2F, '\' or %5C, or before a ';' parameter, as
# Tomcat and Jetty read "..;"). The query is never touched.
#
# Only a target with a '.' or a '%' gets here (the request-line scan marks them),
# and only a path with a '%' or a segment starting with '.' is rewritten, into a
# module-wide scratch buffer, like the field table: a head is parsed, routed and
# rewritten in one go.

cdef unsigned char* _path_buf = NULL
cdef Py_ssize_t _path_cap = 0
cdef const char* _HEX_UPPER = b"0123456789ABCDEF"


cdef extern from *:
    """
    /* The first '%' or '?' in p[pos:n], or '.' right after '/' or a backslash, or n (pos >= 1:
       p[pos - 1] is read). With SSE2, 16 bytes a step while they lie within p[0:limit]
       (limit >= n: in a head, more bytes follow the target). */
    static inline Py_ssize_t fp_find_path_mark(const unsigned char* p, Py_ssize_t pos,
                                               Py_ssize_t n, Py_ssize_t limit) {
    #if defined(__SSE2__)
        while (pos < n && pos + 16 <= limit) {
            __m128i x = _mm_loadu_si128((const __m128i*)(p + pos));
            __m128i before = _mm_loadu_si128((const __m128i*)(p + pos - 1));
            __m128i sep = _mm_or_si128(fp_is(before, '/'), fp_is(before, 0x5C));
            __m128i hit = _mm_or_si128(_mm_and_si128(fp_is(x, '.'), sep),
                                       _mm_or_si128(fp_is(x, '%'), fp_is(x, '?')));
            int m = _mm_movemask_epi8(hit);
            if (n - pos < 16)
                m &= (1 << (n - pos)) - 1;
            if (m)
                return pos + __builtin_ctz((unsigned)m);
            pos += 16;
        }
    #endif
        for (; pos < n; pos++) {
            if (p[pos] == '%' || p[pos] == '?')
                return pos;
            if (p[pos] == '.' && (p[pos - 1] == '/' || p[pos - 1] == 0x5C))
                return pos;
        }
        return n;
    }
    """
    Py_ssize_t fp_find_path_mark(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n,
                                 Py_ssize_t limit) nogil


cdef int _path_reserve(Py_ssize_t need) noexcept nogil:
    global _path_buf, _path_cap
    cdef unsigned char* grown
    if need > _path_cap:
        grown = <unsigned char*>realloc(_path_buf, need)
        if grown == NULL:
            return -1
        _path_buf = grown
        _path_cap = need
    return 0


cdef inline bint _unreserved(int c) noexcept nogil:
    """RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~"."""
    return ((48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)
            or c == 45 or c == 46 or c == 95 or c == 126)


cdef inline Py_ssize_t _dot_len(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The length of the dot at s[i] ("." or "%2e"/"%2E"), 0 when there is none."""
    if s[i] == 46:
        return 1
    if i + 3 <= n and s[i] == 37 and s[i + 1] == 50 and (s[i + 2] | 32) == 101:
        return 3
    return 0


cdef int _dot_segment(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """1 for ".", 2 for "..", either dot maybe written %2e; 0 for any other segment."""
    cdef Py_ssize_t i = 0, d
    cdef int dots = 0
    while i < n:
        d = _dot_len(s, i, n)
        if d == 0 or dots == 2:
            return 0
        dots += 1
        i += d
    return dots


cdef inline Py_ssize_t _separator_len(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The length of a separator some backends split paths at besides '/': '\\', %5C, %2F."""
    if s[i] == 92:
        return 1
    if i + 3 <= n and s[i] == 37 and ((s[i + 1] == 53 and (s[i + 2] | 32) == 99)
                                      or (s[i + 1] == 50 and (s[i + 2] | 32) == 102)):
        return 3
    return 0


cdef bint _hides_dot_segment(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Whether a segment that is no dot segment holds one for a reader that also splits
    at '\\', %5C or %2F, or that ignores ';' parameters."""
    cdef Py_ssize_t i = 0, start = 0, stop = -1, sep
    while True:
        sep = _separator_len(s, i, n) if i < n else 0
        if i == n or sep:
            if _dot_segment(s + start, (stop if stop >= 0 else i) - start):
                return True
            if i == n:
                return False
            i += sep
            start = i
            stop = -1
        else:
            if s[i] == 59 and stop < 0:
                stop = i
            i += 1


cdef Py_ssize_t _put_segment(const unsigned char* s, Py_ssize_t n, unsigned char* out) noexcept nogil:
    """Copy one segment with its percent-encoding normalised; its length, -1 if broken."""
    cdef Py_ssize_t i = 0, o = 0
    cdef int hi, lo, c
    while i < n:
        c = s[i]
        if c != 37:
            out[o] = c
            o += 1
            i += 1
            continue
        if i + 3 > n:
            return -1
        hi = HEXVAL[s[i + 1]]
        lo = HEXVAL[s[i + 2]]
        if hi < 0 or lo < 0:
            return -1
        c = hi * 16 + lo
        if _unreserved(c):
            out[o] = c
            o += 1
        else:
            out[o] = 37
            out[o + 1] = _HEX_UPPER[hi]
            out[o + 2] = _HEX_UPPER[lo]
            o += 3
        i += 3
    return o


cdef int normalize_request_path(RequestHead* h, Py_ssize_t limit) noexcept nogil:
    """Put ``h.norm_path`` (a path starting with '/', or empty, then maybe a query) in
    normal form; 0, or an HTTP status with ``h.error`` set. ``limit`` bytes from
    ``norm_path`` on may be read (at least ``norm_len``).

    Without a '%', and without a '.' right after '/' or '\\' (where every dot segment,
    hidden or not, starts), a path is in normal form: "/app.js" costs one pass to the
    query here, and ``norm_path`` keeps pointing into the head.
    """
    cdef Py_ssize_t i
    if h.norm_len == 0 or h.norm_path[0] == 63:  # no path, maybe a query
        return 0
    i = fp_find_path_mark(h.norm_path, 1, h.norm_len, limit)  # norm_path[0] is '/'
    if i == h.norm_len or h.norm_path[i] == 63:
        return 0
    return _rewrite_path(h)


cdef int _rewrite_path(RequestHead* h) noexcept nogil:
    """``normalize_request_path`` for a path that may change: into the scratch buffer
    (the normal form is never longer), unless it turns out unchanged after all."""
    cdef const unsigned char* t = h.norm_path
    cdef Py_ssize_t n = h.norm_len, end = 0, i = 0, e, o = 0, put
    cdef unsigned char* out
    cdef int kind
    while end < n and t[end] != 63:
        end += 1
    if _path_reserve(n) < 0:
        h.error = b"out of memory"
        return 500
    out = _path_buf
    while i < end:  # t[i] is the '/' before a segment
        e = i + 1
        while e < end and t[e] != 47:
            e += 1
        kind = _dot_segment(t + i + 1, e - i - 1)
        if kind == 0:
            if _hides_dot_segment(t + i + 1, e - i - 1):
                h.error = b"a dot segment hidden behind %2F, '\\' or ';' is ambiguous"
                return 400
            out[o] = 47
            put = _put_segment(t + i + 1, e - i - 1, out + o + 1)
            if put < 0:
                h.error = b"invalid percent-encoding in the path"
                return 400
            o += 1 + put
        else:
            if kind == 2:
                if o == 0:
                    h.error = b"the path climbs above the root ('..')"
                    return 400
                o -= 1
                while out[o] != 47:
                    o -= 1
            if e == end:  # "/a/." and "/a/b/.." end in a slash: "/a/"
                out[o] = 47
                o += 1
        i = e
    if o == end and memcmp(out, t, end) == 0:
        return 0
    memcpy(out + o, t + end, n - end)
    h.norm_path = out
    h.norm_len = o + n - end
    return 0


def normalize_path(bytes path not None):
    """``path`` (starting with '/', maybe with a query) in the normal form requests are
    routed on and forwarded in; ValueError saying why when a request with it would be
    refused (400)."""
    cdef RequestHead h
    if not path.startswith(b"/"):
        raise ValueError("a path must start with '/'")
    h.norm_path = path
    h.norm_len = len(path)
    if normalize_request_path(&h, h.norm_len):
        raise ValueError(h.error.decode("ascii"))
    return PyBytes_FromStringAndSize(<const char*>h.norm_path, h.norm_len)
