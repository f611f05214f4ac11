"""Desync harness: fastpause splits every corpus byte stream into requests exactly as a
strict reader does, or refuses.

Each stream (the smuggling corpus, the parser corpus with a body and a second request
after each head, and the boundary-number streams of ``number_corpus``) is sent on one
client connection to the proxy (see ``exchange`` for when it half-closes). The upstream
(``fault_support.RecordingUpstream``) reads what the proxy forwards with the strict
reference reader (``http_reference.split_requests``) and logs every request. Those
must be the first requests of the reference's split of the client's stream: same
method, target (origin-form) and body, in order. Fewer is fine only as a refusal: the
client's answer after the forwarded ones is the proxy's 4xx/5xx with ``Connection:
close``, then the end of the connection. Any other difference - an extra request,
another body, a request the reference refuses - is a desync and fails.
"""

from __future__ import annotations

import contextlib
import re
import socket

import http_reference as ref
import number_corpus as nc
import parser_corpus as pc
import pytest
import smuggling_corpus as sc
from fault_support import RecordingUpstream, Stack, poll_until, read_or_cut
from helpers import RawConn

PROBE_CHUNKED = b"3\r\nabc\r\n0\r\n\r\n"
_CL = re.compile(rb"(?im)^content-length:[ \t]*0*([0-9]{1,4})[ \t]*\r$")


def with_body(head: bytes) -> bytes:
    """A parser-corpus head, a body for it (when the head is valid) and a second request."""
    if b"transfer-encoding" in head.lower():
        return head + PROBE_CHUNKED + nc.GOOD
    m = _CL.search(head)
    return head + b"x" * (int(m.group(1)) if m else 0) + nc.GOOD


STREAMS = (
    [(f"attack-{a.id}", a.data) for a in sc.ATTACKS]
    + [(f"neutral-{c.id}", c.data) for c in sc.NEUTRALIZED]
    + [(f"parser-{c.id}", with_body(c.data)) for c in pc.ALL_CASES if not c.kwargs]
    + [(f"number-{i}", data) for i, data in nc.request_streams()]
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    up = RecordingUpstream()
    s = Stack(tmp_path_factory.mktemp("desync"), upstreams=[up.address], with_backend=False)
    yield s, up
    problems = s.stop()
    up.close()
    assert not up.errors, up.errors
    assert not problems, "\n".join(problems)


def exchange(port: int, data: bytes, expected: int) -> list:
    """Send ``data``; read up to ``expected`` responses (fewer if the proxy closes), then
    half-close and read whatever else comes until the proxy ends the connection.

    Half-closing only then matters: on a FIN the proxy finishes the request it is
    serving and drops requests it has not started, which could hide a request it split
    off. By the time the last expected response is read, any request after it in the
    proxy's reading has started, so it is forwarded and seen."""
    responses = []
    with RawConn(port) as conn:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(data)  # the proxy may refuse early: its answer is on the way
        while len(responses) < expected and (resp := read_or_cut(conn)) is not None:
            responses.append(resp)
            if resp.closes:
                break
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        while (resp := read_or_cut(conn)) is not None:
            responses.append(resp)
    return responses


def _reading(r: ref.Request) -> tuple[bytes, bytes | None, bytes]:
    """A request as the upstream should see it: the target in the normal form the proxy
    routes on and forwards (routing policy, not framing: None where the proxy refuses
    the path)."""
    return (r.method, ref.normal_target(r.target), r.body)


@pytest.mark.parametrize("data", [d for _, d in STREAMS], ids=[i for i, _ in STREAMS])
def test_proxy_splits_the_stream_like_the_reference(stack, data):
    s, up = stack
    seen = len(up.log)
    split = ref.split_requests(data)
    expected = [_reading(r) for r in split.requests]
    responses = exchange(s.port, data, len(expected))
    poll_until(up.quiet, 30, "the upstream to read all the proxy forwarded")
    assert not up.errors, up.errors
    forwarded = [_reading(r) for _, r in up.log[seen:]]
    assert forwarded == expected[: len(forwarded)], (
        f"desync: the proxy forwarded {forwarded}, the reference reads {expected} ({split.stop})"
    )
    answered = responses[: len(forwarded)]
    assert [r.status for r in answered] == [200] * len(forwarded), responses
    if len(forwarded) < len(expected):
        # fewer requests than the reference reads: only a refusal may explain it
        assert len(responses) == len(forwarded) + 1, (
            f"stopped after {len(forwarded)} of {len(expected)} requests without a refusal: "
            f"{responses}"
        )
        refusal = responses[-1]
        assert refusal.status >= 400 and refusal.closes, refusal


def test_the_streams_cover_every_outcome():
    """The harness is not vacuous: the reference reads several requests from many
    streams, refuses many, and some streams end inside a message."""
    stops = [ref.split_requests(d).stop for _, d in STREAMS]
    several = sum(len(ref.split_requests(d).requests) >= 2 for _, d in STREAMS)
    assert several >= 100, several
    for stop in (ref.END, ref.CLOSED, ref.REFUSED, ref.INCOMPLETE):
        assert stops.count(stop) >= 10, (stop, stops.count(stop))
