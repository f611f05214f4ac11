"""The admin API: JSON over HTTP/1.1 on its own listener, never the public one.

By default the listener is a Unix socket only its owner can open (mode 0600);
a TCP listener is allowed too, and needs a bearer token when other hosts can
reach it (the config refuses it otherwise). Each connection carries one
request and is closed after the response: the callers are a CLI and scripts,
so keep-alive would only add state.

Route actions are command objects (``fastpause.commands``) applied by the
control plane, as are reloads and deploys; everything else here is reading
requests, checking them and writing JSON. A deploy answers with one JSON line
per step as it happens (NDJSON, chunked), so a deploy script shows progress.
"""

import asyncio
import contextlib
import hmac
import json
import os
import socket
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools

from fastpause import __version__, _core, metrics
from fastpause.arguments import Declared, read_values
from fastpause.commands import (
    Outcome,
    Pause,
    Reload,
    Resume,
    Start,
    Stop,
    UnknownRoute,
    Upgrade,
)
from fastpause.config import (
    Address,
    AdminAddress,
    UnixAddress,
)
from fastpause.console import complain
from fastpause.control import ControlPlane, ReloadError
from fastpause.deploy import Deploy, Event
from fastpause.inputs import InputError, parse_json
from fastpause.router import path_prefix
from fastpause.stats import Stats

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
# A client gets this long to send its whole request (not to wait for the answer:
# a pause waits for its route to drain); an admin request is tiny.
READ_TIMEOUT = 10.0
# After answering, whatever the client still sends is read and dropped for a moment
# before closing (see ``_linger``).
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 1 << 20


