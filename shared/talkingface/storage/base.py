"""The object store interface shared by the local-directory store and the MinIO/S3 store.

Public methods validate every key and prefix (see `keys`), then call a small set of
primitives that each implementation provides. Versioned publishing (`publish_version` and
its readers) is written once here on top of those primitives.

Missing objects: `get`, `stream`, `stat`, `presigned_get` and the version readers raise
`StoreObjectNotFound`; `delete` and `delete_prefix` are idempotent (deleting what is not
there is a no-op), as in S3.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from talkingface.storage import versions
from talkingface.storage.errors import (
    StoreIntegrityError,
    StoreObjectNotFound,
    VersionExists,
)
from talkingface.storage.keys import join_key, validate_key, validate_prefix, validate_segment
from talkingface.storage.streams import DEFAULT_CHUNK_SIZE, ChunkIterator, PutData

logger = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_PRESIGN_EXPIRY = timedelta(days=7)  # the S3 SigV4 limit; the local store honours it too


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object.

    `sha256` and `content_type` are always set by `put` and `stat`; `list` leaves them None
    unless asked for `detailed=True` (on S3 that costs one request per object). `modified`
    (unix seconds of the last write, by the store's clock) is set by `list` only; it does not
    take part in comparisons.
    """

    key: str
    size: int
    sha256: str | None = None
    content_type: str | None = None
    modified: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PublishedVersion:
    """A version that `publish_version` committed: where it is and the manifest it wrote."""

    prefix: str
    version: str
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        """The version's own prefix, `{prefix}/{version}`."""
        return f"{self.prefix}/{self.version}"


def _check_chunk_size(chunk_size: int) -> int:
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, not {chunk_size!r}")
    return chunk_size


