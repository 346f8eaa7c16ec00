"""The synthetic person's 3-D head mesh, deformed by the 68 face landmarks with one matmul.

The head is one fixed triangle mesh per speaker, in the canonical head frame of
`talkingface.lm3d`:

- skull: an ellipsoid (radii 0.78, 1.05, 0.95) tessellated as a UV sphere with its poles on
  the y axis and rows and columns packed densest over the face; the scalp is inflated by
  the hair thickness behind a hairline (`hair_line`), so hair is part of the surface;
- face: every landmark has an anchor on the ellipsoid (where the ray from the head centre
  through the landmark meets it); a two-scale Gaussian RBF interpolates the anchor-to-
  landmark displacements over the skull, precomputed as a weight matrix W [V, 68] so that a
  frame's mesh is `skull + W @ (landmarks - anchors)` (plus the cavity term below): the
  nose protrudes, the chin and jaw follow the jaw landmarks, the lips and lids follow
  theirs. The six middle inner-lip landmarks (upper and lower coincide when the mouth is
  closed) take no part: the skin between the outer lips stretches as they part, sinks in
  by the lip gap (a cavity, not a decal) and is where the shader paints the mouth;
- neck: an elliptic tube under the skull flaring into shoulders at the bottom of the frame;
  it does not follow the jaw, and its vertices carry a torso weight (`torso_weight`: 0 up
  to the jaw, rising to 1 at the shoulders), so that a torso pose of its own bends the neck
  between the head and the shoulders (`video.PersonRenderer.render`);
- ears: two flattened ellipsoids, rigid.

All parts keep their rest-space vertices (`rest`, the neutral face) and unit-sphere
directions (`direction`), which the shader uses for texture and for the hair and ear regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from talkingface import lm3d as L

RADII = np.array([0.78, 1.05, 0.95])
HEAD, NECK, EAR = 0, 1, 2  # part ids per face
# The inner lips meet when the mouth is closed (61-63 coincide with 67-65), so they cannot
# each pin a point of one continuous surface; the outer lips and the inner corners shape the
# mouth and the skin between the lips stretches as they part.
INNER_LIP_MIDS = np.array([61, 62, 63, 65, 66, 67])
CAVITY_DEPTH = 0.5  # the stretched band sinks by this times the lip gap: a mouth, not a decal
SIGMAS = ((0.30, 0.02), (0.075, 1e-3))  # (width, ridge) for the coarse and the fine RBF
SHOULDER_TOP = -1.2  # canonical y where the neck starts widening into the shoulders
# The neck follows the head above TORSO_BEND[0] and the torso below TORSO_BEND[1] (canonical
# y), blending smoothly in between.
TORSO_BEND = (-0.8, -1.5)


def torso_weights(y: np.ndarray) -> np.ndarray:
    """How much a neck vertex at canonical height y follows the torso pose (0 head, 1 torso)."""
    s = np.clip((TORSO_BEND[0] - np.asarray(y, np.float64)) / (TORSO_BEND[0] - TORSO_BEND[1]), 0, 1)
    return s * s * (3 - 2 * s)


def _warped(n: int, lo: float, hi: float, centre: float, width: float, gain: float) -> np.ndarray:
    """n samples in [lo, hi) whose density is 1 + gain * gauss((x - centre) / width)."""
    x = np.linspace(lo, hi, 4097)
    cdf = np.cumsum(1 + gain * np.exp(-0.5 * ((x - centre) / width) ** 2))
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return np.interp(np.arange(n) / n, cdf, x)


def _grid_faces(rows: int, cols: int, offset: int = 0) -> np.ndarray:
    """Triangles of a rows x cols vertex grid wrapping around in columns; rows run downward
    and columns toward +x at the front, so (a, c, d) / (a, d, b) are counter-clockwise from
    outside."""
    i, j = np.meshgrid(np.arange(rows - 1), np.arange(cols), indexing="ij")
    a = i * cols + j
    b = i * cols + (j + 1) % cols
    c, d = a + cols, b + cols
    tri = np.concatenate([np.stack([a, c, d], -1), np.stack([a, d, b], -1)]).reshape(-1, 3)
    return tri + offset


def _lathe(rows_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [rows * cols, 3] and faces of a closed-top/bottom grid [rows, cols, 3] with
    a pole vertex added at each end (the mean of the first and last row)."""
    rows, cols, _ = rows_xyz.shape
    verts = np.concatenate([rows_xyz.reshape(-1, 3), rows_xyz[[0, -1]].mean(1)])
    top, bottom = rows * cols, rows * cols + 1
    j = np.arange(cols)
    caps = np.concatenate(
        [
            np.stack([np.full(cols, top), j, (j + 1) % cols], -1),
            np.stack(
                [(rows - 1) * cols + j, np.full(cols, bottom), (rows - 1) * cols + (j + 1) % cols],
                -1,
            ),
        ]
    )
    return verts, np.concatenate([_grid_faces(rows, cols), caps])


