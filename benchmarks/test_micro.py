"""pytest-benchmark micro benchmarks: ``pytest benchmarks/test_micro.py``.

Not collected by the default ``pytest`` run (``testpaths = ["tests"]``).

* The request-head parser: ``fastpause._core.parse_request_head`` against
  httptools (llhttp) on the same heads. ``parse_request_head`` is the core's
  diagnostic entry point and builds Python objects for its return value
  (method, target, version, a list of (name, value) pairs); the hot path parses
  into offsets and builds none. To stay like for like, the httptools side also
  collects the method, URL, version and every header into a list.
* The hold queue: the core offers no direct API to enqueue a request (requests
  enter the queue only through a client connection), so this measures it
  through a real proxy: N requests held on a paused route of a running
  fastpause (its own process, NGINX backend), then the time from ``resume`` to
  the last answer read. Skipped without NGINX.
"""

import json
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.browser import request_head

HEADS = {
    "browser": request_head("/products/index.html?page=2&sort=price", "shop.example.com"),
    "curl": b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
}


@pytest.mark.parametrize("head", list(HEADS))
def test_parse_fastpause(benchmark, head):
    from fastpause._core import parse_request_head

    data = HEADS[head]
    method, _target, version, headers = benchmark(parse_request_head, data)
    assert method == b"GET" and version == (1, 1) and len(headers) >= 3


class _Collect:
    """httptools callbacks that keep what parse_request_head returns."""

    __slots__ = ("done", "headers", "url")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


@pytest.mark.parametrize("head", list(HEADS))
def test_parse_httptools(benchmark, head):
    httptools = pytest.importorskip("httptools")
    data = HEADS[head]

    def parse():
        sink = _Collect()
        parser = httptools.HttpRequestParser(sink)
        parser.feed_data(data)
        return parser.get_method(), sink.url, parser.get_http_version(), sink.headers

    method, _url, version, headers = benchmark(parse)
    assert method == b"GET" and version == "1.1" and len(headers) >= 3


# --- the hold queue, through a real proxy -------------------------------------------

HELD = 1000


@pytest.fixture(scope="module")
def paused_proxy():
    import shutil

    from benchmarks.holding import admin_request
    from benchmarks.peers import Backend, Fastpause
    from benchmarks.processes import Supervisor, free_port

    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.skip("needs nginx as the backend")
    workdir = Path(tempfile.mkdtemp(prefix="fastpause-micro-"))
    with Supervisor(workdir) as sup:
        backend_port = free_port()
        Backend(workdir).start(sup, backend_port)
        running = Fastpause(workdir).start(sup, free_port(), backend_port)

        def call(method, path, body=b""):
            return admin_request(running.admin, method, path, body)

        yield running, call
    shutil.rmtree(workdir, ignore_errors=True)


def _hold(running, call):
    """Pause, then open HELD connections each sending one request; wait until held."""
    status, _ = call("POST", "/routes/app/pause", json.dumps({"max_hold": "60s"}).encode())
    assert status == 200
    head = request_head("/", f"127.0.0.1:{running.port}")
    socks = []
    for _ in range(HELD):
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        sock.sendall(head)
        socks.append(sock)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, state = call("GET", "/status")
        if sum(route["held"] for route in state["routes"]) >= HELD:
            return (socks,), {}
        time.sleep(0.01)
    raise AssertionError("requests were not all held")


def _release(socks):
    """Resume and read every answer (the head is enough: the body is 24 bytes)."""
    status, _ = _call_holder[0]("POST", "/routes/app/resume")
    assert status == 200
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, bytearray())
    left = len(socks)
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        for key, _ in selector.select(1):
            buffer = key.data
            buffer += key.fileobj.recv(65536)
            if b"\r\n\r\n" in buffer:
                assert buffer.startswith(b"HTTP/1.1 200")
                selector.unregister(key.fileobj)
                key.fileobj.close()
                left -= 1
    selector.close()
    assert left == 0


_call_holder: list = []


def test_hold_queue_release(benchmark, paused_proxy):
    """Resume a paused route with 1,000 held requests: time until all are answered."""
    running, call = paused_proxy
    _call_holder[:] = [call]
    benchmark.extra_info["held"] = HELD
    benchmark.pedantic(_release, setup=lambda: _hold(running, call), rounds=5, iterations=1)
