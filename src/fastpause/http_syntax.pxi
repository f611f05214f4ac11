# RFC 9110/9112 character classes and small lexical helpers shared by the
# request parser, the response parser and the chunked decoder.

cdef unsigned char TCHAR[256]         # token characters (RFC 9110 §5.6.2)
cdef unsigned char NAME_CHAR[256]     # tchar but '_' (a field name with one is marked)
cdef unsigned char FIELD_VCHAR[256]   # field-value: VCHAR / obs-text / SP / HTAB
cdef unsigned char TARGET_CHAR[256]   # request-target: visible ASCII but '#' (TARGET_*)
cdef unsigned char HOST_CHAR[256]     # Host: reg-name / IP-literal / port characters
cdef unsigned char REG_NAME_CHAR[256]  # reg-name: unreserved / pct-encoded / sub-delims
cdef unsigned char QDTEXT[256]        # quoted-string content (without '\\' and '"')
cdef signed char HEXVAL[256]


cdef enum TargetChar:
    TARGET_PLAIN = 1
    TARGET_MARK = 2   # '.' and '%': a path with them may not be in normal form


cdef void _init_char_tables() noexcept:
    cdef int c
    cdef bytes tspecials = b"!#$%&'*+-.^_`|~"
    cdef bytes hostpunct = b"-._~!$&'()*+,;=:[]%"
    for c in range(256):
        TCHAR[c] = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or (c in tspecials)
        NAME_CHAR[c] = TCHAR[c] and c != 95
        FIELD_VCHAR[c] = (0x21 <= c <= 0x7E) or c >= 0x80 or c == 0x20 or c == 0x09
        # a fragment is no part of a request target (RFC 9112 §3.2): '#' is refused
        if c == 46 or c == 37:
            TARGET_CHAR[c] = TARGET_MARK
        else:
            TARGET_CHAR[c] = TARGET_PLAIN if 0x21 <= c <= 0x7E and c != 35 else 0
        HOST_CHAR[c] = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or (c in hostpunct)
        REG_NAME_CHAR[c] = HOST_CHAR[c] and c not in b":[]"
        QDTEXT[c] = c == 0x09 or c == 0x20 or c == 0x21 or (0x23 <= c <= 0x5B) or (
            0x5D <= c <= 0x7E) or c >= 0x80
        if 48 <= c <= 57:
            HEXVAL[c] = c - 48
        elif 97 <= c <= 102:
            HEXVAL[c] = c - 87
        elif 65 <= c <= 70:
            HEXVAL[c] = c - 55
        else:
            HEXVAL[c] = -1


_init_char_tables()


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    if 65 <= c <= 90:
        return c + 32
    return c


cdef inline bint _ieq(const unsigned char* p, Py_ssize_t n, const char* lit, Py_ssize_t m) noexcept nogil:
    """Case-insensitive comparison of p[0:n] with the lowercase literal lit[0:m]."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if _lower(p[i]) != <unsigned char>lit[i]:
            return False
    return True


cdef inline bint _is_ows(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x09


cdef int _header_kind(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Classify a field name into the few kinds the proxy acts on (H_OTHER otherwise)."""
    cdef unsigned char c0 = _lower(p[0])
    if n == 4:
        if _ieq(p, n, b"host", 4):
            return H_HOST
    elif n == 2:
        if _ieq(p, n, b"te", 2):
            return H_TE
    elif n == 6:
        if _ieq(p, n, b"expect", 6):
            return H_EXPECT
    elif n == 7:
        if _ieq(p, n, b"upgrade", 7):
            return H_UPGRADE
        if _ieq(p, n, b"trailer", 7):
            return H_TRAILER
    elif n == 10:
        if c0 == 99 and _ieq(p, n, b"connection", 10):
            return H_CONNECTION
        if c0 == 107 and _ieq(p, n, b"keep-alive", 10):
            return H_KEEP_ALIVE
    elif n == 12:
        if _ieq(p, n, b"x-request-id", 12):
            return H_X_REQUEST_ID
    elif n == 14:
        if _ieq(p, n, b"content-length", 14):
            return H_CONTENT_LENGTH
    elif n == 15:
        if _ieq(p, n, b"x-forwarded-for", 15):
            return H_X_FORWARDED_FOR
    elif n == 16:
        if _ieq(p, n, b"proxy-connection", 16):
            return H_PROXY_CONNECTION
        if _ieq(p, n, b"x-forwarded-host", 16):
            return H_X_FORWARDED_HOST
    elif n == 17:
        if c0 == 116 and _ieq(p, n, b"transfer-encoding", 17):
            return H_TRANSFER_ENCODING
        if c0 == 120 and _ieq(p, n, b"x-forwarded-proto", 17):
            return H_X_FORWARDED_PROTO
    return H_OTHER


cdef enum HostCheck:
    HOST_OK
    HOST_INVALID
    HOST_TOO_LONG


