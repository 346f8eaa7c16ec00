"""`talkingface bench projection`: microseconds per frame of the landmark LLE projection.

Times `ProjectionIndex.project` (validation, PCA reduction, K-nearest search, local Gram
matrices and LLE weights, reconstruction, alpha blend, distances before/after) on one
avatar-like training set of N frames for each N in `sizes`, with a sequence of
`query_frames` predicted-like frames. Each size is warmed up once, then the median of
`repeats` timed calls is `us_per_frame` (`us_per_frame_min` is the fastest). The breakdown
(`repeats` more calls, medians) is the time spent inside project in `search` (PCA reduction +
index search), in `weights` (gather the neighbours, Gram matrices, regularised solves) and
the `rest` (reconstruction, distances, validation, copies).

Data (synthetic, deterministic): one SynthTalk face (`talkingface.data.synthtalk.face`: mean
shape + a random identity) moved by its 8 articulation controls and 12 extra random motion
modes of ~1 mm, all driven by smooth (sums of sinusoids) 25 fps trajectories with JITTER
on every coefficient (tracking jitter of a 3DMM-style fit stays in the span of its modes),
plus NOISE_MM of per-coordinate noise off the span. That noise sets how many PCA dimensions
the index keeps (`pca_dims`: 20 here, ~80 with 0.05 mm), and the exact search's cost grows
with them. The queries are a fresh trajectory of the same face
(frames the index has not seen) plus QUERY_NOISE_MM of off-manifold noise, as a motion
model's predictions are.

For sizes above `EXACT_MAX` the index is approximate (HNSW); `recall_at_k` is the mean share
of the exact K nearest (a flat index over the same PCA space) that it returns, and
`flat_us_per_frame` what the exact index costs there.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from talkingface.bench.machine import cpu_model, load_average
from talkingface.data.synthtalk.face import (
    ARTICULATION_CONTROLS,
    IDENTITY_TRAITS,
    landmarks,
)
from talkingface.landmarks import projection as P
from talkingface.lm3d import FPS, NUM_LANDMARKS

SIZES = (1_000, 10_000, 100_000)
QUERY_FRAMES = 2_000
GOAL_US_PER_FRAME_AT_10K = 20
EXTRA_MODES = 12
MODE_MM = 1.0  # RMS size of one extra motion mode at unit coefficient
JITTER = 0.02  # per-frame noise on every motion coefficient (tracking jitter, in the span)
NOISE_MM = 0.02  # per-coordinate noise on the training frames (off the span)
QUERY_NOISE_MM = 0.3  # per-coordinate off-manifold noise on the queries

NOTE = (
    "us_per_frame: median wall microseconds of ProjectionIndex.project per query frame "
    "(K nearest training frames in PCA space, LLE weights, alpha blend, distances); "
    "breakdown: search = PCA reduction + index search, weights = gather + Gram + solves, "
    "rest = the remainder. Synthetic SynthTalk-face training sets; queries are unseen "
    "frames of the same face plus off-manifold noise. recall_at_k: share of the exact K "
    "nearest returned by the approximate index."
)


def _smooth(rng: np.random.Generator, frames: int, modes: int) -> np.ndarray:
    """Smooth coefficient trajectories [frames, modes] in about [-1, 1]: sums of sinusoids
    of 0.1-3 Hz at 25 fps."""
    t = np.arange(frames)[:, None] / FPS
    out = np.zeros((frames, modes))
    for _ in range(4):
        freq = rng.uniform(0.1, 3.0, modes)
        phase = rng.uniform(0.0, 2 * np.pi, modes)
        out += rng.uniform(0.3, 1.0, modes) * np.sin(2 * np.pi * freq * t + phase)
    return out / 2.0


class _Person:
    """One synthetic face: identity and extra motion modes (fixed by the seed)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.identity = rng.normal(0.0, 1.0, len(IDENTITY_TRAITS))
        modes = rng.normal(0.0, 1.0, (EXTRA_MODES, NUM_LANDMARKS, 3))
        rms = np.sqrt((modes**2).mean(axis=(1, 2), keepdims=True))
        self.modes = modes / rms * (MODE_MM / P.MM_PER_UNIT)

    def frames(self, count: int, rng: np.random.Generator, noise_mm: float) -> np.ndarray:
        controls = len(ARTICULATION_CONTROLS)
        coeff = _smooth(rng, count, controls + EXTRA_MODES)
        coeff += rng.normal(0.0, JITTER, coeff.shape)
        articulation = np.clip(0.5 + 0.5 * coeff[:, :controls], 0.0, 1.0)
        lm = landmarks(self.identity, articulation).astype(np.float64)
        lm += np.einsum("nm,mpc->npc", coeff[:, controls:], self.modes)
        lm += rng.normal(0.0, noise_mm / P.MM_PER_UNIT, lm.shape)
        return lm.astype(np.float32)


def training_frames(count: int, seed: int = 0) -> np.ndarray:
    """An avatar-like training set [count, 68, 3] (see the module docstring)."""
    return _Person(seed).frames(count, np.random.default_rng([seed, 1]), NOISE_MM)


def predicted_frames(count: int, seed: int = 0) -> np.ndarray:
    """Predicted-like frames [count, 68, 3] of the same face as training_frames(seed)."""
    return _Person(seed).frames(count, np.random.default_rng([seed, 2]), QUERY_NOISE_MM)


