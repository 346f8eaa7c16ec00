"""The landmark condition at inference: kept inside what the field was trained on, and steady.

Landmarks predicted from audio (motion model, postnet, projection) can leave the range of the
training video's and can jitter from frame to frame; the field, trained on the tracked
landmarks of one video, renders such frames badly (a mouth wider than it ever saw) or
flickering. Two guards, both from the official GeneFace++ code, both behind `RenderConfig`
fields and applied only when rendering, never in training:

- `lm_clamp`: every coordinate is clamped to the training frames' [p, 100 - p] percentiles,
  stored with the field (`lm_lo`, `lm_hi`); 0.5 by default, not the official code's 3: a
  blink closes the eyes in fewer than 3 % of frames, and a 3rd-97th clamp never lets them
  close;
- `lm_smooth`: the sequence of one request is smoothed over time by a Gaussian of that many
  frames (the official code smooths its condition by attention over 3 frames). The render
  service smooths the whole sequence before cutting it into batches, so a frame's condition
  does not depend on where a batch starts.
"""

from __future__ import annotations

import numpy as np

RADIUS_SIGMAS = 3.0  # the Gaussian kernel is cut at this many standard deviations


def landmark_bounds(lm3d: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-value lower and upper bounds [204] of training landmarks [T, 68, 3]: their
    `percentile` and 100 - `percentile` percentiles; (-inf, +inf) everywhere when 0."""
    flat = np.asarray(lm3d, np.float64).reshape(len(lm3d), -1)
    if percentile <= 0:
        inf = np.full(flat.shape[1], np.inf, np.float32)
        return -inf, inf
    lo, hi = np.percentile(flat, [percentile, 100.0 - percentile], axis=0)
    return lo.astype(np.float32), hi.astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised Gaussian taps of standard deviation `sigma` (frames), cut at 3 sigma."""
    radius = max(1, int(np.ceil(RADIUS_SIGMAS * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def smooth_landmarks(lm3d: np.ndarray, sigma: float) -> np.ndarray:
    """Landmark frames [T, 68, 3] smoothed along time by a Gaussian of `sigma` frames; the
    sequence's ends are extended by reflection (no pull towards zero at the edges). The
    input itself when sigma is 0 or there is a single frame."""
    lm3d = np.asarray(lm3d)
    if sigma <= 0 or len(lm3d) < 2:
        return lm3d
    taps = gaussian_kernel(sigma)
    radius = len(taps) // 2
    flat = lm3d.reshape(len(lm3d), -1).astype(np.float64)
    padded = np.pad(flat, ((radius, radius), (0, 0)), mode="reflect" if len(lm3d) > radius
                    else "edge")  # fmt: skip
    out = np.zeros_like(flat)
    for k, w in enumerate(taps):
        out += w * padded[k : k + len(flat)]
    return out.reshape(lm3d.shape).astype(lm3d.dtype)