cdef inline int _check_host(const unsigned char* v, Py_ssize_t n,
                            Py_ssize_t* host_len) noexcept nogil:
    """Check ``uri-host [ ":" port ]`` (RFC 9110 §7.2, RFC 3986 §3.2); HOST_OK or why not.

    ``host_len`` gets the uri-host's length, port aside. A ':' other than the one
    before the port, or a port that is not all digits, is refused rather than read
    one way here and another way by the backend; so is a host name of more than
    MAX_HOST_NAME bytes, which routing would otherwise have to read in part.
    """
    cdef Py_ssize_t i = 0
    if n > 0 and v[0] == 91:  # IP-literal: "[" ... "]"
        i = 1
        while i < n and v[i] != 93:
            if not HOST_CHAR[v[i]] or v[i] == 91:
                return HOST_INVALID
            i += 1
        if i == n:
            return HOST_INVALID
        i += 1
    else:
        while i < n and v[i] != 58:
            if not REG_NAME_CHAR[v[i]]:
                return HOST_INVALID
            i += 1
    host_len[0] = i
    if i < n:
        if v[i] != 58:
            return HOST_INVALID
        i += 1
        while i < n:
            if not 48 <= v[i] <= 57:
                return HOST_INVALID
            i += 1
    return HOST_TOO_LONG if host_len[0] > MAX_HOST_NAME else HOST_OK


cdef inline Py_ssize_t _next_list_item(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                       Py_ssize_t* item_start, Py_ssize_t* item_len) noexcept nogil:
    """Find the next element of a comma-separated list (RFC 9110 §5.6.1), empty ones skipped.

    Returns the position after the element (or ``end``); ``item_len`` is 0 when
    the list has no more elements.
    """
    cdef Py_ssize_t s, e
    while pos < end and (p[pos] == 44 or _is_ows(p[pos])):
        pos += 1
    s = pos
    while pos < end and p[pos] != 44:
        pos += 1
    e = pos
    while e > s and _is_ows(p[e - 1]):
        e -= 1
    item_start[0] = s
    item_len[0] = e - s
    return pos


cdef int _parse_content_length(const unsigned char* p, Py_ssize_t start, Py_ssize_t n,
                               long long* out) noexcept nogil:
    """Parse ``1*DIGIT *( OWS "," OWS 1*DIGIT )``: a Content-Length, or a list of them.

    Returns 0 and sets ``out`` (which, if already >= 0, must agree), or -1 when an
    element is empty or not all digits, has more than MAX_CONTENT_LENGTH_DIGITS
    significant digits, or the elements disagree (RFC 9112 §6.3). Leading zeros
    keep the value and do not count (``1*DIGIT`` allows them). Empty list elements
    are rejected, unlike in other lists: an ambiguous length is never guessed.
    """
    cdef Py_ssize_t pos = start, end = start + n, first, significant
    cdef long long v
    while True:
        v = 0
        first = pos
        while pos < end and p[pos] == 48:
            pos += 1
        significant = pos
        while pos < end and 48 <= p[pos] <= 57:
            if pos - significant == MAX_CONTENT_LENGTH_DIGITS:
                return -1  # before the multiplication could overflow
            v = v * 10 + (p[pos] - 48)
            pos += 1
        if pos == first or (out[0] >= 0 and out[0] != v):
            return -1
        out[0] = v
        while pos < end and _is_ows(p[pos]):
            pos += 1
        if pos == end:
            return 0
        if p[pos] != 44:
            return -1
        pos += 1
        while pos < end and _is_ows(p[pos]):
            pos += 1


