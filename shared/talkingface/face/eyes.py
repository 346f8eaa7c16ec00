"""The upper eyelids read from the pixels (step 2 of `talkingface avatar ingest`, after the
lips).

The face mesh under-reads blinks: on SynthTalk its lid gaps follow the truth's with r 0.8
and at 0.4-0.5 of their amplitude, so a blink hardly closes its eyes (docs/ingest.md, "The
eyelids from the pixels"). Below the upper lid the eye shows: the lashes, the white, the
iris, all far in colour from the skin above it; a closed eye shows skin down to a lash
line. The lower lid hardly moves in a blink, and its edge against a shadowed white is faint
(on a pale face the white's lower part is nearly the skin's colour), so it stays the mesh's.

For each of the four lid pairs (iBUG 37-41, 38-40 of the right eye, 43-47, 44-46 of the
left; mesh 160-144, 158-153, 385-380, 387-373), `profile` samples the colours along the
line through the pair's midpoint, perpendicular to the line between the eye's corners,
`REACH` eye widths (the corner-to-corner distance) to each side: `SAMPLES` points, each the
mean of three parallel lines `SPREAD` eye widths apart. `refine` then, for the whole video:

- takes the skin's colour above and below the eye from the `ENDS` outermost samples at each
  end of the frame's own line (not the video's: in a blink the lid's skin comes down the
  line in another shade, and the video's colour there put the upper lids too high in just
  the frames that matter). A brow, hair or a hand over a line's top end is not guarded
  against: the eye would seem to start there;
- scores each sample by its colour distance from the skin on its side, as a fraction of the
  eye's contrast (over the widest-open tenth of frames by the mesh, the median of each
  line's largest distance: one number for the video); the score ramps from 0 at `RAMP[0]`
  to 1 at `RAMP[1]`;
- places the upper lid where, coming down the line, the eye has shown for `EDGE` samples'
  worth of score (linear between samples; at the line's lower end where it never does);
- keeps the mesh's mean place of the upper lid over the video (the lashes sit above the
  lid's edge; the motion is the pixels', the mean place the mesh's), and never lets it
  below the lower lid. The upper point goes on its pair's line at that place (image x, y),
  and its depth difference from the lower lid's point scales with the gap (as a fraction
  of the mesh's gap, at most `MAX_FOLLOW` times): in the mesh's reading the lid's depth
  moves with its height, and left alone it kept the mesh's blink in `lm3d`.

Nothing is moved, and `ingest.json` says why, when
- the eye never shows clearly: its contrast under `MIN_CONTRAST` grey levels (RGB distance);
- the pixels' gaps do not follow the mesh's over the video (correlation of the gaps in eye
  widths under `MIN_AGREEMENT`): the line is not on the eye, or the eyes never move. The
  photo puppets, whose eyes never blink, agree at 0.32-0.44; SynthTalk's eyes at 0.74-0.89.

Measured on SynthTalk seeds 11 to 13 and on the photo puppets: docs/ingest.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from talkingface.face.ibug68 import IBUG68
from talkingface.face.lips import colours_at

# Mesh indices, through the iBUG-68 table (ibug68.py): the lid pairs (upper, lower) and each
# pair's eye's corners.
PAIRS = IBUG68[[[37, 41], [38, 40], [43, 47], [44, 46]]]  # [4, 2]: upper, lower
CORNERS = IBUG68[[[36, 39], [36, 39], [42, 45], [42, 45]]]  # [4, 2]
SAMPLES = 32  # colours along each pair's line
REACH = 0.35  # eye widths to each side of the pair's midpoint
SPREAD = 0.06  # between the three parallel lines, in eye widths
ENDS = 3  # samples at each end of a line that give the skin's colour
RAMP = (0.2, 0.5)  # colour distance from the skin (fraction of the eye's contrast) scored 0 .. 1
EDGE = 1.0  # samples' worth of eye, from the top, that place the upper lid
MIN_CONTRAST = 20.0  # grey levels between the eye and the skin
MIN_AGREEMENT = 0.5  # correlation of the pixels' lid gaps with the mesh's, or nothing is moved
WIDEST = 0.1  # the fraction of frames, widest open by the mesh, that give the eye's contrast
CLOSEST = 0.02  # the fraction of frames, closest by the pixels, whose change is reported
MAX_FOLLOW = 2.0  # the upper lid's depth difference from the lower: at most this times the mesh's


def lines(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each pair's line from meshes [..., 468, >=2]: midpoints [..., 4, 2], the unit downward
    direction [..., 4, 2], the unit direction along the eye [..., 4, 2] and the eye widths
    [..., 4]."""
    p = np.asarray(points, np.float64)[..., :2]
    along = p[..., CORNERS[:, 1], :] - p[..., CORNERS[:, 0], :]
    width = np.maximum(np.linalg.norm(along, axis=-1), 1e-9)
    along = along / width[..., None]
    down = np.stack([-along[..., 1], along[..., 0]], axis=-1)
    down = down * np.where(down[..., 1:] < 0, -1.0, 1.0)  # image y grows downwards
    centre = (p[..., PAIRS[:, 0], :] + p[..., PAIRS[:, 1], :]) / 2
    return centre, down, along, width


def positions(width: np.ndarray) -> np.ndarray:
    """The samples' signed distances [..., SAMPLES] along the downward direction, from the
    pair's midpoint, for eye widths [...]: the middles of SAMPLES equal steps."""
    f = (np.arange(SAMPLES) + 0.5) / SAMPLES - 0.5
    return 2 * REACH * np.asarray(width)[..., None] * f


