"""Training the renderer on one avatar's video (`talkingface train avatar`).

Plan: carve the empty space from the training masks (a cell stays only where the dilated head
masks of CARVE frames agree it can be), then Adam on batches of rays drawn from the training
frames (CORE_SHARE from inside the dilated head masks, the rest anywhere), MSE against the
pixel colours with the head composited over the background plate; the occupancy grid's
densities are refreshed every `occupancy_every` steps (max over training conditions, decayed);
held-out frames, driven by their ground-truth landmarks, are rendered every `val_every` steps
for the PSNR curve.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from talkingface.render.config import RenderConfig
from talkingface.render.data import AvatarVideo, camera_rays, landmark_stats
from talkingface.render.field import LandmarkField
from talkingface.render.volume import OccupancyGrid, RayBatch, render_rays, update_occupancy

log = logging.getLogger(__name__)
CORE_SHARE = 0.85
CARVE_AGREE = 0.95
CARVE_DILATE = 2  # pixels


@dataclass
class Renderer:
    """A trained (or training) avatar renderer: the field, its occupancy grid, the camera."""

    config: RenderConfig
    field: LandmarkField
    occupancy: OccupancyGrid
    K: torch.Tensor  # [3, 3] at config.size

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
        t [B, 3] over the plate [H, W, 3]; also the network evaluations spent."""
        dev = self.device
        lm3d = torch.as_tensor(np.asarray(lm3d), dtype=torch.float32, device=dev)
        R = torch.as_tensor(np.asarray(R), dtype=torch.float32, device=dev)
        t = torch.as_tensor(np.asarray(t), dtype=torch.float32, device=dev)
        bg = torch.as_tensor(np.asarray(background), dtype=torch.float32, device=dev)
        size = self.config.size
        b = lm3d.shape[0]
        cond = self.field.encode_landmarks(lm3d)
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        xy = torch.stack([jj.reshape(-1) + 0.5, ii.reshape(-1) + 0.5], -1).float().to(dev)
        frame = torch.arange(b, device=dev).repeat_interleave(size * size)
        xy_all = xy.repeat(b, 1)
        bg_all = bg.reshape(-1, 3).repeat(b, 1)
        out = torch.empty(b * size * size, 3, device=dev)
        spent = 0
        for lo in range(0, out.shape[0], rays_per_batch):
            sl = slice(lo, lo + rays_per_batch)
            f = frame[sl]
            origins, dirs = camera_rays(self.K, R[f], t[f], xy_all[sl])
            result = render_rays(
                self.field,
                RayBatch(origins, dirs, cond[f], bg_all[sl]),
                self.occupancy,
                self.config.samples,
                self.config.chunks,
                self.config.stop_transmittance,
            )
            out[sl] = result.rgb
            spent += result.samples
        return out.reshape(b, size, size, 3).clamp(0, 1), spent


def new_renderer(config: RenderConfig, video: AvatarVideo, device: str = "cpu") -> Renderer:
    lo, hi = video.train
    mean, std = landmark_stats(video.lm3d[lo:hi])
    field_ = LandmarkField(config, torch.from_numpy(mean), torch.from_numpy(std))
    occupancy = OccupancyGrid(config.occupancy_res, config.bound)
    renderer = Renderer(config, field_, occupancy, torch.from_numpy(video.K))
    renderer.field.to(device)
    renderer.occupancy.to(device)
    renderer.K = renderer.K.to(device)
    return renderer


