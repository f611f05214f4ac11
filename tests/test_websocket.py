"""WebSocket (HTTP/1.1 Upgrade) tunnels through the proxy, with the real ``websockets``
library on both ends (the backend is ``tests/ws_support.py`` run as its own process).

A request with ``Connection: upgrade`` and ``Upgrade: websocket`` is forwarded with its
upgrade headers; on ``101`` the two connections become a raw tunnel both ways; any other
answer is relayed as a normal response. ``Upgrade: h2c`` is refused by forwarding the
request as plain HTTP/1.1. Upgrades are held while the route is paused, tunnels count as
in flight, and a graceful shutdown cuts an open tunnel at ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time

import pytest
from helpers import build_request, payload, wait_for
from hold_support import cli
from tls_support import client_context, https_port, tls_top
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytest_plugins = ["ws_support", "tls_support"]  # ws_backend, routes_proxy; ca, pairs

WAIT = 60.0


def run(coro):
    return asyncio.run(coro)


def ws_connect(proxy, path: str = "/echo", **options):
    """A ``websockets`` client connection to ``path`` through ``proxy``."""
    kwargs = {
        "proxy": None,  # never an HTTP proxy from the environment
        "open_timeout": WAIT,
        "close_timeout": WAIT,
        "ping_interval": None,
        "max_size": None,
        "compression": None,
    }
    kwargs.update(options)
    return connect(f"ws://127.0.0.1:{proxy.port}{path}", **kwargs)


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


@pytest.fixture
def setup(ws_backend, routes_proxy):
    """A proxy with one route ``app`` to one WebSocket backend: ``(proxy, backend)``."""

    def start(top: dict | None = None, route: dict | None = None):
        backend = ws_backend("ws")
        proxy = routes_proxy(
            [{"name": "app", "upstreams": [backend.address], **(route or {})}], top=top
        )
        return proxy, backend

    return start


def in_flight(proxy) -> int:
    return int(proxy.admin.route("app")["in_flight"])


def wait_in_flight(proxy, n: int) -> None:
    proxy.admin.wait_until(lambda r: int(r["in_flight"]) == n, f"in_flight == {n}", "app", WAIT)


def header_values(headers: list[list[str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def connection_refused(port: int) -> bool:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


# --------------------------------------------------------------------------- echo


def test_small_messages_echo_and_upgrade_headers_are_forwarded(setup):
    proxy, _backend = setup()

    async def main():
        # compression on: the extension negotiation has to pass both ways
        async with ws_connect(proxy, "/headers?x=1", compression="deflate") as ws:
            assert ws.response.status_code == 101
            assert ws.response.headers.get("Upgrade", "").lower() == "websocket"
            tokens = {t.strip().lower() for t in ws.response.headers.get("Connection").split(",")}
            assert "upgrade" in tokens, ws.response.headers
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")

            seen = json.loads(await ws.recv())
            assert seen["backend"] == "ws"
            assert seen["path"] == "/headers?x=1"
            hs = seen["headers"]
            assert [v.lower() for v in header_values(hs, "Upgrade")] == ["websocket"], hs
            conn_tokens = {
                t.strip().lower() for v in header_values(hs, "Connection") for t in v.split(",")
            }
            assert "upgrade" in conn_tokens, hs
            assert header_values(hs, "Sec-WebSocket-Key") == [
                ws.request.headers["Sec-WebSocket-Key"]
            ], hs
            assert header_values(hs, "Sec-WebSocket-Version") == ["13"], hs
            assert header_values(hs, "Sec-WebSocket-Extensions"), hs

            messages = ["hello", "héllo ✓ ünïcödé", "", b"", bytes(range(256)), b"\x00" * 1000]
            for m in messages:
                await ws.send(m)
                got = await asyncio.wait_for(ws.recv(), WAIT)
                assert got == m and type(got) is type(m)

            # many small messages in flight at once, echoed in order
            batch = [f"msg-{i}" if i % 2 else f"bin-{i}".encode() for i in range(300)]
            for m in batch:
                await ws.send(m)
            got = [await asyncio.wait_for(ws.recv(), WAIT) for _ in batch]
            assert got == batch

    run(main())


def test_10_mib_messages_echo_both_ways(setup):
    proxy, _backend = setup()
    big = payload(10 << 20)
    other = big[::-1]  # another 10 MiB, different bytes
    assert len(other) == 10 << 20

    async def main():
        async with ws_connect(proxy) as ws:
            # both messages sent while the echoes come back: data flows both ways at once
            sender = asyncio.create_task(_send_all(ws, [big, other]))
            first = await asyncio.wait_for(ws.recv(), WAIT)
            second = await asyncio.wait_for(ws.recv(), WAIT)
            await asyncio.wait_for(sender, WAIT)
            assert (
                len(first) == len(big)
                and hashlib.sha256(first).digest() == hashlib.sha256(big).digest()
            )
            assert len(second) == len(other) and second == other
            # and a 10 MiB text message
            text = big[: 5 << 20].hex()
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), WAIT) == text

    run(main())


async def _send_all(ws, messages) -> None:
    for m in messages:
        await ws.send(m)


def test_ping_pong_both_directions(setup):
    proxy, _backend = setup()

    async def main():
        async with ws_connect(proxy) as ws:
            pong = await ws.ping(b"client-ping")
            await asyncio.wait_for(pong, WAIT)  # the backend's pong came back through
            await ws.send("ping-me")  # the backend pings us and reports our pong
            assert await asyncio.wait_for(ws.recv(), WAIT) == "pong-received"
            await ws.send("still open")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "still open"

    run(main())


# --------------------------------------------------------------------------- closing


def test_close_handshake_initiated_by_client(setup):
    proxy, backend = setup()

    async def main():
        async with ws_connect(proxy) as ws:
            await ws.send("before close")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "before close"
            assert await in_thread(in_flight, proxy) == 1
            # close_timeout is WAIT: should the proxy not pass the backend's close frame
            # and its FIN back, this would take the whole WAIT and then fail
            await asyncio.wait_for(ws.close(4001, "client bye"), WAIT - 10)
            assert ws.close_code == 4001
            assert ws.close_reason == "client bye"

    run(main())
    wait_for(
        lambda: backend.stats()["open"] == 0, timeout=WAIT, what="the backend to see the close"
    )
    assert backend.stats()["closes"] == [[4001, "client bye"]]
    wait_in_flight(proxy, 0)
    assert proxy.get("/plain").status == 200  # the proxy carries on


def test_close_handshake_initiated_by_server(setup):
    proxy, backend = setup()

    async def main():
        async with ws_connect(proxy) as ws:
            await ws.send("close:4000:server bye")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
            await asyncio.wait_for(ws.wait_closed(), WAIT - 10)
            assert ws.close_code == 4000
            assert ws.close_reason == "server bye"

    run(main())
    wait_for(
        lambda: backend.stats()["open"] == 0, timeout=WAIT, what="the backend to see the close"
    )
    # the client's answering close frame reached the backend
    assert backend.stats()["closes"] == [[4000, "server bye"]]
    wait_in_flight(proxy, 0)


def test_tunnel_counts_in_flight_while_open_and_not_after(setup):
    proxy, _backend = setup()
    assert in_flight(proxy) == 0

    async def main():
        async with ws_connect(proxy) as ws:
            assert await in_thread(in_flight, proxy) == 1
            for i in range(3):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), WAIT) == f"m{i}"
                # an answered message does not end the exchange: still in flight
                assert await in_thread(in_flight, proxy) == 1
            async with ws_connect(proxy) as ws2:
                await ws2.send("x")
                assert await asyncio.wait_for(ws2.recv(), WAIT) == "x"
                assert await in_thread(in_flight, proxy) == 2
            await in_thread(wait_in_flight, proxy, 1)
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "still here"

    run(main())
    wait_in_flight(proxy, 0)


def test_50_concurrent_tunnels(setup):
    proxy, backend = setup()
    n = 50

    async def one(i: int, ready: asyncio.Event, all_open: asyncio.Event, opened: list):
        async with ws_connect(proxy) as ws:
            opened.append(i)
            if len(opened) == n:
                ready.set()
            for j in range(5):
                await ws.send(f"c{i}-m{j}")
            got = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(5)]
            assert got == [f"c{i}-m{j}" for j in range(5)]
            await all_open.wait()
            # after everyone's check, one more round trip on every tunnel
            await ws.send(f"c{i}-last".encode())
            assert await asyncio.wait_for(ws.recv(), WAIT) == f"c{i}-last".encode()

    async def main():
        ready, all_open, opened = asyncio.Event(), asyncio.Event(), []
        tasks = [asyncio.create_task(one(i, ready, all_open, opened)) for i in range(n)]
        try:
            await asyncio.wait_for(ready.wait(), WAIT)
            assert await in_thread(in_flight, proxy) == n
            stats = await in_thread(backend.stats)
            assert stats["open"] == n and stats["handshakes"] == n, stats
        finally:
            all_open.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    run(main())
    wait_in_flight(proxy, 0)
    wait_for(lambda: backend.stats()["open"] == 0, timeout=WAIT, what="all tunnels closed")


# --------------------------------------------------------------------------- held upgrade


def test_upgrade_is_held_while_paused_and_completes_after_resume(setup):
    proxy, backend = setup()
    admin = proxy.admin
    done = cli(admin, "pause", "app")
    assert done.returncode == 0, done

    async def main():
        opening = asyncio.create_task(_open_and_echo(proxy, "across the pause"))
        await in_thread(admin.wait_held, 1)
        assert (await in_thread(backend.stats))["handshakes"] == 0
        assert not opening.done()
        done = await in_thread(cli, admin, "resume", "app")
        assert done.returncode == 0, done
        return await asyncio.wait_for(opening, WAIT)

    ws_response_status, echoed = run(main())
    assert ws_response_status == 101
    assert echoed == "across the pause"
    assert backend.stats()["handshakes"] == 1
    wait_in_flight(proxy, 0)
    assert admin.held() == 0


async def _open_and_echo(proxy, text: str):
    async with ws_connect(proxy) as ws:
        await ws.send(text)
        return ws.response.status_code, await asyncio.wait_for(ws.recv(), WAIT)


# --------------------------------------------------------------------------- not tunnels


H2C_REQUEST = [
    ("Connection", "Upgrade, HTTP2-Settings"),
    ("Upgrade", "h2c"),
    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
]


def test_h2c_upgrade_is_refused_and_forwarded_as_plain_http(setup):
    proxy, backend = setup()
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/h2c?x=1", H2C_REQUEST, host="h2c.test"))
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert not resp.has("Upgrade"), resp
        assert "upgrade" not in resp.connection_tokens, resp
        seen = resp.json()
        assert seen["target"] == "/h2c?x=1"
        hs = seen["headers"]
        assert header_values(hs, "Upgrade") == [], f"the backend saw an Upgrade header: {hs}"
        assert header_values(hs, "HTTP2-Settings") == [], (
            f"HTTP2-Settings (listed in Connection) was forwarded: {hs}"
        )
        for v in header_values(hs, "Connection"):
            assert "upgrade" not in v.lower(), f"the backend saw Connection: {v}"
        if not resp.closes:  # still plain HTTP/1.1: the connection carries on
            conn.send(build_request("GET", "/after-h2c", host="h2c.test"))
            after = conn.read_response()
            assert after.status == 200 and after.json()["target"] == "/after-h2c", after
    assert backend.stats()["handshakes"] == 0
    assert in_flight(proxy) == 0


def test_non_101_answer_is_relayed_to_websocket_client(setup):
    proxy, backend = setup()

    async def main():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(proxy, "/reject/403"):
                pass
        return info.value.response

    response = run(main())
    assert response.status_code == 403
    assert response.body == b"rejected by ws with 403\n"
    assert response.headers.get("X-Backend") == "ws"
    assert backend.stats()["handshakes"] == 0
    wait_in_flight(proxy, 0)


WS_HEADERS = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.mark.parametrize("status", [200, 503])
def test_non_101_answer_to_upgrade_is_a_normal_response(setup, status):
    """A backend that answers an upgrade request with anything but 101: the answer is
    relayed as a normal response and the client connection stays plain HTTP."""
    proxy, _backend = setup()
    with proxy.conn() as conn:
        conn.send(build_request("GET", f"/reject/{status}", WS_HEADERS, host="ws.test"))
        resp = conn.read_response()
        assert resp.status == status, resp
        assert resp.body == f"rejected by ws with {status}\n".encode(), resp
        assert resp.framing == "length", resp
        if not resp.closes:
            conn.send(build_request("GET", "/after-refused-upgrade", host="ws.test"))
            after = conn.read_response()
            assert after.status == 200, after
            assert after.json()["target"] == "/after-refused-upgrade", after
    wait_in_flight(proxy, 0)


def test_upgrade_via_plain_raw_client_gets_101_then_frames(setup):
    """The 101 head comes back as the backend sent it (Upgrade, Connection, Accept), and
    the bytes after it are the backend's WebSocket frames, unchanged."""
    proxy, _backend = setup()
    with proxy.conn() as conn:
        conn.send(build_request("GET", "/echo", WS_HEADERS, host="ws.test"))
        resp = conn.read_response()
        assert resp.status == 101, resp
        assert (resp.get("Upgrade") or "").lower() == "websocket", resp
        assert "upgrade" in resp.connection_tokens, resp
        # RFC 6455 §1.3 sample key -> sample accept value
        assert resp.get("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", resp
        assert not resp.has("Content-Length") and not resp.has("Transfer-Encoding"), resp
        # one masked text frame "Hello" (RFC 6455 §5.7), echoed back unmasked
        conn.send(bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]))
        while len(conn.buf) < 7 and conn._recv():
            pass
        assert bytes(conn.buf[:7]) == b"\x81\x05Hello"
    wait_in_flight(proxy, 0)


