"""The torso: a 2-D deformation model of the neck and shoulders, conditioned on the head pose,
composited under the head (GeneFace/GeneFace++'s torso, as RAD-NeRF draws it).

A person's shoulders move partly on their own: they follow the head's turn only in part and
sway and breathe besides, so the head field (rigid with the head) cannot draw them. The torso
is a layer in the image plane, drawn over the background plate and under the head:

    pixel uv in [-1, 1]^2, head pose (R, t) --z-scored, MLP--> pose code p, frame code z
    (posenc(uv), p, z) --MLP, tanh--> offset d (at most `max_offset` of the half-width)
    multiresolution dense 2-D grids at uv + d --> features f
    (f, p, z) --MLP--> colour (sigmoid), opacity (sigmoid)

    frame = head colour + (1 - head alpha) * (opacity * colour + (1 - opacity) * plate)

`z` is a learned code per training frame (the torso's own motion that the head pose does not
explain); it is held near zero by a penalty, and rendering uses the neutral code zero. The
model is trained after the head (`train_torso`), on the avatar's torso masks (`torso_masks.npy`,
written by SynthTalk and by `avatar ingest`): MSE of the torso layer over the plate against the
pixels outside the head mask, plus a small cross-entropy of the opacity against the torso mask.
The grids are dense `grid_sample` tables: at the cpu sizes a step costs a few milliseconds.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talkingface.render.config import TorsoConfig
from talkingface.render.field import mlp
from talkingface.threads import torch_threads

log = logging.getLogger(__name__)
POSE_DIM = 12  # R (9) and t (3) of the head pose
CODE_PENALTY = 1e-3
MASK_WEIGHT = 0.02
TORSO_SHARE = 0.7  # of the training pixels, drawn from the dilated torso masks
DILATE = 3  # pixels


def pose_vector(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[N, 12]: head rotations [N, 3, 3] and translations [N, 3] flattened."""
    return torch.cat([R.reshape(R.shape[0], 9), t.reshape(t.shape[0], 3)], dim=1)


