"""Refining estimated head poses with the field (`RenderConfig.refine_poses`): a correction
of each training frame's pose learned from the photometric loss, linear in the estimated pose
so that held-out frames get it too (docs/renderer.md, "Estimated poses").
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
