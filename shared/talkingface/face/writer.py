"""Writing an ingested avatar directory (`avatar ingest`, docs/ingest.md steps 4 to 7): the
fixed square crop, the head and torso masks (`face.masks`), the poses from the skin
(`face.patches`), the background plate, the landmarks, poses, audio and manifest in the
SynthTalk avatar format (docs/synthtalk.md), and the preview.

`face.ingest` reads, tracks and checks the video; it hands the kept frames, the track and
the head geometry to `write_avatar`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from talkingface import __version__
from talkingface.audio.decode import SAMPLE_RATE
from talkingface.errors import TalkingFaceError
from talkingface.face import patches
from talkingface.face.geometry import POSE_SMOOTH_FRAMES, D
from talkingface.face.ibug68 import IBUG68, REGIONS, interocular
from talkingface.face.masks import background_plate, below_jaw, jaw_edge
from talkingface.face.pose import euler_degrees
from talkingface.face.track import COUNT_MIN_SCORE, PersonSegmenter, jitter, on_threads
from talkingface.face.video import FPS

CROP_UNITS = 3.2  # side of the square crop in canonical units (10 cm): SynthTalk's framing
CROP_DROP = 0.25  # the crop's centre sits this far below the head's centre (neck, shoulders)


def write_avatar(out, frames, count, frame_hw, track, geometry, audio, size,
                 say) -> dict[str, Any]:  # fmt: skip
    """Steps 4 to 7 into the avatar directory `out` from the `count` kept frames (a stream of
    source frames), their `track` (`ingest._track`, `_checked`, `_refined`) and `geometry`
    (`face.geometry.head_geometry`): the crop, the masks, the poses from the skin, the plate
    and the files. Returns the report's entries for them."""
    from talkingface.data.synthtalk import fileformat as ff
    from talkingface.media import write_wav

    h, w = frame_hw
    # The square stays inside the frame (black padding would read as a person to the
    # segmentation and as background to the plate): shifted in, and no larger than the frame.
    side = min(float(np.median(geometry["k"])) * CROP_UNITS, float(min(h, w)))
    centre = np.median(geometry["origin_px"], axis=0)[:2] + np.array([0.0, CROP_DROP * side])
    x0 = float(np.clip(centre[0] - side / 2, 0.0, w - side))
    y0 = float(np.clip(centre[1] - side / 2, 0.0, h - side))
    scale = size / side
    K = np.array([[geometry["focal"] * scale, 0, (w / 2 - x0) * scale],
                  [0, geometry["focal"] * scale, (h / 2 - y0) * scale],
                  [0, 0, 1]], np.float32)  # fmt: skip
    corner = np.array([x0, y0]) - 0.5  # mesh points are pixel-centre coordinates
    lm2d = ((track["mesh"][:, IBUG68, :2] - corner) * scale).astype(np.float32)
    lm2d_raw = ((track["raw"][:, IBUG68, :2] - corner) * scale).astype(np.float32)
    lm2d_one_view = (track["one_view"][:, IBUG68, :2] - corner) * scale

    video = np.lib.format.open_memmap(out / "frames.npy", mode="w+", dtype=np.uint8,
                                      shape=(count, size, size, 3))  # fmt: skip
    heads = np.lib.format.open_memmap(out / "masks.npy", mode="w+", dtype=np.bool_,
                                      shape=(count, size, size))  # fmt: skip
    torsos = np.lib.format.open_memmap(out / "torso_masks.npy", mode="w+", dtype=np.bool_,
                                       shape=(count, size, size))  # fmt: skip
    # One inter-ocular distance for the whole video: a per-frame one would add its own
    # jitter, times the points' distance from the crop's corner.
    iod = float(np.median(interocular(lm2d)))
    transform = (1 / scale, 0.0, x0, 0.0, 1 / scale, y0)  # output -> source, pixel corners
    local = threading.local()

    def cut(i: int, source: np.ndarray):  # on a worker, with its own segmenter
        if not hasattr(local, "segmenter"):
            local.segmenter = PersonSegmenter()
        frame = Image.fromarray(np.ascontiguousarray(source))
        crop = np.asarray(frame.transform((size, size), Image.AFFINE, transform,
                                          resample=Image.BILINEAR))  # fmt: skip
        person = local.segmenter.run(crop) >= 0.5
        return i, crop, person, below_jaw(jaw_edge(crop, lm2d[i], iod), lm2d[i], iod, size)

    def keep(i: int, crop: np.ndarray, person: np.ndarray, under: np.ndarray) -> None:
        video[i] = crop
        heads[i] = person & ~under
        torsos[i] = person & under
        coverage[i] = person.mean()

    # Frames are cut on threads (the segmenter and PIL let go of the GIL).
    coverage = np.zeros(count)
    seen = 0

    def feed():
        nonlocal seen
        for i, source in enumerate(frames):
            seen += 1
            if i >= count:
                break
            if i % 50 == 0:
                say("crop", 0.6 + 0.2 * i / count)
            yield i, source

    for result in on_threads(cut, feed(), min(4, len(os.sched_getaffinity(0))), "crop"):
        keep(*result)
    if seen != count:
        got = f"more than {count}" if seen > count else str(seen)
        raise TalkingFaceError("VIDEO_CORRUPT", f"the video gave {got} frames on a second "
                               f"reading, {count} on the first")  # fmt: skip
    video.flush()
    heads.flush()
    torsos.flush()
    say("poses", 0.8)
    r_cam, t_cam, tracking = patches.refine_poses(
        lambda lo, hi: video[lo:hi],
        count,
        heads,
        lm2d,
        K,
        geometry["R"],
        geometry["t"],
        geometry["mesh3d"],
        progress=lambda fraction: say("poses", 0.8 + 0.13 * fraction),
    )
    euler = euler_degrees(np.einsum("ij,tjk->tik", D, r_cam))
    say("plate", 0.93)
    background, unseen = background_plate(video, heads, torsos)
    np.save(out / "background.npy", background)
    write_wav(out / "audio.wav", audio, SAMPLE_RATE)
    np.savez_compressed(out / "landmarks.npz", lm3d=geometry["lm3d"], lm2d=lm2d)
    np.savez_compressed(out / "poses.npz", R=r_cam.astype(np.float32),
                        t=t_cam.astype(np.float32), K=K,
                        euler_deg=euler.astype(np.float32))  # fmt: skip
    train = count * 10 // 11
    manifest = {
        "format": ff.AVATAR, "version": ff.FORMAT_VERSION,
        "generator": f"talkingface {__version__} avatar ingest", "fps": FPS,
        "sample_rate": SAMPLE_RATE, "size": size, "frames": count,
        "duration_seconds": round(len(audio) / SAMPLE_RATE, 4),
        "splits": {"train": [0, train], "val": [train, count]},
        "camera": {"K": K.tolist(), "convention": "p_cam = R @ p_canonical + t; OpenCV "
                   "camera (x right, y down, z forward)"},
        "source": "video",
    }  # fmt: skip
    ff.write_manifest(out, manifest)
    jitter_raw, jitter_smooth, jitter_one_view = (
        jitter(points / iod) for points in (lm2d_raw, lm2d, lm2d_one_view)
    )
    return {
        "detection_confidence": {"median": _r(np.median(track["detection_scores"] or [0])),
                                 "min": _r(np.min(track["detection_scores"] or [0]))},
        "faces_counted": {"checks": len(track["counts"]),
                          "more_than_one": int(sum(c > 1 for c in track["counts"])),
                          "min_score": COUNT_MIN_SCORE},
        "face_size_px": {"interocular_median_source": _r(np.median(track["iod"])),
                         "interocular_median_crop": _r(np.median(iod))},
        "pose_degrees": {name: [_r(np.min(euler[:, j])), _r(np.max(euler[:, j]))]
                         for j, name in enumerate(("yaw", "pitch", "roll"))},
        "pose_residual_px": _r(np.median(geometry["residual"])),
        "pose_turn_per_frame_deg": {k: _r(v) for k, v in geometry["turn_deg"].items()},
        "pose_smoothing_frames": POSE_SMOOTH_FRAMES,
        "pose_expression_removed": geometry["decoupled"] and {
            k: _r(v) for k, v in geometry["decoupled"].items()},
        "pose_tracking": {k: _r(v) if isinstance(v, float) else
                          {a: _r(b) for a, b in v.items()} if isinstance(v, dict) else v
                          for k, v in tracking.items()},
        "crop": {"x0": _r(x0), "y0": _r(y0), "side": _r(side), "size": size},
        "mask_coverage": {"person": _r(np.mean(coverage)), "head": _r(heads.mean()),
                          "torso": _r(torsos.mean()), "plate_unseen": _r(unseen)},
        "inner_lips": track["lips"],
        "eyelids": track["eyes"],
        "landmark_jitter_iod": {"one_view": _r(jitter_one_view, 5),
                                "raw": _r(jitter_raw, 5), "smoothed": _r(jitter_smooth, 5)},
        "regions": {name: [sl.start, sl.stop] for name, sl in REGIONS.items()},
        "warnings": [],
    }  # fmt: skip


