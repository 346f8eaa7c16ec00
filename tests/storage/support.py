"""Helpers shared by the storage tests (plain code, no fixtures)."""

from __future__ import annotations

import hashlib
import io

MiB = 1 << 20


class TrickleStream:
    """A non-seekable stream of unknown length that returns short reads, like a socket."""

    def __init__(self, data: bytes, max_read: int = 64 * 1024) -> None:
        self._buffer = io.BytesIO(data)
        self._max_read = max_read

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self._max_read
        return self._buffer.read(min(size, self._max_read))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