# --------------------------------------------------------------------------- shutdown


def test_graceful_shutdown_keeps_tunnel_until_deadline_then_cuts_it(setup):
    timeout = 4.0
    proxy, backend = setup(top={"shutdown_timeout": f"{timeout:g}s"})

    async def main():
        async with ws_connect(proxy) as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "before"
            sent_at = time.monotonic()
            proxy.terminate()
            await in_thread(
                lambda: wait_for(
                    lambda: connection_refused(proxy.port),
                    timeout=WAIT,
                    what="the proxy to stop accepting connections",
                )
            )
            # the tunnel open at SIGTERM keeps working during the grace period
            await ws.send("during shutdown")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "during shutdown"
            assert proxy.proc.poll() is None, "the proxy exited with a tunnel open"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)  # nothing more comes: cut
            cut_at = time.monotonic()
            return cut_at - sent_at

    lived = run(main())
    # cut no earlier than the deadline (load can only make it later)
    assert lived >= timeout - 0.25, f"tunnel cut {lived:.2f}s after SIGTERM, before {timeout}s"
    rc = proxy.wait(WAIT)
    assert rc == 0, f"exit status {rc}\n{proxy.describe()}"
    assert proxy.output.wait_for(lambda s: s == "fastpause: stopped", timeout=10), proxy.describe()
    wait_for(
        lambda: backend.stats()["open"] == 0,
        timeout=WAIT,
        what="the backend side of the tunnel to be closed",
    )


