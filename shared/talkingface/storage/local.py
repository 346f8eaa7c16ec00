"""The embedded default object store: a local directory, safe against traversal and torn writes.

Layout: the object `a/b/c.bin` is the file `{root}/a/b/c.bin`; its sha256 and content type sit
in a hidden sidecar `{root}/a/b/.c.bin.meta`. Names starting with `.` are never valid key
segments, so temp files, sidecars and `.staging/` can never be addressed or listed.

Guarantees:
- Atomic objects: `put` writes a temp file in the target directory, fsyncs it and
  `os.replace`s it into place, so a reader sees the old or the new object, never a torn one.
- Confinement: paths are walked from the root one segment at a time with `O_NOFOLLOW` and
  `dir_fd` (see `localfs`), so a symlink planted inside the root is refused (StoreError)
  rather than followed, and nothing is created outside the root.
- `publish_version` is all-or-nothing: the version is staged in `{root}/.staging/` and moved
  into place with one directory rename, so readers see no file of it until all of it exists.
- `presigned_get` returns a `file://` URL of the absolute path. It carries no signature and
  no expiry and is only meaningful to processes on the same machine.

Linux/macOS only (needs `dir_fd`). On this store a key cannot be both an object and the
prefix of other objects (`a` and `a/b`): that is a StoreError, whereas S3 allows it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat as statmod
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from talkingface.storage import localfs, versions
from talkingface.storage.base import DEFAULT_CONTENT_TYPE, ObjectInfo, ObjectStore, PublishedVersion
from talkingface.storage.errors import StoreError, StoreObjectNotFound, VersionExists
from talkingface.storage.keys import join_key
from talkingface.storage.streams import (
    DEFAULT_CHUNK_SIZE,
    ChunkIterator,
    PutData,
    Sha256Counter,
    hash_chunks,
    iter_source,
)

_STAGING = ".staging"


class LocalStore(ObjectStore):
    """Objects as files under `root` (created if missing). See the module docstring."""

    def __init__(self, root: Path | str) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        # The root itself may sit behind a symlink (e.g. /tmp on macOS); resolve it once.
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _dir(
        self, segments: list[str], key: str, *, create: bool = False
    ) -> contextlib.AbstractContextManager[int]:
        return localfs.open_dir(self.root, segments, key, create=create)

    # ---- primitives -----------------------------------------------------------------------

    def _put(self, key: str, data: PutData, content_type: str) -> ObjectInfo:
        dirs = key.split("/")[:-1]
        tmp = localfs.temp_name()
        last_error: Exception | None = None
        for _ in range(3):
            # A concurrent delete may prune an empty directory between our mkdir and our open.
            # Nothing of `data` is read before the temp file exists, so walking again is safe;
            # once the temp file exists the directory is not empty and cannot be pruned.
            try:
                with self._dir(dirs, key, create=True) as dfd:
                    try:
                        fd = os.open(tmp, localfs.NEW_FILE_FLAGS, 0o644, dir_fd=dfd)
                    except FileNotFoundError as exc:
                        last_error = exc
                        continue
                    return self._write_object(dfd, fd, tmp, key, data, content_type)
            except StoreObjectNotFound as exc:
                last_error = exc
        raise StoreError(f"{key}: directory kept disappearing under concurrent deletes") from (
            last_error
        )

    def _write_object(
        self, dfd: int, fd: int, tmp: str, key: str, data: PutData, content_type: str
    ) -> ObjectInfo:
        """Fill the temp file `fd`, rename it over the object, then record its sidecar."""
        name = key.rsplit("/", 1)[-1]
        counter = Sha256Counter()
        try:
            st = localfs.write_atomic(dfd, fd, tmp, name, counter.through(iter_source(data)))
        except IsADirectoryError as exc:
            raise StoreError(f"{key}: is a prefix of other objects") from exc
        meta = {
            "sha256": counter.hexdigest(),
            "content_type": content_type,
            "file": localfs.fingerprint(st),
        }
        localfs.write_small(dfd, localfs.meta_name(name), json.dumps(meta).encode())
        return ObjectInfo(key, counter.size, counter.hexdigest(), content_type)

    def _open(self, key: str, chunk_size: int) -> ChunkIterator:
        fd, _ = localfs.open_file(self.root, key)
        return localfs.fd_chunks(fd, chunk_size)

    def _stat(self, key: str) -> ObjectInfo:
        fd, st = localfs.open_file(self.root, key)
        try:
            meta = self._read_meta(key)
            if meta.get("file") == localfs.fingerprint(st) and isinstance(meta.get("sha256"), str):
                return ObjectInfo(key, st.st_size, meta["sha256"], meta.get("content_type"))
            # Sidecar missing or describing another write (a put raced us, or crashed between
            # its two renames): the file itself is the truth, so hash it.
            size, digest = hash_chunks(localfs.fd_chunks(os.dup(fd), DEFAULT_CHUNK_SIZE))
            return ObjectInfo(key, size, digest, meta.get("content_type", DEFAULT_CONTENT_TYPE))
        finally:
            os.close(fd)

    def _read_meta(self, key: str) -> dict[str, Any]:
        try:
            fd, _ = localfs.open_file(self.root, key, localfs.meta_name(key.rsplit("/", 1)[-1]))
            meta = json.loads(b"".join(localfs.fd_chunks(fd, DEFAULT_CHUNK_SIZE)))
        except (OSError, StoreError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _exists(self, key: str) -> bool:
        *dirs, name = key.split("/")
        try:
            with self._dir(dirs, key) as dfd:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, StoreObjectNotFound):
            return False
        except StoreError:
            return False  # a symlink on the way: never an object of this store
        return statmod.S_ISREG(st.st_mode)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        try:
            with self._dir(prefix.split("/") if prefix else [], prefix) as dfd:
                return list(localfs.walk(dfd, prefix))
        except StoreObjectNotFound:
            return []

    def _delete(self, key: str) -> None:
        *dirs, name = key.split("/")
        try:
            with self._dir(dirs, key) as dfd:
                try:
                    os.unlink(name, dir_fd=dfd)
                except (FileNotFoundError, IsADirectoryError):
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(localfs.meta_name(name), dir_fd=dfd)
        except StoreObjectNotFound:
            return
        self._prune_empty(dirs)

    def _delete_prefix(self, prefix: str) -> None:
        *dirs, name = prefix.split("/")
        try:
            with self._dir(dirs, prefix) as dfd:
                if not statmod.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    return
                # Rename first so the whole prefix disappears at once, then delete at leisure.
                trash = localfs.temp_name()
                os.rename(name, trash, src_dir_fd=dfd, dst_dir_fd=dfd)
                shutil.rmtree(trash, dir_fd=dfd)
        except (StoreObjectNotFound, FileNotFoundError):
            return
        self._prune_empty(dirs)

    def _prune_empty(self, dirs: list[str]) -> None:
        """Remove now-empty parent directories so `a` can later become an object again."""
        for depth in range(len(dirs), 0, -1):
            try:
                with self._dir(dirs[: depth - 1], "/".join(dirs)) as pfd:
                    os.rmdir(dirs[depth - 1], dir_fd=pfd)
            except (OSError, StoreError):
                return

    def _presigned_get(self, key: str, expires: timedelta) -> str:
        return (self.root / key).as_uri()

    # ---- versioned publish: stage, then one rename --------------------------------------

    def publish_version(
        self,
        prefix: str,
        files: Mapping[str, bytes | Path],
        metadata: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> PublishedVersion:
        """Publish all-or-nothing: stage under `.staging/`, then rename the version directory
        into place. Of several concurrent publishers of one version exactly one wins; the
        others get VersionExists. A crashed publish leaves only a hidden staging directory."""
        prefix, version, created_at, names, meta = versions.prepare_publish(
            prefix, files, metadata, version
        )
        if self._exists(join_key(prefix, version, versions.MANIFEST_NAME)):
            raise VersionExists(prefix, version)
        stage_id = uuid.uuid4().hex
        with self._dir([_STAGING, stage_id], prefix, create=True):
            pass
        try:
            stage = LocalStore(self.root / _STAGING / stage_id)
            manifest = self._write_version(stage, version, files, names, version, created_at, meta)
            for attempt in range(3):
                try:
                    with (
                        self._dir([_STAGING, stage_id], prefix) as sfd,
                        self._dir(prefix.split("/"), prefix, create=True) as pfd,
                    ):
                        self._commit(sfd, pfd, prefix, version)
                    break
                except (FileNotFoundError, StoreObjectNotFound):
                    # A concurrent delete pruned the (empty) prefix directory; walk again.
                    if attempt == 2:
                        raise
        finally:
            with contextlib.suppress(OSError, StoreError), self._dir([_STAGING], prefix) as sfd:
                shutil.rmtree(stage_id, dir_fd=sfd, ignore_errors=True)
        return PublishedVersion(prefix, version, manifest)

    def _commit(self, sfd: int, pfd: int, prefix: str, version: str) -> None:
        """Rename the staged version directory into `pfd`, refusing to replace a complete one."""
        try:
            os.rename(version, version, src_dir_fd=sfd, dst_dir_fd=pfd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            # Occupied: by a complete version (immutable) or by the files of a crashed publish,
            # which are moved aside; if a rival committed in between, its version goes back.
            if self._exists(join_key(prefix, version, versions.MANIFEST_NAME)):
                raise VersionExists(prefix, version) from None
            aside = localfs.temp_name()
            os.rename(version, aside, src_dir_fd=pfd, dst_dir_fd=pfd)
            try:
                os.stat(f"{aside}/{versions.MANIFEST_NAME}", dir_fd=pfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                localfs.remove_tree(aside, pfd)
                os.rename(version, version, src_dir_fd=sfd, dst_dir_fd=pfd)
            else:
                os.rename(aside, version, src_dir_fd=pfd, dst_dir_fd=pfd)
                raise VersionExists(prefix, version) from None
        os.fsync(pfd)
