"""Head pose without a 3DMM: rigid alignment of each frame's mesh to the person's own shape.

The face mesh gives, per frame, 468 points with x, y in image pixels and z a relative depth
on the same scale (a weak-perspective reading of the face). A person's rigid head shape is
estimated from the video itself (`canonical_shape`): start from the most frontal frame,
align every frame to the current estimate with a similarity transform (Umeyama's
least-squares rotation, scale and translation, weighted towards the points that move least
with expression), average the aligned shapes, and repeat; then again with each point
weighted by how steadily it sits on that shape in this video (`steady_weights`). Each
frame's pose is then the similarity that carries the canonical shape onto it
(`frame_poses`), less the part of it that follows the mouth's opening (`decouple_expression`:
the fit tips and shrinks the head as the jaw drops), smoothed along time (`smooth_poses`: the
mesh's frame-to-frame noise is not the head's motion), and yaw, pitch and roll follow from
its rotation (`euler_degrees`).

Umeyama, "Least-squares estimation of transformation parameters between two point
patterns", IEEE TPAMI 13(4), 1991.
"""

from __future__ import annotations

import numpy as np

from talkingface.face.ibug68 import IBUG68

# Points that move with the skull, not with expression: brows' inner ends, nose bridge and
# base, eye corners, the upper face oval (temples and cheekbones). Weighted 1; the rest 0.2.
RIGID = np.array([107, 336, 168, 197, 5, 4, 98, 97, 2, 326, 327, 33, 133, 362, 263,
                  127, 234, 356, 454, 10, 338, 297, 109, 67, 6, 195])  # fmt: skip


DECOUPLE_MIN_FRAMES = 100  # 4 s: fewer frames leave `decouple_expression` nothing to fit


def rigid_weights(n: int = 468) -> np.ndarray:
    w = np.full(n, 0.2)
    w[RIGID] = 1.0
    return w


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
            scale: bool = True):  # fmt: skip
    """(s, R, t) minimising sum_i w_i |dst_i - (s R src_i + t)|^2 over rotations R (det +1).

    src, dst: [N, D], or batches [..., N, D] (either may be one set for the whole batch:
    then s [...], R [..., D, D], t [..., D]); weights: [N] (default all 1).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(src.shape[-2]) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = np.einsum("n,...nd->...d", w, src), np.einsum("n,...nd->...d", w, dst)
    xs, xd = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    cov = np.einsum("...ni,n,...nj->...ij", xd, w, xs)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(sigma.shape)
    d[..., -1] = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
    rot = u @ (d[..., :, None] * vt)
    var_s = np.einsum("n,...n->...", w, (xs**2).sum(axis=-1))
    s = (sigma * d).sum(axis=-1) / np.where(var_s > 0, var_s, 1.0)
    s = np.where(scale & (var_s > 0), s, 1.0)
    t = mu_d - s[..., None] * np.einsum("...ij,...j->...i", rot, mu_s)
    return (float(s), rot, t) if s.ndim == 0 else (s, rot, t)


def apply(s, rot: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """s R p + t for every point p of `points` [N, D]; with a batch of similarities (s [...],
    R [..., D, D], t [..., D], as `umeyama` returns them) the points may be one set [N, D] or
    one per similarity [..., N, D], and the result is [..., N, D]."""
    s = np.asarray(s, np.float64)
    moved = np.einsum("...ij,...nj->...ni", rot, np.asarray(points))
    return s[..., None, None] * moved + np.asarray(t)[..., None, :]


def frontality(mesh: np.ndarray) -> float | np.ndarray:
    """0 for a frontal face: how far the nose tip sits from the eyes' midpoint (sideways and
    relative to the eye line), in inter-ocular distances. `mesh` [468, C] (a float), or a
    batch [..., 468, C] (an array [...])."""
    p = np.asarray(mesh)[..., IBUG68, :2]
    eyes = (p[..., 36, :] + p[..., 45, :]) / 2
    iod = np.maximum(np.linalg.norm(p[..., 45, :] - p[..., 36, :], axis=-1), 1e-9)
    axis = (p[..., 45, :] - p[..., 36, :]) / iod[..., None]
    off = np.abs(((p[..., 30, :] - eyes) * axis).sum(axis=-1)) / iod
    return float(off) if off.ndim == 0 else off


def canonical_shape(meshes: np.ndarray, iterations: int = 3,
                    weights: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The person's rigid shape [468, 3] from their meshes [T, 468, 3]: centred, unit RMS
    radius, oriented as the most frontal frame (x right, y down, z away from the camera).
    `weights` [468]: the points' weights in the alignments (default `rigid_weights`)."""
    meshes = np.asarray(meshes, np.float64)
    w = rigid_weights(meshes.shape[1]) if weights is None else weights
    start = int(np.argmin(frontality(meshes)))
    shape = _normalise(meshes[start])
    for _ in range(iterations):
        aligned = apply(*umeyama(meshes, shape, w), meshes)  # every frame at once
        shape = _normalise(aligned.mean(axis=0))
    return shape


