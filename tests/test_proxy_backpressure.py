"""Backpressure: 100 MB through the proxy to a slow reader, each way, while the proxy's
resident memory (VmRSS) stays bounded and the bytes arrive exact.

The slow readers (a backend that sleeps between reads, a client that sleeps between
recv calls) are the workload, not synchronization. The RSS sampler only measures.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

from helpers import build_request, payload, payload_chunks, payload_sha256

MiB = 1 << 20
SIZE = 100 * MiB
ALLOWED_GROWTH_KIB = 64 * 1024  # baseline + 64 MiB


class RssMonitor:
    """Samples a process's VmRSS in a thread; ``peak`` is the largest value seen (KiB)."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.peak = proc.rss_kib()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.rss_kib())
                self.samples += 1
            except (OSError, AssertionError):
                return
            self._stop.wait(0.01)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def warm_up(proxy) -> int:
    """Run a smaller transfer each way first so the baseline includes warmed buffers."""
    body = payload(4 * MiB)
    resp = proxy.post("/slow-upload?delay=0&read=65536", body)
    assert resp.status == 200
    resp = proxy.get(f"/download?size={4 * MiB}")
    assert resp.body == body
    return proxy.rss_kib()


def upload(proxy, head: bytes, body_pieces) -> tuple:
    conn = proxy.conn(timeout=120)
    try:
        conn.send(head)
        for piece in body_pieces:
            conn.send(piece)
        return conn.read_response()
    finally:
        conn.close()


def test_upload_100mb_to_slow_upstream_keeps_rss_bounded(proxy):
    baseline = warm_up(proxy)
    head = build_request(
        "POST",
        "/slow-upload?delay=0.002&read=65536",
        [("Content-Length", str(SIZE))],
        content_length=False,
    )
    with RssMonitor(proxy) as rss:
        resp = upload(proxy, head, payload_chunks(SIZE))
    assert resp.status == 200, resp
    result = resp.json()
    assert result["length"] == SIZE
    assert result["sha256"] == payload_sha256(SIZE)
    growth = rss.peak - baseline
    assert growth < ALLOWED_GROWTH_KIB, (
        f"proxy RSS grew by {growth // 1024} MiB (baseline {baseline // 1024} MiB, "
        f"peak {rss.peak // 1024} MiB over {rss.samples} samples)"
    )


def test_chunked_upload_100mb_to_slow_upstream_keeps_rss_bounded(proxy):
    baseline = warm_up(proxy)
    head = build_request(
        "POST", "/slow-upload?delay=0.002&read=65536", [("Transfer-Encoding", "chunked")]
    )

    def pieces():
        for block in payload_chunks(SIZE):
            yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
        yield b"0\r\n\r\n"

    with RssMonitor(proxy) as rss:
        resp = upload(proxy, head, pieces())
    assert resp.status == 200, resp
    result = resp.json()
    assert result["length"] == SIZE
    assert result["sha256"] == payload_sha256(SIZE)
    growth = rss.peak - baseline
    assert growth < ALLOWED_GROWTH_KIB, f"proxy RSS grew by {growth // 1024} MiB"


def test_download_100mb_to_slow_client_keeps_rss_bounded(proxy):
    baseline = warm_up(proxy)
    conn = proxy.conn(timeout=120)
    digest = hashlib.sha256()
    received = 0
    with RssMonitor(proxy) as rss:
        conn.send(build_request("GET", f"/download?size={SIZE}"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = conn.sock.recv(65536)
            assert data, f"connection closed before the response head: {buf!r}"
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert f"\r\ncontent-length: {SIZE}".encode() in head.lower(), head
        digest.update(rest)
        received = len(rest)
        while received < SIZE:
            data = conn.sock.recv(65536)
            assert data, f"connection closed after {received} of {SIZE} bytes"
            digest.update(data)
            received += len(data)
            time.sleep(0.002)  # the workload: a slowly-reading client
    conn.close()
    assert received == SIZE
    assert digest.hexdigest() == payload_sha256(SIZE)
    growth = rss.peak - baseline
    assert growth < ALLOWED_GROWTH_KIB, (
        f"proxy RSS grew by {growth // 1024} MiB (baseline {baseline // 1024} MiB, "
        f"peak {rss.peak // 1024} MiB over {rss.samples} samples)"
    )


def test_pipelined_responses_stay_in_order_behind_a_backed_up_download(proxy):
    """The next responses on a connection whose previous one still waits in the
    proxy's send buffer (a slow client) arrive after it, complete and byte-exact:
    a write that could go straight to the socket queues behind what is waiting."""
    sizes = [8 * MiB, 1000, 70000, 10, 300000, 1]
    conn = proxy.conn(timeout=120)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    conn.send(b"".join(build_request("GET", f"/download?size={n}") for n in sizes))
    while len(conn.buf) < sizes[0]:
        data = conn.sock.recv(16384)
        assert data, f"connection closed after {len(conn.buf)} bytes"
        conn.buf += data
        time.sleep(0.0005)  # the workload: a slowly-reading client
    for n in sizes:
        resp = conn.read_response()
        assert resp.status == 200
        assert len(resp.body) == n
        assert hashlib.sha256(resp.body).hexdigest() == payload_sha256(n)
    conn.close()
