"""face.eyes: the eyelids' gaps read from drawn eyes whose opening is known."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from talkingface.face import eyes

SKIN, SCLERA, IRIS, LASH = (200, 160, 140), (235, 230, 222), (70, 90, 140), (30, 25, 25)
CENTRES = ((70.0, 60.0), (130.0, 60.0))  # the eyes' centres; each WIDTH px corner to corner
WIDTH = 36.0
SUPER = 4  # supersampling of the drawing
DEPTH_SLOPE = 0.3  # the drawn mesh's upper lid's depth difference from the lower, per px of gap


LINE = np.sqrt(1 - (1 / 3) ** 2)  # a lid's height at a pair's line (a third of the width
# from a corner), of its height at the eye's middle (the lids are ellipses)


def drawn_gap(opening):
    """The drawn lid gap at a pair's line of an eye `opening` px open at its middle."""
    return opening * LINE


# a blink and the eye open at rest around it; the video's mean gap
OPENINGS = np.array([10.0, 10.0, 11.0, 10.0, 8.0, 5.0, 2.0, 0.0, 0.0, 3.0, 6.0, 9.0, 10.0,
                     11.0, 12.0, 10.0, 10.0, 9.0, 10.0, 11.0])  # fmt: skip
REST = drawn_gap(OPENINGS.mean())


def face(opening: float, turn_deg: float = 0.0, eye=(SCLERA, IRIS), lash: bool = True,
         read=lambda gap: REST + 0.4 * (gap - REST), jitter: float = 0.0, rng=None,
         lower_lid: float | None = None):  # fmt: skip
    """A drawn pair of eyes (200 x 120) `opening` px open at their middles (ellipses of the
    white with an iris, a lash line along the upper lid), turned by `turn_deg` about the
    picture's centre; and the mesh points `face.eyes` reads: the corners and the lower lids
    where they are drawn, the upper lids `read(gap)` above the lower ones for a drawn gap
    `gap` (by default at 0.4 of the motion about the video's mean: as the face mesh reads
    a blink, it hardly closes), plus `jitter` px of noise. With `lower_lid`, the drawn lower lid
    stays that far below the centre line (at the eye's middle) and the upper lid alone
    closes the eye; else both close on the centre line."""
    frame = _drawing(opening, turn_deg, eye, lash, lower_lid)
    angle = np.deg2rad(turn_deg)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rng = rng or np.random.default_rng(0)
    points = np.zeros((468, 3), np.float32)
    low = (opening / 2 if lower_lid is None else lower_lid) * LINE
    for e, (cx, cy) in enumerate(CENTRES):
        corner_a, corner_b = eyes.CORNERS[2 * e]
        place = {corner_a: (cx - WIDTH / 2, cy), corner_b: (cx + WIDTH / 2, cy)}
        for k, third in ((2 * e, -1 / 6), (2 * e + 1, 1 / 6)):
            upper, lower = eyes.PAIRS[k]
            px = cx + third * WIDTH
            place[lower] = (px, cy + low)
            place[upper] = (px, cy + low - read(drawn_gap(opening)) + jitter * rng.normal())
        for index, xy in place.items():
            # pixel-centre coordinates: the drawing's (u, v) is pixel (u - 0.5, v - 0.5)
            points[index, :2] = turn @ (np.array(xy) - (100, 60)) + (100, 60) - 0.5
    points[:, 2] = np.arange(468)  # a depth to keep
    # the mesh's upper lid comes forward as it rises (its depth difference from the lower lid
    # follows the gap it reads)
    gap = gaps(points[None])[0]
    points[eyes.PAIRS[:, 0], 2] = points[eyes.PAIRS[:, 1], 2] + DEPTH_SLOPE * gap
    return frame, points


@functools.lru_cache(maxsize=64)
def _drawing(opening, turn_deg, eye, lash, lower_lid) -> np.ndarray:
    """The picture of `face` (read-only; drawn once per distinct argument)."""
    h, w = 120 * SUPER, 200 * SUPER
    y, x = (np.mgrid[0:h, 0:w] + 0.5) / SUPER
    angle = np.deg2rad(turn_deg)
    # the drawing's own coordinates of each pixel (turned back about the picture's centre)
    u = np.cos(angle) * (x - 100) + np.sin(angle) * (y - 60) + 100
    v = -np.sin(angle) * (x - 100) + np.cos(angle) * (y - 60) + 60
    image = np.zeros((h, w, 3)) + SKIN
    for cx, cy in CENTRES:
        a = WIDTH / 2
        shape = np.sqrt(np.clip(1 - ((u - cx) / a) ** 2, 0, 1)) * (np.abs(u - cx) < a)
        low = opening / 2 if lower_lid is None else lower_lid
        upper_lid, lower_lid_at = cy + (low - opening) * shape, cy + low * shape
        inside = (v > upper_lid) & (v < lower_lid_at)
        iris = inside & ((u - cx) ** 2 + (v - cy) ** 2 <= (0.19 * WIDTH) ** 2)
        image[inside] = eye[0]
        image[iris] = eye[1]
        if lash:  # a 1 px line just above the upper lid (also where closed lids meet)
            image[(np.abs(u - cx) < a) & (v >= upper_lid - 1.0) & (v < upper_lid)] = LASH
    frame = image.reshape(120, SUPER, 200, SUPER, 3).mean(axis=(1, 3))
    frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    frame.flags.writeable = False
    return frame