cdef inline bint _is_token(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not TCHAR[p[i]]:
            return False
    return n > 0


# Block scanners for the two long runs of a field line, its name and its value:
# they skip whole blocks of valid bytes and stop at (or before) the first byte that
# ends the run; the byte loops in ``_scan_field_line`` finish from there and make
# every decision. x86-64 always has SSE2 (16 bytes a step); elsewhere a portable
# 8-byte SWAR test skips value bytes and names go byte by byte.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>

    /* lanes of x within [lo, hi], unsigned: x - lo <= hi - lo */
    static inline __m128i fp_in_range(__m128i x, unsigned char lo, unsigned char hi) {
        __m128i d = _mm_sub_epi8(x, _mm_set1_epi8((char)lo));
        return _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8((char)(hi - lo))), d);
    }

    static inline __m128i fp_is(__m128i x, unsigned char c) {
        return _mm_cmpeq_epi8(x, _mm_set1_epi8((char)c));
    }

    /* tchar (RFC 9110 5.6.2): visible ASCII except the delimiters "(),/:;<=>?@[\\]{};
       it also stops at '^' and '_' (one range with "[\\]"): names with them are rare,
       and the byte loop goes on from there, marking a name with '_' */
    static inline Py_ssize_t fp_skip_token(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) {
        while (pos + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i*)(p + pos));
            __m128i bad = _mm_or_si128(fp_is(x, '"'), fp_in_range(x, '(', ')'));
            bad = _mm_or_si128(bad, _mm_or_si128(fp_is(x, ','), fp_is(x, '/')));
            bad = _mm_or_si128(bad, _mm_or_si128(fp_in_range(x, ':', '@'), fp_in_range(x, '[', '_')));
            bad = _mm_or_si128(bad, _mm_or_si128(fp_is(x, '{'), fp_is(x, '}')));
            int m = _mm_movemask_epi8(bad) | (~_mm_movemask_epi8(fp_in_range(x, 0x21, 0x7E)) & 0xFFFF);
            if (m)
                return pos + __builtin_ctz((unsigned)m);
            pos += 16;
        }
        return pos;
    }

    /* field-value bytes: anything but a control character (HTAB excepted) */
    static inline Py_ssize_t fp_skip_field_value(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) {
        while (pos + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i*)(p + pos));
            __m128i ctl = _mm_or_si128(fp_in_range(x, 0x00, 0x1F), fp_is(x, 0x7F));
            int m = _mm_movemask_epi8(_mm_andnot_si128(fp_is(x, '\\t'), ctl));
            if (m)
                return pos + __builtin_ctz((unsigned)m);
            pos += 16;
        }
        return pos;
    }
    #else
    static inline Py_ssize_t fp_skip_token(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) {
        (void)p; (void)n;
        return pos;
    }

    /* 8 bytes at a time: none below 0x20 or equal to 0x7F (a non-zero answer may be
       a false alarm from a borrow; it only hands over to the byte loop early) */
    static inline Py_ssize_t fp_skip_field_value(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) {
        uint64_t x, y;
        while (pos + 8 <= n) {
            memcpy(&x, p + pos, 8);
            y = x ^ 0x7F7F7F7F7F7F7F7FULL;
            if (((x - 0x2020202020202020ULL) & ~x & 0x8080808080808080ULL)
                    | ((y - 0x0101010101010101ULL) & ~y & 0x8080808080808080ULL))
                break;
            pos += 8;
        }
        return pos;
    }
    #endif
    """
    Py_ssize_t fp_skip_token(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) nogil
    Py_ssize_t fp_skip_field_value(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) nogil


cdef Py_ssize_t _scan_field_line(const unsigned char* p, Py_ssize_t start, Py_ssize_t n,
                                 Field* f, const char** err) noexcept nogil:
    """Parse and validate one field line starting at ``start`` in one pass.

    ``p[0:n]`` must end in CRLF, so every scan stops inside it. Returns the index
    of the line's CR (its LF follows), or -1 with ``err`` naming the problem.
    """
    cdef Py_ssize_t pos = start, vs, ve
    if _is_ows(p[pos]):
        err[0] = b"obsolete line folding is not allowed"
        return -1
    f.drop = 0
    pos = fp_skip_token(p, pos, n)
    while NAME_CHAR[p[pos]]:
        pos += 1
    if p[pos] != 58:
        if p[pos] == 95:  # a name with '_' (marked off the usual path: no cost to others)
            f.drop = DROP_UNDERSCORE
            while TCHAR[p[pos]]:
                pos += 1
        if p[pos] != 58:
            if _is_ows(p[pos]):
                err[0] = b"whitespace between header field name and colon"
            else:
                err[0] = b"invalid character in header field name"
            return -1
    if pos == start:
        err[0] = b"empty header field name"
        return -1
    f.line_start = start
    f.name_len = pos - start
    pos += 1
    while _is_ows(p[pos]):
        pos += 1
    vs = pos
    pos = fp_skip_field_value(p, pos, n)
    while FIELD_VCHAR[p[pos]]:
        pos += 1
    if p[pos] != 13 or p[pos + 1] != 10:
        if p[pos] == 13:
            err[0] = b"bare CR in header section"
        elif p[pos] == 10:
            err[0] = b"bare LF in header section"
        else:
            err[0] = b"invalid character in header field value"
        return -1
    ve = pos
    while ve > vs and _is_ows(p[ve - 1]):
        ve -= 1
    f.value_start = vs
    f.value_len = ve - vs
    f.line_end = pos + 2
    f.kind = _header_kind(p + start, f.name_len)
    return pos


cdef Py_ssize_t _scan_head_end(const unsigned char* p, Py_ssize_t start, Py_ssize_t n,
                               int* status) noexcept nogil:
    """Look for the blank line that ends a head in p[0:n], resuming at ``start``.

    Returns the head length (through CRLF CRLF) or -1 when more bytes are needed.
    A bare LF anywhere makes it return -2 with ``status`` 400: line endings are
    strictly CRLF (RFC 9112 §2.2), so such a head is rejected as soon as it is seen.
    """
    cdef const unsigned char* q
    cdef Py_ssize_t i = start
    while i < n:
        q = <const unsigned char*>memchr(p + i, 10, n - i)
        if q == NULL:
            return -1
        i = q - p
        if i == 0 or p[i - 1] != 13:
            status[0] = 400
            return -2
        if i >= 3 and p[i - 2] == 10 and p[i - 3] == 13:
            return i + 1
        i += 1
    return -1


cdef inline bint _ends_in_blank_line(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    return n >= 4 and memcmp(p + n - 4, b"\r\n\r\n", 4) == 0


cdef inline Py_ssize_t _first_line_len(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Length of the first line (or of all of p[0:n] when it has no LF yet)."""
    cdef const unsigned char* q = <const unsigned char*>memchr(p, 10, n)
    return n if q == NULL else q - p