def profile(frame: np.ndarray, points: np.ndarray) -> np.ndarray:
    """One frame's colours for `refine`, from its mesh [468, >=2] in the frame's pixel-centre
    coordinates: uint8 [4 * SAMPLES, 3] (the four pairs' lines, each the mean of three)."""
    centre, down, along, width = lines(points)
    s = positions(width)  # [4, SAMPLES]
    offsets = np.array([-1.0, 0.0, 1.0])[None, :] * SPREAD * width[:, None]  # [4, 3]
    # [4, SAMPLES, 3 lines, 2]
    where = (centre[:, None, None, :] + s[:, :, None, None] * down[:, None, None, :]
             + offsets[:, None, :, None] * along[:, None, None, :])  # fmt: skip
    colours = colours_at(frame, where).mean(axis=2).reshape(4 * SAMPLES, 3)
    return np.clip(np.rint(colours), 0, 255).astype(np.uint8)


def refine(meshes: np.ndarray, profiles: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The upper lids of `meshes` [T, 468, 3] moved to where their `profiles`
    [T, 4 * SAMPLES, 3] show them (module docstring); returns the new meshes and a report."""
    meshes = np.array(meshes, dtype=np.float32, copy=True)
    if len(meshes) < 2:
        return meshes, {"applied": False, "reason": "too few frames"}
    centre, down, _, width = lines(meshes)
    colours = profiles.reshape(len(meshes), 4, SAMPLES, 3).astype(np.float64)
    s = positions(width)  # [T, 4, SAMPLES]
    ends = np.stack([colours[:, :, :ENDS].mean(axis=2), colours[:, :, -ENDS:].mean(axis=2)], 2)
    skin = np.where((s < 0)[..., None], ends[:, :, None, 0], ends[:, :, None, 1])
    distance = np.linalg.norm(colours - skin, axis=-1)  # from the skin on each sample's side

    # Each lid's place along `down` from its pair's midpoint [T, 4]: the mesh's.
    upper_mesh, lower_mesh = (np.einsum("tkc,tkc->tk", meshes[:, PAIRS[:, end], :2] - centre,
                                        down) for end in range(2))  # fmt: skip
    gap_mesh = lower_mesh - upper_mesh
    widest = gap_mesh.mean(axis=1) >= np.quantile(gap_mesh.mean(axis=1), 1 - WIDEST)
    contrast = float(np.median(distance[widest].max(axis=-1)))
    report: dict[str, Any] = {"contrast": round(contrast, 1), "min_contrast": MIN_CONTRAST}
    if contrast < MIN_CONTRAST:
        reason = "the eyes never show clearly (too little contrast with the skin around them)"
        return meshes, {**report, "applied": False, "reason": reason}
    score = np.clip((distance / contrast - RAMP[0]) / (RAMP[1] - RAMP[0]), 0.0, 1.0)
    # The upper lid: where, coming down the line, the eye has shown for EDGE samples' worth
    # (linear between samples); the line's lower end where it never does (closed).
    seen = np.cumsum(score, axis=-1)
    after = np.minimum((seen < EDGE).sum(axis=-1), SAMPLES - 1)  # first sample at EDGE
    before = np.take_along_axis(seen, np.maximum(after - 1, 0)[..., None], -1)[..., 0]
    before = np.where(after > 0, before, 0.0)
    at = np.take_along_axis(seen, after[..., None], -1)[..., 0]
    step = 2 * REACH * width / SAMPLES
    into = np.clip((EDGE - before) / np.maximum(at - before, 1e-9), 0.0, 1.0)
    upper = np.take_along_axis(s, after[..., None], -1)[..., 0] + step * (into - 0.5)
    # The mesh's mean place over the video is kept (the lashes sit above the lid's edge);
    # the upper lid never goes below the lower one.
    shown = seen[..., -1] >= EDGE  # frames where the eye shows at all give the shift
    shift = ((upper_mesh - upper) * shown).sum(axis=0) / np.maximum(shown.sum(axis=0), 1)
    upper = np.minimum(upper + shift, lower_mesh)
    # Do the pixels' lids open and close with the mesh's? In eye widths, so that a head
    # coming nearer (both gaps grow) is not taken for it.
    gap_new = lower_mesh - upper
    got, had = gap_new / width, gap_mesh / width
    agreement = [float(np.corrcoef(got[:, k], had[:, k])[0, 1])
                 if got[:, k].std() > 0 and had[:, k].std() > 0 else 0.0
                 for k in range(4)]  # fmt: skip
    report.update(agreement=round(float(np.median(agreement)), 3), min_agreement=MIN_AGREEMENT)
    if np.median(agreement) < MIN_AGREEMENT:
        reason = "the lids in the pixels do not follow the mesh's (no blinks, or no eye seen)"
        return meshes, {**report, "applied": False, "reason": reason}
    meshes[:, PAIRS[:, 0], :2] = centre + upper[..., None] * down
    # The depth follows: the upper point keeps its share of the mesh's depth difference from
    # the lower one as much as the gap keeps of the mesh's (the lid closing over the eyeball).
    follow = np.clip(gap_new / np.maximum(gap_mesh, 1e-3 * width), 0.0, MAX_FOLLOW)
    below = meshes[:, PAIRS[:, 1], 2]
    meshes[:, PAIRS[:, 0], 2] = below + (meshes[:, PAIRS[:, 0], 2] - below) * follow
    gap = gap_new.mean(axis=1)
    change = (got - had).mean(axis=1)
    closed = gap <= np.quantile(gap, CLOSEST)
    report.update(applied=True, gap_change_width={  # medians: all frames, the closest
        "median": round(float(np.median(change)), 4),
        "closest": round(float(np.median(change[closed])), 4),
    })  # fmt: skip
    return meshes, report
