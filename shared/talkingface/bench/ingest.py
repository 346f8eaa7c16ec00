"""`talkingface bench ingest`: face tracking and whole-ingest speed on a 720p 25 fps mp4.

The video: a SynthTalk person (256², rendered for the benchmark) scaled to 720 × 720 and
centred on a 1280 × 720 frame, H.264 + AAC. Reported: decoding, tracking alone (the face
work of both the ingest's passes on the decoded 720p frames: one-view tracking, then each
face read again in ten views; each pass's own rate too) and the whole `avatar ingest` at
256², each in frames per second, and the whole ingest's time projected to a 3-minute video.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

TARGETS = {"tracking_fps_720p": 25.0, "ingest_seconds_3min_720p": 360.0}
WIDTH, HEIGHT = 1280, 720


def _video(root: Path, seconds: float) -> Path:
    from talkingface.data.synthtalk.avatar import build_avatar
    from talkingface.data.synthtalk.fileformat import read_avatar
    from talkingface.media import write_mp4

    build_avatar(root / "person", seconds, seed=0, size=256, progress=False)
    person = read_avatar(root / "person")

    def frames():
        for frame in person["frames"]:
            canvas = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
            big = np.asarray(Image.fromarray(np.asarray(frame)).resize((HEIGHT, HEIGHT)))
            left = (WIDTH - HEIGHT) // 2
            canvas[:, left : left + HEIGHT] = big
            yield canvas

    path = root / "person720p.mp4"
    write_mp4(path, frames(), 25, person["audio"], 16000, crf=20)
    return path


def run(seconds: float = 20.0, track_frames: int = 250) -> dict[str, Any]:
    from talkingface.face.ingest import ingest
    from talkingface.face.mesh import VIEWS
    from talkingface.face.track import FaceTracker, read_in_views
    from talkingface.face.video import read_frames

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        video = _video(root, seconds)
        data = video.read_bytes()
        started = time.perf_counter()
        frames = read_frames(data, root / "frames.raw")
        decode_wall = time.perf_counter() - started
        count = min(track_frames, len(frames))
        # What the ingest does per frame: one-view tracking (its first pass), then each face
        # read again in ten views of the crop around its tracked mesh (its second pass).
        tracker = FaceTracker()
        tracker.track(np.ascontiguousarray(frames[0]))  # warm-up
        started = time.perf_counter()
        tracked = [tracker.track(np.ascontiguousarray(f)).points for f in frames[:count]]
        track_wall = time.perf_counter() - started
        found = np.array([points is not None for points in tracked])
        meshes = np.stack([np.zeros((468, 3)) if p is None else p for p in tracked])
        started = time.perf_counter()
        read_in_views(frames[:count], meshes, found)  # as the ingest does: on threads
        views_wall = time.perf_counter() - started
        started = time.perf_counter()
        report = ingest(video, root / "avatar", size=256, min_seconds=min(20.0, seconds / 2))
        ingest_wall = time.perf_counter() - started
        total = len(frames)
    ingest_fps = total / ingest_wall
    tracking_fps = count / (track_wall + views_wall)  # both passes' face work
    # Linear in the frames: an upper bound (the plate's median reads at most ~200 frames
    # however long the video); a video of 3 minutes or more is timed, not projected.
    projected = 180 * 25 / ingest_fps
    return {
        "bench": "ingest",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "video": {
            "width": WIDTH,
            "height": HEIGHT,
            "fps": 25,
            "frames": total,
            "seconds": round(total / 25, 2),
        },
        "decode_fps": round(total / decode_wall, 1),
        "tracking": {
            "frames": count,
            "face_found": int(found.sum()),
            "frames_per_second": round(tracking_fps, 1),
            "frames_per_second_one_view": round(count / track_wall, 1),
            "frames_per_second_ten_views": round(count / views_wall, 1),
            "views": len(VIEWS),
        },
        "ingest": {
            "wall_seconds": round(ingest_wall, 2),
            "frames_per_second": round(ingest_fps, 1),
            "projected_seconds_3min": round(projected, 1),
            "projected_from_seconds": round(total / 25, 2),
            "face_found": report["frames"]["face_found"],
        },
        "targets": TARGETS,
        "meets_targets": {
            "tracking_fps_720p": tracking_fps >= TARGETS["tracking_fps_720p"],
            "ingest_seconds_3min_720p": projected <= TARGETS["ingest_seconds_3min_720p"],
        },
    }