def pixel_uv(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[size * size, 2] pixel centres in [-1, 1] (x, y), row-major (grid_sample's convention)."""
    axis = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


class TorsoField(nn.Module):
    """The torso layer: (pixel, head pose, frame code) -> (colour, opacity)."""

    def __init__(self, config: TorsoConfig, pose_mean: torch.Tensor, pose_std: torch.Tensor,
                 frames: int) -> None:  # fmt: skip
        super().__init__()
        self.config = config
        self.register_buffer("pose_mean", pose_mean.reshape(POSE_DIM).float().clone())
        self.register_buffer("pose_std", pose_std.reshape(POSE_DIM).float().clone())
        c = config
        resolutions = np.geomspace(c.coarsest, c.finest, c.levels).round().astype(int)
        self.grids = nn.ParameterList(
            [nn.Parameter(torch.randn(1, c.features, int(r), int(r)) * 1e-2) for r in resolutions]
        )
        self.codes = nn.Parameter(torch.zeros(max(1, frames), c.code_dim))
        self.pose_net = mlp([POSE_DIM, c.hidden, c.pose_dim])
        self.deform_net = mlp([2 + 4 * c.frequencies + c.pose_dim + c.code_dim, c.hidden,
                                c.hidden, 2])  # fmt: skip
        self.color_net = mlp([c.levels * c.features + c.pose_dim + c.code_dim, c.hidden, 4])
        with torch.no_grad():  # start without deformation and transparent
            self.deform_net[-1].weight.mul_(0.01)
            self.deform_net[-1].bias.zero_()
            self.color_net[-1].bias[3] = -2.0

    def encode_pose(self, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Pose codes [N, pose_dim] for head poses R [N, 3, 3], t [N, 3]."""
        return self.pose_net((pose_vector(R, t) - self.pose_mean) / self.pose_std)

    def _posenc(self, uv: torch.Tensor) -> torch.Tensor:
        freqs = 2.0 ** torch.arange(self.config.frequencies, device=uv.device) * math.pi
        angles = (uv[:, :, None] * freqs).reshape(uv.shape[0], -1)
        return torch.cat([uv, torch.sin(angles), torch.cos(angles)], dim=1)

    def _sample(self, uv: torch.Tensor) -> torch.Tensor:
        grid = uv.reshape(1, 1, -1, 2)
        feats = [
            F.grid_sample(g, grid, mode="bilinear", padding_mode="border", align_corners=False)
            for g in self.grids
        ]
        return torch.cat(feats, dim=1)[0, :, 0].T  # [N, levels * features]

    def forward(self, uv: torch.Tensor, pose: torch.Tensor, code: torch.Tensor):
        """(colour [N, 3], opacity [N], offset [N, 2]) at pixels uv [N, 2] under pose codes
        [N, pose_dim] and frame codes [N, code_dim]."""
        cond = torch.cat([pose, code], dim=1)
        offset = torch.tanh(self.deform_net(torch.cat([self._posenc(uv), cond], dim=1)))
        offset = offset * self.config.max_offset
        h = self.color_net(torch.cat([self._sample(uv + offset), cond], dim=1))
        return torch.sigmoid(h[:, :3]), torch.sigmoid(h[:, 3]), offset

    @torch.no_grad()
    def layer(self, R: torch.Tensor, t: torch.Tensor, background: torch.Tensor,
              pixels_per_batch: int = 1 << 16) -> torch.Tensor:  # fmt: skip
        """The torso over the plate [H, W, 3] for head poses R [B, 3, 3], t [B, 3], with the
        neutral frame code: [B, H * W, 3]."""
        with torch_threads(1 if background.device.type == "cpu" else None):
            return self._layer(R, t, background, pixels_per_batch)

    def _layer(self, R, t, background, pixels_per_batch):
        size = background.shape[0]
        uv = pixel_uv(size, background.device)
        plate = background.reshape(-1, 3)
        poses = self.encode_pose(R, t)
        code = torch.zeros(1, self.config.code_dim, device=uv.device)
        out = torch.empty(R.shape[0], size * size, 3, device=uv.device)
        for b in range(R.shape[0]):
            for lo in range(0, uv.shape[0], pixels_per_batch):
                sl = slice(lo, lo + pixels_per_batch)
                n = uv[sl].shape[0]
                rgb, alpha, _ = self(uv[sl], poses[b : b + 1].expand(n, -1), code.expand(n, -1))
                out[b, sl] = alpha[:, None] * rgb + (1 - alpha[:, None]) * plate[sl]
        return out


@dataclass
class TorsoReport:
    steps: int
    seconds: float
    loss: float
    history: list[dict]


def new_torso(config: TorsoConfig, R: np.ndarray, t: np.ndarray, frames: np.ndarray,
              device: str | torch.device = "cpu") -> TorsoField:  # fmt: skip
    """A fresh torso field with the pose statistics of the training frames `frames`."""
    poses = pose_vector(torch.from_numpy(np.asarray(R[frames], np.float32)),
                        torch.from_numpy(np.asarray(t[frames], np.float32)))  # fmt: skip
    mean, std = poses.mean(0), poses.std(0).clamp(min=1e-3)
    return TorsoField(config, mean, std, len(frames)).to(device)


def _dilate(masks: np.ndarray, pixels: int) -> torch.Tensor:
    m = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
    return F.max_pool2d(m, 2 * pixels + 1, stride=1, padding=pixels)[:, 0] > 0


def train_torso(
    torso: TorsoField,
    video,
    frames: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    seed: int = 1,
    steps: int | None = None,
    threads: int | None = 1,
) -> TorsoReport:
    """Fit the torso layer to the training frames `frames` (rows of `torso.codes` in order)
    with head poses R, t: the pixels outside each frame's head mask, TORSO_SHARE of them
    from the dilated torso mask. The head is not rendered: where it is, the torso is hidden.
    Runs on `threads` torch threads on the CPU (`torch_threads`; None: as set)."""
    cpu = torso.pose_mean.device.type == "cpu"
    with torch_threads(threads if cpu else None):
        return _train_torso(torso, video, frames, R, t, seed, steps)


def _train_torso(torso, video, frames, R, t, seed, steps) -> TorsoReport:
    if video.torso is None:
        raise ValueError("the avatar has no torso masks (torso_masks.npy); cannot train a torso")
    c = torso.config
    steps = c.steps if steps is None else steps
    dev = torso.pose_mean.device
    gen = torch.Generator().manual_seed(seed)
    size = video.size
    head = torch.from_numpy(np.ascontiguousarray(video.masks[frames]))
    body = torch.from_numpy(np.ascontiguousarray(video.torso[frames]))
    allowed = ~head
    near = _dilate(video.torso[frames], DILATE) & allowed
    near_idx = near.reshape(-1).nonzero()[:, 0]
    any_idx = allowed.reshape(-1).nonzero()[:, 0]
    if len(any_idx) == 0:
        raise ValueError("every training pixel is head: nothing to fit the torso to")
    pixels = torch.from_numpy(np.ascontiguousarray(video.frames[frames])).reshape(-1, 3)
    plate = torch.from_numpy(video.background).reshape(-1, 3)
    body_flat = body.reshape(-1)
    uv_all = pixel_uv(size)
    Rf = torch.from_numpy(np.asarray(R[frames], np.float32))
    tf = torch.from_numpy(np.asarray(t[frames], np.float32))
    grids = list(torso.grids.parameters())
    others = [p for n, p in torso.named_parameters() if not n.startswith("grids.")]
    optimiser = torch.optim.Adam(
        [{"params": grids, "lr": c.lr_grid}, {"params": others, "lr": c.lr}], betas=(0.9, 0.99)
    )
    base = [g["lr"] for g in optimiser.param_groups]
    history: list[dict] = []
    started = time.perf_counter()
    loss_value = float("nan")
    torso.train()
    for step in range(1, steps + 1):
        for group, lr in zip(optimiser.param_groups, base, strict=True):
            group["lr"] = lr * 0.1 ** (step / max(1, steps))
        n_near = round(c.batch * TORSO_SHARE) if len(near_idx) else 0
        pick = torch.cat([
            near_idx[torch.randint(0, len(near_idx), (n_near,), generator=gen)],
            any_idx[torch.randint(0, len(any_idx), (c.batch - n_near,), generator=gen)],
        ])  # fmt: skip
        row, pixel = pick // (size * size), pick % (size * size)
        target = pixels[pick].float().to(dev) / 255.0
        bg = plate[pixel].to(dev)
        pose = torso.encode_pose(Rf[row].to(dev), tf[row].to(dev))
        rgb, alpha, _ = torso(uv_all[pixel].to(dev), pose, torso.codes[row.to(dev)])
        out = alpha[:, None] * rgb + (1 - alpha[:, None]) * bg
        colour_loss = F.mse_loss(out, target)
        mask = body_flat[pick].float().to(dev)
        loss = colour_loss + MASK_WEIGHT * F.binary_cross_entropy(alpha.clamp(1e-5, 1 - 1e-5), mask)
        loss = loss + CODE_PENALTY * (torso.codes**2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_value = float(colour_loss.item())
        if step % max(1, steps // 10) == 0 or step == steps or step == 1:
            history.append({"step": step, "torso_loss": round(loss_value, 6),
                            "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
            log.info("torso training", extra=history[-1])
    torso.eval()
    return TorsoReport(steps, round(time.perf_counter() - started, 1), loss_value, history)
