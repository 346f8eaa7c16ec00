"""The masks and the background plate of `avatar ingest` (docs/ingest.md, steps 5 and 6).

`neck_cut` splits the person into head and torso by a line rigid with the head;
`background_plate` is the per-pixel median of the background, with the torso standing in
where the background is never seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

NECK_CUT = 0.2  # the head mask ends this far (canonical units: 2 cm) below the lowest chin


def neck_cut(lm3d: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray,
             size: int) -> Callable[[int], np.ndarray]:  # fmt: skip
    """Frame i -> bool [size, size]: the pixels below the neck cut, a line rigid with the head:
    the projection of a canonical line NECK_CUT units below the lowest chin (the jaw open)
    at half the chin's depth. Rigid with the head, the cut keeps the same part of the head
    in the head mask whatever the pose, so carving the renderer's empty space from the masks
    never cuts off the jaw of a head tipped back."""
    y_cut = float(lm3d[:, 8, 1].min()) - NECK_CUT
    z_cut = 0.5 * float(np.median(lm3d[:, 8, 2]))
    ends = np.array([[-2.0, y_cut, z_cut], [2.0, y_cut, z_cut], [0.0, 0.0, z_cut]])
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64)
    cam = np.einsum("tij,nj->tni", R, ends) + t[:, None]
    uv = np.einsum("ij,tnj->tni", K.astype(np.float64), cam)
    uv = uv[..., :2] / uv[..., 2:]
    xs = np.arange(size, dtype=np.float64) + 0.5
    gx, gy = np.meshgrid(xs, xs)

    def below(i: int) -> np.ndarray:
        (ax, ay), (bx, by), (hx, hy) = uv[i]
        side = (bx - ax) * (gy - ay) - (by - ay) * (gx - ax)
        head = (bx - ax) * (hy - ay) - (by - ay) * (hx - ax)
        return side * np.sign(head) < 0

    return below


def background_plate(video, heads, torsos) -> tuple[np.ndarray, float]:
    """Per-pixel median over the frames where the pixel is background. Pixels never seen
    uncovered: where the torso covers them (shoulders, which the head renderer does not
    model) the median of every frame, so the plate carries the torso as it mostly is; the
    rest (behind the head) from their nearest seen neighbour. Returns the plate and the
    unseen share."""
    from scipy import ndimage

    count, size = video.shape[0], video.shape[1]
    step = max(1, count // 200)  # the median of at most ~200 frames
    stack = np.asarray(video[::step], np.float32)
    head, torso = np.asarray(heads[::step]), np.asarray(torsos[::step])
    everything = np.median(stack, axis=0)
    # A margin around the person: the segmentation's edge is soft, and hair or skin there
    # would leak into the plate.
    grow = np.ones((1, 3, 3), bool)
    person = ndimage.binary_dilation(head | torso, grow, iterations=max(1, size // 64))
    stack[person] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pixels never seen: filled below
        plate = np.nanmedian(stack, axis=0)
    unseen = np.isnan(plate[..., 0])
    shoulders = unseen & (torso.mean(axis=0) > head.mean(axis=0))
    plate[shoulders] = everything[shoulders]
    rest = unseen & ~shoulders
    if rest.all():
        plate = everything
    elif rest.any():
        _, (iy, ix) = ndimage.distance_transform_edt(rest, return_indices=True)
        plate = plate[iy, ix]
    return np.clip(np.rint(plate), 0, 255).astype(np.uint8), float(unseen.mean())
