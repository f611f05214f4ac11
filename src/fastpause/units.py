"""Durations and sizes as people write them in a config file.

Durations are strings with a unit ("250ms", "30s", "1.5s", "2m", "1h"); a bare
number is refused because "60" could mean seconds or milliseconds and guessing
wrong is a silent outage. Sizes are strings with a unit ("512B", "10KB",
"32KiB", "1MiB", "1GiB") or a plain TOML integer counting bytes. Both parsers
raise ``ValueError`` whose message says what is accepted; the config loader adds
the file and key path.
"""

import re
from fractions import Fraction

DURATION_HELP = "expected a duration string with a unit: ms, s, m or h (e.g. '250ms', '30s', '2m')"
SIZE_HELP = (
    "expected a size: an integer number of bytes, or a string with a unit: "
    "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024) "
    "(e.g. '512B', '32KiB', '1GiB')"
)

# Thirty days: longer than any sensible network timeout, short enough that the
# event loop's timer arithmetic never overflows.
MAX_DURATION = 30 * 24 * 3600.0
# 1024 TiB: far beyond any real limit, well inside the data plane's 64-bit counters.
MAX_SIZE = 1 << 50

_DURATION_UNITS = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_QUANTITY = re.compile(r"\s*(-?)(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*")


def parse_duration(value: object) -> float:
    """Return the duration ``value`` (e.g. ``"1.5s"``) in seconds.

    Units are case-sensitive ("m" is minutes; "M" is refused rather than read
    as months or megas).
    """
    if not isinstance(value, str):
        raise ValueError(f"{DURATION_HELP}, got {describe(value)}")
    match = _QUANTITY.fullmatch(value)
    if match is None or match[3] not in _DURATION_UNITS:
        raise ValueError(f"invalid duration {value!r}: {DURATION_HELP}")
    if match[1]:
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    seconds = float(Fraction(match[2]) * _DURATION_UNITS[match[3]])
    if seconds > MAX_DURATION:
        raise ValueError(f"invalid duration {value!r}: must be at most 720h")
    return seconds


def parse_whole_seconds(value: object) -> int:
    """A duration of at least one whole second, for ``Retry-After`` (it has no fractions)."""
    seconds = parse_duration(value)
    if seconds < 1 or not seconds.is_integer():
        raise ValueError(
            f"invalid duration {value!r}: Retry-After is a whole number of seconds, at least '1s'"
        )
    return int(seconds)


def parse_size(value: object) -> int:
    """Return the size ``value`` (e.g. ``"32KiB"`` or ``4096``) in bytes.

    Fractions are allowed when they come to a whole number of bytes
    ("1.5KiB" is 1536), so sizes read naturally without ever rounding.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        return _check_size_range(value, str(value))
    if not isinstance(value, str):
        raise ValueError(f"{SIZE_HELP}, got {describe(value)}")
    match = _QUANTITY.fullmatch(value)
    if match is None or match[3].lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: {SIZE_HELP}")
    if match[1]:
        raise ValueError(f"invalid size {value!r}: must not be negative")
    size = Fraction(match[2]) * _SIZE_UNITS[match[3].lower()]
    if size.denominator != 1:
        raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
    return _check_size_range(int(size), repr(value))


def _check_size_range(size: int, shown: str) -> int:
    """Refuse sizes the data plane's fixed-width integers could not hold."""
    if size > MAX_SIZE:
        raise ValueError(f"invalid size {shown}: must be at most 1024TiB")
    return size


def describe(value: object) -> str:
    """Name a TOML value as the user wrote it ("string '100'", "boolean true", "table")."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"{'integer' if isinstance(value, int) else 'float'} {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"
