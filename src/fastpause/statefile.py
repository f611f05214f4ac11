"""Runtime state that survives a restart: deployed targets and pause/stop modes.

Written after every change, atomically (temp file in the same directory, fsync,
rename, fsync of the directory), so a crash leaves either the old file or the
new one, never a torn one. A file that cannot be read or parsed is reported and
ignored: fastpause then starts from its config instead of not starting at all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastpause.config import parse_url_address
from fastpause.inputs import InputError, parse_json, read_file
from fastpause.units import MAX_DURATION

VERSION = 1
MODES = ("running", "paused", "stopped")


class StateFileError(Exception):
    """The state file cannot be used; the message names file and problem."""


@dataclass(frozen=True)
class RouteRuntime:
    """What an operator changed at run time for one route."""

    upstreams: tuple[str, ...] | None = None  # deployed targets, None = as configured
    config_upstreams: tuple[str, ...] | None = None  # the config's list when deployed
    mode: str = "running"
    max_hold: float = 30.0
    stop_message: str = ""


@dataclass(frozen=True)
class RuntimeState:
    """Every route's runtime changes, by route name: the whole content of the file."""

    routes: dict[str, RouteRuntime] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "routes": {
                name: {
                    "upstreams": list(r.upstreams) if r.upstreams is not None else None,
                    "config_upstreams": (
                        list(r.config_upstreams) if r.config_upstreams is not None else None
                    ),
                    "mode": r.mode,
                    "max_hold": r.max_hold,
                    "stop_message": r.stop_message,
                }
                for name, r in sorted(self.routes.items())
            },
        }


def save(path: str | os.PathLike[str], state: RuntimeState) -> None:
    """Replace ``path`` with ``state`` atomically; ``StateFileError`` if it cannot be written."""
    target = Path(path)
    data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _sync_directory(target.parent)
    except OSError as exc:
        raise StateFileError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable: it lives in the directory's entries."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike[str]) -> RuntimeState | None:
    """The saved state, None when there is no file yet; StateFileError when unusable."""
    try:
        raw = read_file(path)
    except FileNotFoundError:
        return None
    except InputError as exc:
        raise StateFileError(f"{path}: {exc}") from None
    try:
        doc = parse_json(raw)
    except InputError as exc:
        raise StateFileError(f"{path}: not valid JSON: {exc}") from None
    return from_json(doc, str(path))


def from_json(doc: Any, source: str) -> RuntimeState:
    """The state ``RuntimeState.to_json`` wrote; ``StateFileError`` names ``source``."""
    if not isinstance(doc, dict) or "version" not in doc:
        raise StateFileError(f"{source}: not a fastpause state file")
    if doc["version"] != VERSION:
        raise StateFileError(
            f"{source}: unsupported version {doc['version']!r} (this fastpause writes {VERSION})"
        )
    routes = doc.get("routes")
    if not isinstance(routes, dict):
        raise StateFileError(f"{source}: routes: expected an object")
    return RuntimeState(
        {name: _route(entry, f"{source}: routes.{name}") for name, entry in routes.items()}
    )


def _route(entry: Any, where: str) -> RouteRuntime:
    if not isinstance(entry, dict):
        raise StateFileError(f"{where}: expected an object")
    mode = entry.get("mode", "running")
    if mode not in MODES:
        raise StateFileError(f"{where}.mode: expected one of {', '.join(MODES)}")
    max_hold = entry.get("max_hold", 30.0)
    if (
        not isinstance(max_hold, int | float)
        or isinstance(max_hold, bool)
        or not math.isfinite(max_hold)
        or not 0 < max_hold <= MAX_DURATION
    ):
        raise StateFileError(
            f"{where}.max_hold: expected a number of seconds above 0 and at most {MAX_DURATION:.0f}"
        )
    message = entry.get("stop_message", "")
    if not isinstance(message, str):
        raise StateFileError(f"{where}.stop_message: expected a string")
    upstreams = _addresses(entry.get("upstreams"), f"{where}.upstreams")
    config_upstreams = _addresses(entry.get("config_upstreams"), f"{where}.config_upstreams")
    if (upstreams is None) != (config_upstreams is None):
        raise StateFileError(f"{where}: upstreams and config_upstreams go together")
    return RouteRuntime(
        upstreams=upstreams,
        config_upstreams=config_upstreams,
        mode=mode,
        max_hold=float(max_hold),
        stop_message=message,
    )


def _addresses(value: Any, where: str) -> tuple[str, ...] | None:
    """A non-empty list of ``HOST:PORT`` strings, each as the config would accept it."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise StateFileError(f"{where}: expected a non-empty list of HOST:PORT strings")
    for text in value:
        try:
            parse_url_address(text)
        except ValueError as exc:
            raise StateFileError(f"{where}: {exc}") from None
    return tuple(value)
