"""The head / torso cut of `avatar ingest` (face.masks): the jaw's edge found in the picture
near a jaw line that misses it, and the torso's side of it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from talkingface.face.masks import (
    JAW_BAND,
    JAW_MARGIN_PX,
    JAW_PRIOR,
    below_jaw,
    jaw_edge,
    nan_median,
)

SIZE = 200
CX, CY, RX, RY = 100.0, 90.0, 50.0, 65.0  # the drawn face: an ellipse
NECK = (76, 124)  # the neck's columns, below the face
SKIN, NECK_SKIN, BACK = (225, 185, 160), (175, 135, 115), (110, 120, 140)


def _centres() -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the landmarks' coordinates (pixel i spans [i, i + 1))."""
    return np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5)


def _face() -> np.ndarray:
    """bool [SIZE, SIZE]: the drawn face's pixels."""
    x, y = _centres()
    return ((x - CX) / RX) ** 2 + ((y - CY) / RY) ** 2 <= 1.0


def _picture() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame, face, neck): a face over a neck, on a background."""
    x, y = _centres()
    face = _face()
    neck = (x >= NECK[0]) & (x < NECK[1]) & (y > CY) & ~face
    frame = np.empty((SIZE, SIZE, 3), np.uint8)
    frame[:] = BACK
    frame[neck] = NECK_SKIN
    frame[face] = SKIN
    return frame, face, neck


def _landmarks(rx: float, ry: float) -> np.ndarray:
    """68 iBUG points: the jaw (0-16) on the lower half of an ellipse with radii rx, ry around
    the face's centre, from the subject's right (the picture's left); eyes and nose inside."""
    points = np.zeros((68, 2))
    angles = np.linspace(np.pi, 0.0, 17)  # 0 at the picture's left, 8 the chin, 16 the right
    points[:17] = np.stack([CX + rx * np.cos(angles), CY + ry * np.sin(angles)], 1)
    points[27:36] = [CX, CY - 0.1 * RY]
    points[36:42] = [CX - 0.35 * RX, CY - 0.3 * RY]
    points[42:48] = [CX + 0.35 * RX, CY - 0.3 * RY]
    return points


IOD = 0.7 * RX


def test_the_edge_is_found_where_the_jaw_line_misses_the_chin():
    frame, face, neck = _picture()
    # The mesh's jaw line 9.75 px above the drawn chin, a little narrower than the cheeks.
    lm2d = _landmarks(0.97 * RX, 0.85 * RY)
    assert JAW_BAND[1] * IOD > 0.15 * RY  # the chin lies inside the band searched
    edge = jaw_edge(frame, lm2d, IOD)
    # The edge found lies on the drawn outline (its margin outside it) along the lower jaw,
    # where the ellipse meets the neck and the background.
    lower = edge[np.abs(edge[:, 0] - CX) < 0.8 * RX]
    radius = np.hypot((lower[:, 0] - CX) / RX, (lower[:, 1] - CY) / RY)
    miss_px = (radius - 1.0) * RY  # about, in pixels, near the chin
    assert np.all(np.abs(miss_px - JAW_MARGIN_PX) < 1.5), miss_px
    below = below_jaw(edge, lm2d, IOD, SIZE)
    # The whole face is the head's but for a few pixels on its outline, and nearly the whole
    # neck the torso's (a pixel-wide seam under the chin goes with the head: the margin).
    assert (face & below).sum() <= 0.003 * face.sum(), (face & below).sum()
    assert (neck & below).sum() >= 0.97 * neck.sum(), (neck & ~below).sum()
    # Under the jaw line as given, without the search, the chin is cut off.
    flat = np.empty_like(frame)
    flat[:] = BACK
    prior_only = below_jaw(jaw_edge(flat, lm2d, IOD), lm2d, IOD, SIZE)
    assert (face & prior_only).sum() > 10 * max((face & below).sum(), 30)


def test_without_an_edge_the_cut_lies_at_the_prior():
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    lm2d = _landmarks(RX, RY)
    edge = jaw_edge(flat, lm2d, IOD)
    radius = np.hypot((edge[:, 0] - CX) / RX, (edge[:, 1] - CY) / RY)
    chin = edge[np.argmax(edge[:, 1])]
    assert chin[1] - (CY + RY) == pytest.approx(JAW_PRIOR * IOD + JAW_MARGIN_PX, abs=0.3)
    assert np.all(radius > 1.0)  # outside the jaw line everywhere


def test_beside_the_jaw_is_head_the_shoulders_torso_and_the_cut_turns_with_the_head():
    frame, _, _ = _picture()
    lm2d = _landmarks(RX, RY)
    below = below_jaw(jaw_edge(frame, lm2d, IOD), lm2d, IOD, SIZE)
    x, y = _centres()
    # Beside the jaw line's ends, a little below them (ears, hair): head, however far out.
    beside = (np.abs(y - CY - 0.2 * IOD) < 2) & (np.abs(x - CX) > RX + 2)
    assert not (below & beside).any()
    # The shoulders' corners, far below and beside the face: torso.
    corners = (y > CY + RY + 0.6 * IOD) & (np.abs(x - CX) > RX + 10)
    assert below[corners].all()
    # A head tilted 25 degrees in the picture: the cut turns with it.
    turn = np.deg2rad(25.0)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    tilted = (lm2d - [CX, CY]) @ rot.T + [CX, CY]
    face_tilted = (((x - CX) * np.cos(turn) + (y - CY) * np.sin(turn)) / RX) ** 2 + (
        (-(x - CX) * np.sin(turn) + (y - CY) * np.cos(turn)) / RY
    ) ** 2 <= 1.0
    picture = np.empty_like(frame)
    picture[:] = BACK
    picture[face_tilted] = SKIN
    cut = below_jaw(jaw_edge(picture, tilted, IOD), tilted, IOD, SIZE)
    assert (face_tilted & cut).sum() <= 0.003 * face_tilted.sum()
    assert cut[int(CY + 1.6 * RY), int(CX - 0.3 * RX)]  # under the tilted chin


@pytest.mark.parametrize("count", [1, 2, 7, 8])
def test_the_plates_median_is_numpys_nanmedian(count):
    rng = np.random.default_rng(count)
    stack = rng.integers(0, 256, (count, 6, 5, 3)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.4] = np.nan
    stack[:, 0, 0] = np.nan  # a pixel never seen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "All-NaN slice" there
        expected = np.nanmedian(stack, axis=0)
    got = nan_median(stack.copy())
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # NaN where numpy's is
