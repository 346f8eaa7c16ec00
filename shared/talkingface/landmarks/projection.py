"""Landmark locally linear embedding (GeneFace++ §4.2, algorithm 1): pull predicted landmarks
toward an avatar's own training landmarks so the renderer never sees a face it cannot draw.

For each predicted frame x (the 204 values of an lm3d frame):

1. find its K nearest training frames (default K = 20) with FAISS;
2. solve the sum-to-one least squares for weights w that best rebuild x from them, as LLE
   does: with Z = neighbours - x, solve (Z Z^T + r * trace(Z Z^T) / K * I) w = 1, then
   w /= sum(w) (r = LLE_REG = 1e-3 regularises the local Gram matrix);
3. return alpha * sum_k w_k n_k + (1 - alpha) * x (default alpha = 0.5). alpha = 0 returns the
   input unchanged; a frame equal to a training frame is rebuilt as exactly that frame.

Search space: the neighbours are found in the avatar's PCA space (components keeping
PCA_KEEP of the training landmarks' variance, at most 204): the landmark space of one
person is low-dimensional, and searching fewer dimensions makes the exact search fast. The
weights and the reconstruction use the full 204 values. An exact flat index
(`IndexFlatL2`) is used up to EXACT_MAX training frames; above that an HNSW graph index
(approximate, `HNSW_M` links, search depth `HNSW_EF`).

Distances reported per frame are RMS landmark distances in mm (1 lm3d unit = 100 mm) on the
full 204 values: before projection, to the nearest training frame found by the search; after
it, to the nearest of the same K neighbours (exact when the projected frame's nearest
training frame is among them, which the projection makes likely; an upper bound otherwise).

Bad cases: a frame is bad when its distance after projection exceeds the avatar's threshold,
calibrated when the index is built: every CALIB_EVERY-th one-second block of training
frames is held out, each held-out frame's distance to the rest is measured, and the
threshold is CALIB_MARGIN x the CALIB_QUANTILE quantile of those distances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkingface.lm3d import NUM_LANDMARKS

DIM = NUM_LANDMARKS * 3
DEFAULT_K = 20
DEFAULT_ALPHA = 0.5
LLE_REG = 1e-3
PCA_KEEP = 0.9999
EXACT_MAX = 200_000
HNSW_M = 32
HNSW_EF = 128
CALIB_BLOCK = 25  # frames (1 s)
CALIB_EVERY = 10
CALIB_QUANTILE = 0.99
CALIB_MARGIN = 1.25
MM_PER_UNIT = 100.0


def _faiss():
    import faiss

    return faiss


def rms_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS per-landmark distance between frames a [..., 204] and b [..., 204], in mm."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)  # broadcast
    diff = diff.reshape(*diff.shape[:-1], -1, 3)
    return np.sqrt((diff**2).sum(-1).mean(-1)) * MM_PER_UNIT


def lle_weights(x: np.ndarray, neighbours: np.ndarray, reg: float = LLE_REG) -> np.ndarray:
    """Sum-to-one weights [T, K] rebuilding x [T, D] from neighbours [T, K, D] (float64;
    batched in torch, which runs many small solves far faster than numpy's loops)."""
    import torch

    xt = torch.from_numpy(np.asarray(x, np.float64))
    nt = torch.from_numpy(np.asarray(neighbours, np.float64))
    z = nt - xt[:, None, :]
    gram = torch.bmm(z, z.transpose(1, 2))  # [T, K, K]
    k = gram.shape[-1]
    trace = gram.diagonal(dim1=1, dim2=2).sum(-1)
    eps = torch.where(trace > 0, reg * trace / k, torch.full_like(trace, reg))
    gram = gram + eps[:, None, None] * torch.eye(k, dtype=gram.dtype)[None]
    w = torch.linalg.solve(gram, torch.ones(gram.shape[0], k, 1, dtype=gram.dtype))[..., 0]
    return (w / w.sum(dim=1, keepdim=True)).numpy()


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


class ProjectionIndex:
    """One avatar's training landmarks, their PCA search space and FAISS index, threshold."""

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

    def _build(self):
        faiss = _faiss()
        dim = self.components.shape[0]
        if self.kind == "flat":
            index = faiss.IndexFlatL2(dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M)
            index.hnsw.efSearch = HNSW_EF
        else:
            raise ValueError(f"unknown index kind {self.kind!r}")
        index.add(self.reduce(self.frames))
        return index

    def reduce(self, frames: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((frames - self.mean) @ self.components.T, np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """What a bundle stores (the FAISS index is rebuilt from it on load)."""
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
        """Memory held: the frames, the PCA, and the index's reduced copy of the frames."""
        index = len(self.frames) * self.components.shape[0] * 4
        if self.kind == "hnsw":
            index += len(self.frames) * HNSW_M * 2 * 4
        return int(self.frames.nbytes + self.components.nbytes + self.mean.nbytes + index)

    # -- queries ------------------------------------------------------------------------

    def search(self, frames: np.ndarray, k: int) -> np.ndarray:
        """Indices [T, k] of the nearest training frames (nearest first)."""
        k = min(k, len(self.frames))
        _, idx = self._index.search(self.reduce(frames), k)
        return idx

    def distance_mm(self, frames: np.ndarray) -> np.ndarray:
        """RMS distance [T] of each frame to its nearest training frame, in mm."""
        idx = self.search(frames, 1)[:, 0]
        return rms_mm(frames, self.frames[idx])

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
        flat = x.reshape(-1, DIM)
        k = min(int(k), len(self.frames))
        if len(flat) == 0:
            empty = np.zeros(0, np.float32)
            return ProjectionResult(x, empty, empty, empty.astype(bool), empty.astype(bool),
                                    self.threshold, k, float(alpha))  # fmt: skip
        idx = self.search(flat, k)
        neighbours = self.frames[idx]  # [T, k, 204]
        before = rms_mm(flat, neighbours[:, 0])
        if alpha == 0.0:
            out = flat.copy()
        else:
            w = lle_weights(flat, neighbours)
            recon = np.einsum("tk,tkd->td", w, neighbours)
            exact = before == 0.0  # a training frame rebuilds as itself
            recon[exact] = neighbours[exact, 0]
            out = (alpha * recon + (1.0 - alpha) * flat).astype(np.float32)
        # Distance after: to the nearest of x's K neighbours (the projection moves x toward
        # them; exact whenever out's nearest training frame is among them, an upper bound
        # otherwise) -- one search per frame instead of two.
        after = before if alpha == 0.0 else rms_mm(out[:, None, :], neighbours).min(axis=1)
        return ProjectionResult(
            out.reshape(-1, NUM_LANDMARKS, 3), before.astype(np.float32),
            after.astype(np.float32), after > self.threshold, before > self.threshold,
            self.threshold, k, float(alpha),
        )  # fmt: skip


def _pca(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = frames.mean(axis=0)
    centred = (frames - mean).astype(np.float64)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum()
    if total <= 0:
        return mean, vt[:1].astype(np.float32)
    keep = int(np.searchsorted(np.cumsum(var) / total, PCA_KEEP) + 1)
    return mean, vt[: min(keep, DIM)].astype(np.float32)


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
