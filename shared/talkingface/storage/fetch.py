"""Model checkpoints kept in the object store, mirrored into the local cache directory.

A checkpoint setting (TALKINGFACE_HUBERT_CHECKPOINT, TALKINGFACE_MOTION_CHECKPOINT) names
either a local directory or `store:PREFIX`. `local_checkpoint` turns the latter into
`<cache_dir>/checkpoints/<PREFIX with / as _>`, downloading what is missing or changed:
every object under `PREFIX/` becomes the file at its key below the prefix. Files are written
to a temporary name and renamed, so a crash or a concurrent fetch never leaves a torn file;
a hidden `.fetched.json` records the sha256 of each file fetched, so a checkpoint
re-uploaded under the same prefix is fetched again even when its sizes did not change.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from talkingface.storage.errors import StoreObjectNotFound
from talkingface.storage.keys import validate_prefix

if TYPE_CHECKING:
    from talkingface.config import Settings
    from talkingface.storage.base import ObjectStore

STORE_SCHEME = "store:"
FETCHED = ".fetched.json"


def store_prefix(source: str) -> str | None:
    """The prefix of a `store:PREFIX` checkpoint setting, or None for a local path."""
    if not source.startswith(STORE_SCHEME):
        return None
    return validate_prefix(source.removeprefix(STORE_SCHEME).strip("/"))


def fetch_prefix(store: ObjectStore, prefix: str, target: Path) -> Path:
    """Mirror every object under `prefix/` into `target`; returns `target`.

    Files already there are kept when their size and recorded sha256 still match the store.
    Raises StoreObjectNotFound when nothing is stored under the prefix.
    """
    prefix = validate_prefix(prefix)
    infos = store.list(prefix, detailed=True)
    if not infos:
        raise StoreObjectNotFound(prefix, "no checkpoint files stored under the prefix")
    target.mkdir(parents=True, exist_ok=True)
    record_path = target / FETCHED
    try:
        record: dict[str, str | None] = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    current: dict[str, str | None] = {}
    for info in infos:
        name = info.key[len(prefix) + 1 :]
        path = target / name
        fresh = (
            path.is_file()
            and path.stat().st_size == info.size
            and name in record
            and record[name] == info.sha256
        )
        if not fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                store.download(info.key, tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        current[name] = info.sha256
    for name in set(record) - set(current):
        # Fetched earlier but gone from the store since: not part of this checkpoint.
        (target / name).unlink(missing_ok=True)
    tmp = record_path.with_name(f"{FETCHED}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(current, indent=1, sort_keys=True))
    os.replace(tmp, record_path)
    return target


def local_checkpoint(source: str, settings: Settings, store: ObjectStore | None = None) -> str:
    """A checkpoint setting as a local directory: unchanged, or fetched from the store."""
    prefix = store_prefix(source)
    if prefix is None:
        return source
    if store is None:
        from talkingface.storage.factory import store_from_settings

        store = store_from_settings(settings)
    target = Path(settings.cache_dir) / "checkpoints" / prefix.replace("/", "_")
    return str(fetch_prefix(store, prefix, target))


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, then rename it into place: a reader
    (or a crash) sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
