"""Identity-robust mouth geometry: the judge's view of a landmark sequence.

The sync expert (`talkingface.motion`) reads mouth deltas around a mean face, so it needs a
mean face and shares the motion model's representation. The judge reads nothing but the
`lm3d` sequence it judges ([T, 68, 3], iBUG-68 order, canonical head frame; see
`talkingface.lm3d`) and turns each frame into a few scalar measurements of the mouth:

- inner-lip vertical openings at 3 columns (61-67, 62-66, 63-65);
- outer-lip vertical openings at 3 columns (50-58, 51-57, 52-56);
- outer and inner mouth widths (48-54, 60-64);
- lip protrusion: z of the upper (51) and lower (57) lip midpoints ahead of the corners;
- jaw drop: nose bottom (33) to chin (8), vertical;
- corner lift: the corners' height relative to the lip midpoints (smile / frown).

Each measurement is divided by the same frame's inter-ocular distance (outer eye corners
36-45), so face size drops out, and then each has its per-sequence mean removed, so the
person's resting mouth shape (identity) drops out too. What is left is how the mouth moves.
With `sequence_scale` each is then divided by its own std over the sequence (at least
`STILL`, so a still mouth's tremor stays small): what is left is when the mouth moves, not
how far. A face-mesh tracker reads a drawn SynthTalk mouth's corners moving 6-8 times as
far as they do, and the openings 1.2-1.3 times (docs/judge.md, "Read from a video").
"""

from __future__ import annotations

import numpy as np

from talkingface.lm3d import check_lm3d

FEATURE_NAMES = (
    "inner_open_right",
    "inner_open_mid",
    "inner_open_left",
    "outer_open_right",
    "outer_open_mid",
    "outer_open_left",
    "outer_width",
    "inner_width",
    "upper_protrusion",
    "lower_protrusion",
    "jaw_drop",
    "corner_lift",
)
MOUTH_FEATURES = len(FEATURE_NAMES)
STILL = 0.002  # inter-ocular distances: a measurement moving less than this is still
_INNER = ((61, 67), (62, 66), (63, 65))
_OUTER = ((50, 58), (51, 57), (52, 56))


def raw_geometry(lm3d: np.ndarray) -> np.ndarray:
    """lm3d [T, 68, 3] -> [T, 12] mouth measurements in inter-ocular units (means kept)."""
    lm = check_lm3d(lm3d).astype(np.float64)
    y, z = lm[..., 1], lm[..., 2]
    iod = np.linalg.norm(lm[:, 45] - lm[:, 36], axis=-1)
    if (iod <= 1e-6).any():
        raise ValueError("lm3d has frames whose eye corners coincide (no face scale)")
    corners_z = (z[:, 48] + z[:, 54]) / 2
    cols = [
        *(y[:, up] - y[:, low] for up, low in _INNER),
        *(y[:, up] - y[:, low] for up, low in _OUTER),
        np.linalg.norm(lm[:, 54] - lm[:, 48], axis=-1),
        np.linalg.norm(lm[:, 64] - lm[:, 60], axis=-1),
        z[:, 51] - corners_z,
        z[:, 57] - corners_z,
        y[:, 33] - y[:, 8],
        (y[:, 48] + y[:, 54]) / 2 - (y[:, 51] + y[:, 57]) / 2,
    ]
    return (np.stack(cols, axis=1) / iod[:, None]).astype(np.float32)


def mouth_features(lm3d: np.ndarray, sequence_scale: bool = True) -> np.ndarray:
    """lm3d [T, 68, 3] -> [T, 12]: mouth measurements / inter-ocular distance, each with its
    per-sequence mean removed and, with `sequence_scale`, divided by its per-sequence std
    (floored at `STILL`). The judge's training std is applied by the judge."""
    g = raw_geometry(lm3d)
    g = g - g.mean(axis=0, keepdims=True)
    if sequence_scale:
        g = g / np.maximum(g.std(axis=0, keepdims=True), STILL)
    return g.astype(np.float32)


def audio_features(features: np.ndarray) -> np.ndarray:
    """Front-end features [T, D] with the per-utterance mean removed (gain, voice colour)."""
    f = np.asarray(features, np.float32)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"features must be [T, D] with T > 0, got {list(f.shape)}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return (f - f.mean(axis=0, keepdims=True)).astype(np.float32)
