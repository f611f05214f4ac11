"""A client for a running proxy's admin API, used by the ``fastpause`` admin commands.

Plain ``http.client`` (over a Unix socket through a small connection subclass):
the commands run once and exit, so there is nothing to gain from an async
client. Every way of failing becomes ``AdminUnavailable`` (nothing answers) or
``AdminRefused`` (the proxy answered with an error), each with a message fit to
show the user as it is.
"""

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from fastpause.config import AdminAddress, UnixAddress

DEFAULT_TIMEOUT = 30.0


class AdminUnavailable(Exception):
    """No proxy answers at the admin address."""


class AdminRefused(Exception):
    """The proxy answered with an error; ``str()`` is its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UnixHTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` over a Unix stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """One proxy's admin API at ``address``, with an optional bearer ``token``."""

    def __init__(self, address: AdminAddress, token: str | None = None) -> None:
        self.address = address
        self.token = token

    def get(self, path: str) -> Any:
        return self._call("GET", path, None, DEFAULT_TIMEOUT)

    def post(
        self, path: str, body: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        return self._call("POST", path, body or {}, timeout)

    def stream(self, path: str, body: dict[str, Any], timeout: float) -> Iterator[Any]:
        """POST, then yield each JSON line of the answer as it arrives (a deploy's progress).

        ``timeout`` bounds each wait for the next line, not the whole exchange.
        """
        connection = self._connection(timeout)
        try:
            with self._failures(timeout):
                response = self._send(connection, "POST", path, body)
                if response.status >= 300:
                    _decode(response.status, response.read())
                while line := response.readline():
                    yield _json_line(line)
        finally:
            connection.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        """Send one request and decode the JSON answer; errors become the exceptions above."""
        connection = self._connection(timeout)
        try:
            with self._failures(timeout):
                response = self._send(connection, method, path, body)
                status, payload = response.status, response.read()
        finally:
            connection.close()
        return _decode(status, payload)

    def _send(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> http.client.HTTPResponse:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        connection.request(method, path, data, headers)
        return connection.getresponse()

    @contextlib.contextmanager
    def _failures(self, timeout: float) -> Iterator[None]:
        """Turn the ways an exchange can fail into ``AdminUnavailable``."""
        try:
            yield
        except http.client.HTTPException:  # before OSError: RemoteDisconnected is both
            problem = f"the proxy at {self.address} closed the connection without answering"
            raise AdminUnavailable(problem) from None
        except OSError as error:
            raise AdminUnavailable(self._unreachable(error, timeout)) from None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if isinstance(self.address, UnixAddress):
            _check_owner(self.address.path)
            return UnixHTTPConnection(self.address.path, timeout)
        return http.client.HTTPConnection(self.address.host, self.address.port, timeout=timeout)

    def _unreachable(self, error: OSError, timeout: float) -> str:
        """Why nothing answered, in the words a user would look for."""
        if isinstance(error, TimeoutError):
            return f"no answer from the proxy at {self.address} within {timeout:g}s"
        if isinstance(error, FileNotFoundError):
            why = "no such socket"
        elif isinstance(error, ConnectionRefusedError):
            why = "connection refused"
        else:
            why = os.strerror(error.errno) if error.errno else str(error)
            why = why[:1].lower() + why[1:]
        return f"no proxy is answering at {self.address} ({why})"


def _check_owner(path: str) -> None:
    """Refuse a socket another user made: commands (and the token) would go to them.

    The default socket may live in ``/tmp``, where anyone can create files.
    """
    try:
        owner = os.lstat(path).st_uid
    except OSError:
        return  # connecting reports a missing socket in the usual words
    if owner != os.geteuid() and os.geteuid() != 0:
        raise AdminUnavailable(
            f"the admin socket {path} belongs to another user (uid {owner}); not using it"
        )


def _decode(status: int, payload: bytes) -> Any:
    """The JSON document of a 2xx answer; ``AdminRefused`` with the error otherwise."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdminRefused(status, f"the proxy answered {status} without JSON") from None
    if status >= 300:
        message = document.get("error") if isinstance(document, dict) else None
        raise AdminRefused(status, str(message or f"the proxy answered {status}"))
    return document


def _json_line(line: bytes) -> Any:
    """One line of a streamed answer."""
    try:
        return json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdminRefused(200, f"the proxy sent a line that is not JSON: {line[:100]!r}") from None