def gaps(meshes: np.ndarray) -> np.ndarray:
    """Each pair's lid gap along its eye's downward direction [T, 4]."""
    down = eyes.lines(meshes)[1]
    return np.einsum("tkc,tkc->tk", meshes[:, eyes.PAIRS[:, 1], :2]
                     - meshes[:, eyes.PAIRS[:, 0], :2], down)  # fmt: skip


def refine_video(openings, **kwargs):
    rng = np.random.default_rng(1)
    frames, meshes = zip(*(face(o, rng=rng, **kwargs) for o in openings), strict=True)
    colours = np.stack([eyes.profile(f, p) for f, p in zip(frames, meshes, strict=True)])
    return np.stack(meshes), *eyes.refine(np.stack(meshes), colours)


@pytest.mark.parametrize("turn, lower_lid", [(0.0, None), (12.0, None), (0.0, 5.0)])
def test_a_blink_is_read_from_the_pixels_where_the_mesh_under_reads_it(turn, lower_lid):
    before, after, report = refine_video(OPENINGS, turn_deg=turn, jitter=0.3,
                                         lower_lid=lower_lid)  # fmt: skip
    assert report["applied"] and report["contrast"] > 100, report
    truth = drawn_gap(OPENINGS)[:, None]
    motion = lambda g: g - g.mean(axis=0)  # noqa: E731
    # The upper lids move to the pixels' and keep the mesh's mean place: the gaps follow
    # the drawn blink within a third of a pixel RMS and never a pixel off (the mesh's
    # reading was off by up to 6 px). The samples are 0.8 px apart, and a lid's edge pixel
    # blends the skin with the eye.
    error = motion(gaps(after)) - motion(truth)
    assert np.sqrt(np.mean(error**2)) < 0.33 and np.abs(error).max() < 1.0, error
    assert np.abs(motion(gaps(before)) - motion(truth)).max() > 3.0
    # (the mean to within the closed frames, where an upper lid the pixels put below the
    # lower one stops at it)
    assert np.abs(gaps(after).mean(axis=0) - gaps(before).mean(axis=0)).max() < 0.1
    assert (gaps(after) >= 0).all()
    # the upper lids go on their pairs' lines (across the eye, through the mesh's pair's
    # midpoint); nothing else in the mesh moves (the lower lids included), nor the depth
    centre, _, along, _ = eyes.lines(before)
    off_line = after[:, eyes.PAIRS[:, 0], :2] - centre
    assert np.abs(np.einsum("tkc,tkc->tk", off_line, along)).max() < 1e-3
    others = np.setdiff1d(np.arange(468), eyes.PAIRS[:, 0])
    assert np.array_equal(after[:, others], before[:, others])
    # the upper lid's depth difference from the lower keeps the mesh's share of the gap
    depth = after[:, eyes.PAIRS[:, 0], 2] - after[:, eyes.PAIRS[:, 1], 2]
    np.testing.assert_allclose(depth, DEPTH_SLOPE * gaps(after), atol=1e-3)
    had = before[:, eyes.PAIRS[:, 0], 2] - before[:, eyes.PAIRS[:, 1], 2]
    assert np.abs(depth - had).max() > 1.0  # the mesh's own depth moved by over a pixel's worth


def test_nothing_moves_when_the_eyes_never_blink_or_never_show():
    # open throughout: the pixels' gaps do not follow the mesh's jitter
    before, after, report = refine_video(np.full(12, 10.0), jitter=0.5)
    assert not report["applied"] and "follow" in report["reason"], report
    assert np.array_equal(after, before)
    # an eye of the skin's colour, no lashes
    before, after, report = refine_video(OPENINGS, eye=(SKIN, SKIN), lash=False)
    assert not report["applied"] and report["contrast"] < eyes.MIN_CONTRAST, report
    assert np.array_equal(after, before)


def test_the_profile_is_the_frames_colours():
    frame, points = face(10.0, lash=False)
    colours = eyes.profile(frame, points).reshape(4, eyes.SAMPLES, 3).astype(int)
    assert colours.dtype == int and colours.shape == (4, eyes.SAMPLES, 3)
    assert np.abs(colours[:, 0] - SKIN).max() <= 2 and np.abs(colours[:, -1] - SKIN).max() <= 2
    # each pair's midpoint: the white and the iris (the three lines straddle the iris' edge)
    middle = colours[:, eyes.SAMPLES // 2]
    assert (np.linalg.norm(middle - SKIN, axis=-1) > 60).all(), middle
    # a frame that is not uint8 RGB (e.g. float) is read the same
    assert np.array_equal(eyes.profile(frame.astype(np.float32), points),
                          eyes.profile(frame, points))  # fmt: skip
