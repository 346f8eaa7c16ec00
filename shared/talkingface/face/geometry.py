"""The ingest's geometry: head poses and canonical landmarks from the tracked face meshes.

Each frame's similarity to the person's own rigid shape (`face.pose`), less what follows the
mouth's opening and smoothed along time, becomes a pinhole pose for intrinsics from a field
of view; the shape's iBUG-68 subset, aligned to the contract's mean face, places the
landmarks in the canonical frame and units of `talkingface.lm3d`; each frame's expression is
its mesh brought back through its pose (docs/ingest.md, "The steps", 3).
"""

from __future__ import annotations

import numpy as np

from talkingface.errors import TalkingFaceError
from talkingface.face.ibug68 import IBUG68
from talkingface.face.pose import (
    apply,
    canonical_shape,
    decouple_expression,
    euler_degrees,
    frame_poses,
    rotation_angle_degrees,
    smooth_poses,
    steady_weights,
    umeyama,
)
from talkingface.lm3d import mouth_opening

EXTREME_YAW, EXTREME_PITCH = 45.0, 35.0  # VIDEO_EXTREME_POSE when most frames pass these
MIN_MOUTH_MOTION = 0.01  # std of the mouth opening (canonical units) below this: VIDEO_FROZEN
POSE_SMOOTH_FRAMES = 2.0  # the head poses' Gaussian smoothing (sigma, frames): docs/ingest.md
EXPRESSION_HIGHPASS_FRAMES = 4.0  # what counts as fast in `decouple_expression` (sigma, frames)
D = np.diag([1.0, -1.0, -1.0])  # image axes (x right, y down, z away) <-> contract axes


def _contract_template() -> np.ndarray:
    from talkingface.data.synthtalk.face import MEAN_SHAPE

    return np.asarray(MEAN_SHAPE, np.float64)


def head_geometry(mesh: np.ndarray, frame_hw: tuple[int, int], fov_deg: float) -> dict:
    """Each frame's camera pose (R, t for intrinsics from `fov_deg`) and canonical landmarks
    (lm3d) from the tracked meshes [T, 468, 3] of frames `frame_hw`, with what the ingest
    reports of them."""
    mesh = np.asarray(mesh, np.float64)
    step = max(1, len(mesh) // 300)  # the shape from at most ~300 frames
    # Twice: weighted towards the skull first, then towards the points that stay put on it.
    shape = canonical_shape(mesh[::step])
    weights = steady_weights(mesh[::step], shape, frame_poses(mesh[::step], shape))
    shape = canonical_shape(mesh[::step], weights=weights)
    s, raw_rot, shift, residual = frame_poses(mesh, shape, weights)
    # The shape in the contract's frame: P = sigma Q D C + o.
    sigma, q, o = umeyama(shape[IBUG68] @ D.T, _contract_template())
    opening = mouth_opening(_canonical(mesh, s, raw_rot, shift, (sigma, q, o)))
    s, rot, shift, decoupled = decouple_expression(s, raw_rot, shift, opening,
                                                   EXPRESSION_HIGHPASS_FRAMES)  # fmt: skip
    s, rot, shift = smooth_poses(s, rot, shift, POSE_SMOOTH_FRAMES)
    lm3d = _canonical(mesh, s, rot, shift, (sigma, q, o)).astype(np.float32)
    r_cam = rot @ D @ q.T  # contract -> camera rotation (OpenCV axes)
    k = s / sigma  # pixels per canonical unit
    h, w = frame_hw
    focal = 0.5 * h / np.tan(np.deg2rad(fov_deg) / 2)
    z = focal / k
    # Mesh points are pixel-centre coordinates; the camera's are pixel-corner ones (+0.5).
    origin_px = -k[:, None] * np.einsum("tij,j->ti", r_cam, o) + shift + [0.5, 0.5, 0.0]
    t_cam = np.stack([(origin_px[:, 0] - w / 2) * z / focal,
                      (origin_px[:, 1] - h / 2) * z / focal, z], axis=1)  # fmt: skip
    # R = FACING @ Ry(yaw) Rx(pitch) Rz(roll), FACING = D, as SynthTalk's camera writes it.
    euler = euler_degrees(np.einsum("ij,tjk->tik", D, r_cam))
    return {
        "lm3d": lm3d, "R": r_cam.astype(np.float32), "t": t_cam.astype(np.float32),
        "focal": focal, "k": k, "origin_px": origin_px, "residual": residual, "euler": euler,
        "turn_deg": {"raw": _turns(raw_rot), "smoothed": _turns(rot)},
        "decoupled": decoupled,
        "mesh3d": apply(sigma, q, o, shape @ D.T),  # the 468-point shape, contract frame
    }  # fmt: skip


def _canonical(mesh: np.ndarray, s, rot, shift, contract) -> np.ndarray:
    """iBUG-68 landmarks [T, 68, 3] in the contract's canonical frame: each frame's mesh
    brought back through its own pose (s, R, t), then into the contract's frame by `contract`
    (sigma, Q, o: P = sigma Q D C + o)."""
    local = np.einsum("tij,tnj->tni", np.swapaxes(rot, 1, 2), mesh[:, IBUG68] - shift[:, None, :])
    return apply(*contract, (local / s[:, None, None]) @ D.T)


def _turns(rot: np.ndarray) -> float:
    """Median frame-to-frame turn of the head, in degrees."""
    return float(np.median(rotation_angle_degrees(rot[1:], rot[:-1]))) if len(rot) > 1 else 0.0


def check_geometry(geometry: dict) -> None:
    """VIDEO_EXTREME_POSE or VIDEO_FROZEN, when the poses or the mouth say so."""
    # The pose first: turned away, the mouth cannot be read either.
    yaw, pitch = np.abs(geometry["euler"][:, 0]), np.abs(geometry["euler"][:, 1])
    extreme = float(np.mean((yaw > EXTREME_YAW) | (pitch > EXTREME_PITCH)))
    if extreme > 0.5:
        raise TalkingFaceError("VIDEO_EXTREME_POSE", f"the head is turned away (yaw over "
                               f"{EXTREME_YAW:g} or pitch over {EXTREME_PITCH:g} degrees) in "
                               f"{100 * extreme:.0f} % of the frames: look towards the "
                               "camera")  # fmt: skip
    if float(np.std(mouth_opening(geometry["lm3d"]))) < MIN_MOUTH_MOTION:
        raise TalkingFaceError("VIDEO_FROZEN", "the mouth does not move: the video must show "
                               "the person speaking")  # fmt: skip