@torch.no_grad()
def carve(occupancy: OccupancyGrid, video: AvatarVideo, frames: np.ndarray) -> None:
    """Mark empty every cell that falls outside the dilated head mask in more than
    1 - CARVE_AGREE of the frames that see it (and every cell no frame sees)."""
    centres = occupancy.centres().numpy()
    seen = np.zeros(len(centres), np.int32)
    inside = np.zeros(len(centres), np.int32)
    size = video.size
    masks = torch.from_numpy(video.masks[frames]).float()[:, None]
    k = 2 * CARVE_DILATE + 1
    dilated = (F.max_pool2d(masks, k, stride=1, padding=CARVE_DILATE)[:, 0] > 0).numpy()
    for n, f in enumerate(frames):
        cam = centres @ video.R[f].T + video.t[f]
        x = video.K[0, 0] * cam[:, 0] / cam[:, 2] + video.K[0, 2]
        y = video.K[1, 1] * cam[:, 1] / cam[:, 2] + video.K[1, 2]
        ok = (x >= 0) & (x < size) & (y >= 0) & (y < size) & (cam[:, 2] > 0)
        j = np.clip(x.astype(np.int64), 0, size - 1)
        i = np.clip(y.astype(np.int64), 0, size - 1)
        seen += ok
        inside += ok & dilated[n, i, j]
    keep = (seen > 0) & (inside >= CARVE_AGREE * seen)
    occupancy.carve.copy_(torch.from_numpy(keep.reshape(occupancy.carve.shape)))


