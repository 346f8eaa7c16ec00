"""Pinhole camera and head pose for SynthTalk videos: intrinsics, projection, random head motion.

Conventions (shared by the renderer, the avatar files and the NeRF that learns from them):

- Canonical head frame (`talkingface.lm3d`): origin at the head centre, +x toward the viewer's
  right, +y up, +z out of the face toward the viewer; 1 unit = 10 cm.
- Camera space is OpenCV's: +x right, +y down, +z forward along the optical axis (away from
  the camera); the camera sits at the camera-space origin and never moves.
- Head pose maps canonical points to camera space: `p_cam = R @ p + t`. R is a proper
  rotation (det +1) that *includes* the change of axes: the head looking straight into the
  lens has R = `FACING` = diag(1, -1, -1) (canonical +y up becomes camera -y, canonical +z
  toward the viewer becomes camera -z, i.e. toward the lens) and t = (0, 0, `DISTANCE`).
- Euler angles (radians) are the head's own rotation inside the canonical frame, applied
  before the change of axes: `R = FACING @ Ry(yaw) @ Rx(pitch) @ Rz(roll)`. Positive yaw turns
  the nose toward canonical +x (the viewer's right); positive pitch tips the nose down (a
  nod); positive roll turns the face counter-clockwise as the viewer sees it (the head tilts
  toward the viewer's left, the subject's right ear going down).
- Pixels: `project` returns (x, y) with the origin at the top-left corner of the top-left
  pixel, so pixel (i, j) has its centre at (i + 0.5, j + 0.5); the principal point is the
  image centre (W/2, H/2).
"""

from __future__ import annotations

import numpy as np

FOV_DEG = 18.0  # vertical field of view: a portrait lens, little perspective distortion
# Camera distance (canonical units, ~1 m): the visible height at the head centre is
# 2 * DISTANCE * tan(FOV/2) = 3.3 units, so a head of ~2.25 units (chin to hair top) fills
# ~68% of the frame height with the neck below it.
DISTANCE = 10.4
FACING = np.diag([1.0, -1.0, -1.0]).astype(np.float32)  # canonical axes -> camera axes

# Random head motion: peak angles (radians) and translations (canonical units; the frame is
# ~3.3 units tall, so 0.1 is ~3% of it); z is depth (a ~3% change of scale).
MAX_ANGLES = np.deg2rad([15.0, 15.0, 4.0])
MAX_SHIFT = np.array([0.10, 0.08, 0.30])


