"""``max_connections`` end to end: at the limit the proxy stops accepting, and new
clients wait in the listen backlog (connected, not refused) until connections close.

Nothing here is timed: "still waiting" is shown by the proxy's own counters (the
waiting connection was never accepted) and by ordering — a waiting client's answer
must arrive after the event that lets it in, which the test marks before causing it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from admin_support import AdminHttp
from conftest import render_config
from helpers import RawConn, Response, build_request, wait_for
from prometheus_client.parser import text_string_to_metric_families

WAIT = 60.0
LIMIT = 20


@pytest.fixture
def limited_proxy(proxy_factory, tmp_path):
    """``limited_proxy(limit)``: a proxy with ``max_connections = limit`` and an admin client."""

    def start(limit: int):
        spec = f"unix:{tmp_path}/admin.sock"
        proxy = proxy_factory(top={"admin": spec, "max_connections": limit})
        proxy.admin = AdminHttp(spec)
        return proxy

    return start


@pytest.fixture
def connections() -> Iterator[list[RawConn]]:
    """Client connections opened by a test, closed at its end."""
    opened: list[RawConn] = []
    yield opened
    for conn in opened:
        conn.close()


def metric(admin: AdminHttp, name: str) -> float:
    """One unlabelled sample of a scrape of the proxy's ``/metrics``."""
    reply = admin.call("GET", "/metrics")
    assert reply.status == 200, reply
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no sample {name}")


def served_connection(port: int) -> RawConn:
    """A keep-alive connection that has had one request answered (so it was accepted)."""
    conn = RawConn(port, timeout=WAIT)
    conn.send(build_request("GET", "/inspect"))
    response = conn.read_response()
    assert response.status == 200, response
    assert not response.closes, response
    return conn


class WaitingRequest:
    """A request sent on a new connection, whose answer a thread waits for.

    ``released`` is set by the test just before it does what should let the request
    in; the thread notes whether the answer came before that (it must not).
    """

    def __init__(self, port: int) -> None:
        self.conn = RawConn(port, timeout=WAIT)  # connects: the kernel queues it
        self.released = threading.Event()
        self.answered = threading.Event()
        self.response: Response | Exception | None = None
        self.early = False
        self.conn.send(build_request("GET", "/inspect"))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            self.response = self.conn.read_response()
        except Exception as error:  # reported by result()
            self.response = error
        self.early = not self.released.is_set()
        self.answered.set()

    def result(self) -> Response:
        assert self.answered.wait(WAIT), "the waiting request was never answered"
        assert not self.early, "the request was answered before anything let it in"
        assert isinstance(self.response, Response), self.response
        return self.response


def assert_waiting(proxy, accepted: int, request: WaitingRequest) -> None:
    """The proxy is at capacity, has accepted only ``accepted`` connections, and has not
    answered ``request``."""
    assert metric(proxy.admin, "fastpause_at_capacity") == 1
    assert metric(proxy.admin, "fastpause_connections_accepted_total") == accepted
    assert not request.answered.is_set(), f"answered while waiting: {request.response!r}"


def fastpause_status(admin: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fastpause", "status", "--admin", admin],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def wait_for_line(proxy, wanted: Callable[[str], bool]) -> str:
    line = proxy.output.wait_for(wanted, timeout=WAIT)
    assert line is not None, proxy.describe()
    return line


def test_a_client_over_the_limit_waits_until_connections_close(limited_proxy, connections):
    proxy = limited_proxy(LIMIT)
    connections += [served_connection(proxy.port) for _ in range(LIMIT)]
    wait_for_line(
        proxy, lambda s: s == f"fastpause: connection limit {LIMIT} reached: not accepting"
    )
    assert metric(proxy.admin, "fastpause_connections") == LIMIT

    waiting = WaitingRequest(proxy.port)
    connections.append(waiting.conn)
    assert_waiting(proxy, LIMIT, waiting)
    # the connections already open are served as ever
    connections[0].send(build_request("GET", "/inspect"))
    assert connections[0].read_response().status == 200
    assert_waiting(proxy, LIMIT, waiting)
    status = proxy.admin.status()
    assert (status["accepting"], status["max_connections"]) == (False, LIMIT)
    summary = fastpause_status(proxy.admin.spec).splitlines()[0]
    assert summary.endswith(f"; connection limit {LIMIT} reached, not accepting ({LIMIT} open)"), (
        summary
    )

    # 15 open is below 90% of the limit: accepting again, the waiting client first
    waiting.released.set()
    for conn in connections[:5]:
        conn.close()
    assert waiting.result().status == 200
    wait_for_line(proxy, lambda s: s == "fastpause: accepting connections again")
    assert metric(proxy.admin, "fastpause_at_capacity") == 0
    assert proxy.admin.status()["accepting"] is True
    for conn in connections[5:LIMIT]:
        conn.send(build_request("GET", "/inspect"))
        assert conn.read_response().status == 200


def test_limit_reached_again_after_accepting_again(limited_proxy, connections):
    """Stopping and starting accepting is repeatable (each start serves a new duplicate
    of the kept socket)."""
    limit = 5
    proxy = limited_proxy(limit)
    for round_number in range(3):
        connections += [served_connection(proxy.port) for _ in range(limit)]
        waiting = WaitingRequest(proxy.port)
        assert_waiting(proxy, round_number * (limit + 1) + limit, waiting)
        waiting.released.set()
        for conn in connections:
            conn.close()
        connections.clear()
        assert waiting.result().status == 200
        waiting.conn.close()
        wait_for(
            lambda: metric(proxy.admin, "fastpause_connections") == 0,
            timeout=WAIT,
            what="every connection closed",
        )


def test_reload_at_capacity(limited_proxy, connections, backend):
    """A listener added by a reload while the proxy is at its limit queues connections
    too; a reload that raises the limit accepts them at once."""
    proxy = limited_proxy(4)
    connections += [served_connection(proxy.port) for _ in range(4)]
    assert metric(proxy.admin, "fastpause_at_capacity") == 1
    top = {
        "listen": [f"127.0.0.1:{proxy.port}", "127.0.0.1:0"],
        "admin": proxy.admin.spec,
        "max_connections": 4,
    }
    route = {"name": "app", "upstreams": [backend.address]}
    proxy.config_path.write_text(render_config(top, [route]))
    reply = proxy.admin.call("POST", "/reload", {})
    assert reply.status == 200, reply
    [note] = [n for n in reply.json()["notes"] if n.startswith("listening on ")]
    new_port = int(note.rsplit(":", 1)[1])

    on_old, on_new = WaitingRequest(proxy.port), WaitingRequest(new_port)
    connections += [on_old.conn, on_new.conn]
    for waiting in (on_old, on_new):
        assert_waiting(proxy, 4, waiting)

    on_old.released.set()
    on_new.released.set()
    proxy.config_path.write_text(render_config({**top, "max_connections": 100}, [route]))
    assert proxy.admin.call("POST", "/reload", {}).status == 200
    assert on_old.result().status == 200
    assert on_new.result().status == 200
    assert metric(proxy.admin, "fastpause_connections_accepted_total") == 6
