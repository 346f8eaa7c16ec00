"""Where an avatar's postnet lives in its bundle, and how the motion service loads it.

Avatar bundles are versioned publishes (`ObjectStore.publish_version`) under
`avatars/<avatar_id>`; a version that carries a postnet holds

    avatars/<avatar_id>/<version>/postnet/model.safetensors
    avatars/<avatar_id>/<version>/postnet/config.json
    avatars/<avatar_id>/<version>/manifest.json        (written last: sizes and sha256)

Only the weights and config.json travel: the training history, curves and train state of a
postnet directory are not needed to generate. `load_postnet` copies the two files into
`<cache_dir>/avatars/<avatar_id>/<version>/postnet/` (versions are immutable; the copy is
checked against the manifest on every load) and maps every failure to a stable error code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talkingface.bundle import AVATARS, avatar_prefix, fetch_files, resolve_version, sha256_of
from talkingface.errors import TalkingFaceError
from talkingface.motion import checkpoint as ck
from talkingface.storage.errors import (
    StoreError,
    StoreIntegrityError,
    StoreObjectNotFound,
    as_talkingface_error,
)

if TYPE_CHECKING:
    import torch

    from talkingface.motion.infer import PostnetModel
    from talkingface.storage.base import ObjectStore

POSTNET_DIR = "postnet"
POSTNET_WEIGHTS = f"{POSTNET_DIR}/{ck.WEIGHTS}"
POSTNET_CONFIG = f"{POSTNET_DIR}/{ck.CONFIG}"
POSTNET_FILES = (POSTNET_WEIGHTS, POSTNET_CONFIG)


def postnet_files(postnet_dir: Path | str) -> dict[str, Path]:
    """The bundle names of a postnet directory's files -> the local files (for a publish)."""
    directory = Path(postnet_dir)
    files = {POSTNET_WEIGHTS: directory / ck.WEIGHTS, POSTNET_CONFIG: directory / ck.CONFIG}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {path.name}; not a trained postnet")
    return files


def publish_postnet(
    store: ObjectStore,
    avatar_id: str,
    postnet_dir: Path | str,
    extra_files: Mapping[str, bytes | Path] | None = None,
) -> str:
    """Publish the postnet (plus `extra_files`) as a new version of the avatar; its id."""
    prefix = avatar_prefix(avatar_id)
    files: dict[str, bytes | Path] = dict(postnet_files(postnet_dir))
    meta = ck.read_meta(postnet_dir)
    if meta.get("kind") != "postnet":
        raise ValueError(f"{postnet_dir}: holds a {meta.get('kind')!r} model, not a postnet")
    for name, source in (extra_files or {}).items():
        if name in files:
            raise ValueError(f"extra file {name!r} would replace the postnet's own")
        files[name] = source
    metadata = {
        "postnet": {
            "version": sha256_of(files[POSTNET_WEIGHTS])[:12],  # = PostnetModel.version
            "motion_version": meta.get("motion_version"),
            "feature_dim": meta.get("feature_dim"),
            "front_end": meta.get("front_end"),
            "use_pitch": meta.get("use_pitch"),
        }
    }
    return store.publish_version(prefix, files, metadata=metadata).version


def load_postnet(
    store: ObjectStore,
    avatar_id: str,
    version: str,
    cache_dir: Path | str,
    device: torch.device | str = "cpu",
) -> tuple[PostnetModel, str]:
    """The avatar's postnet at `version` (the latest when empty) and the version it came from.

    Errors: INVALID_REQUEST (bad id or version), AVATAR_NOT_FOUND, AVATAR_VERSION_NOT_FOUND,
    AVATAR_NOT_READY (the version has no postnet), AVATAR_BUNDLE_CORRUPT (files that do not
    match the manifest or do not load), store failures by their own codes.
    """
    from talkingface.motion.infer import PostnetModel

    version = resolve_version(store, avatar_id, version)
    prefix = avatar_prefix(avatar_id)
    try:
        manifest = store.read_manifest(prefix, version)
    except StoreObjectNotFound:
        # Deleted since it was resolved.
        raise TalkingFaceError(
            "AVATAR_VERSION_NOT_FOUND", f"avatar {avatar_id!r} has no published version {version!r}"
        ) from None
    except StoreIntegrityError as exc:
        raise _corrupt(avatar_id, version, exc) from None
    except StoreError as exc:
        raise as_talkingface_error(exc) from None
    missing = [name for name in POSTNET_FILES if name not in manifest["files"]]
    if missing:
        raise TalkingFaceError(
            "AVATAR_NOT_READY",
            f"avatar {avatar_id!r} version {version} has no postnet ({', '.join(missing)} "
            f"missing); train one with `talkingface train postnet --publish {avatar_id}`",
        )
    directory = Path(cache_dir) / AVATARS / avatar_id / version / POSTNET_DIR
    try:
        fetch_files(store, avatar_id, version, manifest, POSTNET_FILES, directory, "postnet")
    except OSError as exc:
        raise TalkingFaceError(
            "INTERNAL", f"cannot write the postnet cache {directory} (TALKINGFACE_CACHE_DIR): {exc}"
        ) from None
    try:
        meta = _read_json(directory / ck.CONFIG)
        if meta.get("kind") != "postnet":
            raise ValueError(f"config.json describes a {meta.get('kind')!r} model, not a postnet")
        model = PostnetModel.load(directory, device)
    except Exception as exc:  # safetensors, json, missing keys, mismatched shapes
        raise _corrupt(avatar_id, version, exc) from None
    return model, version


def _corrupt(avatar_id: str, version: str, exc: BaseException) -> TalkingFaceError:
    return TalkingFaceError(
        "AVATAR_BUNDLE_CORRUPT", f"avatar {avatar_id!r} version {version}: postnet unusable: {exc}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return value