def intrinsics(size: int | tuple[int, int], fov_deg: float = FOV_DEG) -> np.ndarray:
    """Pinhole K [3, 3] float32 for a square `size` or (height, width); fov is vertical."""
    height, width = (size, size) if np.isscalar(size) else size
    focal = 0.5 * height / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array(
        [[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], np.float32
    )


def euler_to_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Camera rotation R [..., 3, 3] (FACING included) for head angles in radians."""
    yaw, pitch, roll = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (yaw, pitch, roll)))
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (np.cos, np.sin))
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*yaw.shape, 3, 3)
    # Rotating +z about +x by a positive angle moves it toward -y: the nose dips.
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*yaw.shape, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*yaw.shape, 3, 3)
    return (FACING @ ry @ rx @ rz).astype(np.float32)


def head_pose(
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """(R [3, 3], t [3]) for head angles (radians) and a camera-space shift of the head."""
    t = np.array([0.0, 0.0, DISTANCE], np.float32) + np.asarray(shift, np.float32)
    return euler_to_matrix(yaw, pitch, roll), t


def to_camera(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Canonical points [..., N, 3] (or [N, 3]) to camera space; R [..., 3, 3], t [..., 3]."""
    points = np.asarray(points, np.float32)
    R, t = np.asarray(R, np.float32), np.asarray(t, np.float32)
    if R.ndim == 2:
        return points @ R.T + t
    return points @ np.swapaxes(R, -1, -2) + t[..., None, :]


def project(points: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Canonical points [..., 3] -> pixel coordinates [..., 2] (x, y) float32.

    R [3, 3] and t [3] apply to all points; batched poses R [B, 3, 3], t [B, 3] take points
    [B, N, 3]. Points behind the camera are not expected (the head stays ~1 m away).
    """
    cam = to_camera(points, R, t)
    K = np.asarray(K, np.float32)
    x = K[0, 0] * cam[..., 0] / cam[..., 2] + K[0, 2]
    y = K[1, 1] * cam[..., 1] / cam[..., 2] + K[1, 2]
    return np.stack([x, y], -1).astype(np.float32)


def _smooth_signal(rng: np.random.Generator, frames: int, fps: float, peak: float) -> np.ndarray:
    """A sum of three low-frequency sinusoids whose amplitudes add up to `peak`."""
    time = np.arange(frames) / fps
    freqs = rng.uniform(0.05, 0.45, 3)  # slow sways to lively nods, Hz
    phases = rng.uniform(0, 2 * np.pi, 3)
    weights = rng.dirichlet(np.ones(3)) * peak
    return (weights * np.sin(2 * np.pi * freqs * time[:, None] + phases)).sum(1)


def random_head_motion(
    rng: np.random.Generator, frames: int, fps: float = 25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth random head motion: R [T, 3, 3], t [T, 3], euler [T, 3] (yaw, pitch, roll; rad).

    Each angle and each translation axis is a sum of three sinusoids (0.05-0.45 Hz) with
    random phases; the amplitudes add up to ±15° yaw and pitch, ±4° roll, ±0.1 units sideways
    and ±0.3 units in depth, so long sequences come close to those limits and never pass
    them. The same generator state gives the same motion.
    """
    euler = np.stack([_smooth_signal(rng, frames, fps, a) for a in MAX_ANGLES], -1)
    shift = np.stack([_smooth_signal(rng, frames, fps, s) for s in MAX_SHIFT], -1)
    R = euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])
    t = (shift + np.array([0.0, 0.0, DISTANCE])).astype(np.float32)
    return R, t, euler.astype(np.float32)


# The torso (neck and shoulders) follows a share of the head's motion plus a slow sway and
# breathing of its own; it turns about a pivot in the chest (canonical, below the head).
TORSO_FOLLOW = 0.3  # share of the head's rotation the torso takes
TORSO_SHIFT_FOLLOW = 0.6  # share of the head's translation the torso takes
TORSO_SWAY = np.deg2rad([3.0, 1.5, 2.0])  # own yaw, pitch, roll (peak)
TORSO_BREATH = 0.04  # own vertical rise (canonical units, peak)
TORSO_PIVOT = np.array([0.0, -2.6, -0.2])


def torso_motion(
    rng: np.random.Generator, euler: np.ndarray, shift: np.ndarray, fps: float = 25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The torso's pose per frame (same convention as the head's: p_cam = R @ p + t for its
    points in the canonical frame) for head angles `euler` [T, 3] (radians) and head shifts
    `shift` [T, 3] (camera space, less the DISTANCE): R [T, 3, 3], t [T, 3], euler [T, 3].

    Its angles are TORSO_FOLLOW of the head's plus a sway of its own (sinusoids of 0.05-0.45 Hz
    up to TORSO_SWAY), turning about TORSO_PIVOT; its shift is TORSO_SHIFT_FOLLOW of the head's
    plus a breathing rise (0.2-0.3 Hz, up to TORSO_BREATH). So the torso moves with the head
    but not rigidly, and not as any fixed function of the head pose."""
    frames = len(euler)
    own = np.stack([_smooth_signal(rng, frames, fps, a) for a in TORSO_SWAY], -1)
    angles = TORSO_FOLLOW * np.asarray(euler, np.float64) + own
    time = np.arange(frames) / fps
    breath = TORSO_BREATH * np.sin(2 * np.pi * rng.uniform(0.2, 0.3) * time + rng.uniform(0, 6.3))
    move = TORSO_SHIFT_FOLLOW * np.asarray(shift, np.float64)
    move[:, 1] -= breath  # camera y points down: breathing in lifts the shoulders
    R = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]).astype(np.float64)
    # Turning about the pivot: p_cam = R (p - c) + FACING c + DISTANCE z + move.
    pivot = FACING.astype(np.float64) @ TORSO_PIVOT
    t = pivot + move + np.array([0.0, 0.0, DISTANCE]) - R @ TORSO_PIVOT
    return R.astype(np.float32), t.astype(np.float32), angles.astype(np.float32)
