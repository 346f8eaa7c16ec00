"""The inner lips' gap read from the pixels (step 2 of `talkingface avatar ingest`).

The face mesh reads a mouth's inner-lip gap with an offset and a saturating slope: closed
lips 0.04 inter-ocular distances apart, a wide-open mouth up to 1.4 x the true gap and less
at the widest (docs/ingest.md). Where the inside of the mouth shows (the dark cavity, teeth,
tongue), its colour is far from the lips', and the pixels say how far apart the lips are.

For each of the three inner-lip pairs (iBUG 61-67, 62-66, 63-65; mesh 82-87, 13-14,
312-317), `profile` samples the colours along the line through the pair's midpoint,
perpendicular to the line between the inner corners: from `REACH` inter-ocular distances
above the upper point to as far below the lower one, but never past halfway to the outer
lip, since skin is not lip-coloured either. That is `SAMPLES` points, each the mean of three
parallel lines `SPREAD` inter-ocular distances apart. It also samples each lip's own colour,
halfway between the outer and the inner lip. `refine` then, for the whole video:

- takes the inside's colour as the median, over the widest-open tenth of frames (by the
  mesh), of the colour at the middle pair's midpoint, and each lip's colour as its median
  over the video; a frame's own lip sample is used unless it looks like the inside (it fell
  into the mouth);
- scores each sample by its colour distance from the lip on its side (above the pair's
  midpoint: the upper lip; below: the lower lip), as a fraction of the distance between the
  inside and the lips; the score ramps from 0 at `RAMP[0]` to 1 at `RAMP[1]`;
- takes the gap as the integral of the score along the line, and moves the pair's two
  points apart or together about their midpoint to that gap (image x, y; the mesh's depth is
  kept).

Nothing is moved, and `ingest.json` says why, when
- the inside never shows clearly: its colour within `MIN_CONTRAST` grey levels of the lips'
  (the mouth closed throughout, or lips and mouth of one colour);
- in fewer than `MIN_ENDS_ON_LIP` of the pairs does the sampled stretch end on lip at both
  ends: the mesh's lips are not where the pixels' are. This is so on the photo puppets,
  whose painted mouth covers what the mesh reads as lip.

Measured on SynthTalk seeds 11 to 16 and on the photo puppets: docs/ingest.md ("The inner
lips from the pixels").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from talkingface.face.ibug68 import IBUG68, INNER_LIPS, OUTER_LIPS, interocular

# Mesh indices, through the iBUG-68 table (ibug68.py): the inner-lip pairs, upper (iBUG 61,
# 62, 63) and lower (67, 66, 65) point of each; the outer lip above and below each pair (50,
# 51, 52 and 58, 57, 56) with the pair's own point; the inner corners (60, 64).
UPPER = np.array(INNER_LIPS[1:4])
LOWER = np.array(INNER_LIPS[7:4:-1])
UPPER_LIP = np.stack([OUTER_LIPS[2:5], UPPER], axis=1)  # outer, inner point of each column
LOWER_LIP = np.stack([OUTER_LIPS[10:7:-1], LOWER], axis=1)
CORNERS = (INNER_LIPS[0], INNER_LIPS[4])
SAMPLES = 64  # colours along each pair's line
REACH = 0.07  # of the inter-ocular distance (ibug68.interocular), beyond each point of the pair
OUTER = 0.5  # but never past this fraction of the way from the pair's midpoint to the outer lip
SPREAD = 0.014  # between the three parallel lines, of the inter-ocular distance
RAMP = (0.3, 0.7)  # colour distance (fraction of inside-to-lip) scored 0 .. 1
MIN_CONTRAST = 20.0  # grey levels (RGB distance) between the inside and the lips
MIN_ENDS_ON_LIP = 0.5  # of the pairs, or nothing is moved
WIDEST = 0.1  # the fraction of frames, widest open by the mesh, that give the inside's colour


def lines(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each pair's line from meshes [..., 468, >=2]: midpoints [..., 3, 2], the unit
    downward direction [..., 2], the unit direction along the mouth [..., 2] and the sampled
    stretch's ends [..., 3, 2] (signed distances from the midpoint along the downward
    direction: `REACH` beyond each point of the pair, but never past `OUTER` of the way to
    the outer lip)."""
    p = np.asarray(points, np.float64)[..., :2]
    along = p[..., CORNERS[1], :] - p[..., CORNERS[0], :]
    along = along / np.maximum(np.linalg.norm(along, axis=-1, keepdims=True), 1e-9)
    down = np.stack([-along[..., 1], along[..., 0]], axis=-1)
    centre = (p[..., UPPER, :] + p[..., LOWER, :]) / 2

    def signed(index: np.ndarray) -> np.ndarray:  # along `down`, from each pair's midpoint
        return np.einsum("...kc,...c->...k", p[..., index, :] - centre, down)

    reach = REACH * _interocular(p)[..., None]
    top = np.maximum(signed(UPPER) - reach, OUTER * signed(UPPER_LIP[:, 0]))
    bottom = np.minimum(signed(LOWER) + reach, OUTER * signed(LOWER_LIP[:, 0]))
    return centre, down, along, np.stack([np.minimum(top, 0), np.maximum(bottom, 0)], axis=-1)


