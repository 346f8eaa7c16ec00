"""Super-resolution of the rendered frames (the `full` preset: a 256 x 256 NeRF, 512 x 512
output), a small per-avatar conv network as in GeneFace++'s code.

The network (`SuperResolution`, C = `sr_width`, s = `sr_scale`) works on the NeRF's head
layer of side H (rendered over black: colours premultiplied by the accumulated alpha) and
that alpha:

    input [B, 4, H, W]   premultiplied RGB of the head, alpha
    conv 3x3 4 -> C, ReLU                                     at H x W
    2 residual blocks: conv 3x3 C -> C, ReLU, conv 3x3 C -> C, + input
    conv 3x3 C -> 3 s^2, pixel shuffle x s -> residual [B, 3, sH, sW]
    head [B, sH, sW, 3] = bilinear upsample of the RGB input + a * residual

Every convolution runs at the low resolution (pads by replicating the edge, so a training
patch and a whole frame see the same kind of border); the last one starts at zero, so an
untrained network is exactly the bilinear upsample. C = 32, s = 2: 41,644 parameters.

Output: out = head + (1 - a) * plate, clamped to [0, 1], with a the bilinear upsample of
the alpha and the plate at the output size: the head layer composited over the sharp plate.
A pixel whose low-resolution neighbours all missed the head (a = 0) is the plate exactly, as
without super-resolution. (A first version ran the network on the frame composited at low
resolution and blended a * SR + (1 - a) * plate: that counts the plate twice where the head
is partly transparent; untrained, it lost 1 dB of head PSNR to the bilinear upsample.)

Training (`SRTraining`, called every step by `render.train.train` from step
ceil(`sr_start` x `steps`)): 4 patches of `sr_patch`^2 NeRF pixels per step (contiguous
windows of training frames centred on a random head pixel) are rendered without gradient
(no jitter, as at inference), taken up by the network, composited over the plate and
compared (MSE) with the ground truth at the output size; Adam at `sr_lr`, decayed like the
NeRF's rates. The NeRF learns from its own rays only: the network follows it, never the
other way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talkingface.render.config import RenderConfig
from talkingface.render.data import AvatarVideo, camera_rays
from talkingface.render.volume import RayBatch, render_rays

PATCHES = 4  # patches per training step


def _conv(a: int, b: int) -> nn.Conv2d:
    return nn.Conv2d(a, b, 3, padding=1, padding_mode="replicate")


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(width, width), nn.ReLU(inplace=True),
                                  _conv(width, width))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SuperResolution(nn.Module):
    """Low-resolution frames and alpha -> frames `scale` times larger (module docstring)."""

    def __init__(self, width: int = 32, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.head = nn.Sequential(_conv(4, width), nn.ReLU(inplace=True))
        self.body = nn.Sequential(_Residual(width), _Residual(width))
        self.tail = _conv(width, 3 * scale * scale)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    @classmethod
    def from_config(cls, config: RenderConfig) -> SuperResolution:
        return cls(config.sr_width, config.sr_scale)

    def forward(self, rgb: torch.Tensor, alpha: torch.Tensor, plate: torch.Tensor) -> torch.Tensor:
        """Output frames [B, sH, sW, 3] in [0, 1] of head layers [B, H, W, 3] (premultiplied
        colours), their alpha [B, H, W] and the plate [B or 1, sH, sW, 3] (module
        docstring)."""
        x = torch.cat([rgb, alpha[..., None]], dim=-1).permute(0, 3, 1, 2)
        residual = F.pixel_shuffle(self.tail(self.body(self.head(x))), self.scale)
        up = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        a = up[:, 3:]
        head = up[:, :3] + a * residual
        return (head.permute(0, 2, 3, 1) + (1 - a.permute(0, 2, 3, 1)) * plate).clamp(0, 1)


def check_plate(plate: torch.Tensor, size: int, scale: int) -> torch.Tensor:
    """The plate, when it is [size * scale, size * scale, 3] (the output size)."""
    if tuple(plate.shape) != (size * scale, size * scale, 3):
        raise ValueError(
            f"the background plate is {list(plate.shape)}; this renderer's output is "
            f"{size * scale} x {size * scale} (a {size} x {size} NeRF, super-resolution x{scale})"
        )
    return plate


def patch_rays(renderer, frames_R: torch.Tensor, frames_t: torch.Tensor, corners: np.ndarray,
               patch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Rays of contiguous patch x patch windows (top-left corners [B, 2] as row, column) of
    B frames with poses R [B, 3, 3], t [B, 3]: origins, directions [B * patch^2, 3] and each
    ray's patch index, row-major within its window."""
    dev = renderer.device
    ii, jj = torch.meshgrid(torch.arange(patch), torch.arange(patch), indexing="ij")
    corner = torch.as_tensor(corners, dtype=torch.float32)
    x = jj.reshape(1, -1) + corner[:, 1:2] + 0.5
    y = ii.reshape(1, -1) + corner[:, 0:1] + 0.5
    xy = torch.stack([x.reshape(-1), y.reshape(-1)], -1).to(dev)
    which = torch.arange(len(corners), device=dev).repeat_interleave(patch * patch)
    origins, dirs = camera_rays(renderer.K, frames_R[which], frames_t[which], xy)
    return origins, dirs, which


