"""Avatar bundles in the object store: where they live, which version a request means, and
reading their files with every failure mapped to a stable error code (BRIEF §4).

An avatar bundle is a versioned publish (`ObjectStore.publish_version`) under
`avatars/<avatar_id>`: every file under `avatars/<avatar_id>/<version>/`, `manifest.json`
(sizes and sha256 of each file, plus metadata) written last. Each stage reads its own part:

    postnet/model.safetensors, postnet/config.json      motion (talkingface.motion.bundle)
    projection/index.safetensors, projection/config.json  landmark projection
                                                        (talkingface.landmarks.bundle)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talkingface.errors import TalkingFaceError
from talkingface.storage.errors import (
    InvalidKey,
    StoreError,
    StoreIntegrityError,
    StoreObjectNotFound,
    as_talkingface_error,
)
from talkingface.storage.fetch import write_file_atomic
from talkingface.storage.keys import validate_segment

if TYPE_CHECKING:
    from talkingface.storage.base import ObjectStore

AVATARS = "avatars"


def avatar_prefix(avatar_id: str) -> str:
    """`avatars/<avatar_id>`; an id that is not one valid key segment is INVALID_REQUEST."""
    try:
        return f"{AVATARS}/{validate_segment(avatar_id)}"
    except InvalidKey as exc:
        raise TalkingFaceError("INVALID_REQUEST", f"invalid avatar id: {exc.reason}") from None


def resolve_version(store: ObjectStore, avatar_id: str, version: str = "") -> str:
    """The published version to use: `version`, or the latest when it is empty.

    AVATAR_NOT_FOUND when the avatar has no published version, AVATAR_VERSION_NOT_FOUND
    when the avatar exists but not that version.
    """
    prefix = avatar_prefix(avatar_id)
    if version:
        try:
            validate_segment(version)
        except InvalidKey as exc:
            raise TalkingFaceError(
                "INVALID_REQUEST", f"invalid avatar version: {exc.reason}"
            ) from None
    try:
        if version:
            try:
                store.read_manifest(prefix, version)
                return version
            except StoreObjectNotFound:
                pass
            except StoreIntegrityError as exc:
                raise corrupt(avatar_id, version, "manifest", exc) from None
        latest = store.latest_version(prefix)
    except StoreError as exc:
        raise as_talkingface_error(exc) from None
    if latest is None:
        raise TalkingFaceError("AVATAR_NOT_FOUND", f"avatar {avatar_id!r} has no published version")
    if version:
        raise TalkingFaceError(
            "AVATAR_VERSION_NOT_FOUND", f"avatar {avatar_id!r} has no published version {version!r}"
        )
    return latest


def read_manifest(store: ObjectStore, avatar_id: str, version: str) -> dict[str, Any]:
    """The manifest of a resolved version (AVATAR_VERSION_NOT_FOUND if deleted since)."""
    try:
        return store.read_manifest(avatar_prefix(avatar_id), version)
    except StoreObjectNotFound:
        raise TalkingFaceError(
            "AVATAR_VERSION_NOT_FOUND", f"avatar {avatar_id!r} has no published version {version!r}"
        ) from None
    except StoreIntegrityError as exc:
        raise corrupt(avatar_id, version, "manifest", exc) from None
    except StoreError as exc:
        raise as_talkingface_error(exc) from None


def require_files(
    manifest: dict[str, Any], names: tuple[str, ...], avatar_id: str, version: str, hint: str
) -> None:
    """AVATAR_NOT_READY unless the version holds every file of `names`."""
    missing = [name for name in names if name not in manifest["files"]]
    if missing:
        raise TalkingFaceError(
            "AVATAR_NOT_READY",
            f"avatar {avatar_id!r} version {version} lacks {', '.join(missing)}; {hint}",
        )


def read_file(store: ObjectStore, avatar_id: str, version: str, name: str, what: str) -> bytes:
    """A file of a published version, checked against its manifest entry."""
    try:
        return store.read_version_file(avatar_prefix(avatar_id), version, name)
    except (StoreIntegrityError, StoreObjectNotFound) as exc:
        raise corrupt(avatar_id, version, what, exc) from None
    except StoreError as exc:
        raise as_talkingface_error(exc) from None


def corrupt(avatar_id: str, version: str, what: str, exc: BaseException) -> TalkingFaceError:
    return TalkingFaceError(
        "AVATAR_BUNDLE_CORRUPT", f"avatar {avatar_id!r} version {version}: {what} unusable: {exc}"
    )


def fetch_files(
    store: ObjectStore,
    avatar_id: str,
    version: str,
    manifest: dict[str, Any],
    names: tuple[str, ...],
    directory: Path,
    what: str,
) -> None:
    """Copy the bundle files `names` (all under one folder, e.g. `renderer/...`) of a version
    into `directory` (by base name) unless a copy that matches the manifest is already there.
    Versions are immutable, so a checked copy is as good as the store's; a damaged one is
    fetched again. Files are written to a temporary name and renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        entry = manifest["files"][name]
        path = directory / Path(name).name
        if (
            path.is_file()
            and path.stat().st_size == entry["size"]
            and sha256_of(path) == entry["sha256"]
        ):
            continue
        write_file_atomic(path, read_file(store, avatar_id, version, name, what))


def sha256_of(source: Path | bytes) -> str:
    """Hex sha256 of a file (read in 1 MiB blocks) or of bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    with Path(source).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
