"""Input from outside the proxy, read within bounds: config and state files, JSON bodies.

Every path that turns outside bytes into values goes through here, so one set of
limits holds everywhere (RELIABILITY.md, "Control-plane input"): a file is
opened without blocking and must be a regular file no larger than its limit (a
FIFO would hang the start, a device or a huge file exhaust memory); JSON
integers carry only so many digits. The parsers Python ships fail on deep
nesting with ``RecursionError`` and on huge integers with a bare ``ValueError``,
which no caller expected; here every failure is an ``InputError`` whose message
says what is wrong, for the caller to put behind the file name or the request.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from typing import Any

# A config with thousands of routes is well under this; a state file is smaller still.
MAX_FILE_BYTES = 16 << 20
# Config values and admin fields are ports, sizes, counts and seconds: 20 digits
# already pass 2^64; anything longer is not a number fastpause can use.
MAX_DIGITS = 30


class InputError(ValueError):
    """Outside input that cannot be used; the message says why (without the source)."""


def read_file(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    ``FileNotFoundError`` passes through (callers treat a missing file their way);
    every other problem is an ``InputError``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise InputError(f"cannot read file: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"cannot read file: it is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise InputError(f"the file is {info.st_size} bytes, more than the {limit} allowed")
        data = _read_at_most(fd, limit + 1)
    except OSError as error:
        raise InputError(f"cannot read file: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while we read it
        raise InputError(f"the file is more than the {limit} bytes allowed")
    return data


def parse_toml(text: str) -> dict[str, Any]:
    """A TOML document; too deep a nesting or too long an integer is an ``InputError``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"invalid TOML: {error}") from None
    except (RecursionError, ValueError) as error:  # an integer past Python's digit limit
        raise InputError(f"invalid TOML: {_limit_problem(error)}") from None


def parse_json(data: bytes | str) -> Any:
    """A strict JSON document: UTF-8, no NaN or Infinity, integers of at most
    ``MAX_DIGITS`` digits. The ``InputError`` says what is wrong (callers say it is
    not valid JSON)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as error:
        raise InputError(f"not UTF-8 text (byte {error.start})") from None
    try:
        return json.loads(
            text,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
            parse_constant=_no_constant,
        )
    except InputError:
        raise
    except json.JSONDecodeError as error:
        raise InputError(str(error)) from None
    except (RecursionError, ValueError) as error:
        raise InputError(_limit_problem(error)) from None


def _read_at_most(fd: int, size: int) -> bytes:
    chunks = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-+")) > MAX_DIGITS:
        raise InputError(f"a number has more than {MAX_DIGITS} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_DIGITS * 4:
        raise InputError(f"a number is longer than {MAX_DIGITS * 4} characters")
    return float(text)


def _no_constant(name: str) -> None:
    raise InputError(f"{name} is not a JSON value")


def _limit_problem(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if "digits" in str(error):  # Python's limit on int() of a decimal string
        return "an integer has too many digits"
    return str(error)


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")
