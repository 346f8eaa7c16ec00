"""Landmark locally linear embedding (GeneFace++ §4.2, algorithm 1): pull predicted landmarks
toward an avatar's own training landmarks so the renderer never sees a face it cannot draw.

For each predicted frame x (the 204 values of an lm3d frame):

1. find its K nearest training frames n_1..n_K (default K = 20; search below);
2. solve the sum-to-one least squares for weights w that best rebuild x from them, as LLE
   does: with Z = [n_k - x] (K x 204) and the local Gram matrix G = Z Z^T, solve
   (G + r * trace(G) / K * I) w = 1, then w /= sum(w) (r = LLE_REG = 1e-3);
3. return x + alpha * Z^T w = alpha * sum_k w_k n_k + (1 - alpha) * x (default alpha = 0.5).
   alpha = 0 returns the input unchanged; a frame equal to a training frame is returned as
   exactly that frame.

Numerics: Z and G are float32 (G's rounding, ~1e-7 of trace(G), is ~1e-4 of the regulariser,
so the weights move by far less than the 0.01 mm the tests allow); the regularised system is
symmetric positive definite and is solved in float64 by a batched Cholesky factorisation
(`torch.linalg.solve` for any row whose factorisation fails). A frame equal to a training
frame (a zero distance) is returned as itself. All the work runs batched in torch (one
thread pool; faiss only for the HNSW index), the weights QUERY_CHUNK frames at a time, on
torch's intra-op threads: `torch.set_num_threads` decides. On a CPU shared with other busy
processes one thread is faster than two (each parallel op waits for both threads to be
scheduled); `talkingface bench projection` records the load.

Search space: the neighbours are found in the avatar's PCA space (components keeping
PCA_KEEP of the training landmarks' variance, at most 204; eigenvectors of the scatter
matrix): the landmark space of one person is low-dimensional, and searching fewer
dimensions makes the search fast. The weights, the reconstruction and the distances use
the full 204 values.

Index: up to EXACT_MAX training frames (20k frames = 13 minutes at 25 fps: every avatar of a
normal length) the search is exact and flat: every training frame is compared. It runs in
torch: one matrix product gives a block of queries' scores q.p - |p|^2/2 (= (|q|^2 -
|q - p|^2) / 2: the nearest frame scores highest) against all N frames, SEARCH_FLOATS scores
at a time. Selecting the K best of N with top-k costs ~10x a max-reduction per value, so the
frames are grouped into blocks (block j of a level = members j, j + m, j + 2m, ... of the
level below, m = its block count; up to 3 levels, sizes picked from N and K): the block
maxima are taken level by level, and from the top the K blocks with the highest maxima are
kept, which hold the K best values of the level below (the K-th best block maximum is at
most the K-th best value, so no block outside them holds a value above it; ties aside).
Top-k then runs on K x block-size values per level. This measured about 3x faster than
`faiss.IndexFlatL2` for K = 20 on 2 CPU cores. Above EXACT_MAX an approximate FAISS HNSW
graph (`IndexHNSWFlat`, HNSW_M links, build depth HNSW_EF_CONSTRUCTION, search depth
HNSW_EF) is used: exact search grows linearly with N and costs more than HNSW's above
10k-20k frames. Its recall@K against the exact search is measured by `talkingface bench
projection` (~0.99 at 100k frames).

Distances reported per frame are RMS landmark distances in mm (1 lm3d unit = 100 mm) on the
full 204 values, read off the Gram matrix: before projection, to the nearest (in the full
space) of the K neighbours found; after it, to the nearest of the same K neighbours
(||out - n_k||^2 = alpha^2 w^T G w - 2 alpha (G w)_k + G_kk; exact whenever out's nearest
training frame is among them, which the projection makes likely; an upper bound otherwise).

Bad cases: a frame is bad when its distance after projection exceeds the avatar's threshold,
calibrated when the index is built: every CALIB_EVERY-th one-second block of training
frames is held out, each held-out frame's distance to the rest is measured, and the
threshold is CALIB_MARGIN x the CALIB_QUANTILE quantile of those distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from talkingface.lm3d import NUM_LANDMARKS

DIM = NUM_LANDMARKS * 3
DEFAULT_K = 20
DEFAULT_ALPHA = 0.5
LLE_REG = 1e-3
PCA_KEEP = 0.9999
EXACT_MAX = 20_000  # training frames; above this the index is an approximate HNSW graph
HNSW_M = 16
HNSW_EF = 64
HNSW_EF_CONSTRUCTION = 40
QUERY_CHUNK = 1024  # query frames per weights step (bounds the temporary memory: 16 MB)
SEARCH_FLOATS = 1 << 21  # scores per flat-search step (8 MB: bounds the temporary memory)
CALIB_BLOCK = 25  # frames (1 s)
CALIB_EVERY = 10
CALIB_QUANTILE = 0.99
CALIB_MARGIN = 1.25
MM_PER_UNIT = 100.0


def _faiss():
    import faiss

    return faiss


def _torch():
    import torch

    return torch


def rms_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS per-landmark distance between frames a [..., 204] and b [..., 204], in mm."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)  # broadcast
    diff = diff.reshape(*diff.shape[:-1], -1, 3)
    return np.sqrt((diff**2).sum(-1).mean(-1)) * MM_PER_UNIT


def _solve_weights(gram, reg: float):
    """Sum-to-one LLE weights [T, K] (float64 tensor) from local Gram matrices [T, K, K]."""
    torch = _torch()
    system = gram.to(torch.float64, copy=True)
    k = system.shape[-1]
    diagonal = system.diagonal(dim1=1, dim2=2)
    trace = diagonal.sum(-1)
    diagonal += torch.where(trace > 0, trace * (reg / k), reg)[:, None]
    ones = torch.ones(system.shape[0], k, 1, dtype=system.dtype)
    chol, info = torch.linalg.cholesky_ex(system)
    w = torch.cholesky_solve(ones, chol)[..., 0]
    failed = info != 0  # not positive definite in floating point: fall back to LU
    if bool(failed.any()):
        w[failed] = torch.linalg.solve(system[failed], ones[failed])[..., 0]
    return w / w.sum(dim=1, keepdim=True)


def lle_weights(x: np.ndarray, neighbours: np.ndarray, reg: float = LLE_REG) -> np.ndarray:
    """Sum-to-one weights [T, K] rebuilding x [T, D] from neighbours [T, K, D] (float64;
    batched in torch, which runs many small solves far faster than numpy's loops)."""
    torch = _torch()
    xt = torch.from_numpy(np.asarray(x, np.float64))
    nt = torch.from_numpy(np.asarray(neighbours, np.float64))
    z = nt - xt[:, None, :]
    return _solve_weights(torch.bmm(z, z.transpose(1, 2)), reg).numpy()


@dataclass
class ProjectionResult:
    lm3d: np.ndarray  # [T, 68, 3] float32
    dist_before: np.ndarray  # [T] float32 mm
    dist_after: np.ndarray  # [T] float32 mm
    bad: np.ndarray  # [T] bool: dist_after > threshold
    bad_before: np.ndarray  # [T] bool: dist_before > threshold
    threshold: float  # mm
    k: int
    alpha: float

    @property
    def bad_case_rate(self) -> float:
        return float(self.bad.mean()) if self.bad.size else 0.0

    @property
    def bad_case_rate_before(self) -> float:
        return float(self.bad_before.mean()) if self.bad_before.size else 0.0


def _block_sizes(n: int, k: int) -> tuple[int, ...]:
    """Block sizes per level (finest first) for the k best of n values: none, or 1-3 levels
    of equal blocks, whichever is cheapest (a value ranked by top-k costs ~20x one taken by
    the level-1 max-reduction; see the module docstring)."""
    plans = [((), n)]  # (sizes, values ranked by top-k)
    for levels in (1, 2, 3):
        size = max(2, round((n / k) ** (1.0 / (levels + 1))))
        top = -(-n // size**levels)
        if k > 1 and top > k:
            plans.append(((size,) * levels, top + levels * k * size))
    return min(plans, key=lambda p: 20 * p[1] + n * bool(p[0]))[0]


class _FlatSearch:
    """Exact k nearest neighbours by brute force in torch (see the module docstring).

    Scores rather than distances: s = q.p - |p|^2 / 2 = (|q|^2 - |q - p|^2) / 2, the largest
    score being the nearest point. One matrix product of [q, 1] with the stored [p, -|p|^2/2]
    gives them (no bias term to copy into the output first)."""

    def __init__(self, points: np.ndarray):
        torch = _torch()
        points = torch.from_numpy(np.ascontiguousarray(points, np.float32))  # [N, d]
        self.n, self.dim = points.shape
        half_norms = -0.5 * (points * points).sum(1, keepdim=True)
        # padded up front to fit the default k's blocks; padding rows score -inf, never win
        self._points = self._pad(
            torch.cat([points, half_norms], 1), _block_sizes(self.n, DEFAULT_K)
        )
        self._layouts: dict[int, tuple] = {}

    @staticmethod
    def _pad(points, sizes: tuple[int, ...]):
        pad = -len(points) % math.prod(sizes)
        if not pad:
            return points
        rows = points.new_zeros(pad, points.shape[1])
        rows[:, -1] = -math.inf
        return _torch().cat([points, rows])

    @property
    def nbytes(self) -> int:
        """The (padded) points, and any copy padded for another k."""
        unique = {id(p): p for _, p in self._layouts.values()}
        unique[id(self._points)] = self._points
        return sum(int(p.nbytes) for p in unique.values())

    def _layout(self, k: int) -> tuple[tuple[int, ...], object]:
        """Block sizes per level (finest first) and the points padded to fit."""
        if k not in self._layouts:
            sizes = _block_sizes(self.n, k)
            self._layouts[k] = (sizes, self._pad(self._points, sizes))
        return self._layouts[k]

    def search(self, queries, k: int):
        """Indices [T, k] (int64 tensor, nearest first) of queries [T, d] (float32 tensor)."""
        torch = _torch()
        k = min(k, self.n)
        sizes, points = self._layout(k) if k > 1 else ((), self._points)
        queries = torch.cat([queries, queries.new_ones(len(queries), 1)], 1)
        step = max(16, SEARCH_FLOATS // len(points))
        out = []
        for start in range(0, len(queries), step):
            score = torch.mm(queries[start : start + step], points.T)  # [rows, N]
            if k == 1:
                out.append(score.argmax(1, keepdim=True))
                continue
            rows = len(score)
            levels = [score]  # then the best score of each block, level by level
            for size in sizes:
                levels.append(levels[-1].view(rows, size, -1).amax(1))
            chosen = torch.topk(levels[-1], k, sorted=not sizes).indices
            for level in range(len(sizes), 0, -1):
                # the k best blocks of this level hold the k best values of the one below
                count = levels[level].shape[1]
                offsets = torch.arange(sizes[level - 1]) * count
                cand = (chosen[:, :, None] + offsets).view(rows, -1)
                pick = torch.topk(levels[level - 1].gather(1, cand), k, sorted=level == 1)
                chosen = cand.gather(1, pick.indices)
            out.append(chosen)
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.int64)


class _HnswSearch:
    """Approximate k nearest neighbours: a FAISS HNSW graph (see the module docstring)."""

    def __init__(self, points: np.ndarray):
        faiss = _faiss()
        self.n, self.dim = points.shape
        self.nbytes = self.n * (self.dim * 4 + HNSW_M * 2 * 4)
        self._index = faiss.IndexHNSWFlat(self.dim, HNSW_M)
        self._index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self._index.add(np.ascontiguousarray(points, np.float32))

    def search(self, queries, k: int):
        torch = _torch()
        k = min(k, self.n)
        self._index.hnsw.efSearch = max(HNSW_EF, k)
        _, idx = self._index.search(np.ascontiguousarray(queries.numpy()), k)
        return torch.from_numpy(idx)


class ProjectionIndex:
    """One avatar's training landmarks, their PCA search space and index, threshold."""

    def __init__(self, frames: np.ndarray, mean: np.ndarray, components: np.ndarray,
                 threshold: float, kind: str | None = None):  # fmt: skip
        self.frames = np.ascontiguousarray(frames, np.float32).reshape(-1, DIM)
        self.mean = np.asarray(mean, np.float32).reshape(DIM)
        self.components = np.ascontiguousarray(components, np.float32)  # [d, 204]
        self.threshold = float(threshold)
        self.kind = kind or ("flat" if len(self.frames) <= EXACT_MAX else "hnsw")
        self._index = self._build()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def build(cls, lm3d: np.ndarray, kind: str | None = None) -> ProjectionIndex:
        """Index an avatar's training landmarks [N, 68, 3] and calibrate its threshold."""
        frames = np.asarray(lm3d, np.float32).reshape(-1, DIM)
        if len(frames) < 2:
            raise ValueError("a projection index needs at least 2 training frames")
        if not np.isfinite(frames).all():
            raise ValueError("training landmarks contain NaN or infinite values")
        mean, components = _pca(frames)
        threshold = _calibrate(frames, mean, components, kind)
        return cls(frames, mean, components, threshold, kind)

    def _build(self) -> _FlatSearch | _HnswSearch:
        if self.kind == "flat":
            return _FlatSearch(self.reduce(self.frames))
        if self.kind == "hnsw":
            return _HnswSearch(self.reduce(self.frames))
        raise ValueError(f"unknown index kind {self.kind!r}")

    def _reduce(self, frames):
        """PCA coordinates [T, d] (float32 tensor) of frames [T, 204] (float32 tensor)."""
        torch = _torch()
        mean = torch.from_numpy(self.mean)
        return torch.mm(frames - mean, torch.from_numpy(self.components).T)

    def reduce(self, frames: np.ndarray) -> np.ndarray:
        torch = _torch()
        flat = np.ascontiguousarray(frames, np.float32).reshape(-1, DIM)
        return self._reduce(torch.from_numpy(flat)).numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        """What a bundle stores (the search index is rebuilt from it on load)."""
        return {
            "frames": self.frames,
            "mean": self.mean,
            "components": self.components,
            "threshold": np.array([self.threshold], np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], kind: str | None = None) -> ProjectionIndex:
        return cls(arrays["frames"], arrays["mean"], arrays["components"],
                   float(np.asarray(arrays["threshold"]).reshape(-1)[0]), kind)  # fmt: skip

    @property
    def nbytes(self) -> int:
        """Memory held: the frames, the PCA, and the index (its reduced copy of the frames)."""
        own = self.frames.nbytes + self.components.nbytes + self.mean.nbytes
        return int(own + self._index.nbytes)

    # -- queries ------------------------------------------------------------------------

    def _search(self, flat, k: int):
        return self._index.search(self._reduce(flat), k)

    def search(self, frames: np.ndarray, k: int) -> np.ndarray:
        """Indices [T, k] of the nearest training frames (nearest first in the search space)."""
        torch = _torch()
        flat = np.ascontiguousarray(frames, np.float32).reshape(-1, DIM)
        return self._search(torch.from_numpy(flat), k).numpy()

    def distance_mm(self, frames: np.ndarray) -> np.ndarray:
        """RMS distance [T] of each frame to its nearest training frame, in mm."""
        idx = self.search(frames, 1)[:, 0]
        return rms_mm(np.asarray(frames).reshape(-1, DIM), self.frames[idx])

    def project(
        self, lm3d: np.ndarray, k: int = DEFAULT_K, alpha: float = DEFAULT_ALPHA
    ) -> ProjectionResult:
        """Project a sequence [T, 68, 3] (see the module docstring)."""
        if not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        x = np.asarray(lm3d, np.float32)
        if x.ndim != 3 or x.shape[1:] != (NUM_LANDMARKS, 3):
            raise ValueError(f"lm3d must have shape [T, 68, 3], got {list(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError("lm3d contains NaN or infinite values")
        alpha = float(alpha)
        k = min(int(k), len(self.frames))
        flat = np.ascontiguousarray(x.reshape(-1, DIM))
        out = flat.copy()
        before = np.zeros(len(flat), np.float32)
        after = np.zeros(len(flat), np.float32)
        torch = _torch()
        frames, queries = torch.from_numpy(self.frames), torch.from_numpy(flat)
        idx = self._search(queries, k) if len(flat) else None  # [T, k]
        for start in range(0, len(flat), QUERY_CHUNK):
            stop = min(start + QUERY_CHUNK, len(flat))
            x_chunk = queries[start:stop]
            z, gram = _local_gram(frames, x_chunk, idx[start:stop])
            b, a = _blend(x_chunk, z, gram, alpha, torch.from_numpy(out[start:stop]))
            before[start:stop], after[start:stop] = b, a
        return ProjectionResult(
            out.reshape(-1, NUM_LANDMARKS, 3), before, after, after > self.threshold,
            before > self.threshold, self.threshold, k, alpha,
        )  # fmt: skip


def _local_gram(frames, x, idx):
    """Z = neighbours - x [C, k, 204] and the local Gram matrices Z Z^T [C, k, k] (float32
    tensors) of frames x [C, 204] with neighbours idx [C, k] in frames [N, 204]."""
    torch = _torch()
    z = frames.index_select(0, idx.reshape(-1)).view(len(x), idx.shape[1], DIM)
    z -= x[:, None, :]
    return z, torch.bmm(z, z.transpose(1, 2))


def _blend(x, z, gram, alpha: float, out):
    """Write the projected frames into out [C, 204] (a float32 tensor holding x); return the
    distances before and after in mm (numpy float32 [C])."""
    torch = _torch()
    sq = gram.diagonal(dim1=1, dim2=2)  # squared distances to the neighbours
    before_sq = sq.amin(1)
    if alpha == 0.0:
        after_sq = before_sq
    else:
        g = gram.to(torch.float64)
        w = _solve_weights(g, LLE_REG)  # [C, k] float64
        shift = torch.bmm(w.to(torch.float32)[:, None, :], z)[:, 0]  # Z^T w = recon - x
        out.add_(shift, alpha=alpha)
        exact = before_sq == 0  # x is a training frame: it is rebuilt as exactly itself
        out[exact] = x[exact]
        # ||out - n_k||^2 = alpha^2 w^T G w - 2 alpha (G w)_k + G_kk
        gw = torch.bmm(g, w[:, :, None])[..., 0]
        wgw = (w * gw).sum(1, keepdim=True)
        after_sq = (alpha * alpha * wgw - 2 * alpha * gw + sq.to(torch.float64)).amin(1)
        after_sq = after_sq.clamp_min(0).to(torch.float32)
        after_sq[exact] = 0
    scale = MM_PER_UNIT / math.sqrt(NUM_LANDMARKS)
    return (before_sq.sqrt() * scale).numpy(), (after_sq.sqrt() * scale).numpy()


def _pca(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [204] and the components [d, 204] keeping PCA_KEEP of the variance: eigenvectors
    of the 204 x 204 scatter matrix, in float64 torch (one thread pool, milliseconds)."""
    torch = _torch()
    mean = frames.mean(axis=0, dtype=np.float64)
    centred = torch.from_numpy(frames.astype(np.float64) - mean)
    var, vecs = torch.linalg.eigh(centred.T @ centred)  # ascending
    var, vt = var.flip(0).clamp_min(0).numpy(), vecs.flip(1).T.numpy()
    total = var.sum()
    mean = mean.astype(np.float32)
    if total <= 0:
        return mean, vt[:1].astype(np.float32)
    keep = int(np.searchsorted(np.cumsum(var) / total, PCA_KEEP) + 1)
    return mean, np.ascontiguousarray(vt[: min(keep, DIM)], np.float32)


def _calibrate(frames: np.ndarray, mean, components, kind) -> float:
    """The bad-case threshold in mm (see the module docstring)."""
    blocks = np.arange(len(frames)) // CALIB_BLOCK
    held = blocks % CALIB_EVERY == CALIB_EVERY - 1
    if held.sum() == 0 or (~held).sum() < 2:
        held = np.zeros(len(frames), bool)
        held[:: max(2, len(frames) // 10)] = True
        if (~held).sum() == 0:
            held[0] = False
    rest = ProjectionIndex(frames[~held], mean, components, 0.0, kind)
    dist = rest.distance_mm(frames[held])
    return float(CALIB_MARGIN * np.quantile(dist, CALIB_QUANTILE)) if len(dist) else 0.0
