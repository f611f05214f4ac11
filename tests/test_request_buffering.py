"""Request buffering (issue 17 finding 5): ``request_buffering = "memory"`` reads a
request's whole body before an upstream is chosen, so clients that send their bodies
slowly hold no upstream connection - 500 of them held 500 before (NGINX: 0).

The backend counts the connections it accepts; every wait is on an event (the
proxy's request counter, an answer), never a sleep.
"""

from __future__ import annotations

import os

import pytest
from deploy_support import fastpause
from helpers import (
    build_request,
    chunked,
    free_port,
    payload,
    payload_sha256,
    peak_rss_kib,
    reset_peak_rss,
    wait_for,
)

pytest_plugins = ["hold_support", "deploy_support"]

KiB = 1024
SLOW_CLIENTS = 30


def head(target: str, length: int | None = None, extra=()) -> bytes:
    fields = list(extra)
    if length is not None:
        fields.append(("Content-Length", str(length)))
    else:
        fields.append(("Transfer-Encoding", "chunked"))
    return build_request("POST", target, fields)


@pytest.mark.parametrize("buffering", ["memory", "disk", "off"])
def test_slow_bodies_hold_no_upstream_connection(hold_proxy, backend, buffering):
    proxy = hold_proxy(route={"request_buffering": buffering})
    body = payload(1000)
    conns = []
    for index in range(SLOW_CLIENTS):  # each sends its head and 10 bytes, then stalls
        conn = proxy.conn()
        conn.send(head(f"/inspect?slow={index}", len(body)) + body[:10])
        conns.append(conn)
    wait_for(
        lambda: proxy.admin.metric("fastpause_requests_total") == SLOW_CLIENTS,
        what="the proxy to read every head",
    )
    if buffering == "off":  # each request took an upstream connection at once
        wait_for(lambda: backend.stats()["connections"] >= SLOW_CLIENTS, what="the connections")
    else:
        assert proxy.get("/inspect?fast").status == 200  # a request without a body goes
        assert backend.stats()["connections"] == 1, "a slow body took an upstream connection"
        assert proxy.admin.metric("fastpause_in_flight", route="app") == 0
    for index, conn in enumerate(conns):
        conn.send(body[10:])
        resp = conn.read_response()
        conn.close()
        assert resp.status == 200, resp
        seen = resp.json()
        assert (seen["target"], seen["body_sha256"]) == (
            f"/inspect?slow={index}",
            payload_sha256(1000),
        )


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize(("buffering", "limit"), [("memory", 64 * KiB), ("disk", 1024 * KiB)])
def test_buffered_bodies_arrive_intact_up_to_the_limit_and_413_beyond(
    hold_proxy, backend, framing, buffering, limit
):
    proxy = hold_proxy(
        route={"request_buffering": buffering, "request_buffer_size": f"{limit // KiB}KiB"}
    )
    for size, status in [(limit, 200), (limit + 1, 413), (0, 200), (1, 200)]:
        body = payload(size)
        with proxy.conn() as conn:
            if framing == "length":
                conn.send(head("/inspect", size) + body)
            else:
                pieces = [body[i : i + 4000] for i in range(0, size, 4000)]
                conn.send(head("/inspect") + chunked(*pieces))
            resp = conn.read_response()
        assert resp.status == status, (size, resp)
        if status == 200:
            assert resp.json()["body_sha256"] == payload_sha256(size)
        else:
            assert "the most this service buffers" in resp.text, resp
    assert backend.stats()["paths"].get("/inspect", 0) == 3  # the 413 never went upstream


def test_expect_continue_is_answered_by_the_proxy_while_it_buffers(hold_proxy, backend):
    proxy = hold_proxy(route={"request_buffering": "memory"})
    body = payload(5000)
    with proxy.conn() as conn:
        conn.send(head("/inspect", len(body), [("Expect", "100-continue")]))
        assert conn.read_interim().status == 100  # from the proxy: no upstream yet
        assert backend.stats()["connections"] == 0
        conn.send(body)
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json()["body_sha256"] == payload_sha256(5000)


