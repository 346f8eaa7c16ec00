"""The masks and the background plate of `avatar ingest` (docs/ingest.md, steps 5 and 7).

The torso is the person under the jaw's own edge in the picture (`jaw_edge`) and under the
lines out from its ends (`below_jaw`): the neck and the shoulders. The head is the rest of
the person, hair and ears included.
`background_plate` is the per-pixel median of the background, with the torso standing in
where the background is never seen.
"""

from __future__ import annotations

import numpy as np

# The jaw's edge, searched along the normals of the mesh's jaw line (iBUG points 0-16):
JAW_BAND = (-0.1, 0.4)  # from this far inside to this far outside it (inter-ocular distances)
JAW_PRIOR = 0.1  # where the cut lies where the picture shows no edge (inter-ocular distances)
JAW_STEP_PX = 0.5  # the search's step along each normal
JAW_SAMPLES = 65  # normals along the jaw line, evenly spaced
JAW_BEND = 4.0  # cost of a pixel of change between neighbouring normals
JAW_PULL = 0.5  # cost of a pixel away from the prior
JAW_EDGE_CAP = 40.0  # colour change per pixel (0-255) counted at most: a drawn outline is no
# surer an edge than a shadow under the chin
JAW_END_DROP = 0.5  # the torso's sideways lines start this far below the edge's ends (IODs)
JAW_MARGIN_PX = 1.0  # the cut lies this far outside the edge found (the edge's own pixels: head)


def jaw_edge(frame: np.ndarray, lm2d: np.ndarray, iod: float) -> np.ndarray:
    """The jaw's edge in `frame` [H, W, 3] uint8 near the mesh's jaw line: [JAW_SAMPLES, 2]
    points (lm2d's pixel-corner coordinates) from iBUG point 0 to 16.

    The mesh follows the cheeks' outline well but can miss the chin's (SynthTalk's drawn chin
    lies a tenth of the inter-ocular distance below it when the head turns, and on its
    darkest face up to half, beyond the band: there the chin is cut off). So along each
    normal of the mesh's jaw line, within JAW_BAND, the colour's change per pixel is scored,
    and one path through the normals is chosen by dynamic programming: the strongest edges,
    bending little from normal to normal, pulled weakly to JAW_PRIOR where the picture is
    flat."""
    from scipy import ndimage

    points = lm2d[0:17].astype(np.float64)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    at = np.linspace(0.0, arc[-1], JAW_SAMPLES)
    line = np.stack([np.interp(at, arc, points[:, 0]), np.interp(at, arc, points[:, 1])], 1)
    tangent = np.gradient(line, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    centre = lm2d[27:36].mean(axis=0)  # the nose: the normals point away from it
    normal *= np.where(((line - centre) * normal).sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    offsets = np.arange(JAW_BAND[0] * iod, JAW_BAND[1] * iod + 1e-9, JAW_STEP_PX)
    where = line[:, None] + offsets[None, :, None] * normal[:, None]  # [J, S, 2]
    rows, cols = where[..., 1] - 0.5, where[..., 0] - 0.5  # pixel-centre indices
    colour = np.stack([ndimage.map_coordinates(frame[..., c], [rows, cols], order=1,
                                               mode="nearest", output=np.float32)
                       for c in range(3)], axis=-1)  # fmt: skip
    edge = np.zeros((len(line), len(offsets)))
    edge[:, 1:-1] = np.linalg.norm(colour[:, 2:] - colour[:, :-2], axis=-1) / (2 * JAW_STEP_PX)
    cost = JAW_PULL * np.abs(offsets - JAW_PRIOR * iod)[None] - np.minimum(edge, JAW_EDGE_CAP)
    bend = JAW_BEND * np.abs(offsets[:, None] - offsets[None, :])  # [to, from]
    total, back = cost[0], np.zeros(cost.shape, int)
    for j in range(1, len(line)):
        paths = total[None, :] + bend
        back[j] = paths.argmin(axis=1)
        total = paths[np.arange(len(offsets)), back[j]] + cost[j]
    chosen = np.empty(len(line), int)
    chosen[-1] = int(total.argmin())
    for j in range(len(line) - 1, 0, -1):
        chosen[j - 1] = back[j, chosen[j]]
    return line + (offsets[chosen] + JAW_MARGIN_PX)[:, None] * normal


def below_jaw(edge: np.ndarray, lm2d: np.ndarray, iod: float, size: int) -> np.ndarray:
    """bool [size, size]: the torso's side of the jaw's `edge` (`jaw_edge`): under it, and
    under the lines that go out sideways (square to the face's down direction, eyes to chin)
    from JAW_END_DROP below its two ends (the ear lobes stay head): the neck and the
    shoulders. Hair that falls below those lines goes with the torso."""
    from PIL import Image, ImageDraw

    down = lm2d[8] - lm2d[36:48].mean(axis=0)
    down /= max(float(np.linalg.norm(down)), 1e-9)
    out = np.array([-down[1], down[0]])  # square to down, from the edge's end to its start
    if np.dot(edge[0] - edge[-1], out) < 0:
        out = -out
    far, drop = 4.0 * size, JAW_END_DROP * iod * down
    start, end = edge[0] + drop, edge[-1] + drop
    outline = [*edge, end, end - far * out, end - far * out + far * down,
               start + far * out + far * down, start + far * out, start]  # fmt: skip
    canvas = Image.new("L", (size, size), 0)
    # PIL puts pixel (i, j)'s centre at the point (i, j); lm2d at (i + 0.5, j + 0.5).
    ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in outline], fill=1)
    return np.asarray(canvas, bool)


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
    plate = nan_median(stack)  # NaN where never seen: filled below
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


def nan_median(stack: np.ndarray) -> np.ndarray:
    """The median along the first axis of a float `stack` [N, ...], NaNs left out (NaN where
    all are): `np.nanmedian`'s values, by one sort (in place: `stack` is reordered) instead
    of numpy's masked arrays, about ten times faster on a plate's stack."""
    stack.sort(axis=0)  # NaNs last
    n = (~np.isnan(stack)).sum(axis=0)
    lo = np.take_along_axis(stack, np.maximum(n - 1, 0)[None] // 2, axis=0)[0]
    hi = np.take_along_axis(stack, np.minimum(n // 2, len(stack) - 1)[None], axis=0)[0]
    return np.where(n > 0, (lo + hi) / 2, np.nan).astype(stack.dtype)
