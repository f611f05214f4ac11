"""The memory the workers share their held counts in (``_core.SharedCounts``).

The supervisor creates it (a memfd on Linux, else an unlinked temporary file),
sends its descriptor to each worker with the start message, gives every route
name a column for good (a reload that renames routes gets new columns), and
zeroes a dead worker's row before its replacement starts: what a killed worker
held no longer counts against the caps.
"""

from __future__ import annotations

import mmap
import os
import tempfile

from fastpause import _core

COUNT_BYTES = 8
# Column 0 counts held body bytes; route names take the others, one each for the
# life of the supervisor. 32 KiB per worker, touched only where routes are.
COLUMNS = 4096


class ColumnsExhausted(Exception):
    """More route names than columns since the supervisor started."""


class SharedRegion:
    """The supervisor's side: the region, its columns, its rows."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.size = workers * COLUMNS * COUNT_BYTES
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("fastpause-held-counts", os.MFD_CLOEXEC)
        else:
            with tempfile.TemporaryFile() as backing:
                self.fd = os.dup(backing.fileno())
        os.ftruncate(self.fd, self.size)
        self._map = mmap.mmap(self.fd, self.size)
        self._columns: dict[str, int] = {}

    def columns(self, routes: list[str]) -> dict[str, int]:
        """The column of each route name, new names getting the next free ones."""
        for name in routes:
            if name not in self._columns:
                if len(self._columns) + 1 >= COLUMNS:
                    raise ColumnsExhausted(
                        f"more than {COLUMNS - 1} route names since the proxy started; "
                        "restart it to count held requests again"
                    )
                self._columns[name] = len(self._columns) + 1
        return {name: self._columns[name] for name in routes}

    def clear_row(self, index: int) -> None:
        """Worker ``index`` is gone: what it held no longer counts."""
        start = index * COLUMNS * COUNT_BYTES
        self._map[start : start + COLUMNS * COUNT_BYTES] = bytes(COLUMNS * COUNT_BYTES)

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


def attach(fd: int, workers: int, index: int) -> _core.SharedCounts:
    """The worker's side: map the region sent as ``fd`` (then closed) as row ``index``."""
    try:
        region = mmap.mmap(fd, workers * COLUMNS * COUNT_BYTES)
    finally:
        os.close(fd)
    return _core.SharedCounts(region, workers, index, COLUMNS)