def test_a_buffered_body_is_held_while_paused_and_sent_whole_on_resume(hold_proxy, backend):
    proxy = hold_proxy(route={"request_buffering": "memory"})
    proxy.admin.pause()
    body = payload(20 * KiB)
    with proxy.conn() as conn:
        conn.send(head("/inspect?held", len(body)) + body[:100])
        proxy.admin.wait_held(1)
        conn.send(body[100:])
        proxy.admin.resume()
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json()["body_sha256"] == payload_sha256(20 * KiB)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('request_buffering = "file"', "routes[0].request_buffering: expected 'off', 'memory'"),
        ("request_buffering = true", "routes[0].request_buffering: expected 'off', 'memory'"),
        ('request_buffer_size = "0B"', "routes[0].request_buffer_size: invalid size '0B'"),
        ('request_buffer_size = "2GiB"', "routes[0].request_buffer_size: invalid size '2GiB'"),
    ],
)
def test_bad_request_buffering_settings_are_config_errors(tmp_path, line, problem):
    path = tmp_path / "bad.toml"
    path.write_text(f'[[routes]]\nname = "app"\nupstreams = ["127.0.0.1:1"]\n{line}\n')
    result = fastpause("validate", str(path))
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"{path}: {problem}"), result.stderr


def _spool_fds(pid: int, directory) -> list[str]:
    """The proxy's open files in ``directory`` (its unlinked body files)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


@pytest.mark.single_process("reads the memory and files of the process that buffers")
def test_disk_buffered_bodies_wait_in_an_unlinked_file_not_in_memory(hold_proxy, backend, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    size = 8 * 1024 * KiB
    proxy = hold_proxy(
        route={"request_buffering": "disk", "request_buffer_size": "16MiB"},
        top={"request_buffer_dir": str(spool)},
    )
    reset_peak_rss(proxy.pid)
    before = peak_rss_kib(proxy.pid)
    body = payload(size)
    with proxy.conn() as conn:
        conn.send(head("/inspect?big", size) + body[: size - 1])
        files = wait_for(lambda: _spool_fds(proxy.pid, spool), what="the body file")
        assert all(name.endswith("(deleted)") for name in files), files
        assert list(spool.iterdir()) == []  # never linked: nothing to clean up, ever
        conn.send(body[size - 1 :])
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json()["body_sha256"] == payload_sha256(size)
    growth = peak_rss_kib(proxy.pid) - before
    assert growth < 4 * 1024, f"buffering an 8 MiB body to disk grew the proxy by {growth} KiB"
    wait_for(lambda: not _spool_fds(proxy.pid, spool), what="the body file to be closed")

    # a client that leaves mid-body leaves no file open either
    conn = proxy.conn()
    conn.send(head("/inspect?gone", size) + body[: size // 2])
    wait_for(lambda: _spool_fds(proxy.pid, spool), what="the body file")
    conn.abort()
    wait_for(lambda: not _spool_fds(proxy.pid, spool), what="the abandoned body's file to go")
    assert backend.stats()["paths"].get("/inspect", 0) == 1


def test_a_missing_request_buffer_dir_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        f'request_buffer_dir = "{tmp_path}/nowhere"\n'
        '[[routes]]\nname = "app"\nupstreams = ["127.0.0.1:1"]\n'
    )
    result = fastpause("validate", str(path))
    assert result.returncode == 2, result
    assert result.stderr.startswith(
        f"{path}: request_buffer_dir: '{tmp_path}/nowhere' is not a directory"
    ), result.stderr


def test_a_disk_buffered_body_goes_whole_to_the_next_upstream_after_a_refused_connect(
    hold_proxy, backend
):
    dead = f"127.0.0.1:{free_port()}"
    proxy = hold_proxy(
        route={"request_buffering": "disk", "request_buffer_size": "4MiB", "lb": "first"},
        upstreams=[dead, backend.address],
    )
    size = 3 * 1024 * KiB
    with proxy.conn() as conn:
        conn.send(head("/inspect?replayed", size) + payload(size))
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json()["body_sha256"] == payload_sha256(size)


def test_an_early_413_is_read_in_full_while_the_body_keeps_coming(hold_proxy, backend):
    """The answer goes out before the body came in; the proxy closes only its sending
    side and reads on (discarding), so the client can finish sending and still read
    the whole 413 - instead of a reset that fails its send and may eat the answer."""
    proxy = hold_proxy(route={"request_buffering": "memory", "request_buffer_size": "64KiB"})
    with proxy.conn() as conn:
        conn.send(head("/inspect", 10 * 1024 * KiB) + payload(64 * KiB))  # 10 MiB announced
        resp = conn.read_response()
        assert resp.status == 413, resp
        for _ in range(8):
            conn.send(payload(256 * KiB))  # 2 MiB more: read and dropped, no reset
        assert conn.sock.recv(1) == b""  # and the proxy's side is closed
    assert backend.stats()["paths"].get("/inspect", 0) == 0
