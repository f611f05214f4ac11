"""Shared support for the routing, load-balancing and WebSocket tests
(``test_routing.py``, ``test_balancing.py``, ``test_websocket.py``).

- A *WebSocket backend* (this file run as a script, built on the real ``websockets``
  library): ``python tests/ws_support.py --port 0 --name NAME`` prints
  ``ws-backend: listening on 127.0.0.1:PORT`` once it accepts connections.

  WebSocket endpoints (by path):

    /echo       every message (text or binary) is sent back unchanged. Two text
                commands: ``close:CODE:REASON`` makes the server start the close
                handshake; ``ping-me`` makes the server ping the client and answer
                ``pong-received`` once the pong arrived.
    /headers    first sends one JSON text message ``{"backend", "path", "headers"}``
                (the handshake request as the server received it), then echoes.
    /reject/NNN the handshake is answered ``NNN`` with a short body (no 101).

  Plain HTTP requests (no ``Upgrade: websocket``) are answered by the identity
  handler: ``200`` with ``X-Backend: NAME`` and a JSON body naming this backend and
  the request target, so a response says which backend served it and what target it
  saw. ``/health`` answers the status last set with ``/__health?status=NNN`` (200 at
  start). ``/__stats`` (not counted) reports: ``plain`` (identity requests), ``paths``
  (identity requests per path), ``handshakes`` (WebSocket handshakes accepted),
  ``open`` (WebSocket connections open now), ``closes`` (``[code, reason]`` of every
  close frame a client sent, in order) and ``health_checks``.

- ``WsBackend``: such a process; fixtures ``ws_backend(name)`` (function scope) and
  the helper ``start_ws_backends`` for module-scoped sets.
- ``launch_proxy`` / ``routes_proxy``: a ``python -m fastpause run`` process with
  several ``[[routes]]`` (conftest's ``proxy_factory`` renders exactly one route), its
  own admin socket, an ``Admin`` client as ``.admin``; stopped and checked (exit 0, no
  traceback) at teardown.

Nothing here sleeps to synchronize: every wait polls an observable against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from helpers import announce, backend_args, render_config  # noqa: E402

READY = "ws-backend: listening on "


# --------------------------------------------------------------------------- test side

if __name__ != "__main__":  # the backend process does without pytest
    import pytest
    from conftest import Proxy, ProxyStartError
    from helpers import free_port
    from hold_support import Admin, _Child

    class WsBackend(_Child):
        """This file run as a WebSocket + identity backend named ``name``."""

        def __init__(self, tmp: Path, name: str, port: int = 0) -> None:
            self.name = name
            super().__init__(
                [sys.executable, __file__, "--port", str(port), "--name", name],
                READY,
                tmp / f"ws-{name}.stderr",
            )

        @property
        def ws_url(self) -> str:
            return f"ws://{self.address}"

    def start_ws_backends(tmp: Path, *names: str) -> list[WsBackend]:
        started: list[WsBackend] = []
        try:
            for name in names:
                started.append(WsBackend(tmp, name))
        except BaseException:
            for b in started:
                b.kill()
            raise
        return started

    @pytest.fixture
    def ws_backend(tmp_path):
        """``ws_backend(name="ws")`` starts a WebSocket + identity backend process."""
        started: list[WsBackend] = []

        def start(name: str = "ws", port: int = 0) -> WsBackend:
            b = WsBackend(tmp_path, name, port)
            started.append(b)
            return b

        yield start
        for b in started:
            b.kill()

    class ProxySet:
        """Proxies started by ``launch``; ``close()`` stops them and reports problems."""

        def __init__(self, tmp: Path) -> None:
            self.tmp = tmp
            # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer
            self.sock_dir = Path(tempfile.mkdtemp(prefix="fpws-", dir="/tmp"))
            self.started: list[Proxy] = []
            self.counter = itertools.count()

        def launch(self, routes: list[dict], top: dict | None = None) -> Proxy:
            attempts = 1 if top and "listen" in top else 3
            for attempt in range(attempts):
                n = next(self.counter)
                spec = f"unix:{self.sock_dir}/admin{n}.sock"
                top_cfg = {
                    "listen": [f"127.0.0.1:{free_port()}"],
                    "shutdown_timeout": "10s",
                    "admin": spec,
                }
                top_cfg.update(top or {})
                path = self.tmp / f"routes-proxy{n}.toml"
                path.write_text(render_config(top_cfg, routes))
                try:
                    p = Proxy(path, self.tmp, f"routes-proxy{n}")
                except ProxyStartError as e:
                    if attempt + 1 < attempts and "in use" in e.proxy.stderr():
                        continue
                    raise
                self.started.append(p)
                p.admin = Admin(top_cfg["admin"], p)
                p.admin.wait_ready()
                return p
            raise AssertionError("unreachable")

        def close(self) -> list[str]:
            problems = []
            for p in self.started:
                running = p.proc.poll() is None
                p.stop()
                err = p.stderr()
                if "Traceback" in err:
                    problems.append(f"proxy wrote a traceback to stderr:\n{err}")
                if running and p.proc.returncode != 0:
                    problems.append(
                        f"proxy exited {p.proc.returncode} on SIGTERM at teardown:\n{err}"
                    )
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            return problems

    @pytest.fixture
    def routes_proxy(tmp_path):
        """``routes_proxy([route, ...], top={...})`` starts a proxy with these routes
        (each a dict of route keys, ``name`` and ``upstreams`` included)."""
        proxies = ProxySet(tmp_path)
        yield proxies.launch
        problems = proxies.close()
        assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- the backend

NAME = "ws"
STATS: dict = {
    "plain": 0,
    "paths": Counter(),
    "handshakes": 0,
    "open": 0,
    "closes": [],
    "health_checks": 0,
}
HEALTH = {"status": 200}


def _json_response(connection, status: int, doc: dict):
    response = connection.respond(status, json.dumps(doc) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    response.headers["X-Backend"] = NAME
    return response


def _is_websocket(request) -> bool:
    upgrade = ",".join(request.headers.get_all("Upgrade")).lower()
    return "websocket" in upgrade


async def process_request(connection, request):
    url = urlsplit(request.path)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    if url.path == "/__stats":
        return _json_response(connection, 200, {"backend": NAME, **STATS})
    if url.path == "/__health":
        HEALTH["status"] = int(query["status"])
        return _json_response(connection, 200, {"backend": NAME, "health": HEALTH["status"]})
    if url.path == "/health":
        STATS["health_checks"] += 1
        return _json_response(connection, HEALTH["status"], {"backend": NAME})
    if url.path.startswith("/reject/"):
        status = int(url.path.rsplit("/", 1)[1])
        response = connection.respond(status, f"rejected by {NAME} with {status}\n")
        response.headers["X-Backend"] = NAME
        return response
    if not _is_websocket(request):
        STATS["plain"] += 1
        STATS["paths"][url.path] += 1
        return _json_response(
            connection,
            200,
            {
                "backend": NAME,
                "target": request.path,
                "headers": [[k, v] for k, v in request.headers.raw_items()],
            },
        )
    return None  # go on with the WebSocket handshake


async def handler(ws) -> None:
    from websockets.exceptions import ConnectionClosed

    STATS["handshakes"] += 1
    STATS["open"] += 1
    try:
        path = urlsplit(ws.request.path).path
        if path == "/headers":
            await ws.send(
                json.dumps(
                    {
                        "backend": NAME,
                        "path": ws.request.path,
                        "headers": [[k, v] for k, v in ws.request.headers.raw_items()],
                    }
                )
            )
        async for message in ws:
            if isinstance(message, str) and message.startswith("close:"):
                _, code, reason = message.split(":", 2)
                await ws.close(int(code), reason)
                break
            if message == "ping-me":
                pong = await ws.ping(b"server-ping")
                await pong
                await ws.send("pong-received")
                continue
            await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        rcvd = ws.protocol.close_rcvd
        if rcvd is not None:
            STATS["closes"].append([rcvd.code, rcvd.reason])
        STATS["open"] -= 1


async def _serve(port: int) -> None:
    from websockets.asyncio.server import serve

    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=process_request,
        max_size=None,
        ping_interval=None,
        close_timeout=30,
        compression="deflate",
        logger=logging.getLogger("ws-backend"),
    ) as server:
        announce(READY, next(iter(server.sockets)))
        await server.serve_forever()


def main() -> None:
    global NAME
    args = backend_args("WebSocket + identity backend for the tests", name="ws")
    NAME = args.name
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(_serve(args.port))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
