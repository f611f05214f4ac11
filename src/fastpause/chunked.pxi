# Streaming decoder for the chunked transfer coding (RFC 9112 §7.1), used for
# request bodies and response bodies alike. It never buffers chunk data: it
# reports where the data bytes are in the caller's buffer, so the caller can
# forward slices. Chunk extensions are validated and dropped; trailer fields are
# validated and kept so they can be forwarded, but for those a recipient must not
# act on in a trailer (``_check_trailer_line``).

cdef enum ChunkState:
    CS_SIZE_FIRST      # first hex digit of a chunk size
    CS_SIZE            # further hex digits
    CS_SIZE_WS         # BWS after the size: only ';' may follow
    CS_EXT_NAME_START  # after ';' (BWS allowed), a token must start
    CS_EXT_NAME
    CS_EXT_NAME_WS     # BWS after an extension name: '=' or ';' or CR
    CS_EXT_VAL_START   # after '=' (BWS allowed)
    CS_EXT_TOKEN
    CS_EXT_QUOTED
    CS_EXT_QUOTED_ESC
    CS_EXT_AFTER_VAL   # BWS after a value: ';' or CR
    CS_SIZE_LF
    CS_DATA
    CS_DATA_CR
    CS_DATA_LF
    CS_TRAILER_START
    CS_TRAILER_LINE
    CS_TRAILER_LF
    CS_END_LF
    CS_DONE





