"""Head poses fitted with the field.

- `PoseRefinement` (`RenderConfig.refine_poses`, off unless asked for): a correction of each
  training frame's pose learned with the field from the photometric loss, linear in the
  estimated pose so that held-out frames get it too (docs/renderer.md, "Estimated poses").
- `align_poses` (`eval avatar --align-poses`): the evaluated frames' poses fitted to their own
  pixels with the trained field frozen, so that an avatar whose poses were estimated is judged
  on what it renders, not on where the estimate put the head (docs/renderer.md, "Evaluating
  an avatar made from video").
"""

from __future__ import annotations

import numpy as np
import torch

from talkingface.render.data import AvatarVideo


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


ALIGN_STEPS = 150
ALIGN_RAYS = 4096
ALIGN_LR = 2e-3  # Adam, decayed exponentially to a tenth over the steps


def align_poses(
    renderer, video: AvatarVideo, frames: np.ndarray, *, steps: int = ALIGN_STEPS,
    rays: int = ALIGN_RAYS, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:  # fmt: skip
    """The poses (R [F, 3, 3], t [F, 3]) of `video`'s `frames` fitted to those frames' pixels
    with the renderer's field frozen, and how far they moved.

    Each frame's pose gets its own turn about the head's centre and shift, R' = R exp([w]x),
    t' = t + d (6 numbers), from the frame's `video.R`, `video.t`, by Adam on the head layer's
    colour error, with training's rays (`train.RaySampler`: most from the dilated head masks,
    the rest anywhere; the head over the frame's own torso pixels, or over the plate) less
    the mouth boxes: the pose is fitted to the rigid head and its outline, never to the lips
    the evaluation scores separately. `video` is at the NeRF's size (`config.size`)."""
    import torch.nn.functional as F

    from talkingface.render.data import camera_rays
    from talkingface.render.evaluate import mouth_boxes
    from talkingface.render.train import RaySampler
    from talkingface.render.volume import RayBatch, render_rays

    frames = np.asarray(frames)
    dev = renderer.device
    field, config = renderer.field, renderer.config
    sampler = RaySampler(video, frames, seed, str(dev), with_torso=renderer.torso is not None,
                         exclude=mouth_boxes(video.lm2d[frames], video.size))  # fmt: skip
    if not len(sampler.core):
        raise ValueError("the evaluated frames' head masks are empty: no pose to align")
    R0, t0 = sampler.R.to(dev), sampler.t.to(dev)
    with torch.no_grad():
        cond_all = field.encode_landmarks(field.clamp_landmarks(sampler.lm3d.to(dev)))
    c = torch.zeros(len(frames), 6, device=dev, requires_grad=True)
    optimiser = torch.optim.Adam([c], lr=ALIGN_LR)
    frozen = [p.requires_grad for p in field.parameters()]
    for p in field.parameters():  # no gradients for the weights: only the poses move
        p.requires_grad_(False)
    try:
        for step in range(steps):
            row, xy, target, bg, _ = sampler.sample(rays)
            R = R0[row] @ so3_exp(c[row, :3])
            origins, dirs = camera_rays(renderer.K, R, t0[row] + c[row, 3:], xy)
            result = render_rays(field, RayBatch(origins, dirs, cond_all[row], bg),
                                 renderer.occupancy, config.samples, config.chunks,
                                 config.stop_transmittance)  # fmt: skip
            loss = F.mse_loss(result.rgb, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for group in optimiser.param_groups:
                group["lr"] = ALIGN_LR * 0.1 ** ((step + 1) / steps)
    finally:
        for p, was in zip(field.parameters(), frozen, strict=True):
            p.requires_grad_(was)
    with torch.no_grad():
        R = (R0 @ so3_exp(c[:, :3])).cpu().numpy()
        t = (t0 + c[:, 3:]).cpu().numpy()
    moved = c.detach().cpu().double().numpy()
    stats = {
        "steps": steps,
        "rotation_deg_median": round(float(np.rad2deg(np.median(np.linalg.norm(moved[:, :3],
                                                                               axis=1)))), 3),
        "shift_median": round(float(np.median(np.linalg.norm(moved[:, 3:], axis=1))), 4),
    }  # fmt: skip
    return R.astype(np.float32), t.astype(np.float32), stats