def profile(frame: np.ndarray, points: np.ndarray) -> np.ndarray:
    """One frame's colours for `refine`, from its mesh [468, >=2] in the frame's pixel-centre
    coordinates: uint8 [3 * SAMPLES + 2, 3] (the three lines, then the upper and lower lip)."""
    centre, down, along, ends = lines(points)
    p = np.asarray(points, np.float64)[:, :2]
    s = _positions(ends)  # [3, SAMPLES]
    offsets = np.array([-1.0, 0.0, 1.0]) * SPREAD * _interocular(p)
    where = (centre[:, None, None, :] + s[:, :, None, None] * down
             + offsets[None, None, :, None] * along)  # [3, SAMPLES, 3 lines, 2]  # fmt: skip
    colours = colours_at(frame, where).mean(axis=2).reshape(3 * SAMPLES, 3)
    lips = [colours_at(frame, p[body].mean(axis=1)).mean(axis=0) for body in (UPPER_LIP, LOWER_LIP)]
    return np.clip(np.rint(np.concatenate([colours, lips])), 0, 255).astype(np.uint8)


def refine(meshes: np.ndarray, profiles: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The inner-lip pairs of `meshes` [T, 468, 3] moved to the gaps their `profiles`
    [T, 3 * SAMPLES + 2, 3] show (module docstring); returns the new meshes and a report."""
    meshes = np.array(meshes, dtype=np.float32, copy=True)
    if len(meshes) == 0:
        return meshes, {"applied": False, "reason": "no frames"}
    centre, down, _, ends = lines(meshes)
    colours = profiles[:, : 3 * SAMPLES].reshape(-1, 3, SAMPLES, 3).astype(np.float64)
    lips = profiles[:, 3 * SAMPLES :].astype(np.float64)  # [T, 2, 3]
    up, low = meshes[:, UPPER, :2], meshes[:, LOWER, :2]
    gap_mesh = np.einsum("tkc,tc->tk", low - up, down)
    widest = gap_mesh.mean(axis=1) >= np.quantile(gap_mesh.mean(axis=1), 1 - WIDEST)
    at = _positions(ends)  # [T, 3, SAMPLES]
    middle = np.abs(at[:, 1]).argmin(axis=-1)  # the middle pair's midpoint
    inside = np.median(colours[widest, 1, middle[widest]], axis=0)
    video_lips = np.median(lips, axis=0)  # [2, 3]: each lip's colour over the video
    contrast = float(np.linalg.norm(inside - video_lips.mean(axis=0)))
    report: dict[str, Any] = {"contrast": round(contrast, 1), "min_contrast": MIN_CONTRAST}
    if contrast < MIN_CONTRAST:
        reason = "the inside of the mouth never shows clearly (too little contrast with the lips)"
        return meshes, {**report, "applied": False, "reason": reason}
    # A frame's lip sample that looks like the inside (it fell in the mouth) gives way to the
    # video's colour of that lip.
    far = np.linalg.norm(video_lips - inside, axis=-1)
    fell_in = np.linalg.norm(lips - inside, axis=-1) < RAMP[1] * far
    lips = np.where(fell_in[..., None], video_lips, lips)
    above = (at < 0)[..., None]  # [T, 3, SAMPLES, 1]
    reference = np.where(above, lips[:, None, None, 0], lips[:, None, None, 1])
    scale = np.maximum(np.linalg.norm(inside - lips.mean(axis=1), axis=-1), MIN_CONTRAST)
    distance = np.linalg.norm(colours - reference, axis=-1) / scale[:, None, None]
    score = np.clip((distance - RAMP[0]) / (RAMP[1] - RAMP[0]), 0.0, 1.0)
    gap = score.mean(axis=-1) * (ends[..., 1] - ends[..., 0])  # [T, 3]
    # The reading holds where the stretch ends on lip at both ends. Where that is not so in
    # most of a video's pairs, the mesh's lips are not where the pixels' are (a painted or
    # made-up mouth, lips of the skin's colour), and nothing is moved.
    ends_on_lip = (score[..., 0] < 0.5) & (score[..., -1] < 0.5)
    report["ends_on_lip"] = round(float(ends_on_lip.mean()), 3)
    if ends_on_lip.mean() < MIN_ENDS_ON_LIP:
        reason = "the lips' edges are not where the mesh puts them in most frames"
        return meshes, {**report, "applied": False, "reason": reason}
    step = (gap / 2)[..., None] * down[:, None, :]
    meshes[:, UPPER, :2] = centre - step
    meshes[:, LOWER, :2] = centre + step
    change = (gap - gap_mesh).mean(axis=1) / _interocular(meshes)
    report.update(applied=True, lip_samples_replaced=round(float(fell_in.mean()), 3),
                  gap_change_iod={  # medians: all frames, the widest tenth
        "median": round(float(np.median(change)), 4),
        "widest": round(float(np.median(change[widest])), 4),
    })  # fmt: skip
    return meshes, report


def _positions(ends: np.ndarray) -> np.ndarray:
    """The samples' signed distances [..., SAMPLES] between `ends` [..., 2]: the middles of
    SAMPLES equal steps."""
    f = (np.arange(SAMPLES) + 0.5) / SAMPLES
    return ends[..., :1] + f * (ends[..., 1:] - ends[..., :1])


def _interocular(points: np.ndarray) -> np.ndarray:
    """The inter-ocular distance (the NME normaliser: the outer eye corners) of meshes
    [..., 468, >=2]; [...]."""
    return interocular(np.asarray(points, np.float64)[..., IBUG68, :2])


def colours_at(frame: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The frame's colours [..., 3] at pixel-centre coordinates `where` [..., 2] (x, y),
    bilinear, clamped to the frame (one call on the frame as it is: no copy of it)."""
    points = where.reshape(-1, 1, 2)
    channel = np.broadcast_to(np.arange(3, dtype=np.float64), (len(points), 3))
    coords = [np.broadcast_to(points[..., 1], channel.shape), np.broadcast_to(points[..., 0],
              channel.shape), channel]  # fmt: skip
    colours = ndimage.map_coordinates(frame, coords, output=np.float64, order=1, mode="nearest")
    return colours.reshape(*where.shape[:-1], 3)