class SRTraining:
    """Trains `renderer.sr` on rendered patches of the training frames (module docstring).

    `video` is the avatar at the NeRF's size, `hires` the same frames at the output size,
    `frames` the training frames (video indices; `step`'s pose refinement indexes them)."""

    def __init__(self, renderer, video: AvatarVideo, hires: AvatarVideo | None,
                 frames: np.ndarray, seed: int) -> None:  # fmt: skip
        config = renderer.config
        if hires is None or hires.size != config.output_size or video.size != config.size:
            got = "none" if hires is None else f"{hires.size} x {hires.size}"
            raise ValueError(
                f"super-resolution x{config.sr_scale} trains on the avatar's frames at "
                f"{config.output_size} x {config.output_size} (the NeRF's at {config.size}); "
                f"got {got} and {video.size} x {video.size}"
            )
        self.renderer, self.video, self.hires = renderer, video, hires
        self.frames = np.asarray(frames)
        self.patch = min(config.sr_patch, config.size)
        self.start = max(1, math.ceil(config.sr_start * config.steps))
        self.rng = np.random.default_rng(seed + 7)
        self.optimiser = torch.optim.Adam(renderer.sr.parameters(), lr=config.sr_lr)
        dev = renderer.device
        self.plate = check_plate(torch.from_numpy(hires.background).to(dev), config.size,
                                 config.sr_scale)  # fmt: skip
        self.losses: list[float] = []

    def pick(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` training rows and the top-left corners [count, 2] of windows centred on a
        random head pixel of each (anywhere when a frame has none), inside the frame."""
        rows = self.rng.integers(0, len(self.frames), count)
        size, p = self.video.size, self.patch
        corners = np.zeros((count, 2), np.int64)
        for n, row in enumerate(rows):
            ys, xs = np.nonzero(self.video.masks[self.frames[row]])
            k = self.rng.integers(0, len(ys)) if len(ys) else None
            centre = (ys[k], xs[k]) if k is not None else self.rng.integers(0, size, 2)
            corners[n] = np.clip(np.asarray(centre) - p // 2, 0, size - p)
        return rows, corners

    @torch.no_grad()
    def render_patches(self, rows: np.ndarray, corners: np.ndarray, refinement=None):
        """The NeRF's head layer over black [B, P, P, 3] and alpha [B, P, P] (no gradient)."""
        renderer, config, dev = self.renderer, self.renderer.config, self.renderer.device
        video_frames = torch.as_tensor(self.frames[rows], device=dev)
        R = torch.from_numpy(self.video.R[self.frames[rows]]).to(dev)
        t = torch.from_numpy(self.video.t[self.frames[rows]]).to(dev)
        if refinement is not None:
            R, t = refinement.apply(torch.as_tensor(rows, device=dev), video_frames, R, t)
        origins, dirs, which = patch_rays(renderer, R, t, corners, self.patch)
        cond = renderer.field.encode_landmarks(
            torch.from_numpy(self.video.lm3d[self.frames[rows]]).to(dev)
        )
        p = self.patch
        black = torch.zeros_like(origins)
        result = render_rays(renderer.field, RayBatch(origins, dirs, cond[which], black),
                             renderer.occupancy, config.samples, config.chunks,
                             config.stop_transmittance)  # fmt: skip
        return result.rgb.reshape(-1, p, p, 3), result.alpha.reshape(-1, p, p)

    def targets(self, rows: np.ndarray, corners: np.ndarray):
        """(ground truth [B, sP, sP, 3] in [0, 1], plate [B, sP, sP, 3]) at the output size."""
        s, p = self.renderer.config.sr_scale, self.patch * self.renderer.config.sr_scale
        truth = np.stack([self.hires.frames[self.frames[r], s * i : s * i + p, s * j : s * j + p]
                          for r, (i, j) in zip(rows, corners, strict=True)])  # fmt: skip
        plate = torch.stack([self.plate[s * i : s * i + p, s * j : s * j + p] for i, j in corners])
        dev = self.renderer.device
        return torch.from_numpy(truth).to(dev).float() / 255.0, plate

    def step(self, step: int, refinement=None) -> float | None:
        """One training step of the network from `self.start` on (its loss), else None."""
        if step < self.start:
            return None
        config = self.renderer.config
        for group in self.optimiser.param_groups:
            group["lr"] = config.sr_lr * 0.1 ** (step / max(1, config.steps))
        rows, corners = self.pick(PATCHES)
        rgb, alpha = self.render_patches(rows, corners, refinement)
        truth, plate = self.targets(rows, corners)
        loss = self.fit(rgb, alpha, plate, truth)
        self.losses.append(loss)
        return loss

    def fit(self, rgb, alpha, plate, truth) -> float:
        """One Adam step of the network on low-resolution patches and their ground truth."""
        loss = F.mse_loss(self.renderer.sr(rgb, alpha, plate), truth)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return float(loss.detach())
