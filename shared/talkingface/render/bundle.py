"""Where an avatar's renderer lives in its bundle, and how the render service loads it.

A bundle version that carries a renderer holds (talkingface.bundle for the layout,
talkingface.render.checkpoint for what each file is)

    avatars/<avatar_id>/<version>/renderer/model.safetensors
    avatars/<avatar_id>/<version>/renderer/track.safetensors
    avatars/<avatar_id>/<version>/renderer/config.json

`load_renderer_bundle` copies the three files into
`<cache_dir>/avatars/<avatar_id>/<version>/renderer/` (versions are immutable; the copy is
checked against the manifest on every load, so a damaged cache is fetched again) and loads
them on the requested device, mapping every failure to a stable error code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from talkingface.bundle import (
    AVATARS,
    corrupt,
    fetch_files,
    read_manifest,
    require_files,
    resolve_version,
)
from talkingface.errors import TalkingFaceError
from talkingface.render.files import RENDERER_DIR, RENDERER_FILES

if TYPE_CHECKING:
    import numpy as np
    import torch

    from talkingface.render.renderer import Renderer
    from talkingface.storage.base import ObjectStore

TRACK_KEYS = ("R", "t", "K", "background")


def load_renderer_bundle(
    store: ObjectStore,
    avatar_id: str,
    version: str,
    cache_dir: Path | str,
    device: torch.device | str = "cpu",
) -> tuple[Renderer, dict[str, np.ndarray], str]:
    """The avatar's renderer at `version` (the latest when empty), its track arrays (R, t, K,
    background; talkingface.render.checkpoint) and the version they came from.

    Errors: INVALID_REQUEST (bad id or version), AVATAR_NOT_FOUND, AVATAR_VERSION_NOT_FOUND,
    AVATAR_NOT_READY (the version has no renderer, or one trained on a grid backend this
    process cannot run: tiny-cuda-nn weights need CUDA), AVATAR_BUNDLE_CORRUPT (files that do not
    match the manifest or do not load here), INTERNAL (the cache directory is not writable),
    store failures by their own codes.
    """
    version = resolve_version(store, avatar_id, version)
    manifest = read_manifest(store, avatar_id, version)
    require_files(
        manifest, RENDERER_FILES, avatar_id, version,
        f"train and publish one with `talkingface train avatar --publish {avatar_id}`",
    )  # fmt: skip
    directory = Path(cache_dir) / AVATARS / avatar_id / version / RENDERER_DIR
    try:
        fetch_files(store, avatar_id, version, manifest, RENDERER_FILES, directory, "renderer")
    except OSError as exc:
        raise TalkingFaceError(
            "INTERNAL",
            f"cannot write the renderer cache {directory} (TALKINGFACE_CACHE_DIR): {exc}",
        ) from None
    from talkingface.render import checkpoint as rck  # torch: only where a renderer loads
    from talkingface.render.encoding import EncoderBackendError

    try:
        renderer, track = rck.load_renderer(directory, device)
        check_track(renderer, track)
    except EncoderBackendError as exc:
        raise TalkingFaceError(
            "AVATAR_NOT_READY",
            f"avatar {avatar_id!r} version {version}: its renderer cannot run here ({exc}); "
            "serve it where that grid backend is available",
        ) from None
    except Exception as exc:  # safetensors, json, missing keys, shapes, a backend not here
        raise corrupt(avatar_id, version, "renderer", exc) from None
    return renderer, track, version


def check_track(renderer: Renderer, track: dict[str, Any]) -> None:
    missing = [key for key in TRACK_KEYS if key not in track]
    if missing:
        raise ValueError(f"track.safetensors lacks {', '.join(missing)}")
    size = renderer.config.output_size
    frames = track["R"].shape[0]
    if frames < 1 or track["R"].shape != (frames, 3, 3) or track["t"].shape != (frames, 3):
        raise ValueError(
            f"pose track of shapes R {list(track['R'].shape)}, t {list(track['t'].shape)}"
        )
    if track["background"].shape != (size, size, 3):
        raise ValueError(
            f"background plate of shape {list(track['background'].shape)}, not [{size}, {size}, 3]"
        )
