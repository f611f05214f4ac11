# cython: language_level=3
"""fastpause data plane: protocols, parsers, framing, upstream pools.

One extension built from the pieces below (uvloop and asyncpg split theirs the
same way); declarations live in _core.pxd. Control-plane code never reaches in
here except through the classes that _core.pyi documents.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from posix.unistd cimport close as fd_close, dup as fd_dup

include "timers.pxi"
include "http_syntax.pxi"
include "request_path.pxi"
include "request_head.pxi"
include "response_head.pxi"
include "chunked.pxi"
include "head_writer.pxi"
include "routing.pxi"
include "balance.pxi"
include "shared_counts.pxi"
include "hold.pxi"
include "socket_writer.pxi"
include "upstream.pxi"
include "client.pxi"
include "engine.pxi"