cdef class ChunkedDecoder:
    """Incremental, strict chunked decoder; see ``next`` for the calling contract."""

    def __cinit__(self):
        self.reset()

    cdef void reset(self):
        self.state = CS_SIZE_FIRST
        self.remaining = 0
        self.line_bytes = 0
        self.error = NULL
        self.trailers = None
        self.trailers_dropped = 0

    cdef int _fail(self, const char* why):
        self.error = why
        return CH_ERROR

    cdef int next(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t pos,
                  Py_ssize_t* data_start, Py_ssize_t* data_len, Py_ssize_t* new_pos):
        """Advance over p[pos:n].

        Returns CH_DATA with chunk data at p[data_start:data_start+data_len] (go on
        from ``new_pos``), CH_MORE when every byte was consumed, CH_DONE when the
        message ended (``new_pos`` is the first byte after it; ``trailers`` holds
        the trailer section), or CH_ERROR with ``error`` set.
        """
        cdef unsigned char c
        cdef int st = self.state
        cdef Py_ssize_t take
        cdef signed char hv
        while pos < n:
            c = p[pos]
            if st == CS_DATA:
                take = n - pos
                if take > self.remaining:
                    take = <Py_ssize_t>self.remaining
                data_start[0] = pos
                data_len[0] = take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = CS_DATA_CR
                else:
                    self.state = CS_DATA
                new_pos[0] = pos + take
                return CH_DATA
            if st < CS_SIZE_LF:
                self.line_bytes += 1
                if self.line_bytes > MAX_CHUNK_LINE:
                    return self._fail(b"chunk size line too long")
            if st == CS_SIZE_FIRST or st == CS_SIZE:
                hv = HEXVAL[c]
                if hv >= 0:
                    # a size with MAX_CHUNK_SIZE_DIGITS significant digits takes no
                    # more: checked before the shift, so it can never overflow
                    # (leading zeros leave it 0 and cost nothing)
                    if self.remaining >> (4 * (MAX_CHUNK_SIZE_DIGITS - 1)):
                        return self._fail(b"chunk size too large")
                    self.remaining = self.remaining * 16 + hv
                    st = CS_SIZE
                elif st == CS_SIZE_FIRST:
                    return self._fail(b"invalid chunk size")
                elif c == 13:
                    st = CS_SIZE_LF
                elif c == 59:
                    st = CS_EXT_NAME_START
                elif _is_ows(c):
                    st = CS_SIZE_WS
                else:
                    return self._fail(b"invalid chunk size")
            elif st == CS_SIZE_WS:
                if c == 59:
                    st = CS_EXT_NAME_START
                elif not _is_ows(c):
                    return self._fail(b"invalid chunk size line")
            elif st == CS_EXT_NAME_START:
                if TCHAR[c]:
                    st = CS_EXT_NAME
                elif not _is_ows(c):
                    return self._fail(b"invalid chunk extension")
            elif st == CS_EXT_NAME:
                if c == 61:
                    st = CS_EXT_VAL_START
                elif c == 59:
                    st = CS_EXT_NAME_START
                elif c == 13:
                    st = CS_SIZE_LF
                elif _is_ows(c):
                    st = CS_EXT_NAME_WS
                elif not TCHAR[c]:
                    return self._fail(b"invalid chunk extension")
            elif st == CS_EXT_NAME_WS:
                if c == 61:
                    st = CS_EXT_VAL_START
                elif c == 59:
                    st = CS_EXT_NAME_START
                elif not _is_ows(c):
                    return self._fail(b"invalid chunk extension")
            elif st == CS_EXT_VAL_START:
                if c == 34:
                    st = CS_EXT_QUOTED
                elif TCHAR[c]:
                    st = CS_EXT_TOKEN
                elif not _is_ows(c):
                    return self._fail(b"invalid chunk extension value")
            elif st == CS_EXT_TOKEN:
                if c == 13:
                    st = CS_SIZE_LF
                elif c == 59:
                    st = CS_EXT_NAME_START
                elif _is_ows(c):
                    st = CS_EXT_AFTER_VAL
                elif not TCHAR[c]:
                    return self._fail(b"invalid chunk extension value")
            elif st == CS_EXT_QUOTED:
                if c == 34:
                    st = CS_EXT_AFTER_VAL
                elif c == 92:
                    st = CS_EXT_QUOTED_ESC
                elif not QDTEXT[c]:
                    return self._fail(b"invalid chunk extension value")
            elif st == CS_EXT_QUOTED_ESC:
                if not (FIELD_VCHAR[c]):
                    return self._fail(b"invalid chunk extension value")
                st = CS_EXT_QUOTED
            elif st == CS_EXT_AFTER_VAL:
                if c == 59:
                    st = CS_EXT_NAME_START
                elif c == 13:
                    st = CS_SIZE_LF
                elif not _is_ows(c):
                    return self._fail(b"invalid chunk extension")
            elif st == CS_SIZE_LF:
                if c != 10:
                    return self._fail(b"bare CR in chunk size line")
                self.line_bytes = 0
                st = CS_DATA if self.remaining > 0 else CS_TRAILER_START
            elif st == CS_DATA_CR:
                if c != 13:
                    return self._fail(b"chunk data not followed by CRLF")
                st = CS_DATA_LF
            elif st == CS_DATA_LF:
                if c != 10:
                    return self._fail(b"chunk data not followed by CRLF")
                st = CS_SIZE_FIRST
            elif st == CS_TRAILER_START:
                if c == 13:
                    st = CS_END_LF
                elif c == 10:
                    return self._fail(b"bare LF in trailer section")
                else:
                    if self.trailers is None:
                        self.trailers = bytearray()
                    self.trailer_line = len(self.trailers)
                    self.trailers.append(c)
                    st = CS_TRAILER_LINE
            elif st == CS_TRAILER_LINE:
                if c == 13:
                    st = CS_TRAILER_LF
                elif c == 10:
                    return self._fail(b"bare LF in trailer section")
                else:
                    if len(self.trailers) + self.trailers_dropped >= MAX_TRAILER_BYTES:
                        return self._fail(b"trailer section too large")
                    self.trailers.append(c)
            elif st == CS_TRAILER_LF:
                if c != 10:
                    return self._fail(b"bare CR in trailer section")
                self.trailers += b"\r\n"
                if self._check_trailer_line() != 0:
                    return CH_ERROR
                st = CS_TRAILER_START
            elif st == CS_END_LF:
                if c != 10:
                    return self._fail(b"bare CR after trailer section")
                self.state = CS_DONE
                new_pos[0] = pos + 1
                return CH_DONE
            pos += 1
        self.state = st
        new_pos[0] = pos
        return CH_MORE

    cdef int _check_trailer_line(self):
        """Validate the trailer line just read; take it out again if it is not forwarded
        (its bytes still count towards MAX_TRAILER_BYTES)."""
        cdef Field f
        cdef const unsigned char* t = self.trailers
        cdef Py_ssize_t end = len(self.trailers)
        if _scan_field_line(t, self.trailer_line, end, &f, &self.error) < 0:
            return CH_ERROR
        if f.kind == H_CONTENT_LENGTH or f.kind == H_TRANSFER_ENCODING or f.kind == H_HOST:
            self.error = b"framing or routing field in trailer section"
            return CH_ERROR
        if f.kind != H_OTHER or f.drop & DROP_UNDERSCORE or _trailer_dropped(t + f.line_start,
                                                                             f.name_len):
            self.trailers_dropped += end - self.trailer_line
            del self.trailers[self.trailer_line:]
        return 0


