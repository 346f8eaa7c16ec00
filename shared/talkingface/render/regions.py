"""The eye and lip regions of a face: the eye-opening ratio of the landmarks (the renderer's
blink condition and the evaluation's reference) and each frame's eye and lip boxes in pixels
(where training draws an extra share of its rays).

Eye-opening ratio (per eye, iBUG-68 order, `talkingface.lm3d`): the mean of the two lid
gaps over the corner-to-corner width,

    ratio = (|p37 - p41| + |p38 - p40|) / (2 |p36 - p39|)    (right eye; 43-47, 44-46, 42-45 left)

-- the "eye aspect ratio" of the blink-detection literature. It is scale-free, so it reads the
same from `lm3d` (canonical units) and `lm2d` (pixels): about 0.2-0.35 for an open eye, near
0 for a closed one. GeneFace++ and RAD-NeRF feed an eye-area scalar of the same kind to the
head field; `LandmarkField` does so when `RenderConfig.eye_condition` is on.

Boxes are integer pixel rectangles (x0, y0, x1, y1), half-open, clipped to the image:
`landmark_boxes` are the landmarks' bounding boxes with a margin (both eyes, the outer lips)
and follow the lids; `eye_measure_boxes` (evaluation) have a fixed height per eye width so
that a closing lid does not shrink the box the pixels are counted in.
"""

from __future__ import annotations

import numpy as np
import torch

from talkingface.lm3d import LEFT_EYE, OUTER_LIPS, RIGHT_EYE

# (outer/inner corner, corner, (upper, lower), (upper, lower)) per eye.
EYES = ((36, 39, (37, 41), (38, 40)), (42, 45, (43, 47), (44, 46)))
REGION_MARGIN = 2  # pixels around the landmarks' boxes, at any size
EYE_BOX_WIDTH = 1.3  # evaluation eye box: width over the corner distance
EYE_BOX_HEIGHT = 0.6  # ... and height over the corner distance


def eye_ratios(lm: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Per-eye opening ratios [..., 2] (right, left) of landmarks [..., 68, D] (D = 2 or 3);
    numpy in, numpy out."""
    if isinstance(lm, np.ndarray):
        return eye_ratios(torch.from_numpy(np.asarray(lm, np.float64))).numpy()
    out = []
    for a, b, (u1, l1), (u2, l2) in EYES:
        width = (lm[..., a, :] - lm[..., b, :]).norm(dim=-1).clamp(min=1e-6)
        gaps = (lm[..., u1, :] - lm[..., l1, :]).norm(dim=-1) + (
            lm[..., u2, :] - lm[..., l2, :]
        ).norm(dim=-1)
        out.append(gaps / (2 * width))
    return torch.stack(out, dim=-1)


def eye_ratio(lm: np.ndarray) -> np.ndarray:
    """Opening ratio of both eyes together (the mean of the two) [...]."""
    return np.asarray(eye_ratios(np.asarray(lm))).mean(axis=-1)


def _box(points: np.ndarray, margin: float, size: int) -> np.ndarray:
    lo = np.floor(points.min(axis=-2) - margin).astype(int).clip(0, size)
    hi = np.ceil(points.max(axis=-2) + margin).astype(int).clip(0, size)
    return np.concatenate([lo, hi], axis=-1)


def landmark_boxes(lm2d: np.ndarray, size: int, margin: float = REGION_MARGIN) -> np.ndarray:
    """Boxes [T, 3, 4] (x0, y0, x1, y1) of the right eye, the left eye and the outer lips of
    landmarks [T, 68, 2] (pixels), `margin` pixels wide around the points."""
    lm2d = np.asarray(lm2d, np.float64)
    parts = [_box(lm2d[:, idx], margin, size) for idx in (RIGHT_EYE, LEFT_EYE, OUTER_LIPS)]
    return np.stack(parts, axis=1)


def eye_measure_boxes(lm2d: np.ndarray, size: int) -> np.ndarray:
    """Boxes [T, 2, 4] for measuring each eye's opening in the pixels: centred on the midpoint
    of its corners, EYE_BOX_WIDTH x EYE_BOX_HEIGHT times the corner distance (the lids do not
    move the box)."""
    lm2d = np.asarray(lm2d, np.float64)
    out = np.zeros((len(lm2d), 2, 4), int)
    for e, (a, b, _, _) in enumerate(EYES):
        centre = 0.5 * (lm2d[:, a] + lm2d[:, b])
        width = np.linalg.norm(lm2d[:, a] - lm2d[:, b], axis=-1)
        half = np.stack([EYE_BOX_WIDTH * width, EYE_BOX_HEIGHT * width], -1) / 2
        out[:, e, :2] = np.floor(centre - half).astype(int).clip(0, size)
        out[:, e, 2:] = np.ceil(centre + half).astype(int).clip(0, size)
    return out


def draw_in_boxes(
    boxes: torch.Tensor, n: int, size: int, generator: torch.Generator
) -> torch.Tensor:
    """`n` random pixels inside boxes [F, K, 4] (row f: frame f's K boxes; a box is picked
    uniformly, then a pixel uniformly inside it) as flat indices f * size^2 + i * size + j.
    Empty boxes (off the image) fall back to a random pixel of the frame."""
    frames, k = boxes.shape[:2]
    f = torch.randint(0, frames, (n,), generator=generator)
    r = torch.randint(0, k, (n,), generator=generator)
    box = boxes[f, r].to(torch.int64)
    w = (box[:, 2] - box[:, 0]).clamp(min=0)
    h = (box[:, 3] - box[:, 1]).clamp(min=0)
    empty = (w == 0) | (h == 0)
    u = torch.rand(n, 2, generator=generator)
    j = box[:, 0] + (u[:, 0] * w).long().clamp(max=(w - 1).clamp(min=0))
    i = box[:, 1] + (u[:, 1] * h).long().clamp(max=(h - 1).clamp(min=0))
    j = torch.where(empty, (u[:, 0] * size).long(), j)
    i = torch.where(empty, (u[:, 1] * size).long(), i)
    return f * size * size + i * size + j