def test_deploy_drain_cuts_an_old_tunnel_at_the_drain_deadline(ws_backend, routes_proxy):
    """A tunnel to the old target keeps working after the switch, is cut at the drain
    deadline; new tunnels go to the new target and are not disturbed."""
    drain = 5.0
    old, new = ws_backend("old"), ws_backend("new")
    proxy = routes_proxy([{"name": "app", "upstreams": [old.address]}])
    admin = proxy.admin

    def switched() -> bool:
        return [u["address"] for u in admin.route("app")["upstreams"]] == [new.address]

    async def main():
        async with ws_connect(proxy, "/headers") as before:
            assert json.loads(await asyncio.wait_for(before.recv(), WAIT))["backend"] == "old"
            started = time.monotonic()
            deploy = asyncio.create_task(
                in_thread(
                    cli,
                    admin,
                    "deploy",
                    "app",
                    "--to",
                    new.address,
                    "--health-path",
                    "/health",
                    "--drain-timeout",
                    f"{drain:g}s",
                )
            )
            await in_thread(lambda: wait_for(switched, timeout=WAIT, what="the switch"))
            # the old tunnel still works during the drain
            await before.send("after the switch")
            assert await asyncio.wait_for(before.recv(), WAIT) == "after the switch"
            async with ws_connect(proxy, "/headers") as after:
                assert json.loads(await asyncio.wait_for(after.recv(), WAIT))["backend"] == "new"
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(before.recv(), WAIT)  # cut at the deadline
                lived = time.monotonic() - started
                done = await asyncio.wait_for(deploy, WAIT)
                # the new tunnel is not touched by the old target's drain
                await after.send("on the new target")
                assert await asyncio.wait_for(after.recv(), WAIT) == "on the new target"
                assert await in_thread(in_flight, proxy) == 1
        return lived, done

    lived, done = run(main())
    assert lived >= drain - 0.25, f"old tunnel cut {lived:.2f}s after the deploy began"
    assert done.returncode == 0, f"deploy: {done.stdout}{done.stderr}"
    wait_in_flight(proxy, 0)
    wait_for(lambda: old.stats()["open"] == 0, timeout=WAIT, what="old backend's side closed")


