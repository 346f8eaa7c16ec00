"""face.lips: the inner lips' gap read from drawn mouths whose gap is known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from talkingface.face import lips
from talkingface.face.ibug68 import LEFT_EYE, RIGHT_EYE

SKIN, LIP, CAVITY, TEETH = (200, 160, 140), (150, 60, 60), (30, 10, 10), (235, 235, 225)
EYE_Y, EYE_HALF = 40.0, 30.0  # eyes' centres 60 px apart
MOUTH_Y, LIP_THICK, HALF_WIDTH = 120.0, 10.0, 25.0


def mouth(
    gap: float,
    turn_deg: float = 0.0,
    inside=CAVITY,
    lip=LIP,
    teeth: bool = False,
    read=lambda gap: 0.05 * 2 * EYE_HALF + 1.4 * gap,
):
    """A drawn face (200 x 200, 4x supersampled) whose inner lips are `gap` px apart about
    y = MOUTH_Y, turned by `turn_deg` about the mouth's centre; and the mesh points that
    `face.lips` reads, exact but for the inner-lip pairs, which are `read(gap)` apart: by
    default 0.05 IOD too far apart when closed and 1.4 x the gap when open, as the face mesh
    reads a drawn mouth."""
    s = 4
    image = Image.new("RGB", (200 * s, 200 * s), SKIN)
    draw = ImageDraw.Draw(image)
    top, bottom = MOUTH_Y - gap / 2, MOUTH_Y + gap / 2
    draw.rectangle([(100 - HALF_WIDTH) * s, (top - LIP_THICK) * s,
                    (100 + HALF_WIDTH) * s, (bottom + LIP_THICK) * s], fill=lip)  # fmt: skip
    if gap > 0:
        draw.rectangle([(100 - HALF_WIDTH) * s, top * s, (100 + HALF_WIDTH) * s, bottom * s],
                       fill=inside)  # fmt: skip
        if teeth:  # upper teeth: the top third of the inside
            draw.rectangle([(100 - HALF_WIDTH) * s, top * s, (100 + HALF_WIDTH) * s,
                            (top + gap / 3) * s], fill=TEETH)  # fmt: skip
    image = image.rotate(turn_deg, resample=Image.BICUBIC, center=(100 * s, MOUTH_Y * s))
    frame = np.asarray(image.resize((200, 200), Image.BOX))
    read_gap = read(gap)
    points = np.zeros((468, 3), np.float32)
    place = {
        **{i: (100 - EYE_HALF, EYE_Y) for i in RIGHT_EYE},
        **{i: (100 + EYE_HALF, EYE_Y) for i in LEFT_EYE},
        lips.CORNERS[0]: (100 - HALF_WIDTH, MOUTH_Y), lips.CORNERS[1]: (100 + HALF_WIDTH, MOUTH_Y),
    }  # fmt: skip
    for upper, lower, x in zip(lips.UPPER_LIP, lips.LOWER_LIP, (90.0, 100.0, 110.0), strict=True):
        (outer_up, inner_up), (outer_low, inner_low) = upper, lower
        place[inner_up], place[inner_low] = (x, MOUTH_Y - read_gap / 2), (x, MOUTH_Y + read_gap / 2)
        place[outer_up], place[outer_low] = (x, top - LIP_THICK), (x, bottom + LIP_THICK)
    # pixel-centre coordinates: the drawing's y = MOUTH_Y is pixel row MOUTH_Y - 0.5
    angle = np.deg2rad(-turn_deg)  # PIL turns counter-clockwise on screen
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for index, xy in place.items():
        points[index, :2] = turn @ (np.array(xy) - (100, MOUTH_Y)) + (100, MOUTH_Y) - 0.5
    return frame, points


def read_gaps(meshes: np.ndarray) -> np.ndarray:
    down = lips.lines(meshes)[1]
    low, up = meshes[..., lips.LOWER, :2], meshes[..., lips.UPPER, :2]
    return np.einsum("tkc,tc->tk", low - up, down)


def refine_video(gaps, edit=None, **kwargs):
    frames, meshes = zip(*(mouth(g, **kwargs) for g in gaps), strict=True)
    colours = np.stack([lips.profile(f, p) for f, p in zip(frames, meshes, strict=True)])
    if edit is not None:
        edit(colours)
    return np.stack(meshes), *lips.refine(np.stack(meshes), colours)


GAPS = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0])


@pytest.mark.parametrize("turn", [0.0, 12.0])
def test_the_gap_is_read_from_the_pixels_where_the_mesh_reads_it_bent(turn):
    before, after, report = refine_video(GAPS, turn_deg=turn)
    assert report["applied"] and report["contrast"] > 100, report
    bent = read_gaps(before).mean(axis=1)
    got = read_gaps(after)
    # within half a pixel of the drawn gap, closed mouths included; the mesh's reading was
    # 3 px too wide when closed and 40 % too wide when open
    assert np.abs(got - GAPS[:, None]).max() < 0.5, got
    assert np.abs(bent - GAPS).max() > 6
    # the pairs move about their midpoints, along the mouth's downward direction only
    centre_before, _, along, _ = lips.lines(before)
    centre_after = lips.lines(after)[0]
    assert np.abs(centre_after - centre_before).max() < 1e-3
    moved = after[:, lips.UPPER, :2] - before[:, lips.UPPER, :2]
    assert np.abs(np.einsum("tkc,tc->tk", moved, along)).max() < 1e-3
    # nothing else in the mesh moves, nor the depth
    others = np.setdiff1d(np.arange(468), np.r_[lips.UPPER, lips.LOWER])
    assert np.array_equal(after[:, others], before[:, others])
    assert np.array_equal(after[..., 2], before[..., 2])


def test_teeth_are_inside_the_mouth():
    _, after, report = refine_video(GAPS, teeth=True)
    assert report["applied"]
    open_ = GAPS >= 3  # teeth a third of the gap: at least a pixel
    # Teeth are farther from the lips' colour than the cavity is, so the pixel their edge
    # blends with the lip scores in full: up to about half a pixel too wide.
    assert np.abs(read_gaps(after)[open_] - GAPS[open_, None]).max() < 0.75


def test_nothing_moves_when_the_inside_never_shows():
    # a mouth closed throughout: the "widest" frames show lip, not the inside
    before, after, report = refine_video(np.zeros(6))
    assert not report["applied"] and "contrast" in report["reason"], report
    assert np.array_equal(after, before)
    # an inside coloured as the lips
    before, after, report = refine_video(GAPS, inside=LIP)
    assert not report["applied"] and report["contrast"] < lips.MIN_CONTRAST
    assert np.array_equal(after, before)


def test_a_lip_sample_that_fell_into_the_mouth_gives_way_to_the_videos():
    def fell_in(colours):  # frame 9's upper-lip sample reads the cavity
        colours[9, -2] = CAVITY

    _, after, report = refine_video(GAPS, edit=fell_in)
    assert report["applied"] and report["lip_samples_replaced"] > 0
    assert np.abs(read_gaps(after)[9] - GAPS[9]).max() < 0.5


def test_nothing_moves_where_the_mesh_misses_the_lips():
    # the mesh reads a fifth of each gap: the sampled stretch ends inside the mouth
    gaps = np.array([0.0, 14.0, 16.0, 18.0, 20.0, 22.0])
    before, after, report = refine_video(gaps, read=lambda gap: 0.2 * gap)
    assert not report["applied"] and report["ends_on_lip"] < lips.MIN_ENDS_ON_LIP, report
    assert np.array_equal(after, before)


def test_the_profile_is_the_frames_colours():
    frame, points = mouth(10.0)
    colours = lips.profile(frame, points)
    assert colours.shape == (3 * lips.SAMPLES + 2, 3) and colours.dtype == np.uint8
    assert np.abs(colours[-2:].astype(int) - LIP).max() <= 2  # the lips, above and below
    middle = colours[lips.SAMPLES + lips.SAMPLES // 2]  # the middle pair's midpoint
    assert np.abs(middle.astype(int) - CAVITY).max() <= 2
    # a frame that is not uint8 RGB (e.g. float) is read the same
    assert np.array_equal(lips.profile(frame.astype(np.float32), points), colours)