def _normalise(shape: np.ndarray) -> np.ndarray:
    centred = shape - shape.mean(axis=0)
    return centred / np.sqrt((centred**2).sum(axis=1).mean())


def frame_poses(meshes: np.ndarray, canonical: np.ndarray, weights: np.ndarray | None = None):
    """Per frame (s [T], R [T, 3, 3], t [T, 3]) carrying `canonical` onto the frame's mesh,
    and the residual RMS of the rigid points in the frame's pixels [T]. `weights` [468]:
    the points' weights in the fit (default `rigid_weights`)."""
    w = rigid_weights(canonical.shape[0]) if weights is None else weights
    meshes = np.asarray(meshes, np.float64)
    s, rot, t = umeyama(canonical, meshes, w)  # every frame at once
    fitted = apply(s, rot, t, canonical[RIGID])
    residual = np.sqrt(((fitted - meshes[:, RIGID]) ** 2).sum(axis=2).mean(axis=1))
    return s, rot, t, residual


def steady_weights(meshes: np.ndarray, canonical: np.ndarray, poses) -> np.ndarray:
    """Weights [468] for the pose fit from the video itself: the inverse of each point's
    variance about the rigid fit `poses` (s, R, t of `frame_poses`) of `canonical`, its own
    mean offset removed; the steadiest points weigh 1. Points that move with expression, and
    points the mesh reads with more noise, weigh less. No variance counts as smaller than the
    2nd percentile's, so that a few points can never carry the fit alone (at least 10 of the
    468 weigh 1; on SynthTalk about 270 points' worth of weight is spread over the face)."""
    off = np.asarray(meshes, np.float64) - apply(*poses[:3], canonical)
    variance = ((off - off.mean(axis=0)) ** 2).sum(axis=2).mean(axis=0)
    weights = 1.0 / np.maximum(variance, max(float(np.percentile(variance, 2)), 1e-12))
    return weights / weights.max()


def smooth_poses(scale: np.ndarray, rot: np.ndarray, shift: np.ndarray, sigma: float):
    """Per-frame similarities (s [T], R [T, 3, 3], t [T, 3]) smoothed along time by a Gaussian
    of `sigma` frames, zero-phase (no lag): the rotations as axis-angle vectors about their
    mean, the scales in log, the translations as they are. The face mesh reads a rigid head
    with frame-to-frame noise of about half a degree and a few per cent of scale that the
    head itself does not have."""
    from scipy.spatial.transform import Rotation

    if sigma <= 0 or len(rot) < 2:
        return scale, rot, shift
    mean = Rotation.from_matrix(rot).mean()
    turns = _smooth_track((mean.inv() * Rotation.from_matrix(rot)).as_rotvec(), sigma)
    rot = (mean * Rotation.from_rotvec(turns)).as_matrix()
    scale = np.exp(_smooth_track(np.log(scale)[:, None], sigma)[:, 0])
    return scale, rot, _smooth_track(np.asarray(shift, np.float64), sigma)


