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

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from talkingface.render.data import AvatarVideo, camera_rays
from talkingface.render.patches import LipPatches, ssim_loss
from talkingface.render.poses import PoseRefinement, corrected_track, pose_features
from talkingface.render.regions import draw_in_boxes, landmark_boxes
from talkingface.render.renderer import Renderer, psnr, ssim
from talkingface.render.superres import SRTraining
from talkingface.render.torso import new_torso, train_torso
from talkingface.render.volume import OccupancyGrid, RayBatch, render_rays, update_occupancy

log = logging.getLogger(__name__)
CORE_SHARE = 0.85
CARVE_AGREE = 0.95
CARVE_DILATE = 2  # pixels


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

    def __init__(self, video: AvatarVideo, frames: np.ndarray, seed: int, device: str = "cpu",
                 region_share: float = 0.0, with_torso: bool = False,
                 exclude: np.ndarray | None = None):  # fmt: skip
        """`region_share` of every batch is drawn inside the frames' eye and lip boxes;
        `with_torso`: the torso's pixels are the head's background (their own colour);
        `exclude` [F, H, W]: pixels left out of the head-mask share of each batch."""
        self.video = video
        self.region_share = region_share
        self.regions = torch.from_numpy(landmark_boxes(video.lm2d[frames], video.size))
        self.frames = np.asarray(frames)
        self.device = device
        size = video.size
        self.pixels = torch.from_numpy(
            np.ascontiguousarray(video.frames[self.frames]).reshape(-1, 3)
        )
        masks = torch.from_numpy(video.masks[self.frames]).float()[:, None]
        self.inside = masks.reshape(-1) > 0  # the head layer's silhouette, per pixel
        k = 2 * CARVE_DILATE + 1
        core = F.max_pool2d(masks, k, stride=1, padding=CARVE_DILATE)[:, 0] > 0
        if exclude is not None:
            core &= ~torch.from_numpy(np.asarray(exclude, bool))
        self.core = core.reshape(-1).nonzero()[:, 0].to(torch.int64)
        self.total = len(self.frames) * size * size
        self.generator = torch.Generator().manual_seed(seed)
        self.background = torch.from_numpy(video.background).reshape(-1, 3)
        self.R = torch.from_numpy(video.R[self.frames])
        self.t = torch.from_numpy(video.t[self.frames])
        self.lm3d = torch.from_numpy(video.lm3d[self.frames])
        self.torso = None  # torso pixels [frames * H * W]: their target is their background
        if with_torso and video.torso is not None:
            self.torso = torch.from_numpy(np.ascontiguousarray(video.torso[self.frames])).reshape(
                -1
            )

    def sample(self, n: int):
        g = self.generator
        n_region = round(n * self.region_share)
        region = draw_in_boxes(self.regions, n_region, self.video.size, g) if n_region else None
        n_core = round((n - n_region) * CORE_SHARE) if len(self.core) else 0
        pick = self.core[torch.randint(0, len(self.core), (n_core,), generator=g)]
        anywhere = torch.randint(0, self.total, (n - n_region - n_core,), generator=g)
        parts = [pick, anywhere] if region is None else [region, pick, anywhere]
        return self.gather(torch.cat(parts))

    def gather(self, flat: torch.Tensor):
        """(frame row, pixel centre xy, colour, background, inside the head mask) of flat
        pixel indices."""
        size = self.video.size
        frame, pixel = flat // (size * size), flat % (size * size)
        i, j = pixel // size, pixel % size
        xy = torch.stack([j + 0.5, i + 0.5], -1).float()
        target = self.pixels[flat].float() / 255.0
        background = self.background[pixel]
        if self.torso is not None:  # GeneFace's head stage: the true torso over the plate
            background = torch.where(self.torso[flat][:, None], target, background)
        dev = self.device
        return (
            frame.to(dev),
            xy.to(dev),
            target.to(dev),
            background.to(dev),
            self.inside[flat].float().to(dev),
        )


@dataclass
class TrainReport:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    val_psnr: float = float("nan")
    val_ssim: float = float("nan")
    occupancy: float = float("nan")
    samples_per_ray: float = float("nan")
    R: np.ndarray | None = None  # the pose track to save: refined, when config.refine_poses
    t: np.ndarray | None = None
    pose_refinement: dict = field(default_factory=dict)
    torso: dict = field(default_factory=dict)  # the torso stage's report, when trained


def val_frames(video: AvatarVideo, count: int) -> np.ndarray:
    """Evenly spaced held-out frames (fixed: the same for every run on this avatar)."""
    lo, hi = video.val
    return np.unique(np.linspace(lo, hi - 1, max(1, count)).round().astype(int))


def evaluate_frames(renderer: Renderer, video: AvatarVideo, frames: np.ndarray,
                    R: np.ndarray | None = None, t: np.ndarray | None = None):  # fmt: skip
    """Render `frames` at the video's poses (or the track R, t given, e.g. refined)."""
    R = video.R if R is None else R
    t = video.t if t is None else t
    rendered, spent = renderer.render(video.lm3d[frames], R[frames], t[frames], video.background)
    truth = torch.from_numpy(np.asarray(video.frames[frames])).float().to(rendered.device) / 255
    return rendered, truth, spent


