"""Head pose without a 3DMM: Umeyama against numpy's own rotations, the canonical shape and
per-frame rotations recovered from meshes under known motion, on the photo's own mesh."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from skimage import data

from talkingface.face.pose import (
    apply,
    canonical_shape,
    euler_degrees,
    frame_poses,
    rotation_angle_degrees,
    umeyama,
)
from talkingface.face.track import FaceTracker


@pytest.fixture(scope="module")
def head() -> np.ndarray:
    """A real face's mesh (the astronaut's), centred: [468, 3] pixels."""
    points = FaceTracker().track(data.astronaut()).points.astype(np.float64)
    return points - points.mean(axis=0)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    rot = Rotation.from_euler("yxz", [20, -10, 5], degrees=True).as_matrix()
    dst = 2.5 * src @ rot.T + np.array([3.0, -1.0, 7.0])
    s, r, t = umeyama(src, dst)
    assert s == pytest.approx(2.5) and np.allclose(r, rot) and np.allclose(t, [3, -1, 7])
    mirrored = src * np.array([-1, 1, 1])  # a reflection is never returned as a rotation
    _, r2, _ = umeyama(src, mirrored)
    assert np.linalg.det(r2) == pytest.approx(1.0)


def test_euler_angles_match_scipys_convention():
    angles = np.array([[25.0, -12.0, 8.0], [-40.0, 20.0, -15.0], [0.0, 0.0, 90.0]])
    rots = Rotation.from_euler("YXZ", angles, degrees=True).as_matrix()  # intrinsic y, x, z
    np.testing.assert_allclose(euler_degrees(rots), angles, atol=1e-9)


def test_poses_recovered_from_meshes_under_known_motion(head):
    rng = np.random.default_rng(1)
    truth = Rotation.from_euler(
        "YXZ", np.c_[rng.uniform(-30, 30, 40), rng.uniform(-15, 15, 40), rng.uniform(-10, 10, 40)],
        degrees=True,
    ).as_matrix()  # fmt: skip
    truth[7] = np.eye(3)  # one frontal frame
    meshes = np.stack([
        apply(rng.uniform(0.8, 1.2), r, rng.uniform(-50, 50, 3), head)
        + rng.normal(0, 0.3, head.shape)  # 0.3 px of landmark noise
        for r in truth
    ])  # fmt: skip
    shape = canonical_shape(meshes)
    assert np.sqrt((shape**2).sum(axis=1).mean()) == pytest.approx(1.0)
    _, rots, _, residual = frame_poses(meshes, shape)
    # The canonical frame is the frontal frame's: relative rotations are what is known.
    rel_est = np.einsum("ij,tkj->tik", rots[7], rots)
    rel_true = np.einsum("ij,tkj->tik", truth[7], truth)
    errors = rotation_angle_degrees(rel_est, rel_true)
    assert np.median(errors) < 0.5 and errors.max() < 1.5, errors.round(2)
    assert residual.max() < 1.5
