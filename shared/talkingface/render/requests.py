"""What a RenderRequest may ask for: the renderer stage's request checks, each failure a
TalkingFaceError with its stable code (INVALID_REQUEST, RENDER_INVALID_RANGE,
STORE_KEY_INVALID), and the poses a request's frames are rendered at.
"""

from __future__ import annotations

import numpy as np

from talkingface.errors import TalkingFaceError
from talkingface.v1 import renderer_pb2 as pb

SCRATCH_PREFIX = "work"  # callers' scratch space (the broker's per-job work/<job_id>/)
MAX_RESOLUTION = 1024  # an RGB8 frame stays under the 4 MiB message rule (3 MiB)
TRACK_MODES = {
    pb.POSE_MODE_UNSPECIFIED: "pingpong",
    pb.POSE_MODE_PING_PONG: "pingpong",
    pb.POSE_MODE_LOOP: "loop",
}
ENCODINGS = {
    pb.FRAME_ENCODING_UNSPECIFIED: pb.FRAME_ENCODING_RGB8,
    pb.FRAME_ENCODING_RGB8: pb.FRAME_ENCODING_RGB8,
    pb.FRAME_ENCODING_PNG: pb.FRAME_ENCODING_PNG,
    pb.FRAME_ENCODING_JPEG: pb.FRAME_ENCODING_JPEG,
}


def check_pose_options(request: pb.RenderRequest) -> None:
    """The pose fields agree with each other (the track's length is checked in `pose_plan`)."""
    if request.pose_mode not in TRACK_MODES and request.pose_mode != pb.POSE_MODE_EXPLICIT:
        raise TalkingFaceError("INVALID_REQUEST", f"unknown pose mode {request.pose_mode}")
    if request.pose_indices and request.pose_mode != pb.POSE_MODE_EXPLICIT:
        raise TalkingFaceError(
            "INVALID_REQUEST", "pose_indices are read only with POSE_MODE_EXPLICIT"
        )
    if request.pose_start and request.pose_mode == pb.POSE_MODE_EXPLICIT:
        raise TalkingFaceError("INVALID_REQUEST", "pose_start is read only with track modes")


def pose_plan(
    request: pb.RenderRequest, frames: int, track_length: int
) -> tuple[str, np.ndarray | None, int]:
    """(mode, explicit track indices or None, pose_start) for `frames` output frames of an
    avatar whose recorded track has `track_length` poses."""
    if request.pose_mode == pb.POSE_MODE_EXPLICIT:
        return "explicit", explicit_poses(request.pose_indices, frames, track_length), 0
    if not 0 <= request.pose_start < track_length:
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"pose_start must lie in 0..{track_length - 1} (the avatar's recorded track), "
            f"got {request.pose_start}",
        )
    return TRACK_MODES[request.pose_mode], None, int(request.pose_start)


def resolution(value: int) -> int:
    """The requested output side (0 = the avatar's own size)."""
    if value < 0 or value > MAX_RESOLUTION:
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"resolution must be 0 (the avatar's size) or 1..{MAX_RESOLUTION} pixels, got {value}",
        )
    return int(value)


def segment_prefix(prefix: str, store: bool) -> str:
    """A caller's segment prefix: only with OUTPUT_MODE_STORE, only under `work/`."""
    if not prefix:
        return ""
    if not store:
        raise TalkingFaceError(
            "INVALID_REQUEST", "segment_prefix is read only with OUTPUT_MODE_STORE"
        )
    from talkingface.storage.errors import InvalidKey
    from talkingface.storage.keys import validate_prefix

    try:
        prefix = validate_prefix(prefix)
    except InvalidKey as exc:
        raise TalkingFaceError("STORE_KEY_INVALID", f"segment_prefix: {exc.reason}") from None
    if not prefix.startswith(SCRATCH_PREFIX + "/"):
        raise TalkingFaceError(
            "STORE_KEY_INVALID", f"segment_prefix must lie under {SCRATCH_PREFIX}/, got {prefix!r}"
        )
    return prefix


def frame_range(start: int, end: int, frames: int) -> tuple[int, int]:
    """[start, end) of a T-frame sequence (end 0 = T); RENDER_INVALID_RANGE when it is not
    a non-empty range inside the sequence."""
    stop = frames if end == 0 else end
    if start < 0 or stop > frames or start >= stop:
        raise TalkingFaceError(
            "RENDER_INVALID_RANGE",
            f"frame range [{start}, {end}) is not a non-empty range of the {frames}-frame "
            "sequence (end_frame 0 = its end)",
        )
    return int(start), int(stop)


def explicit_poses(indices, frames: int, track_length: int) -> np.ndarray:
    poses = np.asarray(indices, np.int64)
    if len(poses) != frames:
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"POSE_MODE_EXPLICIT needs one pose index per output frame: {frames} frames, "
            f"got {len(poses)} pose_indices",
        )
    if poses.size and (poses.min() < 0 or poses.max() >= track_length):
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"pose_indices must lie in 0..{track_length - 1} (the avatar's recorded track), "
            f"got {int(poses.min())}..{int(poses.max())}",
        )
    return poses