class AdminError(Exception):
    """An answer other than success: the HTTP status and a message for the caller."""

    def __init__(
        self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class BindError(Exception):
    """The admin listener cannot be created; the proxy does not start."""


@dataclass
class Response:
    """One HTTP response, written whole; the connection closes after it."""

    status: HTTPStatus
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: object, status: HTTPStatus = HTTPStatus.OK) -> "Response":
        return cls(status, json.dumps(value).encode() + b"\n")

    @classmethod
    def error(cls, error: AdminError) -> "Response":
        response = cls.json({"error": error.message}, error.status)
        response.headers.update(error.headers)
        return response

    def encode(self) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status.value} {self.status.phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class EventStream:
    """A 200 answer of NDJSON lines, each sent (as one chunk) when its event happens.

    The work that produces the events runs on its own: a caller that hangs up
    stops reading the stream, not the deploy.
    """

    HEAD = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    END = b"0\r\n\r\n"

    def __init__(self) -> None:
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self.written = asyncio.Event()  # the last line went out (or the caller left)

    def put(self, event: Event) -> None:
        self._events.put_nowait(event)

    def close(self) -> None:
        self._events.put_nowait(None)

    async def write(self, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.HEAD)
            while (event := await self._events.get()) is not None:
                line = json.dumps(event).encode() + b"\n"
                writer.write(b"%x\r\n%b\r\n" % (len(line), line))
                await writer.drain()
            writer.write(self.END)
            await writer.drain()
        finally:
            self.written.set()


# ---------------------------------------------------------------- reading requests


@dataclass
class Request:
    """One admin request, filled in by httptools' parser callbacks."""

    url: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    head_size: int = 0  # the target and header fields parsed so far, with separators
    head_done: bool = False
    complete: bool = False
    too_large: bool = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self.head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self.head_done = True
        declared = self.headers.get("content-length", "0")
        self.too_large = declared.isdigit() and int(declared) > MAX_BODY

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_BODY:
            self.too_large = True
        else:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class RequestReader:
    """Feeds one connection's bytes to httptools within the admin API's bounds."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._deadline = asyncio.get_running_loop().time() + READ_TIMEOUT
        self.request = Request()
        self._parser = httptools.HttpRequestParser(self.request)

    @property
    def method(self) -> str:
        return self._parser.get_method().decode("ascii")

    async def read_head(self) -> None:
        """Read until the head is complete; 431 past ``MAX_HEAD``.

        Bytes received while the head is incomplete bound a head that never ends;
        the parsed size catches a large head that arrived in one read.
        """
        received = 0
        while not self.request.head_done:
            data = await self._read()
            received += len(data)
            too_large = received > MAX_HEAD and not self.request.head_done
            if too_large or self.request.head_size > MAX_HEAD:
                raise AdminError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"request head larger than {MAX_HEAD} bytes",
                )

    async def read_body(self) -> bytes:
        """Read the rest of the request; 413 past ``MAX_BODY``."""
        while not self.request.complete and not self.request.too_large:
            await self._read()
        if self.request.too_large:
            raise AdminError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body larger than {MAX_BODY} bytes"
            )
        return bytes(self.request.body)

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                data = await self._reader.read(65536)
        except TimeoutError:
            raise AdminError(
                HTTPStatus.REQUEST_TIMEOUT, f"the request did not arrive within {READ_TIMEOUT:g}s"
            ) from None
        if not data:
            raise ConnectionResetError("the client closed before sending a whole request")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the request itself is complete; the upgrade is simply not done
        except httptools.HttpParserError as error:
            raise AdminError(HTTPStatus.BAD_REQUEST, f"malformed request: {error}") from None
        return data


# ---------------------------------------------------------------- request fields


def _values(command: type, body: bytes) -> dict[str, Any]:
    """The arguments of ``command`` from a JSON object body; an empty body is ``{}``."""
    document: Any = {}
    if body.strip():
        try:
            document = parse_json(body)
        except InputError as error:
            raise AdminError(
                HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {error}"
            ) from None
    if not isinstance(document, dict):
        raise AdminError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
    try:
        return read_values(command, document)
    except ValueError as error:
        raise AdminError(HTTPStatus.BAD_REQUEST, str(error)) from None


# ---------------------------------------------------------------- the API


# ``POST /routes/ROUTE/VERB``: what each verb is.
ROUTE_COMMANDS: dict[str, type[Declared]] = {
    command.verb: command for command in (Pause, Resume, Stop, Start, Deploy)
}


class AdminApi:
    """The endpoints, over one control plane; the routing table is read at each request."""

    def __init__(self, control: ControlPlane, *, token: str | None) -> None:
        self._control = control
        self._token = token
        self._started = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    async def respond(self, reader: RequestReader) -> Response | EventStream:
        """Authenticate, route, then read the body: a refused caller never sends one."""
        await reader.read_head()
        self._authenticate(reader.request.headers.get("authorization", ""))
        method = reader.method
        path = _path(reader.request.url)
        if path == "/status":
            _allow(method, "GET")
            return Response.json(await self._status())
        if path == "/metrics":
            _allow(method, "GET")
            control = self._control
            workers = control.workers
            text = metrics.render(
                await control.stats(),
                workers.count if workers else 1,
                workers.restarts if workers else 0,
            )
            return Response(HTTPStatus.OK, text, metrics.CONTENT_TYPE)
        if method == "POST" and self._control.upgrading:
            raise AdminError(HTTPStatus.CONFLICT, "an upgrade is in progress; try again after it")
        if path == "/upgrade":
            _allow(method, "POST")
            _values(Upgrade, await reader.read_body())
            return self._upgrade()
        if path == "/reload":
            _allow(method, "POST")
            return Response.json(await self._reload(await reader.read_body()))
        route, verb = _route_action(path)
        command_type = ROUTE_COMMANDS.get(verb)
        if command_type is None:
            raise AdminError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
        _allow(method, "POST")
        command = command_type(route, **_values(command_type, await reader.read_body()))
        try:
            if isinstance(command, Deploy):
                return self._deploy(command)
            if isinstance(command, Pause):
                return Response.json(await self._pause(command))
            return Response.json(await self._control.command(command))
        except UnknownRoute as error:
            raise AdminError(HTTPStatus.NOT_FOUND, str(error)) from None

    def _authenticate(self, authorization: str) -> None:
        """Constant-time comparison, so the token cannot be guessed byte by byte."""
        if self._token is None:
            return
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        ):
            raise AdminError(
                HTTPStatus.UNAUTHORIZED,
                "a valid admin token is required (Authorization: Bearer TOKEN)",
                {"WWW-Authenticate": "Bearer"},
            )

    async def _status(self) -> dict[str, object]:
        control = self._control
        stats = await control.stats()
        workers = control.workers
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "workers": workers.count if workers else 1,
            "worker_pids": workers.pids() if workers else [],
            "worker_restarts": workers.restarts if workers else 0,
            "worker_details": workers.details() if workers else [],
            "listeners": control.listeners.urls(),
            "accepting": control.listeners.accepting,
            "connections": stats["engine"]["connections"],
            "max_connections": control.config.max_connections,
            "routes": [
                _route_status(route, control.upstream_weights(route.name), stats)
                for route in control.engine.table.routes
            ],
        }

    async def _reload(self, body: bytes) -> Outcome:
        """Reload the config the proxy runs (or ``config``); 400 leaves the old one running."""
        command = Reload(**_values(Reload, body))
        try:
            reloaded = await self._control.reload(command.config)
        except ReloadError as error:
            raise AdminError(HTTPStatus.BAD_REQUEST, str(error)) from None
        return {"config": reloaded.path, "routes": reloaded.routes, "notes": list(reloaded.notes)}

    def _upgrade(self) -> EventStream:
        """Hand over to a new process and stream its progress (``fastpause.upgrade``)."""
        upgrader = self._control.upgrader
        if upgrader is None:
            raise AdminError(HTTPStatus.SERVICE_UNAVAILABLE, "the proxy is still starting")
        stream = EventStream()

        async def run() -> None:
            try:
                await upgrader(stream.put)
            finally:
                stream.close()
                await stream.written.wait()  # the old process exits only once it is read

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stream

    def _deploy(self, command: Deploy) -> EventStream:
        """Start a deploy and stream its progress; refusals come before the stream starts."""
        if not self._control.has_route(command.route):
            raise UnknownRoute(command.route)
        stream = EventStream()
        task = self._control.start_deploy(command, stream.put)
        task.add_done_callback(lambda _: stream.close())
        return stream

    async def _pause(self, command: Pause) -> Outcome:
        """Pause at once, then wait (bounded) for the requests already sent upstream."""
        outcome = await self._control.command(command)
        # the loop's clock, the one the drain timeout is counted in: uvloop reads it
        # once per loop iteration, so time.monotonic() may already be ahead of it here
        # and the wait would report less than the timeout it waited for
        loop = asyncio.get_running_loop()
        started = loop.time()
        drained, in_flight = await self._control.drain(command.route, command.drain_timeout)
        return outcome | {
            "drained": drained,
            "in_flight": in_flight,
            "waited_seconds": round(loop.time() - started, 3),
        }


def _path(url: bytes) -> str:
    """The path of the request target, without the query."""
    try:
        return httptools.parse_url(url).path.decode("latin-1")
    except httptools.HttpParserInvalidURLError:
        raise AdminError(HTTPStatus.BAD_REQUEST, "invalid request target") from None


def _route_action(path: str) -> tuple[str, str]:
    """``/routes/NAME/ACTION`` -> (NAME, ACTION); anything else is 404."""
    parts = path.split("/")
    if len(parts) != 4 or parts[:2] != ["", "routes"] or not parts[2]:
        raise AdminError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
    return parts[2], parts[3]


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise AdminError(
            HTTPStatus.METHOD_NOT_ALLOWED, f"use {allowed} for this endpoint", {"Allow": allowed}
        )


def _route_status(route: _core.Route, weights: list[int], stats: Stats) -> dict[str, object]:
    counts = stats["routes"][route.name]
    state = route.state
    age = counts["oldest_held_age"]
    return {
        "name": route.name,
        "hosts": list(route.hosts),
        "path_prefix": path_prefix(route),
        "strip_path_prefix": route.strip_path_prefix,
        "lb": route.lb,
        "mode": state.mode_name,
        "held": counts["held"],
        "oldest_held_age_seconds": None if age is None else round(age, 3),
        "in_flight": counts["in_flight"],
        "max_hold_seconds": state.max_hold,
        "stop_message": state.stop_message or None,
        "upstreams": [
            upstream | {"weight": weight}
            for upstream, weight in zip(stats["route_upstreams"][route.name], weights, strict=True)
        ],
    }


# ---------------------------------------------------------------- the listener


class AdminServer:
    """The admin listener: bound before the public listeners, serving once they are up.

    Binding early means a second proxy started by mistake fails before it takes any
    public port; serving late means ``GET /status`` always lists every listener.
    """

    def __init__(self, address: AdminAddress) -> None:
        self.address = address
        self._server: asyncio.Server | None = None
        self._api: AdminApi | None = None
        self._socket_file: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket
        self._connections: set[asyncio.Task[Any]] = set()

    async def bind(self) -> None:
        """Create the listener without serving; ``BindError`` says why it cannot be."""
        if isinstance(self.address, UnixAddress):
            sock = _bind_unix(self.address.path)
            info = os.stat(self.address.path)
            self._socket_file = (info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(
                self._connection, sock=sock, start_serving=False
            )
        else:
            try:
                self._server = await asyncio.start_server(
                    self._connection,
                    self.address.host,
                    self.address.port,
                    reuse_address=True,
                    start_serving=False,
                )
            except OSError as error:
                problem = f"cannot listen for admin on {self.address}: {_reason(error)}"
                raise BindError(problem) from None

    async def adopt(self, sock: socket.socket) -> None:
        """Take over the listener of the process this one replaces (``upgrade``)."""
        if isinstance(self.address, UnixAddress):
            info = os.stat(self.address.path)
            self._socket_file = (info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(
                self._connection, sock=sock, start_serving=False
            )
        else:
            self._server = await asyncio.start_server(
                self._connection, sock=sock, start_serving=False
            )

    @property
    def socket(self) -> socket.socket | None:
        """The listening socket, for a successor to take over."""
        return self._server.sockets[0] if self._server is not None else None

    def describe(self) -> str:
        """The address as ``--admin`` takes it, with the real port when port 0 was asked."""
        if isinstance(self.address, UnixAddress) or self._server is None:
            return str(self.address)
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(Address(host, port))

    async def serve(self, api: AdminApi) -> None:
        assert self._server is not None
        self._api = api
        await self._server.start_serving()

    def close(self, *, handed_over: bool = False) -> None:
        """Stop listening; remove the socket file unless another process replaced it
        or took it over (``handed_over``)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if handed_over:
            self._socket_file = None
        if self._socket_file is not None and isinstance(self.address, UnixAddress):
            with contextlib.suppress(OSError):
                info = os.stat(self.address.path)
                if (info.st_dev, info.st_ino) == self._socket_file:
                    os.unlink(self.address.path)
            self._socket_file = None

    async def finish(self) -> None:
        """Let the answers being written go out (an upgrade's "done" line) before the
        process exits, for at most the linger time."""
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=LINGER_TIMEOUT + READ_TIMEOUT)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, one response, close; no error escapes to the event loop."""
        assert self._api is not None
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        try:
            try:
                response = await self._api.respond(RequestReader(reader))
            except AdminError as error:
                response = Response.error(error)
            if isinstance(response, EventStream):
                await response.write(writer)
            else:
                writer.write(response.encode())
                await writer.drain()
            await _linger(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the caller left; nothing to answer
        except Exception as error:  # a bug: say so in one line, keep serving
            complain(f"admin: internal error: {error!r}")
        finally:
            writer.close()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends until it closes (bounded).

    Closing with unread input (a body not read after an early error, a second
    pipelined request) makes the kernel reset the connection, which can destroy
    the answer before the client reads it.
    """
    if writer.can_write_eof():
        writer.write_eof()
    dropped = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_TIMEOUT):
            while dropped < LINGER_BYTES and (data := await reader.read(65536)):
                dropped += len(data)


def _bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` that only this user can connect to.

    The umask makes the file 0600 as the kernel creates it: a chmod afterwards
    would leave a moment in which anyone could connect.
    """
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise BindError(f"cannot create admin socket {path}: {_reason(error)}") from None
    finally:
        os.umask(previous)
    return sock


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a proxy that died; refuse one that still answers."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise BindError(f"cannot use admin socket {path}: {_reason(error)}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise BindError(f"cannot use admin socket {path}: the file exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # nothing listens: stale
        except OSError as error:
            raise BindError(f"cannot use admin socket {path}: {_reason(error)}") from None
        else:
            raise BindError(f"admin socket {path} is in use by another fastpause")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # another process removed it meanwhile
    except OSError as error:
        raise BindError(f"cannot remove stale admin socket {path}: {_reason(error)}") from None


def _reason(error: OSError) -> str:
    """The short OS reason ("Address already in use")."""
    return os.strerror(error.errno) if error.errno else str(error)
