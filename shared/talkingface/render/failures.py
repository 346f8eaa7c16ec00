"""Rendering failures counted on rendered pixels: the bad-case rate of paper table 4.

A rendered frame *fails* when the mouth it shows disagrees with the mouth its driving
landmarks ask for: the renderer, driven by landmarks unlike any it trained on, draws a closed
mouth for an open one, a smear, or a hole.

- **Shown**: the share of dark pixels (luminance < `DARK`, as in `render.evaluate`: the open
  mouth is dark) in the outer-lip box of the driving landmarks projected with the frame's
  pose (`mouth_boxes`, 2 px margin).
- **Asked**: the inner-lip gap of the driving landmarks (`talkingface.lm3d.mouth_opening`).
- **The avatar's own relation** between the two is fitted on its *training* frames (their
  real pixels and landmarks, boxes projected the same way): a least-squares line and the
  residuals' robust spread, sigma = 1.4826 x their median absolute deviation. A frame fails
  when |shown - line(asked)| > `K_SIGMA` x sigma (with a floor of `FLOOR`, a share of the
  box, for avatars whose training frames agree almost exactly).

Held-out frames never set the line or the threshold. This counts what the viewer sees
(pixels), unlike `landmark_ood_pct` (a landmark distance to the training set, which
projection minimises by construction). The real held-out frames, scored the same way, give
the floor any rendering can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkingface.lm3d import mouth_opening
from talkingface.render.evaluate import DARK, _luminance, mouth_boxes

K_SIGMA = 4.0
FLOOR = 0.05  # a twentieth of the lip box
CALIBRATION_FRAMES = 400  # training frames used for the line, evenly spaced


def projected_lm2d(lm3d: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[T, 68, 2] pixel positions of lm3d [T, 68, 3] under per-frame poses R [T, 3, 3], t [T, 3]."""
    from talkingface.data.synthtalk.camera import project

    return project(np.asarray(lm3d, np.float32), R, t, K)


def shown_opening(images: np.ndarray, lm2d: np.ndarray) -> np.ndarray:
    """Share of dark pixels in each frame's outer-lip box: images [T, S, S, 3] in [0, 1]."""
    boxes = mouth_boxes(lm2d, images.shape[1])
    dark = (_luminance(images) < DARK) & boxes
    return dark.sum((1, 2)) / np.maximum(boxes.sum((1, 2)), 1)


@dataclass(frozen=True)
class MouthCheck:
    """shown ~ slope * asked + intercept on the avatar's training frames; `threshold` in the
    same units as `shown` (a share of the lip box)."""

    slope: float
    intercept: float
    sigma: float
    threshold: float
    frames: int

    @classmethod
    def fit(cls, video, frames: int = CALIBRATION_FRAMES) -> MouthCheck:
        """From the training frames of an `AvatarVideo` (render.data), poses as recorded."""
        lo, hi = video.train
        index = np.unique(np.linspace(lo, hi - 1, min(frames, hi - lo)).round().astype(int))
        images = np.asarray(video.frames[index], np.float32) / 255.0
        lm2d = projected_lm2d(video.lm3d[index], video.R[index], video.t[index], video.K)
        shown = shown_opening(images, lm2d)
        asked = mouth_opening(video.lm3d[index])
        slope, intercept = np.polyfit(asked, shown, 1) if asked.std() > 0 else (0.0, shown.mean())
        residual = shown - (slope * asked + intercept)
        sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
        return cls(float(slope), float(intercept), sigma, max(K_SIGMA * sigma, FLOOR), len(index))

    def failures(self, images: np.ndarray, lm3d: np.ndarray, lm2d: np.ndarray) -> np.ndarray:
        """bool [T]: frames whose shown mouth is off the line by more than the threshold."""
        shown = shown_opening(np.asarray(images, np.float32), lm2d)
        expected = self.slope * mouth_opening(lm3d) + self.intercept
        return np.abs(shown - expected) > self.threshold

    def to_dict(self) -> dict[str, float]:
        return {"slope": round(self.slope, 4), "intercept": round(self.intercept, 4),
                "sigma": round(self.sigma, 4), "threshold": round(self.threshold, 4),
                "calibration_frames": self.frames}  # fmt: skip


def render_failures(renderer, check: MouthCheck, lm3d: np.ndarray, R: np.ndarray, t: np.ndarray,
                    background: np.ndarray, batch: int = 8) -> np.ndarray:  # fmt: skip
    """Render lm3d [T, 68, 3] at poses R, t and return the failed frames (bool [T])."""
    out = []
    for lo in range(0, len(lm3d), batch):
        images, _ = renderer.render(lm3d[lo : lo + batch], R[lo : lo + batch], t[lo : lo + batch],
                                    background)  # fmt: skip
        out.append(images.cpu().numpy())
    images = np.concatenate(out)
    K = renderer.K.detach().cpu().numpy().copy()
    K[:2] *= renderer.config.sr_scale  # the frames are at the output size
    return check.failures(images, lm3d, projected_lm2d(lm3d, R, t, K))
