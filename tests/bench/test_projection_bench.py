"""The projection benchmark runs and reports what its JSON promises (figures not asserted)."""

import json
import math

import faiss
import pytest
import torch

from talkingface.bench import projection
from talkingface.landmarks import projection as P


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_report_shape(monkeypatch):
    # a small exact size and one above the (lowered) exact limit, so both kinds are covered
    monkeypatch.setattr(P, "EXACT_MAX", 500)
    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    report = projection.run(sizes=(300, 800), query_frames=40, repeats=2, threads=1)
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == threads  # restored
    json.dumps(report)  # the CLI prints it as JSON
    assert report["bench"] == "projection" and report["device"] == "cpu"
    assert report["threads"] == 1 and report["torch"] and report["faiss"]
    assert report["k"] == P.DEFAULT_K and report["alpha"] == P.DEFAULT_ALPHA
    assert report["query_frames"] == 40 and report["goal_us_per_frame_at_10k"] == 20
    assert report["exact_max_frames"] == 500
    assert set(report["sizes"]) == {"300", "800"}
    for n, row in report["sizes"].items():
        assert row["frames"] == int(n)
        assert 1 <= row["pca_dims"] <= P.DIM
        for key in ("us_per_frame", "us_per_frame_min", "build_seconds", "index_mb"):
            assert _positive(row[key]), key
        assert row["us_per_frame_min"] <= row["us_per_frame"]
        parts = row["breakdown_us_per_frame"]
        assert set(parts) == {"search", "weights", "rest"}
        assert _positive(parts["search"]) and _positive(parts["weights"])
        assert math.isfinite(parts["rest"]) and parts["rest"] >= 0
        assert _positive(row["threshold_mm"])
        # projection pulls the off-manifold queries toward the training frames
        assert row["mean_dist_after_mm"] < row["mean_dist_before_mm"]
        assert 0 <= row["bad_case_rate"] <= 1 and 0 <= row["bad_case_rate_before"] <= 1
    exact, approximate = report["sizes"]["300"], report["sizes"]["800"]
    assert exact["index_kind"] == "flat" and "recall_at_k" not in exact
    assert approximate["index_kind"] == "hnsw"
    assert 0.9 <= approximate["recall_at_k"] <= 1.0
    assert _positive(approximate["flat_us_per_frame"])


def test_training_and_query_frames_are_deterministic_and_one_face():
    a, b = projection.training_frames(50, seed=3), projection.training_frames(50, seed=3)
    assert a.shape == (50, 68, 3) and a.dtype == "float32"
    assert (a == b).all()
    queries = projection.predicted_frames(20, seed=3)
    # the queries are unseen frames of the same face: near the training set, not on it
    index = P.ProjectionIndex.build(projection.training_frames(400, seed=3))
    dist = index.distance_mm(queries.reshape(-1, P.DIM))
    assert (dist > 0).all() and dist.max() < 20.0


@pytest.mark.parametrize("bad", [(), (0,)])
def test_bad_sizes_are_errors(bad):
    with pytest.raises(ValueError):
        projection.run(sizes=bad, query_frames=10, repeats=1)
