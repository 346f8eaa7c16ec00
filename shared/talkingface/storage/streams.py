"""Byte-stream helpers shared by the stores: chunking an input, hashing, and closeable reads."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

DEFAULT_CHUNK_SIZE = 1 << 20

PutData = bytes | bytearray | memoryview | BinaryIO


def iter_source(data: PutData, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Yield `data` (bytes-like or a binary stream) in chunks of at most `chunk_size` bytes."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), chunk_size):
            yield bytes(view[start : start + chunk_size])
        return
    while True:
        chunk = data.read(chunk_size)
        if chunk is None:
            raise TypeError("put needs a blocking stream; read() returned None")
        if not chunk:
            return
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError(f"put needs a binary stream; read() returned {type(chunk).__name__}")
        yield bytes(chunk)


class Sha256Counter:
    """Running size and sha256 of the bytes passed through it."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> bytes:
        self._sha.update(chunk)
        self.size += len(chunk)
        return chunk

    def through(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Yield `chunks` unchanged, hashing each one on the way."""
        for chunk in chunks:
            yield self.update(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class HashingReader:
    """A `read(n)` wrapper over a binary stream that hashes what is read, for uploads of
    unknown length: the digest is complete once the uploader has read to EOF."""

    def __init__(self, stream: BinaryIO, counter: Sha256Counter) -> None:
        self._stream = stream
        self._counter = counter

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError(f"put needs a binary stream; read() returned {type(chunk).__name__}")
        return self._counter.update(bytes(chunk))


def hash_chunks(chunks: Iterator[bytes]) -> tuple[int, str]:
    """Size and sha256 hex digest of a chunk stream (consumes it)."""
    counter = Sha256Counter()
    for chunk in chunks:
        counter.update(chunk)
    return counter.size, counter.hexdigest()


class ChunkIterator(Iterator[bytes]):
    """Chunks of at most `chunk_size` from `read`; calls `release` (closing the file or the
    HTTP response) once, when exhausted, on error, on `close()` or when garbage-collected."""

    def __init__(
        self, read: Callable[[int], bytes], release: Callable[[], None], chunk_size: int
    ) -> None:
        self._read = read
        self._release: Callable[[], None] | None = release
        self._chunk_size = chunk_size

    def __iter__(self) -> ChunkIterator:
        return self

    def __next__(self) -> bytes:
        if self._release is None:
            raise StopIteration
        try:
            chunk = self._read(self._chunk_size)
        except BaseException:
            self.close()
            raise
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Release the underlying resource now; further iteration yields nothing."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> ChunkIterator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
