"""`talkingface avatar ingest`: a real person's talking video -> an avatar directory that
`train avatar` reads unchanged (the SynthTalk avatar format, docs/synthtalk.md), plus a torso
mask and `ingest.json`.

Steps (docs/ingest.md):
1. Read the video and its audio in the sandbox (`face.video`, `audio.decode`): 25 fps by
   timestamps, rotation applied, audio to 16 kHz mono. The frames are streamed three times
   (tracking, reading the faces again, cropping), never stored.
2. Track the face (`face.track.FaceTracker`, one view: MediaPipe's own reading): 468-point
   meshes and the face count, which the checks of step 6 that need them use at once. Then
   each kept face is read again as the mean of ten views of its crop (`face.mesh.VIEWS`),
   its inner lips' gap read from the pixels where the mouth's inside shows (`face.lips`)
   and its upper eyelids where the eye starts below the skin (`face.eyes`), gaps filled
   by interpolation; One-Euro smoothing, with the jitter of the one-view, the ten-view and
   the smoothed points.
3. Pose without a 3DMM (`face.pose`): the person's rigid shape from their own frames, each
   frame's similarity from it; the shape is placed in the contract's canonical frame and
   units (`talkingface.lm3d`) by aligning its iBUG-68 subset to the contract's mean face, and
   each frame's weak-perspective similarity becomes a pinhole pose (R, t) for intrinsics K
   from `fov_deg` (vertical, of the source frame).
4. One fixed square crop per video around the median head position (3.2 canonical units on
   a side, SynthTalk's framing), kept inside the frame, resized to `size`.
5. Person segmentation per cropped frame, split into head (hair included) and torso (neck
   and shoulders) along the jaw's edge found near the mesh's jaw line (`face.masks`); the
   background plate is the per-pixel median over the frames where that pixel is background;
   pixels never uncovered take the median of all frames under the torso and their nearest
   neighbour's value elsewhere.
   Before the plate, the poses are refined from textured patches of skin tracked through
   the crops, on the depth of the person's mesh shape (`face.patches`); the landmarks keep
   the mesh's.
   Steps 4 and 5 and the avatar directory's files are `face.writer`'s.
6. Checks that fail with a code a person can act on (VIDEO_* codes, docs/ingest.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.audio.decode import SAMPLE_RATE, decode_audio
from talkingface.errors import TalkingFaceError
from talkingface.face import eyes, lips
from talkingface.face.geometry import check_geometry, head_geometry
from talkingface.face.ibug68 import IBUG68, interocular
from talkingface.face.track import (
    FaceTracker,
    StreamTooShort,
    read_in_views,
    smooth,
)
from talkingface.face.video import FPS, iter_frames, probe
from talkingface.face.writer import write_avatar, write_preview

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
DEFAULT_FOV_DEG = 40.0  # vertical field of view of a phone or webcam in landscape
MAX_TRACK_SIDE = 1280  # frames are tracked at most this large (long side)
MAX_NO_FACE = 0.2  # more frames than this without a face: VIDEO_NO_FACE
MAX_MULTI_FACE_COUNTS = 3  # more face counts than this seeing two faces: VIDEO_MULTIPLE_FACES
MIN_FACE_PX = 40  # median inter-ocular distance below this: VIDEO_FACE_TOO_SMALL
SMOOTH_MIN_CUTOFF, SMOOTH_BETA = 3.0, 1.0  # One-Euro: Hz, and Hz per (pixel / s)
STILL_IMAGE_CODECS = {"png", "mjpeg", "jpegls", "bmp", "gif", "webp", "tiff", "jpeg2000"}


def ingest(
    video: Path | str,
    out: Path | str,
    *,
    size: int = 256,
    fov_deg: float = DEFAULT_FOV_DEG,
    min_seconds: float = 20.0,
    max_seconds: float = 1800.0,
    progress: Callable[[str, float], None] | None = None,
    preview: bool = False,
) -> dict[str, Any]:
    """Ingest `video` into the avatar directory `out`; returns the report (ingest.json).

    Raises TalkingFaceError (VIDEO_*, AUDIO_*, INVALID_REQUEST) on bad input, with nothing
    left in `out`. `preview` also writes preview.mp4 (`write_preview`).
    """
    started = time.perf_counter()
    say = progress or (lambda stage, fraction: None)
    video, out = Path(video), Path(out)
    if size < 32 or size % 2:
        raise TalkingFaceError("INVALID_REQUEST", "--size must be an even number >= 32")
    if out.exists() and any(out.iterdir()):
        raise TalkingFaceError("INVALID_REQUEST", f"{out} is not empty; choose a new --out")
    try:
        data = video.read_bytes()
    except OSError as exc:
        raise TalkingFaceError("INVALID_REQUEST", f"cannot read {video}: {exc.strerror}") from None
    say("decode", 0.0)
    info = probe(data)
    if info["codec"] in STILL_IMAGE_CODECS and not (info["duration"] or 0) > 0.5:
        raise TalkingFaceError("VIDEO_NO_VIDEO_STREAM", f"the file is a still image "
                               f"({info['codec']}), not a video")  # fmt: skip
    try:
        audio = decode_audio(data, max_seconds=max_seconds, filename_hint=video.name)
    except TalkingFaceError as exc:
        if exc.code in ("AUDIO_UNSUPPORTED_CODEC", "AUDIO_EMPTY"):
            message = "the video has no audio track: an avatar is trained on the person speaking"
            raise TalkingFaceError("VIDEO_NO_AUDIO", message) from None
        if exc.code == "AUDIO_TOO_LONG":
            message = f"the video is longer than the limit of {max_seconds:g} s"
            raise TalkingFaceError("VIDEO_TOO_LONG", message) from None
        raise
    # Two decoding passes, each streamed from the sandboxed decoder (no frame is stored):
    # tracking, then, once the crop is known, cropping and segmenting.
    limits = _video_limits(max_seconds)
    decoded: dict[str, int] = {}
    say("track", 0.1)
    stream = iter_frames(data, max_seconds, MAX_TRACK_SIDE, limits=limits, stats=decoded)
    track = _track(stream, max(1, round((info["duration"] or 0) * FPS)), say)
    total, frame_hw = track["total"], track["frame_hw"]
    _check_length(total / FPS, min_seconds)
    track = _checked(track)
    # Frames without a face before the first or after the last face are cut, with their
    # sound; gaps in between are interpolated.
    lo, hi = track["span"]
    audio = audio[lo * SAMPLES_PER_FRAME : hi * SAMPLES_PER_FRAME]
    seconds = (hi - lo) / FPS
    _check_length(seconds, min_seconds, cut=total - (hi - lo))
    # Every check that needs the meshes has passed on MediaPipe's own one-view reading; a
    # second pass reads each kept face again in ten views of its crop (face.mesh.VIEWS).
    frames = iter_frames(data, max_seconds, MAX_TRACK_SIDE, limits=limits)
    track.update(_refined(_span(frames, lo, hi), track, say))
    geometry = head_geometry(track["mesh"], frame_hw, fov_deg)
    check_geometry(geometry)
    say("crop", 0.6)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        frames = iter_frames(data, max_seconds, MAX_TRACK_SIDE, limits=limits)
        report = write_avatar(out, _span(frames, lo, hi), hi - lo, frame_hw, track, geometry,
                              audio, size, say)  # fmt: skip
    except BaseException:
        for child in out.iterdir():
            child.unlink()
        if created:
            out.rmdir()
        raise
    report["frames"] = {
        "in": total, "kept": hi - lo, "dropped": total - (hi - lo),
        "dropped_why": {"no_face_at_start": lo, "no_face_at_end": total - hi},
        "face_found": int(track["found"].sum()), "interpolated": int((~track["found"]).sum()),
        "decoder": decoded,
    }  # fmt: skip
    report.update(
        source={"file": video.name, **info, "frames_25fps": total},
        seconds_to_ingest=round(time.perf_counter() - started, 2),
    )
    _warnings(report, seconds)
    if preview:
        say("preview", 0.95)
        report["preview"] = write_preview(out).name
    (out / "ingest.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    say("done", 1.0)
    return report


def _check_length(seconds: float, min_seconds: float, cut: int = 0) -> None:
    if seconds < min_seconds:
        why = f" ({cut} frames without a face at its start or end cut)" if cut else ""
        raise TalkingFaceError("VIDEO_TOO_SHORT", f"the video lasts {seconds:.1f} s{why}; an "
                               f"avatar needs at least {min_seconds:g} s (2 minutes or more "
                               "is best)")  # fmt: skip


def _video_limits(max_seconds: float):
    """The sandbox's limits for decoding a whole video: the settings' memory, and CPU and
    wall-clock time that grow with the longest video accepted (decoding runs at several
    times real time; the audio-sized defaults would cut a long video short)."""
    from talkingface.sandbox import Limits

    base = Limits.from_settings()
    return Limits(
        memory_mb=base.memory_mb,
        cpu_seconds=max(base.cpu_seconds, max_seconds / 2),
        timeout_seconds=max(base.timeout_seconds, float(max_seconds)),
    )


# --- tracking ---------------------------------------------------------------------------------


def _span(frames: Iterator[np.ndarray], lo: int, hi: int) -> Iterator[np.ndarray]:
    """Frames lo..hi-1 of a stream; the stream (and its decoder) stops after hi."""
    try:
        for i, frame in enumerate(frames):
            if i >= hi:
                break
            if i >= lo:
                yield frame
    finally:
        frames.close()


def _track(frames: Iterator[np.ndarray], expected: int, say) -> dict[str, Any]:
    """Meshes of a stream of frames (NaN where no face), the face counts and the detection
    scores; `expected` (frames, from the container's duration) only paces the progress."""
    tracker = FaceTracker()  # MediaPipe's own one reading; ten views in the second pass
    meshes, counts, scores = [], [], []
    frame_hw = None
    missing = np.full((468, 3), np.nan, np.float32)
    for i, frame in enumerate(frames):
        frame_hw = frame_hw or frame.shape[:2]
        result = tracker.track(np.ascontiguousarray(frame))
        meshes.append(result.points if result.points is not None else missing)
        if result.faces is not None:
            counts.append(result.faces)
        if result.detection_score is not None:
            scores.append(result.detection_score)
        if i % 50 == 0:
            say("track", 0.1 + 0.3 * min(1.0, i / expected))
    if not meshes:
        raise TalkingFaceError("VIDEO_CORRUPT", "no video frame could be decoded")
    return {"meshes": np.stack(meshes).astype(np.float32), "counts": counts,
            "detection_scores": scores, "total": len(meshes), "frame_hw": frame_hw}  # fmt: skip


def _checked(raw: dict[str, Any]) -> dict[str, Any]:
    """The tracked meshes checked (no face, several faces, too small), cut to the frames
    from the first face to the last, gaps interpolated, smoothed."""
    meshes, counts, scores = raw["meshes"], raw["counts"], raw["detection_scores"]
    found = ~np.isnan(meshes[:, 0, 0])
    missing = float(1 - found.mean())
    if missing > MAX_NO_FACE:
        raise TalkingFaceError("VIDEO_NO_FACE", f"no face in {100 * missing:.0f} % of the "
                               "frames (at most 20 %): one person, facing the camera, in "
                               "view the whole time")  # fmt: skip
    if sum(c > 1 for c in counts) > MAX_MULTI_FACE_COUNTS:
        raise TalkingFaceError("VIDEO_MULTIPLE_FACES", "more than one face is in view: the "
                               "video must show one person only")  # fmt: skip
    where = np.flatnonzero(found)
    lo, hi = int(where[0]), int(where[-1]) + 1
    meshes, found = meshes[lo:hi], found[lo:hi]
    filled = _interpolate(meshes, found)
    iod = interocular(filled[:, IBUG68])
    # The size check in 3-D (the mesh's depth is on the pixel scale): a face turned sideways
    # is foreshortened, not small.
    corners = filled[:, IBUG68[[36, 45]]]
    iod3 = np.linalg.norm(corners[:, 0] - corners[:, 1], axis=-1)
    if float(np.median(iod3)) < MIN_FACE_PX:
        raise TalkingFaceError("VIDEO_FACE_TOO_SMALL", f"the face is too small "
                               f"({np.median(iod3):.0f} px between the eyes' outer corners, "
                               f"at least {MIN_FACE_PX}): move closer or film at a higher "
                               "resolution")  # fmt: skip
    return {
        "one_view": filled, "found": found, "counts": counts, "detection_scores": scores,
        "iod": iod, "span": (lo, hi),
    }  # fmt: skip


def _refined(frames: Iterator[np.ndarray], track: dict[str, Any], say) -> dict[str, Any]:
    """Each kept frame's face read again in the mesh model's ten views of the crop around
    its one-view mesh, the inner lips and the upper lids read from the pixels (face.lips,
    face.eyes), gaps interpolated again, then smoothed: {"raw", "mesh", "lips", "eyes" (their
    reports)}."""
    found = track["found"]
    colours = np.zeros((len(found), 3 * lips.SAMPLES + 2, 3), np.uint8)
    eye_colours = np.zeros((len(found), 4 * eyes.SAMPLES, 3), np.uint8)

    def progress(i: int) -> None:
        say("refine", 0.4 + 0.2 * i / len(found))

    def keep_colours(i: int, frame: np.ndarray, points: np.ndarray) -> None:
        colours[i] = lips.profile(frame, points)
        eye_colours[i] = eyes.profile(frame, points)

    try:
        meshes = read_in_views(frames, track["one_view"], found, progress=progress,
                               also=keep_colours)  # fmt: skip
    except StreamTooShort as exc:
        raise TalkingFaceError("VIDEO_CORRUPT", f"the video gave fewer frames on a second "
                               f"reading than on the first ({exc})") from None  # fmt: skip
    # The inner lips' gap from the pixels where the mouth's inside shows (face.lips).
    meshes[found], lip_report = lips.refine(meshes[found], colours[found])
    # The upper lids where, below the skin, the eye starts (face.eyes).
    meshes[found], eye_report = eyes.refine(meshes[found], eye_colours[found])
    filled = _interpolate(meshes, found)
    # Light smoothing: lips move at up to ~8 Hz, so the cut-off must rise fast with speed
    # (on SynthTalk, one view: jitter -25 %, lip-opening correlation 0.937 -> 0.934; 1.5 Hz
    # and beta 0.02 cost 0.13 of it). Both ways (zero phase), since the whole video is here:
    # the forward pass alone trails the lips (ten views, SynthTalk seeds 11/12/13: lip r
    # 0.953/0.957/0.939 forward, 0.957/0.959/0.945 both ways, the same jitter).
    smoothed = smooth(filled, min_cutoff=SMOOTH_MIN_CUTOFF, beta=SMOOTH_BETA, zero_phase=True)
    smoothed = smoothed.astype(np.float32)
    return {"raw": filled, "mesh": smoothed, "lips": lip_report, "eyes": eye_report}


def _interpolate(meshes: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation of missing frames (nearest at the ends)."""
    if found.all():
        return meshes.copy()
    index = np.arange(len(meshes))
    flat = meshes.reshape(len(meshes), -1)
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        out[:, j] = np.interp(index, index[found], flat[found, j])
    return out.reshape(meshes.shape)


def _warnings(report: dict[str, Any], seconds: float) -> None:
    warn = report["warnings"]
    if seconds < 120:
        warn.append(f"the video lasts {seconds:.0f} s; 2 minutes or more trains a better avatar")
    if report["frames"]["interpolated"]:
        warn.append(f"{report['frames']['interpolated']} frames without a face were "
                    "interpolated")  # fmt: skip
    if report["mask_coverage"]["plate_unseen"] > 0.05:
        warn.append("part of the background is never seen behind the person: the plate is "
                    "filled in there")  # fmt: skip