def write_preview(root: Path | str, out: Path | str | None = None) -> Path:
    """preview.mp4 of an ingested avatar directory, three panels a frame: the crop | the crop
    with the landmarks (inner lips in magenta), the head mask tinted green and the torso mask
    blue | the background plate. With the audio."""
    from talkingface.data.synthtalk import fileformat as ff
    from talkingface.data.synthtalk.preview import _overlay
    from talkingface.media import write_mp4

    root = Path(root)
    data = ff.read_avatar(root)
    torsos = np.load(root / "torso_masks.npy", mmap_mode="r")
    plate = np.asarray(data["background"])
    out = Path(out) if out else root / "preview.mp4"

    def panels():
        for i, frame in enumerate(data["frames"]):
            frame = np.asarray(frame)
            tinted = frame.astype(np.float32)
            tinted[data["masks"][i]] = 0.6 * tinted[data["masks"][i]] + [0, 100, 0]
            tinted[torsos[i]] = 0.6 * tinted[torsos[i]] + [0, 0, 100]
            marked = _overlay(np.clip(tinted, 0, 255).astype(np.uint8), data["lm2d"][i])
            yield np.concatenate([frame, marked, plate], axis=1)

    write_mp4(out, panels(), FPS, data["audio"], SAMPLE_RATE)
    return out


def _r(value, digits: int = 3) -> float:
    return round(float(value), digits)
