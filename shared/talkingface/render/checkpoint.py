"""A trained renderer on disk and in an avatar bundle.

    renderer/model.safetensors   the field's weights and landmark normalisation statistics
                                 (`field.*`), the occupancy grid (`occupancy.*`), with
                                 super-resolution (`sr_scale` > 1) its network (`sr.*`)
                                 and, when trained, the torso layer (`torso.*`)
    renderer/track.safetensors   the recorded pose track R [T, 3, 3], t [T, 3] (replayed at
                                 inference), intrinsics K [3, 3] at the NeRF's size, the
                                 background plate [H, W, 3] in [0, 1] at the output size
    renderer/config.json         the RenderConfig, the grid backend it trained with, metrics

written in that order, config.json last (a directory without it is incomplete). An avatar
bundle (`talkingface.bundle`) carries these next to `projection/` and, when trained,
`postnet/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkingface.render.config import RenderConfig
from talkingface.render.field import LandmarkField
from talkingface.render.files import CONFIG, TRACK, WEIGHTS
from talkingface.render.files import FILES as FILES  # re-exported: rck.FILES
from talkingface.render.files import RENDERER_DIR as RENDERER_DIR
from talkingface.render.renderer import Renderer
from talkingface.render.superres import SuperResolution
from talkingface.render.torso import TorsoField
from talkingface.render.volume import OccupancyGrid
from talkingface.storage.fetch import write_file_atomic

FORMAT = "talkingface-renderer"
FORMAT_VERSION = 1
POSE_MODES = ("loop", "pingpong")


def save_renderer(
    directory: Path | str,
    renderer: Renderer,
    R: np.ndarray,
    t: np.ndarray,
    background: np.ndarray,
    metrics: dict[str, Any] | None = None,
) -> Path:
    from safetensors.numpy import save
    from safetensors.torch import save as save_torch

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).unlink(missing_ok=True)  # incomplete until it is written again
    tensors = {
        f"field.{k}": v.detach().cpu().contiguous() for k, v in renderer.field.state_dict().items()
    }
    tensors.update(
        {
            f"occupancy.{k}": v.detach().cpu().contiguous()
            for k, v in renderer.occupancy.state_dict().items()
        }
    )
    if renderer.sr is not None:
        tensors.update({f"sr.{k}": v.detach().cpu().contiguous()
                        for k, v in renderer.sr.state_dict().items()})  # fmt: skip
    if renderer.torso is not None:
        tensors.update(
            {
                f"torso.{k}": v.detach().cpu().contiguous()
                for k, v in renderer.torso.state_dict().items()
            }
        )
    write_file_atomic(out / WEIGHTS, save_torch(tensors))
    track = {
        "R": np.ascontiguousarray(R, np.float32),
        "t": np.ascontiguousarray(t, np.float32),
        "K": renderer.K.detach().cpu().numpy().astype(np.float32),
        "background": np.ascontiguousarray(background, np.float32),
    }
    write_file_atomic(out / TRACK, save(track))
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": renderer.config.to_dict(),
        "backend": renderer.field.backend,
        "metrics": metrics or {},
    }
    write_file_atomic(out / CONFIG, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out


def read_meta(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG}; not a trained renderer")
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} does not describe a renderer")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: renderer format {meta['version']} is newer than this release")
    return meta


def load_renderer(
    directory: Path | str, device: str | torch.device = "cpu", implementation: str | None = None
) -> tuple[Renderer, dict[str, np.ndarray]]:
    """(the renderer, its track arrays R, t, K, background) from a renderer directory.

    The grids load on the backend they were trained with unless `implementation` says
    otherwise; weights written by one grid backend do not load into the other."""
    from safetensors.numpy import load_file
    from safetensors.torch import load_file as load_torch

    directory = Path(directory)
    meta = read_meta(directory)
    config = RenderConfig.from_dict(meta["config"])
    trained_on = meta.get("backend", "torch")
    config = config.with_backend(implementation or trained_on, strict=implementation is None)
    tensors = load_torch(str(directory / WEIGHTS))
    field_state = {k[6:]: v for k, v in tensors.items() if k.startswith("field.")}
    occ_state = {k[10:]: v for k, v in tensors.items() if k.startswith("occupancy.")}
    sr_state = {k[3:]: v for k, v in tensors.items() if k.startswith("sr.")}
    mean = field_state["lm_mean"]
    unbounded = torch.full_like(mean, torch.inf)  # bundles written before the bounds: no clamp
    field_state.setdefault("lm_lo", -unbounded)
    field_state.setdefault("lm_hi", unbounded)
    codes = field_state.get("appearance.weight")  # with appearance_dim: one per frame
    frames = 0 if codes is None else len(codes)
    field = LandmarkField(config, mean, field_state["lm_std"], field_state["lm_lo"],
                          field_state["lm_hi"], frames=frames)  # fmt: skip
    if field.backend != trained_on:
        raise ValueError(
            f"{directory}: trained with the {trained_on} grid backend, which cannot load "
            f"here ({field.backend} is available)"
        )
    field.load_state_dict(field_state, strict=True)
    occupancy = OccupancyGrid(config.occupancy_res, config.bound)
    occupancy.load_state_dict(occ_state, strict=True)
    sr = None
    if config.sr_scale > 1:  # bundles written before super-resolution have sr_scale 1
        sr = SuperResolution.from_config(config)
        sr.load_state_dict(sr_state, strict=True)
        sr.eval().to(device)
    track = load_file(str(directory / TRACK))
    torso_state = {k[6:]: v for k, v in tensors.items() if k.startswith("torso.")}
    torso = None
    if torso_state:  # a bundle trained with a torso layer
        torso = TorsoField(config.torso_model, torso_state["pose_mean"], torso_state["pose_std"],
                           torso_state["codes"].shape[0])  # fmt: skip
        torso.load_state_dict(torso_state, strict=True)
        torso = torso.eval().to(device)
    renderer = Renderer(config, field.eval(), occupancy, torch.from_numpy(track["K"]),
                        sr=sr, torso=torso)  # fmt: skip
    renderer.field.to(device)
    renderer.occupancy.to(device)
    renderer.K = renderer.K.to(device)
    return renderer, track


def track_poses(track: dict[str, np.ndarray], video: Any) -> tuple[np.ndarray, np.ndarray]:
    """The poses (R, t) to render `video`'s frames with: the renderer's saved track where it
    covers the video (the avatar's poses, or, refined with the field, the training frames'
    own and the held-out frames' predicted from them), else the avatar's."""
    if len(track["R"]) == len(video):
        return np.asarray(track["R"]), np.asarray(track["t"])
    return np.asarray(video.R), np.asarray(video.t)


def pose_indices(
    frames: int, track_length: int, mode: str = "pingpong", start: int = 0
) -> np.ndarray:
    """Which recorded pose each of `frames` output frames uses: the track replayed in order
    from `start`, wrapping around (`loop`) or back and forth (`pingpong`, no jump)."""
    if mode not in POSE_MODES:
        raise ValueError(f"pose mode must be one of {POSE_MODES}, got {mode!r}")
    if track_length <= 0:
        raise ValueError("the pose track is empty")
    i = np.arange(frames, dtype=np.int64) + int(start)
    if mode == "loop" or track_length == 1:
        return i % track_length
    period = 2 * (track_length - 1)
    k = i % period
    return np.where(k < track_length, k, period - k)
