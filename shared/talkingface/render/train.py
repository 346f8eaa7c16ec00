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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from talkingface.render.condition import landmark_bounds
from talkingface.render.config import RenderConfig
from talkingface.render.data import AvatarVideo, camera_rays, landmark_stats
from talkingface.render.field import LandmarkField
from talkingface.render.march import march_rays
from talkingface.render.patches import LipPatches, ssim_loss, ssim_map
from talkingface.render.regions import draw_in_boxes, landmark_boxes
from talkingface.render.superres import SRTraining, SuperResolution, check_plate
from talkingface.render.torso import TorsoField, new_torso, train_torso
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
                 region_share: float = 0.0, with_torso: bool = False):  # fmt: skip
        """`region_share` of every batch is drawn inside the frames' eye and lip boxes;
        `with_torso`: the torso's pixels are the head's background (their own colour)."""
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


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of images [B, H, W, 3] in [0, 1] (11-pixel Gaussian window, sigma 1.5)."""
    x = a.permute(0, 3, 1, 2).double()
    y = b.permute(0, 3, 1, 2).double()
    return float(ssim_map(x, y, taps=11, sigma=1.5, padding=5)[..., 5:-5, 5:-5].mean())


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


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] of axis-angle vectors [N, 3] (Rodrigues, exact at 0)."""
    theta2 = (w * w).sum(dim=1)[:, None, None]
    small = theta2 < 1e-8
    theta = theta2.clamp(min=1e-8).sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp(min=1e-8))
    zero = torch.zeros_like(w[:, 0])
    k = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero],
                    dim=1).reshape(-1, 3, 3)  # fmt: skip
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def pose_features(R: np.ndarray, t: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """[T, 6]: each frame's estimated rotation (axis-angle, radians) and translation, less
    their means over `frames` (the training frames)."""
    from scipy.spatial.transform import Rotation

    rotvec = Rotation.from_matrix(np.asarray(R, np.float64)).as_rotvec()
    x = np.concatenate([rotvec, np.asarray(t, np.float64)], axis=1)
    return (x - x[frames].mean(axis=0)).astype(np.float32)


class PoseRefinement(torch.nn.Module):
    """Corrections of estimated head poses, learned with the field: R' = R exp([omega]x) (a
    turn of the head about its own centre) and t' = t + delta, where (omega, delta) is a
    linear function of the estimated pose (a pose estimator's bias grows with the pose: a
    pitch read 0.8x, say), learned from every ray and predicted for any frame, plus a
    per-frame residual for the training frames (mean held at zero: the field and all poses
    could otherwise turn together)."""

    def __init__(self, features: np.ndarray, frames: int) -> None:
        super().__init__()
        self.register_buffer("features", torch.from_numpy(np.asarray(features, np.float32)))
        self.linear = torch.nn.Parameter(torch.zeros(features.shape[1], 6))
        self.residual = torch.nn.Parameter(torch.zeros(frames, 6))

    def correction(self, index: torch.Tensor | None = None, frames: torch.Tensor | None = None):
        """[N, 6] (omega, delta) for video frames `frames`; `index` their training-frame
        rows when they are training frames (their residuals are added)."""
        out = self.features[frames] @ self.linear
        return out if index is None else out + self.residual[index]

    def apply(self, index, frames, R: torch.Tensor, t: torch.Tensor):
        c = self.correction(index, frames)
        return R @ so3_exp(c[:, :3]), t + c[:, 3:]

    @torch.no_grad()
    def recentre(self) -> None:
        self.residual -= self.residual.mean(dim=0)


def corrected_track(video: AvatarVideo, frames: np.ndarray,
                    refinement: PoseRefinement) -> tuple[np.ndarray, np.ndarray, dict]:  # fmt: skip
    """The whole pose track with the refinement applied: the training frames with their own
    residuals, every other frame (held-out ones) with the linear part alone, which no
    held-out pixel has seen."""
    with torch.no_grad():
        every = torch.arange(len(video), device=refinement.linear.device)
        linear = refinement.correction(None, every).cpu().double()
        c = linear.clone()
        rows = torch.from_numpy(np.asarray(frames))
        c[rows] += refinement.residual.detach().cpu().double()
        R = (torch.from_numpy(np.asarray(video.R, np.float64)) @ so3_exp(c[:, :3])).numpy()
    t = np.asarray(video.t, np.float64) + c[:, 3:].numpy()
    linear = linear.numpy()[frames]
    own = c.numpy()[frames]
    stats = {
        "rotation_deg_median": round(
            float(np.rad2deg(np.median(np.linalg.norm(own[:, :3], axis=1)))), 3
        ),
        "shift_median": round(float(np.median(np.linalg.norm(own[:, 3:], axis=1))), 4),
        "linear_share": round(float((linear**2).sum() / max((own**2).sum(), 1e-12)), 3),
    }
    return R.astype(np.float32), t.astype(np.float32), stats


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
