#!/usr/bin/env python3
"""Atheris harness: fastpause's chunked decoder, end to end through a real proxy.

Starts the test backend and a proxy once (as the test suite does), then for every
input sends ``POST /inspect`` with ``Transfer-Encoding: chunked`` and the input as the
body (``--side request``, the default), half-closes, and checks the outcome against
``tests/http_reference.py`` (and, in process first, ``http_reference.check_decoder``:
the core's decoder reads every input as the reference does, chunk sizes included):

* the reference decodes the body: the backend received exactly that body and those
  trailers (200);
* the reference refuses it (or it is incomplete): the client got 400 or a closed
  connection, and the backend never received a complete request;
* fastpause's few documented leniencies (``EITHER``): either outcome, but an accepted
  body must be the one reading.

With ``--side response`` the input is instead a chunked *response* body from a raw
upstream, and the client must get the decoded body (re-chunked) or a cut connection.

At exit the proxy must stop cleanly and must not have written a traceback.

    python fuzz/fuzz_chunked.py -atheris_runs=50000 -dict=fuzz/http.dict fuzz/corpus/chunked
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import socket
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

with atheris.instrument_imports():
    import http_reference as ref
    import number_corpus as nc

from fault_support import CLOSE, SEND, RawUpstream, Script, Stack, read_or_cut  # noqa: E402
from helpers import RawConn, build_request  # noqa: E402

from fastpause import _core  # noqa: E402  (compiled: not instrumented)

SIDE = "response" if "--side=response" in sys.argv else "request"
sys.argv = [a for a in sys.argv if not a.startswith("--side")]
_tmp = tempfile.mkdtemp(prefix="fuzz-chunked-")
_counter = itertools.count()
_up = RawUpstream({}) if SIDE == "response" else None
_stack = Stack(
    Path(_tmp),
    top={"client_body_timeout": "10s"},
    route={"upstream_body_timeout": "10s"},
    upstreams=[_up.address] if _up else None,
    with_backend=_up is None,
)


def _stop() -> None:
    problems = _stack.stop()
    if _up is not None:
        _up.close()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(1)


atexit.register(_stop)


@atheris.instrument_func
def feedback(verdict: str, outcome: str) -> None:
    if verdict == ref.OK:
        if outcome == "200":
            return
    elif verdict == ref.BAD:
        if outcome == "400":
            return
        if outcome == "closed":
            return
    elif verdict == ref.INCOMPLETE:
        if outcome == "closed":
            return
    elif verdict == ref.EITHER:  # noqa: SIM102 (one branch per outcome, for coverage)
        if outcome == "200":
            return


def request_side(data: bytes) -> None:
    tag = f"c{next(_counter)}"
    completed = _stack.stats()["completed"]
    head = (
        f"POST /inspect/{tag} HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with RawConn(_stack.port, timeout=30) as conn:
        try:
            conn.send(head + data)
            conn.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = read_or_cut(conn, "POST")
    c = ref.decode_chunked(data)
    outcome = "closed" if resp is None else str(resp.status)
    if resp is not None and resp.status == 200:
        if c.verdict not in (ref.OK, ref.EITHER):
            raise AssertionError(f"accepted a body the reference refuses ({c.why}): {data!r}")
        info = resp.json()
        if info["body_sha256"] != hashlib.sha256(c.body).hexdigest():
            raise AssertionError(f"forwarded another body than {c.body!r} for {data!r}")
        trailers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in info["trailers"]]
        if trailers != c.trailers:
            raise AssertionError(f"trailers {trailers} != {c.trailers} for {data!r}")
    else:
        if c.verdict == ref.OK:
            raise AssertionError(f"refused a valid body ({outcome}): {data!r}")
        if resp is not None and resp.status != 400:
            raise AssertionError(f"answered {resp.status} to {data!r}")
        if _stack.stats()["completed"] != completed:
            raise AssertionError(f"the backend got a complete request for {data!r}")
    feedback(c.verdict, outcome)


def response_side(data: bytes) -> None:
    path = f"/fz/{next(_counter)}"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    _up.scripts[path] = Script([(SEND, head + data), CLOSE])
    with RawConn(_stack.port, timeout=30) as conn:
        conn.send(build_request("GET", path))
        resp = read_or_cut(conn)  # garbage relayed to the client raises here
    _up.scripts.pop(path, None)
    c = ref.decode_chunked(data)
    if resp is None:
        if c.verdict == ref.OK:
            raise AssertionError(f"cut a valid response body: {data!r}")
        feedback(c.verdict, "closed")
        return
    if resp.status != 200 or c.verdict not in (ref.OK, ref.EITHER) or resp.body != c.body:
        raise AssertionError(f"relayed {resp!r} for {data!r} (reference {c.verdict} {c.why})")
    if [(n.encode("latin-1"), v.encode("latin-1")) for n, v in resp.trailers] != c.trailers:
        raise AssertionError(f"trailers {resp.trailers} != {c.trailers} for {data!r}")
    feedback(c.verdict, "200")


def TestOneInput(data: bytes) -> None:
    ref.check_decoder(_core, data)  # in process first: the same oracle, 1000x faster
    if SIDE == "request":
        request_side(data)
    else:
        response_side(data)


SEEDS = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b'3;q="x;\\"y"\r\nabc\r\n0\r\n\r\n',
    b"000a\r\n0123456789\r\n0\r\n\r\n",
    b'1\r\na\r\n1 ; z = y\r\nb\r\n0;last\r\nEtag: "v"\r\n\r\n',
    b"0\r\n\r\n",
    # issue 17: 2^63 read as the last chunk
    b"8000000000000000\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
]
# every boundary number as a chunk size (tests/number_corpus.py)
SEEDS += [
    nc.hexa(v, z) + b"\r\n" + nc.BODY + b"\r\n0\r\n\r\n" for v in nc.BOUNDARIES for z in (0, 30)
]


def main() -> None:
    corpus_dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    for d in corpus_dirs[:1]:
        d.mkdir(parents=True, exist_ok=True)
        if not any(d.iterdir()):
            for i, s in enumerate(SEEDS):
                (d / f"seed-{i}").write_bytes(s)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
