"""Bounds on holding (invariants 4 and 5) and held request bodies: deadlines,
the queue cap, the held-body caps, clients that leave while held, and holding turned
off with ``try_duration = "0s"``.

The proxy's answers are read with the strict response reader of ``helpers``; whether
the backend ever saw a request is read from ``tests/backend.py``'s ``/__stats``.
"""

from __future__ import annotations

import contextlib

import pytest
from helpers import (
    build_request,
    chunked,
    free_port,
    payload,
    payload_sha256,
    peak_rss_kib,
    reset_peak_rss,
    sha256,
    wait_for,
)
from hold_support import cli_ok, send_held, send_in_order

pytest_plugins = ["hold_support"]  # fixtures: hold_proxy, recorder, late_backend
pytestmark = pytest.mark.workers_variants

KiB = 1024
MiB = 1024 * KiB


def assert_503_retry_after(resp, retry_after: str = "5") -> None:
    assert resp.status == 503, resp
    assert resp.get("Retry-After") == retry_after, resp


def send_tolerating_close(conn, data: bytes) -> None:
    """Send everything the client has; the proxy may answer and close before the end."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.send(data)


# --------------------------------------------------------------------------- deadlines


def test_request_held_past_max_hold_gets_503(hold_proxy, backend):
    proxy = hold_proxy(route={"retry_after": "7s"})
    cli_ok(proxy.admin, "pause", "app", "--max-hold", "1s")
    conn = send_held(proxy, proxy.admin, build_request("GET", "/inspect?late"), 1)
    resp = conn.read_response()
    conn.close()
    assert_503_retry_after(resp, "7")
    assert "waited too long" in resp.text.lower(), resp
    proxy.admin.wait_held(0)
    assert proxy.admin.metric("fastpause_expired_total") == 1
    proxy.admin.resume()
    assert backend.stats()["heads"] == 0, "an expired request reached the backend"


def test_a_shorter_deadline_behind_a_longer_one_expires_on_time(hold_proxy, backend):
    """Deadlines need not come in arrival order (a second pause with a shorter
    ``--max-hold``; a request held again after its upstream failed it keeps the
    ``try_duration`` of its arrival): the later, shorter one is answered 503 at its
    own deadline, not once the one ahead of it expires."""
    proxy = hold_proxy()
    cli_ok(proxy.admin, "pause", "app", "--max-hold", "120s")
    first = send_held(proxy, proxy.admin, build_request("GET", "/inspect?first"), 1)
    cli_ok(proxy.admin, "pause", "app", "--max-hold", "1s")
    second = send_held(proxy, proxy.admin, build_request("GET", "/inspect?second"), 2, 30)
    resp = second.read_response()
    second.close()
    assert_503_retry_after(resp)
    assert "waited too long" in resp.text.lower(), resp
    assert proxy.admin.held() == 1, "the first request's deadline is two minutes away"
    proxy.admin.resume()
    resp = first.read_response()
    first.close()
    assert resp.status == 200 and resp.json()["target"] == "/inspect?first", resp


def test_request_held_past_try_duration_gets_503(hold_proxy):
    """The backend never comes up: held until try_duration from arrival, then 503."""
    proxy = hold_proxy(
        route={"try_duration": "1s", "try_interval": "100ms"},
        upstreams=[f"127.0.0.1:{free_port()}"],
    )
    conn = send_held(proxy, proxy.admin, build_request("GET", "/nobody-home"), 1)
    resp = conn.read_response()
    conn.close()
    assert_503_retry_after(resp)
    text = resp.text.lower()
    assert "waited too long" in text and "backend" in text, resp
    proxy.admin.wait_held(0)
    assert proxy.admin.metric("fastpause_expired_total") == 1


def test_try_duration_zero_answers_502_at_once(hold_proxy):
    proxy = hold_proxy(route={"try_duration": "0s"}, upstreams=[f"127.0.0.1:{free_port()}"])
    resp = proxy.get("/nobody-home")
    assert resp.status == 502, resp
    assert proxy.admin.route()["held"] == 0
    assert proxy.admin.metric("fastpause_held_total") == 0, "the request was held"


# --------------------------------------------------------------------------- queue cap


@pytest.mark.single_process(
    "an exact cap: workers share it (test_workers.py::test_caps_are_shared_between_workers)"
)
def test_queue_full_answers_503_at_once_and_keeps_the_held(hold_proxy, backend):
    proxy = hold_proxy(route={"max_held": 3, "retry_after": "9s"})
    proxy.admin.pause()
    conns = send_in_order(proxy, proxy.admin, [f"/inspect?n={i}" for i in range(3)])

    resp = proxy.get("/inspect?n=3")  # no resume, no deadline: answered while 3 wait
    assert_503_retry_after(resp, "9")
    assert proxy.admin.route()["held"] == 3

    proxy.admin.resume()
    for i, conn in enumerate(conns):
        resp = conn.read_response()
        conn.close()
        assert resp.status == 200, resp
        assert resp.json()["target"] == f"/inspect?n={i}"
    assert backend.stats()["heads"] == 3


# --------------------------------------------------------------------------- held bodies


def test_held_bodies_are_replayed_byte_exact(hold_proxy, backend):
    """A 512 KiB Content-Length body and a chunked body, both held while paused, reach
    the backend complete and unchanged after resume."""
    proxy = hold_proxy()
    proxy.admin.pause()
    size = 512 * KiB
    fixed = send_held(
        proxy, proxy.admin, build_request("POST", "/inspect?fixed", body=payload(size)), 1
    )
    data = payload(200 * KiB)
    pieces = [data[:1], data[1:70000], data[70000:150001], data[150001:]]
    head = build_request("POST", "/inspect?chunked", [("Transfer-Encoding", "chunked")])
    streamed = send_held(proxy, proxy.admin, head + chunked(*pieces), 2)

    proxy.admin.resume()
    resp = fixed.read_response()
    assert resp.status == 200, resp
    seen = resp.json()
    assert (seen["target"], seen["body_length"], seen["body_sha256"]) == (
        "/inspect?fixed",
        size,
        payload_sha256(size),
    )
    resp = streamed.read_response()
    assert resp.status == 200, resp
    seen = resp.json()
    assert (seen["target"], seen["body_length"], seen["body_sha256"]) == (
        "/inspect?chunked",
        len(data),
        sha256(data),
    )
    fixed.close()
    streamed.close()


def test_content_length_body_over_max_held_body_gets_503(hold_proxy, backend):
    proxy = hold_proxy(route={"max_held_body": "64KiB"})
    proxy.admin.pause()
    with proxy.conn() as conn:
        send_tolerating_close(conn, build_request("POST", "/too-big", body=payload(100 * KiB)))
        resp = conn.read_response()
    assert_503_retry_after(resp)
    text = resp.text.lower()
    assert "body" in text and ("too large" in text or "larger than" in text), resp
    assert proxy.admin.route()["held"] == 0
    proxy.admin.resume()
    assert proxy.get("/inspect").status == 200  # the route works; the big one never went
    assert "/too-big" not in backend.stats()["paths"]


def test_chunked_body_over_max_held_body_gets_503(hold_proxy, backend):
    proxy = hold_proxy(route={"max_held_body": "64KiB"})
    proxy.admin.pause()
    data = payload(100 * KiB)
    head = build_request("POST", "/too-big", [("Transfer-Encoding", "chunked")])
    with proxy.conn() as conn:
        send_tolerating_close(
            conn, head + chunked(*(data[i : i + 25 * KiB] for i in range(0, len(data), 25 * KiB)))
        )
        resp = conn.read_response()
    assert_503_retry_after(resp)
    text = resp.text.lower()
    assert "body" in text and ("too large" in text or "larger than" in text), resp
    proxy.admin.wait_held(0)
    proxy.admin.resume()
    assert proxy.get("/inspect").status == 200
    assert "/too-big" not in backend.stats()["paths"]


@pytest.mark.single_process(
    "exact caps: workers share them (test_workers.py::test_caps_are_shared_between_workers)"
)
def test_max_held_bytes_caps_buffered_bodies_proxy_wide(hold_proxy, backend):
    proxy = hold_proxy(top={"max_held_bytes": "100KiB"})
    proxy.admin.pause()
    first = send_held(
        proxy, proxy.admin, build_request("POST", "/inspect", body=payload(60 * KiB)), 1
    )
    with proxy.conn() as conn:
        send_tolerating_close(conn, build_request("POST", "/over-cap", body=payload(60 * KiB)))
        resp = conn.read_response()
    assert_503_retry_after(resp)
    assert resp.text.strip(), resp  # says why
    proxy.admin.resume()
    resp = first.read_response()
    first.close()
    assert resp.status == 200, resp
    assert resp.json()["body_sha256"] == payload_sha256(60 * KiB)
    assert "/over-cap" not in backend.stats()["paths"]


# --------------------------------------------------------------------------- clients leave


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_that_leaves_while_held_is_gone(hold_proxy, backend, how):
    proxy = hold_proxy()
    proxy.admin.pause()
    gone = send_held(proxy, proxy.admin, build_request("GET", "/gone"), 1)
    stays = send_held(proxy, proxy.admin, build_request("GET", "/inspect?stays"), 2)
    if how == "reset":
        gone.abort()
    else:
        gone.close()
    entry = proxy.admin.wait_held(1)  # removed at once, without a resume
    assert entry["mode"] == "paused"

    proxy.admin.resume()
    resp = stays.read_response()
    stays.close()
    assert resp.status == 200, resp
    assert resp.json()["target"] == "/inspect?stays"
    assert proxy.get("/inspect?after").status == 200
    assert "/gone" not in backend.stats()["paths"], "a request whose client left was forwarded"


# --------------------------------------------------------------------------- held bodies


@pytest.mark.single_process("reads the RSS of the process that holds the bodies")
def test_held_bodies_of_tiny_chunks_cost_what_the_gauge_counts(hold_proxy, backend):
    """Issue 17 finding 3: a body of 110,000 one-byte chunks, held, was counted as
    9 bytes a chunk but kept as several Python objects a chunk (~8x the count). It is
    now held re-framed in one buffer: the gauge counts the bytes held, exactly, and
    the proxy's memory grows by about that much."""
    chunks, clients = 110_000, 4
    proxy = hold_proxy(route={"max_held_body": "8MiB"})
    proxy.admin.pause()
    reset_peak_rss(proxy.pid)
    before = peak_rss_kib(proxy.pid)
    conns = []
    for index in range(clients):
        conn = proxy.conn()
        head = build_request("POST", f"/inspect?tiny={index}", [("Transfer-Encoding", "chunked")])
        conn.send(head + b"1\r\nx\r\n" * chunks)  # no last chunk: the body stays held
        conns.append(conn)
    held = clients * chunks * len(b"1\r\nx\r\n")  # re-framed as sent
    proxy.admin.wait_held(clients)
    wait_for(
        lambda: proxy.admin.metric("fastpause_held_bytes") == held,
        what=f"{held} held body bytes (last: {proxy.admin.metric('fastpause_held_bytes')})",
    )
    growth = peak_rss_kib(proxy.pid) - before
    assert growth * KiB < 2 * held + 8 * MiB, (
        f"holding {held} body bytes grew the proxy by {growth} KiB"
    )
    proxy.admin.resume()
    for index, conn in enumerate(conns):
        conn.send(b"0\r\n\r\n")
        resp = conn.read_response()
        conn.close()
        assert resp.status == 200, resp
        seen = resp.json()
        assert (seen["target"], seen["body_length"]) == (f"/inspect?tiny={index}", chunks)
        assert seen["body_sha256"] == sha256(b"x" * chunks)