class ObjectStore(ABC):
    """An object store: flat keys (`a/b/c.bin`) mapping to immutable-once-read byte blobs."""

    # ---- primitives: keys are already validated when these are called -------------------

    @abstractmethod
    def _put(self, key: str, data: PutData, content_type: str) -> ObjectInfo:
        """Write the object (replacing any old one) and return its full info."""

    @abstractmethod
    def _open(self, key: str, chunk_size: int) -> ChunkIterator:
        """Open the object now (raising StoreObjectNotFound now) and return a chunk iterator."""

    @abstractmethod
    def _stat(self, key: str) -> ObjectInfo:
        """Full info of an existing object, or raise StoreObjectNotFound."""

    @abstractmethod
    def _exists(self, key: str) -> bool:
        """Whether an object exists at exactly `key` (cheaper than stat)."""

    @abstractmethod
    def _list(self, prefix: str) -> list[ObjectInfo]:
        """Key and size of every object under `prefix + '/'` (everything when prefix is '')."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Delete one object; a missing object is not an error."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix + '/'`; nothing there is not an error."""

    @abstractmethod
    def _presigned_get(self, key: str, expires: timedelta) -> str:
        """A URL from which the (existing) object can be downloaded."""

    # ---- public object operations ---------------------------------------------------------

    def put(self, key: str, data: PutData, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Store `data` (bytes or a binary stream read to EOF) at `key`; sha256 is computed
        while writing. Replaces an existing object; readers see the old or the new one."""
        key = validate_key(key)
        if not isinstance(data, bytes | bytearray | memoryview) and not callable(
            getattr(data, "read", None)
        ):
            raise TypeError(f"put needs bytes or a binary stream, not {type(data).__name__}")
        return self._put(key, data, content_type or DEFAULT_CONTENT_TYPE)

    def get(self, key: str) -> bytes:
        """The whole object in memory; use `stream` for large objects."""
        return b"".join(self._open(validate_key(key), DEFAULT_CHUNK_SIZE))

    def stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ChunkIterator:
        """Chunks of at most `chunk_size` bytes, in constant memory.

        A missing object raises StoreObjectNotFound here, not on first iteration. Exhaust,
        `close()` or use the iterator as a context manager to release the file or connection
        promptly.
        """
        return self._open(validate_key(key), _check_chunk_size(chunk_size))

    def download(self, key: str, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        """Stream the object into the file `path` (created or replaced), in constant memory."""
        with self.stream(key, chunk_size) as chunks, Path(path).open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)

    def stat(self, key: str) -> ObjectInfo:
        """Size, sha256 and content type of an existing object."""
        return self._stat(validate_key(key))

    def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""
        return self._exists(validate_key(key))

    def list(self, prefix: str = "", *, detailed: bool = False) -> list[ObjectInfo]:
        """Objects under `prefix/` (recursive; "" lists everything), sorted by key.

        `list("a")` covers `a/x` and `a/b/y` but not `ab/z`. With `detailed=True` each entry
        is stat'ed so sha256 and content_type are filled in.
        """
        infos = sorted(self._list(validate_prefix(prefix, allow_empty=True)), key=lambda i: i.key)
        if not detailed:
            return infos
        detailed_infos = []
        for info in infos:
            try:
                detailed_infos.append(self._stat(info.key))
            except StoreObjectNotFound:
                continue  # deleted since the listing: it is simply not there any more
        return detailed_infos

    def delete(self, key: str) -> None:
        """Delete the object at `key`; deleting a missing object is a no-op."""
        self._delete(validate_key(key))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix/`. The empty prefix (whole store) is refused."""
        self._delete_prefix(validate_prefix(prefix))

    def presigned_get(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A download URL for an existing object, valid for `expires` (at most 7 days)."""
        key = validate_key(key)
        if not isinstance(expires, timedelta) or not (
            timedelta(seconds=1) <= expires <= MAX_PRESIGN_EXPIRY
        ):
            raise ValueError(f"expires must be a timedelta in [1 s, 7 days], not {expires!r}")
        if not self._exists(key):
            raise StoreObjectNotFound(key)
        return self._presigned_get(key, expires)

    def put_json(self, key: str, value: Any) -> ObjectInfo:
        """Store a small JSON document (NaN and infinity are refused: they are not JSON)."""
        data = json.dumps(value, indent=2, sort_keys=True, allow_nan=False).encode()
        return self.put(key, data, content_type="application/json")

    def get_json(self, key: str) -> Any:
        """Read a JSON document written by `put_json`."""
        raw = self.get(key)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreIntegrityError(f"{key}: not valid JSON: {exc}") from exc

    # ---- versioned publish ----------------------------------------------------------------

    def publish_version(
        self,
        prefix: str,
        files: Mapping[str, bytes | Path],
        metadata: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> PublishedVersion:
        """Publish an immutable version: every file under `{prefix}/{version}/`, then
        `manifest.json` (sizes and sha256 of each file) last.

        Guarantee (this base implementation, used by MinioStore): readers never see a version
        before its manifest exists, and a crashed publish leaves files that no reader lists.
        An existing manifest makes this raise VersionExists before anything is written; two
        publishers racing on the same explicit `version` are not serialised (the default,
        random-suffixed ids never race), and `read_version_file` would detect the mix-up.
        LocalStore overrides this with an all-or-nothing directory rename.
        """
        prefix, version, created_at, names, meta = versions.prepare_publish(
            prefix, files, metadata, version
        )
        if self._exists(join_key(prefix, version, versions.MANIFEST_NAME)):
            raise VersionExists(prefix, version)
        manifest = self._write_version(
            self, join_key(prefix, version), files, names, version, created_at, meta
        )
        return PublishedVersion(prefix, version, manifest)

    def list_versions(self, prefix: str) -> builtins.list[str]:
        """Complete (manifest present and well-formed) versions, oldest first by created_at."""
        prefix = validate_prefix(prefix)
        suffix = "/" + versions.MANIFEST_NAME
        found = []
        for info in self._list(prefix):
            middle = info.key[len(prefix) + 1 :]
            if middle.endswith(suffix) and "/" not in middle[: -len(suffix)]:
                version = middle[: -len(suffix)]
                try:
                    manifest = self.read_manifest(prefix, version)
                except (StoreIntegrityError, StoreObjectNotFound) as exc:
                    # A broken manifest must not hide every other version; say so loudly.
                    logger.warning("skipping version %s/%s: %s", prefix, version, exc)
                    continue
                found.append((datetime.fromisoformat(manifest["created_at"]), version))
        return [version for _, version in sorted(found)]

    def latest_version(self, prefix: str) -> str | None:
        """The newest complete version under `prefix`, or None when there is none."""
        published = self.list_versions(prefix)
        return published[-1] if published else None

    def read_manifest(self, prefix: str, version: str) -> dict[str, Any]:
        """The manifest of a published version; StoreObjectNotFound if it is not published."""
        key = join_key(validate_prefix(prefix), validate_segment(version), versions.MANIFEST_NAME)
        try:
            raw = self.get(key)
        except StoreObjectNotFound:
            raise StoreObjectNotFound(key, "version not published (no manifest)") from None
        return versions.parse_manifest(raw, key, version)

    def read_version_file(self, prefix: str, version: str, name: str, verify: bool = True) -> bytes:
        """A file of a published version, checked against the manifest's size and sha256."""
        key = join_key(validate_prefix(prefix), validate_segment(version), validate_key(name))
        manifest = self.read_manifest(prefix, version)
        entry = manifest["files"].get(name)
        if entry is None:
            raise StoreObjectNotFound(key, f"not a file of version {version}")
        data = self.get(key)
        if verify:
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != entry["size"] or digest != entry["sha256"]:
                raise StoreIntegrityError(
                    f"{key}: content does not match the manifest (size {len(data)} vs "
                    f"{entry['size']}, sha256 {digest[:12]}… vs {entry['sha256'][:12]}…)"
                )
        return data

    @staticmethod
    def _write_version(
        target: ObjectStore,
        base: str,
        files: Mapping[str, bytes | Path],
        names: builtins.list[str],
        version: str,
        created_at: datetime,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        """Write the files under `base` in `target`, then the manifest; return the manifest."""
        written: dict[str, tuple[int, str]] = {}
        for name in names:
            source = files[name]
            if isinstance(source, Path):
                with source.open("rb") as handle:
                    info = target.put(join_key(base, name), handle)
            else:
                info = target.put(join_key(base, name), source)
            written[name] = (info.size, info.sha256 or "")
        manifest = versions.build_manifest(version, created_at, metadata, written)
        target.put(
            join_key(base, versions.MANIFEST_NAME),
            versions.encode_manifest(manifest),
            content_type=versions.MANIFEST_CONTENT_TYPE,
        )
        return manifest
