"""An avatar's video as renderer training data: frames, masks, background plate, camera, the
head pose per frame and the driving landmarks; camera rays in the head's canonical frame.

The renderer models the head in its canonical frame (`talkingface.lm3d`: origin at the head
centre, 1 unit = 10 cm): every frame's camera is placed from the recorded head pose
(`p_cam = R @ p_canonical + t`, OpenCV axes), so a pixel's ray in canonical space starts at
`-R^T t` and points along `R^T K^-1 (x, y, 1)`, with pixel (row i, column j) centred at
(x, y) = (j + 0.5, i + 0.5) as SynthTalk's `lm2d` is. Everything rigid with the head (skull,
hair, ears, neck) is then static in that frame, and the landmarks say how the face deforms.

`load_avatar(dir, size)` reads a SynthTalk avatar directory (docs/synthtalk.md) and, when
`size` is smaller than the video, box-filters the frames down by an integer factor and
scales the intrinsics to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from talkingface.lm3d import NUM_LANDMARKS

DIM = NUM_LANDMARKS * 3


@dataclass
class AvatarVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    masks: np.ndarray  # bool [T, H, W]: head pixels
    background: np.ndarray  # float32 [H, W, 3] in [0, 1]
    K: np.ndarray  # float32 [3, 3] at this size
    R: np.ndarray  # float32 [T, 3, 3]
    t: np.ndarray  # float32 [T, 3]
    lm3d: np.ndarray  # float32 [T, 68, 3]
    lm2d: np.ndarray  # float32 [T, 68, 2] at this size
    train: tuple[int, int]  # [start, end) frame range
    val: tuple[int, int]
    torso: np.ndarray | None = None  # bool [T, H, W]: neck and shoulder pixels, when recorded

    @property
    def size(self) -> int:
        return int(self.frames.shape[1])

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def load_avatar(root: Path | str, size: int | None = None) -> AvatarVideo:
    """A SynthTalk avatar directory, at `size` x `size` pixels (default: as recorded)."""
    from talkingface.data.synthtalk.fileformat import read_avatar

    avatar = read_avatar(root)
    native = int(avatar["frames"].shape[1])
    size = size or native
    if native % size:
        raise ValueError(
            f"{root}: the video is {native} x {native}; a training size must divide it "
            f"(asked for {size})"
        )
    factor = native // size
    frames = downsample(np.asarray(avatar["frames"]), factor)
    masks = downsample(np.asarray(avatar["masks"], np.uint8)[..., None] * 255, factor)[..., 0]
    torso = None
    if "torso_masks" in avatar:
        torso = downsample(np.asarray(avatar["torso_masks"], np.uint8)[..., None] * 255, factor)
        torso = (torso[..., 0] >= 128) & (masks < 128)  # a seam pixel half and half: head
    background = downsample(np.asarray(avatar["background"])[None], factor)[0]
    K = np.asarray(avatar["K"], np.float32).copy()
    K[:2] /= factor
    splits = avatar["manifest"]["splits"]
    return AvatarVideo(
        frames=frames,
        masks=masks >= 128,
        background=background.astype(np.float32) / 255.0,
        K=K,
        R=np.asarray(avatar["R"], np.float32),
        t=np.asarray(avatar["t"], np.float32),
        lm3d=np.asarray(avatar["lm3d"], np.float32),
        lm2d=np.asarray(avatar["lm2d"], np.float32) / factor,
        train=(int(splits["train"][0]), int(splits["train"][1])),
        val=(int(splits["val"][0]), int(splits["val"][1])),
        torso=torso,
    )


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter uint8 images [T, H, W, C] by an integer factor (rounded back to uint8)."""
    if factor == 1:
        return np.ascontiguousarray(images)
    t, h, w, c = images.shape
    out = np.empty((t, h // factor, w // factor, c), np.uint8)
    for i in range(0, t, 256):  # bounded memory for long videos
        block = images[i : i + 256].astype(np.float32)
        block = block.reshape(-1, h // factor, factor, w // factor, factor, c).mean((2, 4))
        out[i : i + 256] = np.clip(np.rint(block), 0, 255).astype(np.uint8)
    return out


def camera_rays(
    K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, xy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays in canonical head space through image points `xy` [N, 2] (pixel units, centres
    at +0.5), for per-ray poses R [N, 3, 3], t [N, 3]: (origins [N, 3], unit directions)."""
    ones = torch.ones_like(xy[:, :1])
    cam = torch.cat(
        [(xy[:, :1] - K[0, 2]) / K[0, 0], (xy[:, 1:2] - K[1, 2]) / K[1, 1], ones], dim=1
    )
    rt = R.transpose(1, 2)  # canonical <- camera
    dirs = torch.bmm(rt, cam[:, :, None])[..., 0]
    origins = -torch.bmm(rt, t[:, :, None])[..., 0]
    return origins, dirs / dirs.norm(dim=1, keepdim=True)


def ray_box(
    origins: torch.Tensor, dirs: torch.Tensor, bound: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays enter and leave the cube [-bound, bound]^3: (near, far, hit) per ray."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=1)
    return near, far, far > near


def landmark_stats(lm3d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-value mean and std [204] of training landmarks (std floored for still points)."""
    flat = np.asarray(lm3d, np.float64).reshape(len(lm3d), DIM)
    mean, std = flat.mean(0), flat.std(0)
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)