def train(
    renderer: Renderer,
    video: AvatarVideo,
    progress: Callable[[int, dict], None] | None = None,
    stop_at: int | None = None,
    hires: AvatarVideo | None = None,
) -> TrainReport:
    """Train `renderer` on `video` (at `config.size`); with super-resolution, `hires` is the
    same avatar at `config.output_size` (the network's targets and the validation frames)."""
    config = renderer.config
    torch.manual_seed(config.seed)
    dev = renderer.device
    full_video = video
    if video.torso is not None and not config.torso:  # head-rigid: the head models it all
        video = dataclasses.replace(video, masks=video.masks | video.torso)
    lo, hi = video.train
    train_frames = np.arange(lo, hi)
    rng = np.random.default_rng(config.seed)
    carve_frames = np.sort(
        rng.choice(train_frames, min(config.carve_frames, len(train_frames)), replace=False)
    )
    carve(renderer.occupancy, video, carve_frames)
    sampler = RaySampler(video, train_frames, config.seed, str(dev), config.region_share,
                         with_torso=config.torso)  # fmt: skip
    side = config.lip_patch
    patches = LipPatches(video.lm2d[train_frames], video.size, side, config.seed) if side else None
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
    refinement = None
    if config.refine_poses:
        features = pose_features(video.R, video.t, train_frames)
        refinement = PoseRefinement(features, len(train_frames)).to(dev)
        video_index = torch.as_tensor(train_frames, device=dev)  # sampler row -> video frame
        optimiser.add_param_group({"params": list(refinement.parameters()), "lr": config.pose_lr})
    base = [g["lr"] for g in optimiser.param_groups]
    steps = config.steps if stop_at is None else min(stop_at, config.steps)
    delta = 2 * config.bound / config.samples
    occ_gen = torch.Generator().manual_seed(config.seed + 1)
    vals = val_frames(video, config.val_frames)
    report = TrainReport(steps=steps, seconds=0.0)
    sr_training = None
    if renderer.sr is not None:
        sr_training = SRTraining(renderer, video, hires, train_frames, config.seed)
    shown = video if renderer.sr is None else hires  # frames at the output size
    started = time.perf_counter()
    spent_total, rays_total = 0, 0
    lm_all = torch.from_numpy(video.lm3d[train_frames]).to(dev)
    for step in range(1, steps + 1):
        scale = min(1.0, step / max(1, config.warmup_steps))
        scale *= 0.1 ** (step / max(1, config.steps))  # exponential decay to 0.1x at the end
        for group, lr in zip(optimiser.param_groups, base, strict=True):
            group["lr"] = lr * scale
        if refinement is not None and step < config.pose_start:
            optimiser.param_groups[-1]["lr"] = 0.0
        frame, xy, target, bg, inside = sampler.sample(config.batch_rays)
        if patches is not None:  # a window of rays around the mouth, last in the batch
            extra = sampler.gather(patches.sample())
            batch = zip((frame, xy, target, bg, inside), extra, strict=True)
            frame, xy, target, bg, inside = (torch.cat(p) for p in batch)
        R, t = sampler.R[frame.cpu()].to(dev), sampler.t[frame.cpu()].to(dev)
        if refinement is not None:
            R, t = refinement.apply(frame, video_index[frame], R, t)
        origins, dirs = camera_rays(renderer.K, R, t, xy)
        cond = fld.with_codes(fld.encode_landmarks(sampler.lm3d[frame.cpu()].to(dev)), frame)
        result = render_rays(
            fld, RayBatch(origins, dirs, cond, bg), renderer.occupancy, config.samples,
            config.chunks, config.stop_transmittance, jitter=True,
        )  # fmt: skip
        loss = F.mse_loss(result.rgb, target)
        if config.alpha_weight:  # the head's silhouette: opaque inside its mask, clear outside
            loss = loss + config.alpha_weight * F.mse_loss(result.alpha, inside)
        if patches is not None:
            window = (1, side, side, 3)
            loss = loss + config.lip_patch_weight * ssim_loss(
                result.rgb[-side * side :].reshape(window), target[-side * side :].reshape(window)
            )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if fld.code_dim:  # the neutral code, which rendering uses, is the codes' mean
            with torch.no_grad():
                fld.appearance.weight.sub_(fld.appearance.weight.mean(0))
        if refinement is not None:
            refinement.recentre()
        if sr_training is not None:
            sr_training.step(step, refinement)
        loss_value = loss.item()
        spent_total += result.samples
        rays_total += len(frame)
        if step % config.occupancy_every == 0 or step == steps:
            pick = torch.randint(0, lm_all.shape[0], (256,), generator=occ_gen)
            with torch.no_grad():
                conds = fld.encode_landmarks(lm_all[pick.to(dev)])
            update_occupancy(fld, renderer.occupancy, conds, delta, config.occupancy_alpha,
                             config.occupancy_decay, occ_gen)  # fmt: skip
        record = None
        if step % config.val_every == 0 or step == steps:
            rendered, truth, _ = evaluate_frames(renderer, shown, vals)
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
    report.R, report.t = np.asarray(video.R), np.asarray(video.t)
    if refinement is not None:
        report.R, report.t, report.pose_refinement = corrected_track(video, train_frames,
                                                                     refinement)  # fmt: skip
    if config.torso and full_video.torso is not None:
        # Its initial weights from the renderer's seed, not from whatever the head's training
        # left in the global generator: the layer's quality varies by ~1 dB with them.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            renderer.torso = new_torso(config.torso_model, report.R, report.t, train_frames,
                                       dev)  # fmt: skip
        report.torso = train_torso(renderer.torso, full_video, train_frames, report.R, report.t,
                                   config.seed).__dict__  # fmt: skip
    if refinement is not None or steps < 1 or renderer.torso is not None:
        # else: the last step's validation frames are the final model's
        rendered, truth, _ = evaluate_frames(renderer, shown, vals, report.R, report.t)
    report.val_psnr = psnr(rendered, truth)
    report.val_ssim = ssim(rendered, truth)
    report.occupancy = renderer.occupancy.occupancy_rate()
    report.samples_per_ray = spent_total / max(1, rays_total)
    report.seconds = round(time.perf_counter() - started, 1)
    return report