def _median_us(fn: Callable[[], Any], repeats: int, frames: int) -> tuple[float, float]:
    """(median, min) wall microseconds per frame of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6 / frames, min(times) * 1e6 / frames


def _breakdown(index: P.ProjectionIndex, queries: np.ndarray, k: int, alpha: float,
               repeats: int) -> dict[str, float]:  # fmt: skip
    """Median microseconds per frame spent in the search (`index._search`) and in the weights
    (`_local_gram`: gather + Gram matrices; `_solve_weights`) during `repeats` project calls,
    timed by wrapping those functions (the wrappers cost well under 1 us a call)."""
    spent = {"search": 0.0, "weights": 0.0}

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started

        return wrapper

    gram, solve = P._local_gram, P._solve_weights
    index._search = timed("search", index._search)  # type: ignore[method-assign]
    P._local_gram, P._solve_weights = timed("weights", gram), timed("weights", solve)
    rows: dict[str, list[float]] = {"search": [], "weights": [], "total": []}
    try:
        for _ in range(repeats):
            spent.update(search=0.0, weights=0.0)
            started = time.perf_counter()
            index.project(queries, k=k, alpha=alpha)
            rows["total"].append(time.perf_counter() - started)
            rows["search"].append(spent["search"])
            rows["weights"].append(spent["weights"])
    finally:
        del index._search
        P._local_gram, P._solve_weights = gram, solve
    us = {name: statistics.median(v) * 1e6 / len(queries) for name, v in rows.items()}
    return {
        "search": round(us["search"], 2),
        "weights": round(us["weights"], 2),
        "rest": round(max(0.0, us["total"] - us["search"] - us["weights"]), 2),
    }


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def _size_row(n: int, queries: np.ndarray, k: int, alpha: float, repeats: int, seed: int):
    train = training_frames(n, seed)
    started = time.perf_counter()
    index = P.ProjectionIndex.build(train)
    build = time.perf_counter() - started
    total, fastest = _median_us(lambda: index.project(queries, k=k, alpha=alpha), repeats,
                                len(queries))  # fmt: skip
    breakdown = _breakdown(index, queries, k, alpha, repeats)
    result = index.project(queries, k=k, alpha=alpha)
    row: dict[str, Any] = {
        "frames": n,
        "index_kind": index.kind,
        "pca_dims": int(index.components.shape[0]),
        "build_seconds": round(build, 3),
        "index_mb": round(index.nbytes / 2**20, 2),
        "us_per_frame": round(total, 2),
        "us_per_frame_min": round(fastest, 2),
        "breakdown_us_per_frame": breakdown,
        "threshold_mm": round(index.threshold, 4),
        "mean_dist_before_mm": round(float(result.dist_before.mean()), 4),
        "mean_dist_after_mm": round(float(result.dist_after.mean()), 4),
        "bad_case_rate_before": round(result.bad_case_rate_before, 4),
        "bad_case_rate": round(result.bad_case_rate, 4),
        "repeats": repeats,
    }
    if index.kind != "flat":
        flat = P.ProjectionIndex.from_arrays(index.arrays(), kind="flat")
        found = index.search(queries, k)
        row["recall_at_k"] = round(_recall(found, flat.search(queries, k)), 4)
        row["flat_us_per_frame"] = round(
            _median_us(lambda: flat.project(queries, k=k, alpha=alpha), max(1, repeats // 2),
                       len(queries))[0], 2,
        )  # fmt: skip
    return row


def run(
    sizes: Sequence[int] = SIZES,
    query_frames: int = QUERY_FRAMES,
    k: int = P.DEFAULT_K,
    alpha: float = P.DEFAULT_ALPHA,
    repeats: int = 5,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One entry per training-set size in `result["sizes"]`, keyed by str(N).

    `threads` sets torch's and faiss's CPU threads for the run (default: leave them)."""
    import faiss

    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 2:
        raise ValueError(f"sizes must be training-set sizes of at least 2 frames, got {sizes}")
    if query_frames < 1 or repeats < 1:
        raise ValueError("query_frames and repeats must be at least 1")
    previous = torch.get_num_threads(), faiss.omp_get_max_threads()
    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    load_before = load_average()
    try:
        queries = predicted_frames(query_frames, seed)
        # first calls load and initialise library code (LAPACK, thread pools): not timed
        P.ProjectionIndex.build(training_frames(200, seed)).project(queries[:10], k=k)
        rows = {str(n): _size_row(n, queries, k, alpha, repeats, seed) for n in sizes}
        used = torch.get_num_threads(), faiss.omp_get_max_threads()
    finally:
        torch.set_num_threads(previous[0])
        faiss.omp_set_num_threads(previous[1])
    return {
        "bench": "projection",
        "device": "cpu",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": used[0],
        "torch_threads": used[0],
        "faiss_threads": used[1],
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "load_average_1min": {"before": load_before, "after": load_average()},
        "k": k,
        "alpha": alpha,
        "query_frames": query_frames,
        "exact_max_frames": P.EXACT_MAX,
        "hnsw": {"m": P.HNSW_M, "ef_search": P.HNSW_EF, "ef_construction": P.HNSW_EF_CONSTRUCTION},
        "noise_mm": {"training": NOISE_MM, "queries": QUERY_NOISE_MM},
        "goal_us_per_frame_at_10k": GOAL_US_PER_FRAME_AT_10K,
        "note": NOTE,
        "sizes": rows,
    }
