"""The arguments of control commands, declared once on the command itself.

A command (``Pause``, ``Deploy``, ``Reload``, ...) is a frozen dataclass; each of
its fields that a caller may set carries an ``Argument`` in its metadata. That
one declaration drives everything a caller touches:

- the admin API reads a JSON body with ``read_values`` (the field's name is the
  key, ``parse`` checks the value and says what is wrong);
- the CLI gets a ``--flag`` per argument (``add_flags``) and checks what the user
  typed with the same ``parse`` before sending it, so a typo is a usage error;
- the fan-out sends the command object itself to every worker (``fastpause.wire``).

So a new command is one dataclass, plus what it does.
"""

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from fastpause.config import Address, parse_health_path, parse_url_address
from fastpause.units import MAX_DURATION, parse_duration, parse_whole_seconds

MAX_MESSAGE = 4096
DEFAULT_DRAIN_TIMEOUT = 30.0


class Declared(Protocol):
    """A command as callers know it: ``fastpause VERB`` and its admin endpoint."""

    verb: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str]


@dataclass(frozen=True)
class Argument:
    """How a caller gives one field of a command.

    ``parse`` turns a JSON value into the field's value or raises ValueError saying
    what is wrong. On the command line the field is ``--name-with-dashes``; without
    a ``metavar`` it is a switch (given: true); ``repeat`` collects every use into a
    list; ``from_text`` turns the typed text into the JSON value that is sent.
    """

    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    repeat: bool = False
    from_text: Callable[[str], Any] = str


def argument(default: Any = dataclasses.MISSING, **declaration: Any) -> Any:
    """A command field a caller may set (no default: the caller must)."""
    return dataclasses.field(default=default, metadata={"argument": Argument(**declaration)})


def declared(command: type) -> dict[str, tuple[Argument, bool]]:
    """The arguments of ``command`` by field name, each with whether it is required."""
    return {
        field.name: (field.metadata["argument"], field.default is dataclasses.MISSING)
        for field in dataclasses.fields(command)
        if "argument" in field.metadata
    }


def read_values(command: type, document: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``command`` from a decoded JSON object; ValueError names the key."""
    arguments = declared(command)
    values = {}
    for key, value in document.items():
        if key not in arguments:
            known = ", ".join(arguments) or "none"
            raise ValueError(f"unknown field {key!r} (known: {known})")
        try:
            values[key] = arguments[key][0].parse(value)
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from None
    for key, (spec, required) in arguments.items():
        if required and key not in values:
            raise ValueError(f"{key}: required: {spec.help} ({spec.metavar})")
    return values


# ---------------------------------------------------------------- the command line


def add_flags(parser: argparse.ArgumentParser, command: type) -> None:
    """A ``--flag`` per argument of ``command``, checked as the admin API checks it."""
    for name, (spec, required) in declared(command).items():
        flag = "--" + name.replace("_", "-")
        if spec.metavar is None:
            parser.add_argument(flag, action="store_true", help=spec.help)
            continue
        parser.add_argument(
            flag,
            metavar=spec.metavar,
            type=_checked(spec),
            action="append" if spec.repeat else "store",
            required=required,
            help=spec.help + (" (repeatable)" if spec.repeat else ""),
        )


def body(command: type, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body for what the user gave: unset flags are left to the proxy."""
    values = {}
    for name, (spec, _) in declared(command).items():
        value = getattr(args, name)
        if value is None or (spec.metavar is None and value is False):
            continue
        values[name] = value
    return values


def _checked(spec: Argument) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            value = spec.from_text(text)
            spec.parse([value] if spec.repeat else value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    return check


# ---------------------------------------------------------------- value checks


def duration(*, allow_zero: bool) -> Callable[[Any], float]:
    """A duration as in the config ("30s") or a number of seconds."""

    def parse(value: Any) -> float:
        if isinstance(value, str):
            seconds = parse_duration(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
            if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION:
                raise ValueError(f"{value!r} is out of range: expected 0 to {MAX_DURATION:.0f}")
        else:
            raise ValueError(
                f"expected a duration like '30s' or a number of seconds, got {value!r}"
            )
        if seconds == 0 and not allow_zero:
            where = f"invalid duration {value!r}: " if isinstance(value, str) else ""
            raise ValueError(f"{where}must be greater than 0")
        return seconds

    return parse


def rate(value: Any) -> float | None:
    """Requests per second for a paced release; null releases everything at once."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of requests per second, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a number greater than 0, got {value!r}")
    return float(value)


def rate_text(text: str) -> float:
    """``--rate N`` as typed."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid rate {text!r}: expected a number") from None
    if not 0 < value < math.inf:
        raise ValueError(f"invalid rate {text!r}: must be greater than 0")
    return value


def message(value: Any) -> str:
    """The text of the 503 answered while a route is stopped."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if len(value) > MAX_MESSAGE:
        raise ValueError(f"longer than {MAX_MESSAGE} characters")
    return value


def retry_after(value: Any) -> int:
    """Whole seconds for ``Retry-After``: a duration string or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_DURATION:
            raise ValueError(f"{value} is out of range: expected at least 1 second")
        return value
    return parse_whole_seconds(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def config_path(value: Any) -> str:
    """The config file to reload: absolute, since the proxy's working directory is
    not the caller's (the CLI makes the path it was given absolute)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {value!r}")
    if "\0" in value:
        raise ValueError("the path contains a NUL byte")
    if not os.path.isabs(value):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def targets(value: Any) -> tuple[Address, ...]:
    """A deploy's new targets: a non-empty list of distinct ``HOST:PORT`` strings."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of HOST:PORT strings, got {value!r}")
    found: list[Address] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a HOST:PORT string, got {item!r}")
        target = parse_url_address(item)
        if target in found:
            raise ValueError(f"duplicate target {item!r}")
        found.append(target)
    return tuple(found)


def health_path(value: Any) -> str:
    return parse_health_path(value)
