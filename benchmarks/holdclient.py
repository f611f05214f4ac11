"""Open N connections that each send one request, and time every answer.

Run as its own process (so its memory and CPU are not the harness's):

    python -m benchmarks.holdclient --port P --count N [--path /] [--timeout 60]

It connects (at most ``--parallel`` connects at a time), sends the browser-like
request on every connection, prints ``sent N`` on stdout once all are sent,
then waits for all answers (or the timeout) and writes one JSON document
(to ``--out FILE``, printing ``done``; else as one line on stdout):
``{"sent", "statuses": {"200": n, ...}, "errors": {...}, "answered": [t...]}``
where the ``answered`` times are ``time.monotonic()`` values (CLOCK_MONOTONIC,
comparable across processes on Linux), sorted.

This process shares the machine's cores with the proxy it measures, and all N
answers arrive in one burst when the route is resumed, so the per-answer work
is kept small: each connection's protocol parses its response in
``data_received`` (one ``find`` and fixed offsets in the usual case that the
whole response arrives in one read), stores the time and status on itself, and
only counts down a shared tally; the main coroutine is woken once, when the
last connection has finished or the deadline has passed, and only then are
the results gathered. No future, task or timer per connection.
"""

import argparse
import asyncio
import gc
import json
import sys
import time

from benchmarks.browser import request_head

monotonic = time.monotonic


class Tally:
    """How many connections have not finished yet (answered or failed), and the
    future that wakes the main coroutine when none is left. One shared object,
    so finishing a connection costs a decrement, not a callback."""

    __slots__ = ("pending", "waiter")

    def __init__(self, pending: int, waiter: asyncio.Future[None]) -> None:
        self.pending = pending
        self.waiter = waiter

    def finish(self) -> None:
        """One more connection finished; wake the main coroutine after the last."""
        self.pending -= 1
        if self.pending <= 0 and not self.waiter.done():
            self.waiter.set_result(None)


class BadResponse(ValueError):
    """The response head could not be parsed (status line or Content-Length)."""


def parse_head(data: bytes | bytearray, end: int) -> tuple[int, int]:
    """The status and Content-Length (0 if absent) of the head ``data[:end]``
    (``end`` is where its closing blank line begins).

    The usual head is ``HTTP/1.1 200 ...`` with a ``Content-Length:`` line
    spelled so: the status comes from fixed offsets and the length from one
    bytes search, with no decoding or splitting into lines (and no start/end
    arguments to ``find``, whose parsing costs more than the search: a match
    at or past ``end`` is in the body). Other spellings (a lowercase header
    name, an unusual status line) take the slower general path, so the result
    is the same for any well-formed head.
    """
    code = data[9:12]
    # Three digits at 9-11 cannot be part of the CRLF CRLF, so data[12] exists.
    if data.startswith(b"HTTP/1.") and data[8] == 32 and code.isdigit() and data[12] in b" \r":
        status = int(code)
    else:
        line = bytes(data[: data.find(b"\r\n")]).split(b" ")
        if len(line) < 2 or not line[1].isdigit():
            raise BadResponse("bad status line")
        status = int(line[1])
    at = data.find(b"\r\nContent-Length:")
    if not 0 <= at < end:
        at = data[:end].lower().find(b"\r\ncontent-length:")
        if at < 0:
            return status, 0
    start = at + 17
    # The head ends in CRLF CRLF, so a CRLF follows every header line.
    value = data[start : data.find(b"\r\n", start)].strip()
    if not value.isdigit():
        raise BadResponse("bad Content-Length")
    return status, int(value)


class OneRequest(asyncio.Protocol):
    """Sends the request on connect; once the whole response (head +
    Content-Length body) has arrived, stores ``when`` (``time.monotonic()``)
    and ``status``; or, if the connection ends first, ``error``. Either way it
    counts down the ``Tally`` once."""

    __slots__ = ("buffer", "error", "head", "need", "status", "tally", "when")

    def __init__(self, head: bytes, tally: Tally) -> None:
        self.head = head
        self.tally = tally
        self.buffer: bytearray | None = None  # only if a response spans reads
        self.need = -1  # total bytes of head + body, once the head is complete
        self.status = 0
        self.when = 0.0  # > 0 once answered
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.head)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.when or self.error:
            return  # finished: whatever follows is not counted
        buffer = self.buffer
        if buffer is not None:
            buffer += data
            data = buffer  # type: ignore[assignment]
        if self.need < 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if buffer is None:
                    self.buffer = bytearray(data)
                return
            try:
                self.status, length = parse_head(data, end)
            except BadResponse as error:
                self.fail(str(error))
                return
            self.need = end + 4 + length
        if len(data) >= self.need:
            self.when = monotonic()
            self.buffer = None
            self.tally.finish()
        elif buffer is None:
            self.buffer = bytearray(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self.when or self.error):
            self.fail("reset" if exc else "closed before answer")

    def fail(self, reason: str) -> None:
        """Finish without an answer; the transport stays open until the end."""
        self.error = reason
        self.buffer = None
        self.tally.finish()


async def run(host: str, port: int, count: int, path: str, parallel: int, timeout: float) -> dict:
    """Connect and send, then sleep until the tally says every connection has
    finished (or the timeout), and only then read the results off the
    protocols: what finished by then counts, the rest are timeouts."""
    loop = asyncio.get_running_loop()
    head = request_head(path, f"{host}:{port}")
    gate = asyncio.Semaphore(parallel)
    # Until every connect has been tried the total is unknown: start from the
    # most there can be and take off the connects that fail.
    tally = Tally(count, loop.create_future())
    protocols: list[OneRequest] = []
    transports: list[asyncio.BaseTransport] = []
    errors: dict[str, int] = {}

    async def connect() -> None:
        async with gate:
            try:
                transport, protocol = await loop.create_connection(
                    lambda: OneRequest(head, tally), host, port
                )
            except OSError as error:
                key = f"connect: {error.strerror or error}"
                errors[key] = errors.get(key, 0) + 1
                tally.finish()
                return
        transports.append(transport)
        protocols.append(protocol)

    await asyncio.gather(*(connect() for _ in range(count)))
    # The connections, protocols and transports live until the end: freeze
    # them out of the collector's sight, so no full collection walks them
    # while the answers arrive.
    gc.collect()
    gc.freeze()
    print(f"sent {len(protocols)}", flush=True)
    if not tally.waiter.done():
        # asyncio.wait, unlike wait_for, does not cancel the waiter on timeout.
        await asyncio.wait([tally.waiter], timeout=max(0.0, timeout))
    statuses: dict[str, int] = {}
    answered: list[float] = []
    for protocol in protocols:
        if protocol.when:
            key = str(protocol.status)
            statuses[key] = statuses.get(key, 0) + 1
            answered.append(protocol.when)
        else:
            key = protocol.error or "no answer before timeout"
            errors[key] = errors.get(key, 0) + 1
    for transport in transports:
        transport.close()
    answered.sort()
    return {"sent": len(protocols), "statuses": statuses, "errors": errors, "answered": answered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--parallel", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", help="write the JSON result here (else stdout)")
    args = parser.parse_args()
    work = run(args.host, args.port, args.count, args.path, args.parallel, args.timeout)
    try:
        import uvloop

        result = uvloop.run(work)
    except ImportError:
        result = asyncio.run(work)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out)
        print("done", flush=True)
    else:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
