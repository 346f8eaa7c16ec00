"""An avatar's projection index in its bundle, and how the projection service loads it.

A bundle version that carries a projection index holds (talkingface.bundle for the layout)

    avatars/<avatar_id>/<version>/projection/index.safetensors   frames [N, 204] float32,
                                      mean [204], components [d, 204], threshold [1] float64
    avatars/<avatar_id>/<version>/projection/config.json         what the index is (below)

Only the training landmarks, the PCA and the threshold travel; the search index (exact
flat search up to `EXACT_MAX` frames, FAISS HNSW above) is rebuilt from them on load, so a
stored index can never disagree with the library version that reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talkingface.bundle import (
    avatar_prefix,
    corrupt,
    read_file,
    read_manifest,
    require_files,
    resolve_version,
)
from talkingface.errors import TalkingFaceError
from talkingface.landmarks.projection import DIM, ProjectionIndex

if TYPE_CHECKING:
    from talkingface.storage.base import ObjectStore

PROJECTION_DIR = "projection"
PROJECTION_INDEX = f"{PROJECTION_DIR}/index.safetensors"
PROJECTION_CONFIG = f"{PROJECTION_DIR}/config.json"
PROJECTION_FILES = (PROJECTION_INDEX, PROJECTION_CONFIG)
FORMAT = "talkingface-projection"
FORMAT_VERSION = 1


def projection_files(index: ProjectionIndex) -> dict[str, bytes]:
    """The bundle files of an index (names -> contents), for a publish."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(a) for name, a in index.arrays().items()}
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "frames": len(index.frames),
        "pca_dims": int(index.components.shape[0]),
        "threshold_mm": index.threshold,
        "kind": index.kind,
    }
    return {
        PROJECTION_INDEX: save(arrays),
        PROJECTION_CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }


def index_from_files(index_bytes: bytes, config_bytes: bytes) -> ProjectionIndex:
    """Rebuild an index from its two bundle files (ValueError when they do not fit)."""
    from safetensors.numpy import load

    config = json.loads(config_bytes)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError("projection/config.json does not describe a projection index")
    if int(config.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"projection index format version {config.get('version')} is newer than this "
            f"release reads ({FORMAT_VERSION}); upgrade the projection service"
        )
    arrays = load(index_bytes)
    for name in ("frames", "mean", "components", "threshold"):
        if name not in arrays:
            raise ValueError(f"projection/index.safetensors has no {name!r}")
    frames, components = arrays["frames"], arrays["components"]
    if frames.ndim != 2 or frames.shape[1] != DIM or len(frames) < 1:
        raise ValueError(f"training landmarks of shape {list(frames.shape)}, not [N, {DIM}]")
    if components.ndim != 2 or components.shape[1] != DIM:
        raise ValueError(f"PCA components of shape {list(components.shape)}, not [d, {DIM}]")
    if len(frames) != int(config.get("frames", len(frames))):
        raise ValueError(f"{len(frames)} training frames but config.json says {config['frames']}")
    return ProjectionIndex.from_arrays(arrays)


def avatar_index(avatar_dir: Path | str) -> ProjectionIndex:
    """The projection index of a SynthTalk avatar: its `train` split's landmarks."""
    from talkingface.data.synthtalk.fileformat import read_avatar

    avatar = read_avatar(avatar_dir)
    lo, hi = avatar["manifest"]["splits"]["train"]
    return ProjectionIndex.build(np.asarray(avatar["lm3d"][lo:hi], np.float32))


def publish_projection(
    store: ObjectStore,
    avatar_id: str,
    index: ProjectionIndex,
    extra_files: dict[str, bytes | Path] | None = None,
) -> str:
    """Publish the index (plus `extra_files`) as a new version of the avatar; its id."""
    files: dict[str, bytes | Path] = dict(projection_files(index))
    for name, source in (extra_files or {}).items():
        if name in files:
            raise ValueError(f"extra file {name!r} would replace the projection index")
        files[name] = source
    metadata: dict[str, Any] = {
        "projection": {"frames": len(index.frames), "threshold_mm": round(index.threshold, 4)}
    }
    return store.publish_version(avatar_prefix(avatar_id), files, metadata=metadata).version


def load_projection(
    store: ObjectStore, avatar_id: str, version: str = ""
) -> tuple[ProjectionIndex, str]:
    """The avatar's projection index at `version` (the latest when empty) and that version.

    Errors: INVALID_REQUEST (bad id or version), AVATAR_NOT_FOUND, AVATAR_VERSION_NOT_FOUND,
    AVATAR_NOT_READY (the version has no index), AVATAR_BUNDLE_CORRUPT (files that do not
    match the manifest or do not load), store failures by their own codes.
    """
    version = resolve_version(store, avatar_id, version)
    manifest = read_manifest(store, avatar_id, version)
    require_files(
        manifest, PROJECTION_FILES, avatar_id, version,
        "its bundle was published without a projection index (train the avatar again)",
    )  # fmt: skip
    index_bytes = read_file(store, avatar_id, version, PROJECTION_INDEX, "projection index")
    config_bytes = read_file(store, avatar_id, version, PROJECTION_CONFIG, "projection index")
    try:
        index = index_from_files(index_bytes, config_bytes)
    except TalkingFaceError:
        raise
    except Exception as exc:  # safetensors, json, shapes, faiss
        raise corrupt(avatar_id, version, "projection index", exc) from None
    return index, version
