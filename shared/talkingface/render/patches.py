"""The lip patch loss: each training step also renders a contiguous window of rays around the
mouth of one training frame and compares it with the real pixels as an image.

The official GeneFace++ code renders a patch around the lips and adds LPIPS on it late in
training. LPIPS needs pretrained VGG/AlexNet weights, which cannot be downloaded here, so this
module uses 1 - SSIM (`ssim_loss`: Gaussian window, sigma 1.5, 7 taps, valid positions only):
like LPIPS it scores local structure and contrast rather than per-pixel colour, so it rewards
the teeth, lip edges and mouth cavity that a per-pixel MSE over mostly-flat skin averages away.
It needs no weights and is differentiable. The per-pixel MSE still covers the patch's rays.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from talkingface.lm3d import OUTER_LIPS

SSIM_TAPS = 7
SSIM_SIGMA = 1.5
PATCH_JITTER = 0.15  # of the patch side: the window's centre moves around the mouth centre


def gaussian_window(channels: int, taps: int, sigma: float, dtype, device) -> torch.Tensor:
    """A normalised 2-D Gaussian [channels, 1, taps, taps] for a depthwise conv2d."""
    coords = torch.arange(taps, dtype=dtype, device=device) - (taps - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, taps, taps).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor, taps: int = SSIM_TAPS, sigma: float = SSIM_SIGMA,
             padding: int = 0) -> torch.Tensor:  # fmt: skip
    """Per-position SSIM of image batches [B, C, H, W] (Gaussian window; C1, C2 for [0, 1])."""
    window = gaussian_window(x.shape[1], taps, sigma, x.dtype, x.device)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, padding=padding, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM of image batches [B, H, W, 3] in [0, 1] (H, W >= 7): 0 for identical
    patches, up to 2; differentiable in both."""
    return 1.0 - ssim_map(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)).mean()


class LipPatches:
    """Windows of `side` x `side` pixels around the mouth of random training frames, as flat
    pixel indices (row f of the training frames: f * size^2 + i * size + j, row-major in the
    window) for `RaySampler.gather`."""

    def __init__(self, lm2d: np.ndarray, size: int, side: int, seed: int) -> None:
        if side > size:
            raise ValueError(f"lip patch of {side} pixels does not fit a {size}-pixel frame")
        self.size, self.side = size, side
        self.centres = torch.from_numpy(np.asarray(lm2d, np.float64)[:, OUTER_LIPS].mean(axis=1))
        self.generator = torch.Generator().manual_seed(seed)
        ii, jj = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.offsets = (ii * size + jj).reshape(-1)

    def sample(self, count: int = 1) -> torch.Tensor:
        """Flat indices [count * side^2]: `count` windows, one after another."""
        g = self.generator
        f = torch.randint(0, len(self.centres), (count,), generator=g)
        jitter = (torch.rand(count, 2, generator=g) - 0.5) * 2 * PATCH_JITTER * self.side
        corner = (self.centres[f] + jitter - self.side / 2).round().long()
        corner = corner.clamp(0, self.size - self.side)  # (x, y) of the top-left pixel
        start = f * self.size * self.size + corner[:, 1] * self.size + corner[:, 0]
        return (start[:, None] + self.offsets[None]).reshape(-1)
