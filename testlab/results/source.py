"""A report file opened for reading on a byte budget.

Both format readers read through this, so the size limit holds whatever the file turns out to be
(a file that grows while read, a single XML text node of a gigabyte) and the readers can tell a file
that ended early (truncated) from one that is malformed in its middle.
"""

from __future__ import annotations

from typing import BinaryIO


class OverBudget(Exception):
    """More bytes were read than the budget allows."""


class BudgetedReader:
    """A binary file object's `read` and `readline`, counting bytes and refusing past `max_bytes`."""

    def __init__(self, raw: BinaryIO, max_bytes: int) -> None:
        self._raw = raw
        self._left = max_bytes
        self.max_bytes = max_bytes
        self.at_eof = False  # a read returned nothing: the whole file was seen

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._left + 1
        return self._count(self._raw.read(min(size, self._left + 1)), size)

    def readline(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._left + 1
        return self._count(self._raw.readline(min(size, self._left + 1)), size)

    def _count(self, data: bytes, asked: int) -> bytes:
        if not data and asked > 0:
            self.at_eof = True
        self._left -= len(data)
        if self._left < 0:
            raise OverBudget(f"over the limit of {self.max_bytes} bytes")
        return data
