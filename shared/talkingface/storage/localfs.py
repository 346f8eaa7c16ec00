"""Low-level file operations for LocalStore: symlink-proof directory walks and atomic writes.

Every path below the store root is reached one segment at a time with `dir_fd` and
`O_NOFOLLOW`, so a symlink planted inside the root is refused instead of followed and no
operation can touch anything outside the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat as statmod
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from talkingface.storage.base import ObjectInfo
from talkingface.storage.errors import InvalidKey, StoreError, StoreObjectNotFound
from talkingface.storage.keys import join_key
from talkingface.storage.streams import ChunkIterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def meta_name(name: str) -> str:
    """The hidden sidecar holding an object's sha256 and content type."""
    return f".{name}.meta"


def temp_name() -> str:
    """A hidden, unique name for a file being written or a tree being removed."""
    return f".tmp-{uuid.uuid4().hex}"


def fingerprint(st: os.stat_result) -> list[int]:
    """Identifies the exact file a sidecar describes: os.replace keeps inode and mtime."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


@contextlib.contextmanager
def open_dir(
    root: Path, segments: Sequence[str], key: str, *, create: bool = False
) -> Iterator[int]:
    """An fd of `{root}/{segments}`, walked without following symlinks.

    A missing directory (or, when reading, a file where a directory should be) raises
    StoreObjectNotFound; a symlink anywhere on the way raises StoreError.
    """
    fd = os.open(root, DIR_FLAGS)
    try:
        for segment in segments:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(segment, 0o755, dir_fd=fd)
            try:
                child = os.open(segment, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise StoreObjectNotFound(key) from None
            except OSError as exc:
                _refuse_non_dir(fd, segment, key, exc, create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _refuse_non_dir(fd: int, segment: str, key: str, exc: OSError, create: bool) -> NoReturn:
    st = os.stat(segment, dir_fd=fd, follow_symlinks=False)
    if statmod.S_ISLNK(st.st_mode):
        raise StoreError(f"{key}: refusing to follow symlink at {segment!r}") from exc
    if create:
        raise StoreError(f"{key}: {segment!r} is an object, not a prefix") from exc
    raise StoreObjectNotFound(key) from None


def open_file(root: Path, key: str, name: str | None = None) -> tuple[int, os.stat_result]:
    """A read fd and stat of the regular file for `key` (or of sibling `name` in its dir)."""
    *dirs, last = key.split("/")
    with open_dir(root, dirs, key) as dfd:
        try:
            fd = os.open(name or last, READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            raise StoreObjectNotFound(key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(f"{key}: refusing to follow a symlink") from exc
            raise
    st = os.fstat(fd)
    if not statmod.S_ISREG(st.st_mode):
        os.close(fd)
        raise StoreObjectNotFound(key, "no such object (a prefix)")
    return fd, st


def write_atomic(dfd: int, fd: int, tmp: str, name: str, chunks: Iterator[bytes]) -> os.stat_result:
    """Write `chunks` to the temp file `fd`, fsync, then rename it over `name` (same dir).

    The temp file is removed on any failure; the stat of the written file is returned.
    """
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
            st = os.fstat(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    return st


def write_small(dfd: int, name: str, data: bytes) -> None:
    """Atomically replace the small file `name` in directory `dfd` with `data`."""
    tmp = temp_name()
    fd = os.open(tmp, NEW_FILE_FLAGS, 0o644, dir_fd=dfd)
    write_atomic(dfd, fd, tmp, name, iter([data]))


def remove_tree(name: str, dfd: int) -> None:
    """Remove a directory tree or a single object file (with its sidecar) in `dfd`."""
    if statmod.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(meta_name(name), dir_fd=dfd)


def fd_chunks(fd: int, chunk_size: int) -> ChunkIterator:
    """Chunks of at most `chunk_size` read from `fd`, which the iterator owns and closes."""
    return ChunkIterator(lambda size: os.read(fd, size), lambda: os.close(fd), chunk_size)


def walk(dfd: int, prefix: str) -> Iterator[ObjectInfo]:
    """Objects below an open directory; skips hidden/invalid names and never follows links."""
    with os.scandir(dfd) as entries:
        for entry in entries:
            try:
                key = join_key(prefix, entry.name) if prefix else join_key(entry.name)
            except InvalidKey:
                continue
            if entry.is_dir(follow_symlinks=False):
                child = os.open(entry.name, DIR_FLAGS, dir_fd=dfd)
                try:
                    yield from walk(child, key)
                finally:
                    os.close(child)
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                yield ObjectInfo(key, st.st_size, modified=st.st_mtime)
