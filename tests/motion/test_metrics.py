"""Motion metrics on hand-made sequences with known answers."""

import numpy as np
import pytest

from talkingface.lm3d import INNER_LIP_PAIRS, MOUTH
from talkingface.motion import metrics


def _seq(t: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, (t, 68, 3)).astype(np.float32)


def test_identical_sequences_have_zero_error_and_r_one():
    a = _seq()
    out = metrics.motion_metrics([a], [a.copy()])
    assert out["l2_mm"] == pytest.approx(0.0, abs=1e-9)
    assert out["temporal_mm"] == pytest.approx(0.0, abs=1e-9)
    assert out["mouth_lmd_mm"] == pytest.approx(0.0, abs=1e-9)
    assert out["mouth_open_r"] == pytest.approx(1.0)


def test_constant_offset_is_l2_but_not_temporal_or_lmd():
    a = _seq()
    b = a + np.array([0.01, 0.0, 0.0], np.float32)  # 1 mm to the right everywhere
    out = metrics.motion_metrics([b], [a])
    assert out["l2_mm"] == pytest.approx(1.0, rel=1e-4)
    assert out["temporal_mm"] == pytest.approx(0.0, abs=1e-6)
    assert out["mouth_lmd_mm"] == pytest.approx(0.0, abs=1e-6)


def test_mouth_lmd_ignores_the_rest_of_the_face_and_counts_lip_shape():
    a = _seq()
    b = a.copy()
    b[:, :48] += 0.5  # everything but the mouth moves 5 cm
    assert metrics.mouth_lmd_mm([b], [a]) == pytest.approx(0.0, abs=1e-6)
    c = a.copy()
    c[:, MOUTH[0], 1] += 0.02  # one mouth point 2 mm up
    assert metrics.mouth_lmd_mm([c], [a]) > 0.05


def test_mouth_open_r_follows_the_opening_and_is_zero_for_a_constant():
    a = _seq(50)
    opening = np.sin(np.linspace(0, 6, 50)).astype(np.float32) * 0.05
    for up, low in INNER_LIP_PAIRS:
        a[:, up, 1] = opening / 2
        a[:, low, 1] = -opening / 2
    scaled = a.copy()
    scaled[:, 60:68, 1] *= 0.5  # same timing, smaller amplitude
    assert metrics.mouth_open_r([scaled], [a]) == pytest.approx(1.0, abs=1e-6)
    flat = np.repeat(a[:1], 50, axis=0)
    assert metrics.mouth_open_r([flat], [a]) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.motion_metrics([_seq(10)], [_seq(11)])