class RaySampler:
    """Random training rays: pixel colours, background, pose and landmarks of their frame."""

    def __init__(self, video: AvatarVideo, frames: np.ndarray, seed: int, device: str = "cpu"):
        self.video = video
        self.frames = np.asarray(frames)
        self.device = device
        size = video.size
        self.pixels = torch.from_numpy(
            np.ascontiguousarray(video.frames[self.frames]).reshape(-1, 3)
        )
        masks = torch.from_numpy(video.masks[self.frames]).float()[:, None]
        k = 2 * CARVE_DILATE + 1
        core = F.max_pool2d(masks, k, stride=1, padding=CARVE_DILATE)[:, 0] > 0
        self.core = core.reshape(-1).nonzero()[:, 0].to(torch.int64)
        self.total = len(self.frames) * size * size
        self.generator = torch.Generator().manual_seed(seed)
        self.background = torch.from_numpy(video.background).reshape(-1, 3)
        self.R = torch.from_numpy(video.R[self.frames])
        self.t = torch.from_numpy(video.t[self.frames])
        self.lm3d = torch.from_numpy(video.lm3d[self.frames])

    def sample(self, n: int):
        g = self.generator
        n_core = round(n * CORE_SHARE) if len(self.core) else 0
        pick = self.core[torch.randint(0, len(self.core), (n_core,), generator=g)]
        anywhere = torch.randint(0, self.total, (n - n_core,), generator=g)
        flat = torch.cat([pick, anywhere])
        size = self.video.size
        frame, pixel = flat // (size * size), flat % (size * size)
        i, j = pixel // size, pixel % size
        xy = torch.stack([j + 0.5, i + 0.5], -1).float()
        target = self.pixels[flat].float() / 255.0
        dev = self.device
        return (
            frame.to(dev),
            xy.to(dev),
            target.to(dev),
            self.background[pixel].to(dev),
        )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of images [B, H, W, 3] in [0, 1] (11-pixel Gaussian window, sigma 1.5)."""
    x = a.permute(0, 3, 1, 2).double()
    y = b.permute(0, 3, 1, 2).double()
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11).contiguous()

    def blur(z):
        return F.conv2d(z, window, padding=5, groups=3)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value[..., 5:-5, 5:-5].mean())


@dataclass
class TrainReport:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    val_psnr: float = float("nan")
    val_ssim: float = float("nan")
    occupancy: float = float("nan")
    samples_per_ray: float = float("nan")


def val_frames(video: AvatarVideo, count: int) -> np.ndarray:
    """Evenly spaced held-out frames (fixed: the same for every run on this avatar)."""
    lo, hi = video.val
    return np.unique(np.linspace(lo, hi - 1, max(1, count)).round().astype(int))


def evaluate_frames(renderer: Renderer, video: AvatarVideo, frames: np.ndarray):
    rendered, spent = renderer.render(
        video.lm3d[frames], video.R[frames], video.t[frames], video.background
    )
    truth = torch.from_numpy(np.asarray(video.frames[frames])).float().to(rendered.device) / 255
    return rendered, truth, spent


def train(
    renderer: Renderer,
    video: AvatarVideo,
    progress: Callable[[int, dict], None] | None = None,
    stop_at: int | None = None,
) -> TrainReport:
    config = renderer.config
    torch.manual_seed(config.seed)
    dev = renderer.device
    lo, hi = video.train
    train_frames = np.arange(lo, hi)
    rng = np.random.default_rng(config.seed)
    carve_frames = np.sort(
        rng.choice(train_frames, min(config.carve_frames, len(train_frames)), replace=False)
    )
    carve(renderer.occupancy, video, carve_frames)
    sampler = RaySampler(video, train_frames, config.seed, str(dev))
    fld = renderer.field
    grids = [p for n, p in fld.named_parameters() if n.startswith(("spatial", "landmark_grid"))]
    mlps = [p for n, p in fld.named_parameters() if not n.startswith(("spatial", "landmark_grid"))]
    optimiser = torch.optim.Adam(
        [
            {"params": grids, "lr": config.lr_grid, "eps": 1e-15},
            {"params": mlps, "lr": config.lr_mlp, "weight_decay": 1e-6},
        ],
        betas=(0.9, 0.99),
    )
    base = [g["lr"] for g in optimiser.param_groups]
    steps = config.steps if stop_at is None else min(stop_at, config.steps)
    delta = 2 * config.bound / config.samples
    occ_gen = torch.Generator().manual_seed(config.seed + 1)
    vals = val_frames(video, config.val_frames)
    report = TrainReport(steps=steps, seconds=0.0)
    started = time.perf_counter()
    spent_total, rays_total = 0, 0
    lm_all = torch.from_numpy(video.lm3d[train_frames]).to(dev)
    for step in range(1, steps + 1):
        scale = min(1.0, step / max(1, config.warmup_steps))
        scale *= 0.1 ** (step / max(1, config.steps))  # exponential decay to 0.1x at the end
        for group, lr in zip(optimiser.param_groups, base, strict=True):
            group["lr"] = lr * scale
        frame, xy, target, bg = sampler.sample(config.batch_rays)
        origins, dirs = camera_rays(renderer.K, sampler.R[frame.cpu()].to(dev),
                                    sampler.t[frame.cpu()].to(dev), xy)  # fmt: skip
        cond = fld.encode_landmarks(sampler.lm3d[frame.cpu()].to(dev))
        result = render_rays(
            fld, RayBatch(origins, dirs, cond, bg), renderer.occupancy, config.samples,
            config.chunks, config.stop_transmittance, jitter=True,
        )  # fmt: skip
        loss = F.mse_loss(result.rgb, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_value = loss.item()
        spent_total += result.samples
        rays_total += config.batch_rays
        if step % config.occupancy_every == 0 or step == steps:
            pick = torch.randint(0, lm_all.shape[0], (256,), generator=occ_gen)
            with torch.no_grad():
                conds = fld.encode_landmarks(lm_all[pick.to(dev)])
            update_occupancy(fld, renderer.occupancy, conds, delta, config.occupancy_alpha,
                             config.occupancy_decay, occ_gen)  # fmt: skip
        record = None
        if step % config.val_every == 0 or step == steps:
            rendered, truth, _ = evaluate_frames(renderer, video, vals)
            record = {
                "step": step,
                "loss": loss_value,
                "train_psnr": psnr(result.rgb.detach(), target),
                "val_psnr": psnr(rendered, truth),
                "occupancy": renderer.occupancy.occupancy_rate(),
                "samples_per_ray": spent_total / max(1, rays_total),
                "seconds": round(time.perf_counter() - started, 1),
            }
            report.history.append(record)
            log.info("renderer validation", extra=record)
        if progress is not None:
            progress(step, record or {"loss": loss_value})
    rendered, truth, _ = evaluate_frames(renderer, video, vals)
    report.val_psnr = psnr(rendered, truth)
    report.val_ssim = ssim(rendered, truth)
    report.occupancy = renderer.occupancy.occupancy_rate()
    report.samples_per_ray = spent_total / max(1, rays_total)
    report.seconds = round(time.perf_counter() - started, 1)
    return report
