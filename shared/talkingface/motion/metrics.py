"""Motion-quality metrics (paper table 3's columns; BRIEF §6), in millimetres.

All take lists of lm3d sequences ([T, 68, 3], canonical units of 10 cm; errors are reported
in mm = units x 100) and pool every frame of every sequence:

- `l2_mm`: mean Euclidean distance per landmark per frame;
- `temporal_mm`: the same on velocities (frame-to-frame differences): the paper's temporal
  error (TE);
- `mouth_lmd_mm`: landmark distance of the 20 mouth points after removing each frame's mouth
  centroid (LMD as lip-sync papers compute it on the mouth);
- `mouth_open_r`: Pearson correlation of the inner-lip opening (`lm3d.mouth_opening`) between
  prediction and ground truth, each sequence centred on its own mean (0 when either is
  constant): does the mouth open and close when it should;
- the sync expert's scores come from `SyncScorer` in `talkingface.motion.infer`.
"""

from __future__ import annotations

import numpy as np

from talkingface.lm3d import MOUTH, mouth_opening

MM_PER_UNIT = 100.0


def _cat(seqs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(s, np.float64) for s in seqs], axis=0)


def l2_mm(pred: list[np.ndarray], gt: list[np.ndarray]) -> float:
    return float(np.linalg.norm(_cat(pred) - _cat(gt), axis=-1).mean() * MM_PER_UNIT)


def temporal_mm(pred: list[np.ndarray], gt: list[np.ndarray]) -> float:
    vp = _cat([np.diff(p, axis=0) for p in pred])
    vg = _cat([np.diff(g, axis=0) for g in gt])
    return float(np.linalg.norm(vp - vg, axis=-1).mean() * MM_PER_UNIT)


def mouth_lmd_mm(pred: list[np.ndarray], gt: list[np.ndarray]) -> float:
    p = _cat(pred)[:, MOUTH]
    g = _cat(gt)[:, MOUTH]
    p = p - p.mean(axis=1, keepdims=True)
    g = g - g.mean(axis=1, keepdims=True)
    return float(np.linalg.norm(p - g, axis=-1).mean() * MM_PER_UNIT)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def mouth_open_r(pred: list[np.ndarray], gt: list[np.ndarray]) -> float:
    """Pearson r of the inner-lip opening over all frames, each sequence centred on its own
    mean first (so a person's resting lip gap, i.e. identity, cannot inflate the score)."""

    def centred(seqs: list[np.ndarray]) -> np.ndarray:
        opening = [mouth_opening(np.asarray(s, np.float64)) for s in seqs]
        return np.concatenate([o - o.mean() for o in opening])

    return pearson(centred(pred), centred(gt))


def motion_metrics(pred: list[np.ndarray], gt: list[np.ndarray]) -> dict[str, float]:
    if len(pred) != len(gt) or not pred:
        raise ValueError("need equally many, and at least one, predicted and true sequences")
    for p, g in zip(pred, gt, strict=True):
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} != ground truth {g.shape}")
    return {
        "l2_mm": l2_mm(pred, gt),
        "temporal_mm": temporal_mm(pred, gt),
        "mouth_lmd_mm": mouth_lmd_mm(pred, gt),
        "mouth_open_r": mouth_open_r(pred, gt),
    }