def test_silent_tunnel_is_closed_after_tunnel_idle_timeout(setup):
    """A tunnel with no traffic either way for ``tunnel_idle_timeout`` is closed, on both
    sides (as HAProxy's ``timeout tunnel``), so idle tunnels cannot pile up."""
    proxy, backend = setup(route={"tunnel_idle_timeout": "1s"})

    async def main():
        async with ws_connect(proxy) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "hello"
            # then silence: the proxy closes the tunnel (this waits for that event)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)

    run(main())
    wait_for(lambda: backend.stats()["open"] == 0, timeout=WAIT, what="the backend's side to close")
    wait_in_flight(proxy, 0)
    assert proxy.get("/plain").status == 200


def test_tunnel_with_traffic_outlives_tunnel_idle_timeout(setup):
    """Traffic in either direction keeps a tunnel open past ``tunnel_idle_timeout``: the
    client sends a message every quarter of it for three times its length (the pace is
    the workload, not a synchronization)."""
    proxy, _backend = setup(route={"tunnel_idle_timeout": "2s"})

    async def main():
        async with ws_connect(proxy) as ws:
            for i in range(24):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), WAIT) == f"m{i}"
                await asyncio.sleep(0.25)
            assert await in_thread(in_flight, proxy) == 1

    run(main())


def test_a_websocket_over_https(setup, ca, pairs):
    """``wss://``: the tunnel runs inside the client's TLS connection."""
    proxy, _backend = setup(top=tls_top(pairs))
    port = https_port(proxy)

    async def main():
        options = {"ssl": client_context(ca), "server_hostname": "app.test", "proxy": None}
        async with connect(f"wss://127.0.0.1:{port}/echo", open_timeout=WAIT, **options) as ws:
            for message in ("hello over TLS", payload(200_000)):
                await ws.send(message)
                assert await ws.recv() == message

    run(main())