def decode_chunked(bytes data, Py_ssize_t piece=0):
    """Decode the chunked body at the start of ``data`` with the proxy's decoder
    (tests and diagnostics; the hot path drives ``ChunkedDecoder.next`` itself).

    The bytes are fed ``piece`` at a time (all at once when 0), as reads arrive.
    Returns ``(body, trailers, end, waiting)``: the chunk data, the trailer section as
    it is forwarded (b"" when there is none), the index just past the message or -1
    when the message needs more bytes, and then how many bytes of the current chunk's
    data the decoder still waits for (its reading of the chunk size). Raises
    ``ValueError`` with the decoder's reason when it refuses the body.
    """
    cdef ChunkedDecoder dec = ChunkedDecoder()
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = len(data), pos = 0, stop = 0, ds, dl
    cdef int rc
    body = bytearray()
    while stop < n:
        stop = n if piece <= 0 else min(n, stop + piece)
        while True:
            rc = dec.next(p, stop, pos, &ds, &dl, &pos)
            if rc == CH_DATA:
                body += data[ds:ds + dl]
            elif rc == CH_DONE:
                return bytes(body), bytes(dec.trailers or b""), pos, 0
            elif rc == CH_ERROR:
                raise ValueError(dec.error.decode())
            else:
                break
    return bytes(body), b"", -1, dec.remaining

# Trailer fields that are dropped, both ways. RFC 9110 §6.5.1 keeps fields about
# framing, routing, authentication, request modifiers, response control and content
# format out of trailers: a recipient that merged such a field into the header
# section (some frameworks do) would take it for one the proxy vouches for, a
# second X-Forwarded-For or Authorization say. Besides these names, every field the
# proxy acts on itself (``_header_kind``: Connection, TE, Upgrade, Expect, Trailer,
# the X-Forwarded-* set, X-Request-ID, ...), every ``X-Forwarded-*`` and every name
# with '_' is dropped; Content-Length, Transfer-Encoding and Host are refused.
_DROPPED_TRAILERS = frozenset([
    # forwarding
    b"forwarded", b"x-real-ip", b"via", b"max-forwards",
    # authentication and state
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"authentication-info", b"proxy-authentication-info", b"cookie", b"set-cookie",
    # request modifiers: controls and conditionals
    b"cache-control", b"pragma", b"range", b"if-match", b"if-none-match",
    b"if-modified-since", b"if-unmodified-since", b"if-range",
    # response control data
    b"age", b"expires", b"date", b"location", b"retry-after", b"vary", b"warning",
    # content format
    b"content-type", b"content-encoding", b"content-range", b"content-language",
    b"content-location",
])


cdef bint _trailer_dropped(const unsigned char* name, Py_ssize_t n) except -1:
    """Whether a trailer field name is one of the above (trailers are rare: a set will do)."""
    cdef bytes low = name[:n].lower()
    return low in _DROPPED_TRAILERS or low.startswith(b"x-forwarded-")
