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
"""

import argparse
import asyncio
import json
import sys
import time

from benchmarks.browser import request_head


class OneRequest(asyncio.Protocol):
    """Sends the request on connect; resolves ``done`` with the status once the
    whole response (head + Content-Length body) has arrived, or the error."""

    def __init__(self, head: bytes, done: asyncio.Future) -> None:
        self.head = head
        self.done = done
        self.buffer = bytearray()
        self.status = 0
        self.need = -1  # total bytes of head + body, once the head is complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.head)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split(" ")[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            self.need = end + 4 + length
        if len(self.buffer) >= self.need and not self.done.done():
            self.done.set_result((time.monotonic(), self.status))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            reason = "reset" if exc else "closed before answer"
            self.done.set_exception(ConnectionError(reason))


async def run(host: str, port: int, count: int, path: str, parallel: int, timeout: float) -> dict:
    loop = asyncio.get_running_loop()
    head = request_head(path, f"{host}:{port}")
    gate = asyncio.Semaphore(parallel)
    futures: list[asyncio.Future] = []
    transports: list[asyncio.BaseTransport] = []
    errors: dict[str, int] = {}

    async def connect() -> None:
        done = loop.create_future()
        async with gate:
            try:
                transport, _ = await loop.create_connection(
                    lambda: OneRequest(head, done), host, port
                )
            except OSError as error:
                key = f"connect: {error.strerror or error}"
                errors[key] = errors.get(key, 0) + 1
                return
        transports.append(transport)
        futures.append(done)

    await asyncio.gather(*(connect() for _ in range(count)))
    print(f"sent {len(futures)}", flush=True)
    statuses: dict[str, int] = {}
    answered: list[float] = []
    deadline = loop.time() + timeout
    for future in futures:
        try:
            when, status = await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
        except TimeoutError:
            errors["no answer before timeout"] = errors.get("no answer before timeout", 0) + 1
            continue
        except ConnectionError as error:
            errors[str(error)] = errors.get(str(error), 0) + 1
            continue
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        answered.append(when)
    for transport in transports:
        transport.close()
    answered.sort()
    return {"sent": len(futures), "statuses": statuses, "errors": errors, "answered": answered}


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
