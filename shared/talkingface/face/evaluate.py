"""`talkingface eval ingest`: an ingested avatar against the ground truth of the SynthTalk
avatar whose frames made its video (issue 15's measures, docs/ingest.md "Measured").

- faces found, and the frames kept (those cut at the ends are left out of every measure);
- landmark NME per iBUG-68 region: each frame's mean point distance, in the source's pixels
  through the recorded crop, over the truth's inter-ocular distance; median over frames;
- the inner-lip opening's Pearson r with the truth's (canonical lm3d); the eyes' opening
  ratio's (`render.regions.eye_ratio`, both eyes' mean) likewise, and its amplitude: the
  slope of the ingest's ratio on the truth's (1: blinks as deep as the truth's);
- head rotation error, three ways: after the best constant rotation between the two head
  frames (the ingest's and SynthTalk's differ by one), relative to the first frame, and
  between random pairs of frames (a fixed sample); medians, in degrees;
- pose consistency: points fixed to the true head (a 5 x 5 x 3 grid over the face and the
  front half of the head, and the 31 brow, nose and eye landmarks of its first frame)
  projected by the true poses; the best fixed points under the ingest's poses, fitted on its
  train frames, explain those tracks to within this many crop pixels (RMS; train and val
  frames). Zero for poses exact up to a constant change of head frame; what a renderer
  trained on these poses cannot absorb;
- the head mask against the truth's (the truth's resampled through the crop, nearest pixel):
  intersection over union, and the shares of the frame in the truth's head mask and not the
  ingest's (`missed`: a cut chin) and the other way (`extra`: neck, shoulders).

The video must have been made from the truth's frames at their size (e.g. `write_mp4`), at
most `MAX_TRACK_SIDE` pixels on its long side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.face.ibug68 import REGIONS, interocular
from talkingface.face.pose import apply, rotation_angle_degrees

PAIRS = 3000  # frame pairs sampled for the pairwise rotation error (seed 0)
GAUSS_NEWTON_STEPS = 8


def evaluate_ingest(ingested: Path | str, truth: Path | str) -> dict[str, Any]:
    """The measures above for the ingested avatar directory against the SynthTalk one."""
    from scipy.spatial.transform import Rotation

    from talkingface.data.synthtalk.fileformat import read_avatar
    from talkingface.lm3d import mouth_opening
    from talkingface.render.regions import eye_ratio

    ingested = Path(ingested)
    if not (ingested / "ingest.json").is_file():
        raise ValueError(f"{ingested} has no ingest.json: not a directory `talkingface avatar "
                         "ingest` wrote")  # fmt: skip
    report = json.loads((ingested / "ingest.json").read_text())
    got, true = read_avatar(ingested), read_avatar(truth)
    lo, n = int(report["frames"]["dropped_why"]["no_face_at_start"]), len(got["R"])
    if lo + n > len(true["R"]):
        raise ValueError(f"{ingested} has {lo + n} frames from its start, {truth} only "
                         f"{len(true['R'])}: not the video of this truth")  # fmt: skip
    keep = slice(lo, lo + n)
    crop = report["crop"]
    scale = crop["size"] / crop["side"]
    offset = np.array([crop["x0"], crop["y0"]])
    lm2d_true = np.asarray(true["lm2d"][keep], np.float64)
    err = np.linalg.norm(got["lm2d"] / scale + offset - lm2d_true, axis=-1)
    err /= interocular(lm2d_true)[:, None]
    nme = {name: round(float(np.median(err[:, part].mean(axis=1))), 4)
           for name, part in REGIONS.items()}  # fmt: skip
    lip_r = np.corrcoef(mouth_opening(got["lm3d"]), mouth_opening(true["lm3d"][keep]))[0, 1]
    eye_got = eye_ratio(np.asarray(got["lm3d"], np.float64))
    eye_true = eye_ratio(np.asarray(true["lm3d"][keep], np.float64))
    eye_r = np.corrcoef(eye_got, eye_true)[0, 1]
    eye_slope = np.polyfit(eye_true, eye_got, 1)[0]

    r_got = np.asarray(got["R"], np.float64)
    r_true = np.asarray(true["R"][keep], np.float64)
    frame = Rotation.from_matrix(np.einsum("tji,tjk->tik", r_true, r_got)).mean().as_matrix()
    a, b = np.random.default_rng(0).integers(0, n, (2, PAIRS))

    def between(r: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.einsum("tij,tkj->tik", r[j], r[i])  # camera-frame turn from i to j

    zero = np.zeros(n, int)
    rotation = {
        "after_constant_rotation": rotation_angle_degrees(r_got, r_true @ frame),
        "relative_to_first_frame": rotation_angle_degrees(
            between(r_got, zero, np.arange(n)), between(r_true, zero, np.arange(n))),
        "between_pairs": rotation_angle_degrees(between(r_got, a, b), between(r_true, a, b)),
    }  # fmt: skip
    splits = got["manifest"]["splits"]
    train, val = np.arange(*splits["train"]), np.arange(*splits["val"])
    points = head_points(true["lm3d"][0])
    consistency = pose_consistency(got, true, keep, points, scale, offset, train, val)
    heads = head_mask_agreement(got["masks"], true["masks"][keep], scale, offset)
    return {
        "frames": {"in": report["frames"]["in"], "kept": n,
                   "face_found": report["frames"]["face_found"]},
        "nme_iod": nme,
        "lip_opening_r": round(float(lip_r), 4),
        "eye_opening": {"r": round(float(eye_r), 4), "slope": round(float(eye_slope), 3)},
        "rotation_error_deg": {k: round(float(np.median(v)), 3) for k, v in rotation.items()},
        "pose_consistency_px": consistency,
        "head_mask": heads,
    }  # fmt: skip


def head_mask_agreement(got, true, scale: float, offset: np.ndarray) -> dict[str, float]:
    """IoU, `missed` and `extra` (shares of the ingest's frame) of the head masks `got`
    [T, S, S] against the truth's [T, H, W] seen through the crop (`scale` ingest pixels per
    source pixel, the crop's corner at `offset` in the source)."""
    size, (h, w) = got.shape[1], true.shape[1:]
    centres = (np.arange(size) + 0.5) / scale  # ingest pixel centres, source corner coords
    cols = np.clip(np.floor(centres + offset[0]).astype(int), 0, w - 1)
    rows = np.clip(np.floor(centres + offset[1]).astype(int), 0, h - 1)
    inter = union = missed = extra = 0
    for a, b in zip(got, true, strict=True):
        a, b = np.asarray(a, bool), np.asarray(b, bool)[np.ix_(rows, cols)]
        inter, union = inter + int((a & b).sum()), union + int((a | b).sum())
        missed, extra = missed + int((b & ~a).sum()), extra + int((a & ~b).sum())
    pixels = got.shape[0] * size * size
    return {"iou": round(inter / max(union, 1), 4), "missed": round(missed / pixels, 4),
            "extra": round(extra / pixels, 4)}  # fmt: skip


def head_points(lm3d: np.ndarray) -> np.ndarray:
    """Points fixed to a head in its canonical frame: a 5 x 5 x 3 grid over the landmarks'
    box, widened a little, from the nose tip's depth back to half a face-width behind the
    landmarks; and the 31 brow, nose and eye landmarks of `lm3d` [68, 3]."""
    lm3d = np.asarray(lm3d, np.float64)
    lo, hi = lm3d.min(axis=0), lm3d.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    g = np.linspace(-1.0, 1.0, 5)
    depths = np.linspace(hi[2], lo[2] - half[0], 3)  # contract z: towards the camera
    grid = [[centre[0] + 1.2 * half[0] * x, centre[1] + 1.3 * half[1] * y, z]
            for x in g for y in g for z in depths]  # fmt: skip
    return np.concatenate([np.array(grid), lm3d[17:48]])


def project(k: np.ndarray, r: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixels [T, N, 2] of `points` [N, 3] under poses r [T, 3, 3], t [T, 3] and K `k`, in
    float64: `data.synthtalk.camera.project` is the same pinhole in float32, too coarse for
    the finite differences of `fixed_points`."""
    pixels = np.einsum("ij,tnj->tni", k, apply(1.0, r, t, points))
    return pixels[..., :2] / pixels[..., 2:3]


def fixed_points(k: np.ndarray, r: np.ndarray, t: np.ndarray, tracks: np.ndarray,
                 weights: np.ndarray | None = None,
                 huber_px: float | None = None) -> np.ndarray:  # fmt: skip
    """The fixed points [N, 3] whose projections under (k, r, t) come nearest `tracks`
    [T, N, 2]: linear triangulation, then Gauss-Newton on the pixel error; each observation
    weighted by `weights` [T, N] (default all 1) and, with `huber_px`, by Huber's weight of
    its current error."""
    base_weights = np.ones(tracks.shape[:2]) if weights is None else np.asarray(weights, float)
    cameras = np.einsum("ij,tjk->tik", k, np.concatenate([r, t[:, :, None]], axis=2))
    u, v = tracks[..., 0:1], tracks[..., 1:2]  # [T, N, 1]
    rows = np.concatenate(
        [
            u * cameras[:, None, 2] - cameras[:, None, 0],
            v * cameras[:, None, 2] - cameras[:, None, 1],
        ]
    )  # [2T, N, 4]
    rows = rows * np.concatenate([base_weights, base_weights])[..., None]
    h = np.linalg.svd(rows.transpose(1, 0, 2), full_matrices=False)[2][:, -1]  # [N, 4]
    points = h[:, :3] / h[:, 3:]
    step = 1e-5
    w = base_weights
    for _ in range(GAUSS_NEWTON_STEPS):
        base = project(k, r, t, points)
        jac = np.stack([(project(k, r, t, points + step * e) - base) / step for e in np.eye(3)],
                       axis=-1)  # fmt: skip
        if huber_px is not None:
            error = np.linalg.norm(base - tracks, axis=-1)
            w = base_weights * np.minimum(1.0, huber_px / np.maximum(error, 1e-9))
        lhs = np.einsum("tn,tnak,tnal->nkl", w, jac, jac) + 1e-9 * np.eye(3)
        rhs = np.einsum("tn,tnak,tna->nk", w, jac, base - tracks)
        points -= np.linalg.solve(lhs, rhs[..., None])[..., 0]
    return points


def pose_consistency(got, true, keep, points, scale, offset, train, val) -> dict[str, float]:
    """RMS crop pixels by which the best fixed points under `got`'s poses (fitted on `train`)
    miss the true tracks of `points` (module docstring)."""
    k_true = np.asarray(true["K"], np.float64)
    tracks = project(k_true, np.asarray(true["R"][keep], np.float64),
                     np.asarray(true["t"][keep], np.float64), points)  # fmt: skip
    tracks = (tracks - offset) * scale  # into the crop's pixels
    k, r, t = (np.asarray(got[name], np.float64) for name in ("K", "R", "t"))
    fitted = fixed_points(k, r[train], t[train], tracks[train])
    miss = np.linalg.norm(project(k, r, t, fitted) - tracks, axis=-1)
    return {"train": round(float(np.sqrt(np.mean(miss[train] ** 2))), 3),
            "val": round(float(np.sqrt(np.mean(miss[val] ** 2))), 3)}  # fmt: skip
