"""Clients that stop reading: what they cost the proxy is bounded, and they are cut.

A client may send many requests at once (pipelining) and then read nothing. The
proxy must not go on serving them into memory: once writes to the client back up
(the write high-water mark), the next request waits unread until the client reads,
so one such connection costs the high-water mark plus about one response however
many requests it sent. ``send_timeout`` counts from when writing stalled (new
requests do not extend it), and a connection that is closing with a backed-up
buffer is aborted after ``send_timeout`` instead of waiting forever for the flush.

Each test waits for the proxy to cut the connection (a poll for the peer's close,
without reading, so nothing drains), and checks the peak RSS of the proxy process
(``VmHWM``, reset before the test) and how many requests reached the backend.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

import pytest
from helpers import build_request, peak_rss_kib, reset_peak_rss

KiB = 1 << 10
MiB = 1 << 20
SEND_TIMEOUT = "2s"
# Far above what the fixed proxy keeps (the write high-water mark, one response, the
# unread pipelined bytes per connection), far below what serving every request costs.
PEAK_GROWTH_LIMIT_KIB = 48 * KiB


def non_reader(port: int) -> socket.socket:
    """A client connection with a small receive buffer that will never be read."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KiB)
    s.connect(("127.0.0.1", port))
    return s


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """sendall in a thread: the proxy stops reading long before all of it is taken."""

    def run() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_cut(sock: socket.socket, timeout: float = 60.0) -> None:
    """Wait for the proxy to close or reset the connection, without reading from it."""
    p = select.poll()
    p.register(sock, select.POLLRDHUP)  # POLLHUP and POLLERR are always reported
    events = p.poll(timeout * 1000)
    assert events, (
        f"the proxy kept the connection of a client that reads nothing open for {timeout}s"
    )


@pytest.mark.parametrize(
    ("clients", "requests", "size"),
    [(1, 20_000, 16 * KiB), (4, 3_000, 200 * KiB)],
    ids=["20000x16KiB", "4-clients-3000x200KiB"],
)
def test_pipelining_client_that_never_reads_costs_one_window(
    proxy_factory, backend, clients, requests, size
):
    proxy = proxy_factory(top={"send_timeout": SEND_TIMEOUT})
    assert proxy.get(f"/download?size={size}").status == 200  # warm: pools, buffers
    reset_peak_rss(proxy.pid)
    before = peak_rss_kib(proxy.pid)
    served_before = backend.stats()["paths"].get("/download", 0)
    burst = build_request("GET", f"/download?size={size}") * requests
    socks = [non_reader(proxy.port) for _ in range(clients)]
    try:
        for s in socks:
            send_in_background(s, burst)
        for s in socks:
            wait_cut(s)
    finally:
        for s in socks:
            s.close()
    growth = peak_rss_kib(proxy.pid) - before
    served = backend.stats()["paths"].get("/download", 0) - served_before
    assert served < clients * requests // 10, (
        f"the proxy served {served} of {clients * requests} requests to clients that read nothing"
    )
    assert growth < PEAK_GROWTH_LIMIT_KIB, (
        f"the proxy's peak RSS grew {growth} KiB for {clients} client(s) that read nothing"
    )
    assert proxy.get("/inspect").status == 200  # and it serves on