def hair_line(phi: np.ndarray, front: float, side: float, back: float) -> np.ndarray:
    """Hairline height (unit-sphere y) at azimuth phi (0 = face, ±pi = back of the head)."""
    t = np.abs(phi) / np.float32(np.pi)

    def step(a, b):
        s = np.clip((t - a) / (b - a), 0, 1)
        return s * s * (3 - 2 * s)

    return front + (side - front) * step(0.16, 0.40) + (back - side) * step(0.52, 0.68)


def _skull(appearance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inflated ellipsoid: vertices, faces, unit directions."""
    alpha = _warped(72, 0.0, np.pi, 1.75, 0.55, 2.0)[1:]  # polar angle from the top
    phi = _warped(104, -np.pi, np.pi, 0.0, 0.7, 2.5)  # azimuth, 0 at the face
    a, p = np.meshgrid(alpha, phi, indexing="ij")
    u = np.stack([np.sin(a) * np.sin(p), np.cos(a), np.sin(a) * np.cos(p)], -1)
    verts, faces = _lathe(u)
    dirs = verts / np.linalg.norm(verts, axis=1, keepdims=True)
    line = hair_line(
        np.arctan2(dirs[:, 0], dirs[:, 2]),
        appearance.hairline,
        appearance.hair_side,
        appearance.hair_back,
    )
    ramp = np.clip((dirs[:, 1] - line) / 0.12, 0, 1)
    crown = 0.65 + 0.35 * np.clip(dirs[:, 1], 0, 1)  # more volume on top than at the nape
    normal = dirs / RADII
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    lift = appearance.hair_thickness * crown * ramp * ramp * (3 - 2 * ramp)
    return dirs * RADII + lift[:, None] * normal, faces, dirs


def _neck() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elliptic tube from inside the skull down past the bottom of the frame, widening into
    shoulders from y = SHOULDER_TOP."""
    y = np.concatenate([np.linspace(-0.3, -1.9, 17), [-2.3, -2.8, -3.5]])
    phi = np.linspace(-np.pi, np.pi, 48, endpoint=False)
    flare = np.clip((SHOULDER_TOP - y) / 1.0, 0, 1) ** 1.5  # widen toward the shoulders
    rx, rz = 0.62 + 2.6 * flare, 0.54 + 0.3 * flare
    yy, pp = np.meshgrid(y, phi, indexing="ij")
    verts = np.stack([rx[:, None] * np.sin(pp), yy, -0.18 + rz[:, None] * np.cos(pp)], -1).reshape(
        -1, 3
    )
    dirs = np.stack([np.sin(pp), np.zeros_like(pp), np.cos(pp)], -1).reshape(-1, 3)
    return verts, _grid_faces(len(y), len(phi)), dirs


def _ears() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two flattened ellipsoids on the sides of the skull."""
    alpha = np.linspace(0, np.pi, 12)[1:-1]
    phi = np.linspace(-np.pi, np.pi, 16, endpoint=False)
    a, p = np.meshgrid(alpha, phi, indexing="ij")
    # Local frame: x points away from the head, so the dished side faces outward.
    u = np.stack([np.sin(a) * np.cos(p), np.cos(a), np.sin(a) * np.sin(p)], -1)
    unit, faces = _lathe(u)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    parts_v, parts_f, parts_d = [], [], []
    for side in (-1.0, 1.0):
        local = unit * [0.07, 0.24, 0.15]
        local[:, 0] -= 0.05 * (unit[:, 1] ** 2 + unit[:, 2] ** 2)  # cupped toward the skull
        v = local * [side, 1, 1] + [side * 0.77, 0.08, -0.06]
        f = faces[:, [0, 2, 1]] if side > 0 else faces  # (x, z) swapped: winding flips
        parts_v.append(v)
        parts_f.append(f + sum(len(x) for x in parts_v[:-1]))
        parts_d.append(unit * [side, 1, 1])
    return np.concatenate(parts_v), np.concatenate(parts_f), np.concatenate(parts_d)


def _anchors(landmarks: np.ndarray) -> np.ndarray:
    """Where the ray from the head centre through each landmark meets the ellipsoid."""
    scale = 1.0 / np.sqrt(((landmarks / RADII) ** 2).sum(1, keepdims=True))
    return landmarks * scale


def _cavity(points: np.ndarray, mouth_y: float, corner_x: float) -> np.ndarray:
    """1 on the band of skin between the lips (which stretches open into the mouth), fading
    to 0 at the lips' outer edges and at the corners; 0 off the front of the face."""
    band = np.clip(1 - np.abs(points[:, 1] - mouth_y) / 0.08, 0, 1)
    across = np.clip((corner_x - np.abs(points[:, 0])) / 0.08, 0, 1)
    front = points[:, 2] > 0.5
    return band**2 * across * front


def _rbf_weights(verts: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """W [V, 68]: two-scale Gaussian RBF interpolation from anchors to vertices (linear in
    the landmark displacements). The coarse scale is a smoothing fit; the fine scale
    interpolates what the coarse one left, so each landmark is (nearly) met exactly."""

    def kernel(x, y, sigma):
        d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
        return np.exp(-0.5 * d2 / sigma**2)

    n = len(anchors)
    weights = np.zeros((len(verts), n))
    residual = np.eye(n)  # maps landmark displacements to what is still unexplained
    for sigma, ridge in SIGMAS:
        k_aa = kernel(anchors, anchors, sigma)
        solve = np.linalg.solve(k_aa + ridge * np.eye(n), residual)
        weights += kernel(verts, anchors, sigma) @ solve
        residual = residual - k_aa @ solve
    return weights


def _lip_gap(landmarks: torch.Tensor) -> torch.Tensor:
    """Mean vertical gap between the inner lips [...] (as `lm3d.mouth_opening`, in torch)."""
    up, low = (list(i) for i in zip(*L.INNER_LIP_PAIRS, strict=True))
    return (landmarks[..., up, 1] - landmarks[..., low, 1]).mean(-1)


@dataclass
class HeadMesh:
    """A speaker's mesh: per-frame vertices are `static + W @ (landmarks - anchors)`."""

    faces: torch.Tensor  # [F, 3] int64, counter-clockwise seen from outside
    part: torch.Tensor  # [F] int64: HEAD, NECK or EAR
    static: torch.Tensor  # [V, 3] float32, vertices before the landmark-driven deformation
    weights: torch.Tensor  # [Vh, 68] float32, for the first Vh (skull) vertices
    anchors: torch.Tensor  # [68, 3] float32
    rest: torch.Tensor  # [V, 3] float32, vertices with the speaker's neutral face
    direction: torch.Tensor  # [V, 3] float32, unit directions (skull, neck, ear-local)
    neutral: torch.Tensor  # [68, 3] float32
    cavity: torch.Tensor  # [Vh] float32, how far each skull vertex sinks per unit lip gap
    torso_weight: torch.Tensor | None = None  # [V] float32, 0 (head pose) .. 1 (torso pose)

    def vertices(self, landmarks: torch.Tensor) -> torch.Tensor:
        """Canonical vertices [..., V, 3] for landmarks [..., 68, 3]."""
        moved = self.weights @ (landmarks - self.anchors)
        gap = (_lip_gap(landmarks) - _lip_gap(self.neutral)).clamp(min=0)
        moved[..., 2] -= CAVITY_DEPTH * gap[..., None] * self.cavity
        head = self.static[: len(self.weights)] + moved
        rigid = self.static[len(self.weights) :].expand(*moved.shape[:-2], -1, 3)
        return torch.cat([head, rigid], -2)


def build_head(neutral: np.ndarray, appearance, device: str | torch.device = "cpu") -> HeadMesh:
    """Build the mesh for a speaker's neutral landmarks [68, 3] and appearance."""
    neutral = np.asarray(neutral, np.float64)
    skull_v, skull_f, skull_d = _skull(appearance)
    neck_v, neck_f, neck_d = _neck()
    ear_v, ear_f, ear_d = _ears()
    anchors = _anchors(neutral)
    used = np.setdiff1d(np.arange(len(anchors)), INNER_LIP_MIDS)
    # Rest directions, not the inflated scalp, so the hair does not shift the face.
    base = skull_d * RADII
    weights = np.zeros((len(base), len(anchors)))
    weights[:, used] = _rbf_weights(base, anchors[used])
    corner_x = np.abs(anchors[[60, 64], 0]).max()
    cavity = _cavity(base, anchors[L.INNER_LIPS, 1].mean(), corner_x)
    verts = np.concatenate([skull_v, neck_v, ear_v])
    n_skull, n_neck = len(skull_v), len(neck_v)
    faces = np.concatenate([skull_f, neck_f + n_skull, ear_f + n_skull + n_neck])
    part = np.concatenate(
        [np.full(len(skull_f), HEAD), np.full(len(neck_f), NECK), np.full(len(ear_f), EAR)]
    )

    def t(x, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

    mesh = HeadMesh(
        faces=t(faces, torch.int64),
        part=t(part, torch.int64),
        static=t(verts),
        weights=t(weights),
        anchors=t(anchors),
        rest=t(verts),
        direction=t(np.concatenate([skull_d, neck_d, ear_d])),
        neutral=t(neutral),
        cavity=t(cavity),
        torso_weight=t(
            torso_weights(verts[:, 1])
            * (np.arange(len(verts)) >= n_skull)
            * (np.arange(len(verts)) < n_skull + n_neck)
        ),
    )
    mesh.rest = mesh.vertices(mesh.neutral)
    return mesh
