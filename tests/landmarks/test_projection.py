"""Landmark LLE projection: the acceptance properties and agreement with a numpy reference."""

import numpy as np
import pytest

from talkingface.landmarks.projection import (
    DIM,
    ProjectionIndex,
    lle_weights,
    rms_mm,
)


def _training_frames(n: int = 600, seed: int = 0) -> np.ndarray:
    """A low-dimensional landmark set like one person's: a face plus 6 motion modes."""
    rng = np.random.default_rng(seed)
    face = rng.normal(0, 0.5, (68, 3))
    modes = rng.normal(0, 0.02, (6, 68, 3))
    t = np.linspace(0, 40, n)[:, None]
    coeff = np.sin(t * rng.uniform(0.5, 3.0, 6) + rng.uniform(0, 6, 6)) + rng.normal(
        0, 0.05, (n, 6)
    )
    return (face + np.einsum("nm,mpc->npc", coeff, modes)).astype(np.float32)


@pytest.fixture(scope="module")
def frames():
    return _training_frames()


@pytest.fixture(scope="module")
def index(frames):
    return ProjectionIndex.build(frames)


def test_a_training_frame_projects_onto_itself(index, frames):
    result = index.project(frames[100:140], k=20, alpha=1.0)
    np.testing.assert_array_equal(result.lm3d, frames[100:140])
    assert np.all(result.dist_before == 0) and np.all(result.dist_after == 0)
    assert not result.bad.any()


def test_a_far_frame_moves_strictly_closer(index, frames):
    far = frames[200:210] + 0.08  # 8 mm off in every coordinate
    base = index.project(far, alpha=0.0)
    for alpha in (0.25, 0.5, 1.0):
        moved = index.project(far, alpha=alpha)
        assert np.all(moved.dist_after < base.dist_before), alpha
        truly = index.distance_mm(moved.lm3d.reshape(-1, DIM))
        assert np.all(truly < base.dist_before)
    assert base.bad.all()  # far beyond the calibrated threshold


def test_alpha_zero_returns_the_input_unchanged(index, frames):
    x = frames[300:320] + np.float32(0.003)
    result = index.project(x, k=7, alpha=0.0)
    np.testing.assert_array_equal(result.lm3d, x)
    np.testing.assert_array_equal(result.dist_after, result.dist_before)


def _numpy_reference(train: np.ndarray, x: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Brute-force kNN in the full 204-d space + the same LLE maths, in numpy float64."""
    t = train.reshape(-1, DIM).astype(np.float64)
    q = x.reshape(-1, DIM).astype(np.float64)
    d2 = ((q[:, None, :] - t[None]) ** 2).sum(-1)
    idx = np.argsort(d2, axis=1)[:, :k]
    out = []
    for qi, ids in zip(q, idx, strict=True):
        z = t[ids] - qi
        gram = z @ z.T
        gram += np.eye(k) * 1e-3 * np.trace(gram) / k
        w = np.linalg.solve(gram, np.ones(k))
        w /= w.sum()
        out.append(alpha * (w @ t[ids]) + (1 - alpha) * qi)
    return np.array(out).reshape(x.shape)


def test_faiss_path_agrees_with_a_numpy_reference(index, frames):
    rng = np.random.default_rng(5)
    x = frames[rng.integers(0, len(frames), 50)] + rng.normal(0, 0.004, (50, 68, 3)).astype(
        np.float32
    )
    ours = index.project(x, k=20, alpha=0.5).lm3d
    ref = _numpy_reference(frames, x, 20, 0.5)
    # Tolerance: 0.01 mm RMS per frame (the PCA search space keeps 99.99 % of the variance,
    # so the neighbour sets agree; float32 storage accounts for the rest).
    assert rms_mm(ours.reshape(-1, DIM), ref.reshape(-1, DIM)).max() < 0.01


def test_lle_weights_sum_to_one_and_rebuild_points_in_the_span():
    rng = np.random.default_rng(1)
    nb = rng.normal(size=(4, 5, 12))
    w_true = rng.dirichlet(np.ones(5), size=4)
    x = np.einsum("tk,tkd->td", w_true, nb)
    w = lle_weights(x, nb)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    # exact up to the LLE regulariser's small bias (1e-3 of the local scale)
    err = np.linalg.norm(np.einsum("tk,tkd->td", w, nb) - x, axis=1)
    spread = np.linalg.norm(nb - x[:, None], axis=2).mean(axis=1)
    assert np.all(err < 0.02 * spread)


def test_bad_options_and_inputs_are_errors(index):
    good = np.zeros((3, 68, 3), np.float32)
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must"):
            index.project(good, k=k)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            index.project(good, alpha=alpha)
    with pytest.raises(ValueError, match="shape"):
        index.project(np.zeros((3, 68, 2), np.float32))
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.project(bad)


def test_threshold_flags_held_out_like_frames_rarely(index, frames):
    rng = np.random.default_rng(2)
    near = frames[rng.integers(0, len(frames), 200)] + rng.normal(0, 0.001, (200, 68, 3)).astype(
        np.float32
    )
    assert index.threshold > 0
    assert index.project(near, alpha=0.0).bad_case_rate < 0.05


def test_index_round_trips_through_its_arrays(index, frames):
    again = ProjectionIndex.from_arrays(index.arrays())
    x = frames[:30] + np.float32(0.002)
    np.testing.assert_array_equal(again.project(x).lm3d, index.project(x).lm3d)
    assert again.threshold == index.threshold


@pytest.mark.parametrize("n", [3, 50, 601, 5003])
def test_flat_search_is_exact(n):
    """The blocked top-k of the flat index returns the true k nearest in the search space
    (sizes that need padding and 0-3 block levels)."""
    rng = np.random.default_rng(n)
    frames = rng.normal(0, 0.05, (n, DIM)).astype(np.float32)
    index = ProjectionIndex(frames, frames.mean(0), np.eye(DIM, dtype=np.float32)[:12], 1.0)
    assert index.kind == "flat"
    queries = rng.normal(0, 0.05, (70, DIM)).astype(np.float32)
    reduced, points = index.reduce(queries), index.reduce(frames)
    d2 = ((reduced[:, None, :].astype(np.float64) - points[None]) ** 2).sum(-1)
    for k in (1, 5, 20):
        idx = index.search(queries, k)
        assert idx.shape == (70, min(k, n))
        found = np.take_along_axis(d2, idx, axis=1)
        np.testing.assert_allclose(found, np.sort(d2, axis=1)[:, : min(k, n)], rtol=1e-4)


def test_hnsw_index_projects_like_the_flat_one(frames):
    flat = ProjectionIndex.build(frames, kind="flat")
    hnsw = ProjectionIndex.from_arrays(flat.arrays(), kind="hnsw")
    assert hnsw.kind == "hnsw" and hnsw.nbytes > flat.nbytes
    x = frames[::20] + np.float32(0.002)
    np.testing.assert_allclose(hnsw.project(x).lm3d, flat.project(x).lm3d, atol=1e-5)
