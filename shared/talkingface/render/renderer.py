"""The avatar renderer (`Renderer`): a trained landmark field, its occupancy grid and camera,
rendering whole frames for landmarks and head poses; `new_renderer` makes an untrained one
for a video (render.train trains it). Also the image metrics training and evaluation report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from talkingface.render.condition import landmark_bounds
from talkingface.render.config import RenderConfig
from talkingface.render.data import AvatarVideo, camera_rays, landmark_stats
from talkingface.render.field import LandmarkField
from talkingface.render.march import march_rays
from talkingface.render.patches import ssim_map
from talkingface.render.superres import SuperResolution, check_plate
from talkingface.render.torso import TorsoField
from talkingface.render.volume import OccupancyGrid, RayBatch, render_rays


@dataclass
class Renderer:
    """A trained (or training) avatar renderer: the field, its occupancy grid, the camera."""

    config: RenderConfig
    field: LandmarkField
    occupancy: OccupancyGrid
    K: torch.Tensor  # [3, 3] at config.size
    sr: SuperResolution | None = None  # config.sr_scale > 1: the NeRF's frames -> output size
    fast: bool = True
    """Render with `march.march_rays` (inference-only, per-ray compaction); False: with
    `volume.render_rays`, the training path (the reference the fast path is tested against)."""
    torso: TorsoField | None = None  # the torso layer under the head (config.torso, trained)

    @property
    def device(self) -> torch.device:
        return self.field.lm_mean.device

    @torch.no_grad()
    def render(
        self,
        lm3d: np.ndarray | torch.Tensor,
        R: np.ndarray | torch.Tensor,
        t: np.ndarray | torch.Tensor,
        background: np.ndarray | torch.Tensor,
        rays_per_batch: int = 1 << 15,
    ) -> tuple[torch.Tensor, int]:
        """Frames [B, H, W, 3] in [0, 1] for landmarks [B, 68, 3] and poses R [B, 3, 3],
        t [B, 3] over the plate [H, W, 3]; also the network evaluations spent. H is
        `config.output_size`: with super-resolution the NeRF renders the head at
        `config.size` over black and `sr` takes it up over the plate (render.superres)."""
        dev = self.device
        lm3d = torch.as_tensor(np.asarray(lm3d), dtype=torch.float32, device=dev)
        R = torch.as_tensor(np.asarray(R), dtype=torch.float32, device=dev)
        t = torch.as_tensor(np.asarray(t), dtype=torch.float32, device=dev)
        bg = torch.as_tensor(np.asarray(background), dtype=torch.float32, device=dev)
        size = self.config.size
        if self.sr is not None:
            plate = check_plate(bg, size, self.config.sr_scale)
            bg = torch.zeros(size, size, 3, device=dev)  # the head layer, premultiplied
        b = lm3d.shape[0]
        cond = self.field.encode_landmarks(self.field.clamp_landmarks(lm3d))
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        xy = torch.stack([jj.reshape(-1) + 0.5, ii.reshape(-1) + 0.5], -1).float().to(dev)
        frame = torch.arange(b, device=dev).repeat_interleave(size * size)
        xy_all = xy.repeat(b, 1)
        if self.torso is not None:  # the head composites over the torso over the plate
            bg_all = self.torso.layer(R, t, bg).reshape(-1, 3)
        else:
            bg_all = bg.reshape(-1, 3).repeat(b, 1)
        out = torch.empty(b * size * size, 3, device=dev)
        alpha = torch.empty(b * size * size, device=dev)
        spent = 0
        for lo in range(0, out.shape[0], rays_per_batch):
            sl = slice(lo, lo + rays_per_batch)
            f = frame[sl]
            origins, dirs = camera_rays(self.K, R[f], t[f], xy_all[sl])
            if self.fast:
                result = march_rays(self.field, origins, dirs, f, cond, bg_all[sl],
                                    self.occupancy, self.config.samples,
                                    self.config.stop_transmittance)  # fmt: skip
                out[sl], alpha[sl] = result.rgb, result.alpha
                spent += result.samples
                continue
            result = render_rays(
                self.field,
                RayBatch(origins, dirs, cond[f], bg_all[sl]),
                self.occupancy,
                self.config.samples,
                self.config.chunks,
                self.config.stop_transmittance,
            )
            out[sl], alpha[sl] = result.rgb, result.alpha
            spent += result.samples
        out = out.reshape(b, size, size, 3).clamp(0, 1)  # with sr: <= alpha, as premultiplied
        if self.sr is not None:
            out = torch.cat([self.sr(out[i : i + 1], alpha.reshape(b, size, size)[i : i + 1],
                                     plate[None]) for i in range(b)])  # fmt: skip
        return out, spent


def new_renderer(config: RenderConfig, video: AvatarVideo, device: str = "cpu") -> Renderer:
    lo, hi = video.train
    mean, std = landmark_stats(video.lm3d[lo:hi])
    bounds = landmark_bounds(video.lm3d[lo:hi], config.lm_clamp)
    field_ = LandmarkField(config, torch.from_numpy(mean), torch.from_numpy(std),
                           *(torch.from_numpy(b) for b in bounds), frames=hi - lo)  # fmt: skip
    occupancy = OccupancyGrid(config.occupancy_res, config.bound)
    sr = SuperResolution.from_config(config) if config.sr_scale > 1 else None
    renderer = Renderer(config, field_, occupancy, torch.from_numpy(video.K), sr=sr)
    renderer.field.to(device)
    if sr is not None:
        sr.to(device)
    renderer.occupancy.to(device)
    renderer.K = renderer.K.to(device)
    return renderer


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of images [B, H, W, 3] in [0, 1] (11-pixel Gaussian window, sigma 1.5)."""
    x = a.permute(0, 3, 1, 2).double()
    y = b.permute(0, 3, 1, 2).double()
    return float(ssim_map(x, y, taps=11, sigma=1.5, padding=5)[..., 5:-5, 5:-5].mean())