def decouple_expression(scale: np.ndarray, rot: np.ndarray, shift: np.ndarray,
                        expression: np.ndarray, highpass: float):  # fmt: skip
    """Per-frame similarities (s [T], R [T, 3, 3], t [T, 3], as `frame_poses` gives them) less
    the part of them that follows the face's expression `expression` [T] or [T, E] (the
    mouth's opening) linearly, and that part's spread.

    A face mesh's rigid fit tips the head back and shrinks it a little as the jaw drops (on a
    real photograph whose mouth is opened by a known warp, the pitch error follows the opening
    with r 0.85 and the scale error with r 0.86: docs/ingest.md). The slopes are fitted on the
    signals' fast part only, each less its Gaussian smoothing of `highpass` frames: speech
    moves the mouth several times a second while a head turns slowly, so a head motion that
    happens to go with the mouth over one video is not taken for the mesh's error. The
    rotations are turns about their mean (axis-angle), the scales in log, the translations as
    they are; the expression is centred, so the mean pose is kept. Fewer than
    DECOUPLE_MIN_FRAMES frames, or a mouth that hardly moves, leave the poses as they are
    (spread None).
    """
    from scipy.ndimage import gaussian_filter1d
    from scipy.spatial.transform import Rotation

    x = np.asarray(expression, np.float64).reshape(len(rot), -1)
    x = x - x.mean(axis=0)
    fast_x = x - gaussian_filter1d(x, highpass, axis=0, mode="nearest")
    if len(rot) < DECOUPLE_MIN_FRAMES or float(fast_x.std()) < 1e-6:
        return scale, rot, shift, None
    mean = Rotation.from_matrix(rot).mean()
    turns = (mean.inv() * Rotation.from_matrix(rot)).as_rotvec()
    y = np.concatenate([turns, np.log(scale)[:, None], np.asarray(shift, np.float64)], axis=1)
    fast_y = y - gaussian_filter1d(y, highpass, axis=0, mode="nearest")
    slopes = np.linalg.lstsq(fast_x, fast_y, rcond=None)[0]  # [E, 7]
    part = x @ slopes
    y = y - part
    spread = {
        "rotation_deg": float(np.rad2deg(np.sqrt((part[:, :3] ** 2).sum(axis=1).mean()))),
        "scale_pct": float(100 * part[:, 3].std()),
        "shift_px": float(np.sqrt((part[:, 4:6] ** 2).sum(axis=1).mean())),
    }
    rot = (mean * Rotation.from_rotvec(y[:, :3])).as_matrix()
    return np.exp(y[:, 3]), rot, y[:, 4:], spread


def _smooth_track(x: np.ndarray, sigma: float) -> np.ndarray:
    """[T, D] smoothed along T by a Gaussian. Beyond each end the track is extended by point
    reflection about the end's smoothed value (the Gaussian over the track held still past
    the end), so a track still moving at its first or last frame keeps most of its course
    and an end frame's own noise is averaged out as any other frame's."""
    from scipy.ndimage import gaussian_filter1d

    pad = min(len(x) - 1, int(np.ceil(4 * sigma)))  # the Gaussian's reach (4 sigma)

    def held(end: np.ndarray) -> np.ndarray:  # the smoothed value at end[0], held past it
        return gaussian_filter1d(end, sigma, axis=0, mode="nearest")[:1]

    head = 2 * held(x[: pad + 1]) - x[1 : pad + 1][::-1]
    tail = 2 * held(x[::-1][: pad + 1]) - x[-pad - 1 : -1][::-1]
    padded = np.concatenate([head, x, tail])
    return gaussian_filter1d(padded, sigma, axis=0, mode="nearest")[pad : pad + len(x)]


def euler_degrees(rot: np.ndarray) -> np.ndarray:
    """[..., 3] yaw (about y), pitch (about x), roll (about z) in degrees, for
    R = Ry(yaw) @ Rx(pitch) @ Rz(roll) in the image frame (x right, y down, z away)."""
    rot = np.asarray(rot)
    yaw = np.arctan2(rot[..., 0, 2], rot[..., 2, 2])
    pitch = np.arcsin(np.clip(-rot[..., 1, 2], -1.0, 1.0))
    roll = np.arctan2(rot[..., 1, 0], rot[..., 1, 1])
    return np.rad2deg(np.stack([yaw, pitch, roll], axis=-1))


def rotation_angle_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The angle of the rotation between a and b ([..., 3, 3]), in degrees."""
    rel = np.einsum("...ji,...jk->...ik", a, b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1) / 2
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))
