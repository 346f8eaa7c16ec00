"""How good the demo's result is: the rendered mp4 against the clip's ground truth.

- Rendering: PSNR on the head (the true frames' head mask) and in the lip box -- the
  headline -- plus whole-frame PSNR and SSIM (labelled as such: they include the exact
  background plate), of the rendered frames against the true frames, at the rendered size
  (the truth box-filtered down when it is larger). Both sides share the head poses: the
  fleet replays the avatar's pose track from the first frame of its held-out stretch
  (`pose_start`), which the clip was posed on (SynthTalk) or filmed at (a video's own
  held-out stretch, at the poses the ingest estimated there), poses the renderer never
  trained on; `render.poses` says how many frames were.
- Lip sync: mouth-landmark distance, mouth-opening correlation, landmark L2 of the landmarks
  that drove the renderer, against the clip's true landmarks, and two sync scores of those
  landmarks and of the truth, each named for its judge (`judges` says which is which): the
  independent judge's `judge_conf` (docs/judge.md; the headline) and the sync expert's
  `sync_conf` (the motion model was trained against it: it flatters the model). The
  landmark out-of-distribution rate (`landmark_ood_rate`: frames the projection found far
  from the avatar's training landmarks) is what projection minimises, not a rendering
  failure count.
  Those landmarks are recomputed in-process (the same models, seed and options; the stages
  are deterministic), since a render job returns only the video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def decode_video(path: Path) -> np.ndarray:
    """Every frame of an mp4's video stream, RGB uint8 [T, H, W, 3]."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_held_out(clip_dir: Path) -> dict[str, Any]:
    """The demo's clip: a SynthTalk clip directory, or a video's held-out stretch written by
    `talkingface.demo.held_out_clip` (frames, landmarks, sound; no language or voice)."""
    from talkingface.data.synthtalk.fileformat import read_clip

    clip_dir = Path(clip_dir)
    if not (clip_dir / "held_out.json").is_file():
        return read_clip(clip_dir, mmap=True)
    own = {"language": "the person's own", "voice": {"voice_id": "the person's own"}}
    out: dict[str, Any] = {
        "manifest": own,
        "frames": np.load(clip_dir / "frames.npy", mmap_mode="r"),
        "masks": np.load(clip_dir / "masks.npy", mmap_mode="r"),
    }
    with np.load(clip_dir / "landmarks.npz") as data:
        out.update({key: data[key] for key in data.files})
    return out


def _frame_pairs(clip_dir: Path, video_path: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(the clip, rendered frames, true frames at the rendered size), cut to equal length."""
    clip = read_held_out(clip_dir)
    video = decode_video(video_path)
    n = min(len(video), len(clip["frames"]))
    return clip, video[:n], _at_size(np.asarray(clip["frames"][:n]), video.shape[1])


def _at_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images [T, H, W, C] at size x size: box-filtered by an integer factor, else
    resampled bilinearly (a video's held-out frames at another size than the renderer's)."""
    from PIL import Image

    from talkingface.render.data import downsample

    native = images.shape[1]
    if native % size == 0:
        return downsample(images, native // size)
    return np.stack([np.asarray(Image.fromarray(f.squeeze()).resize((size, size), Image.BILINEAR))
                     .reshape(size, size, -1) for f in images])  # fmt: skip


def measure(clip_dir: Path, video_path: Path, bundle_dir: Path, ckpt_dir: Path,
            poses: tuple[int, int] = (0, 0),
            judge_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Rendering and lip-sync quality of `video_path` against the clip (module docstring).
    `poses`: (the track frame the fleet's pose replay started at, the track's length); the
    track's frames from that start on were never trained on. `judge_dir`: the independent
    judge, when there is one."""
    import torch

    from talkingface.media import read_wav
    from talkingface.motion import checkpoint as ck
    from talkingface.motion.infer import SyncScorer
    from talkingface.motion.metrics import motion_metrics
    from talkingface.pipeline import predict_landmarks
    from talkingface.render.checkpoint import pose_indices
    from talkingface.render.evaluate import mouth_boxes, psnr_where
    from talkingface.render.renderer import psnr, ssim

    clip, video, truth = _frame_pairs(clip_dir, video_path)
    n, size = len(video), video.shape[1]
    a = torch.from_numpy(video.astype(np.float32) / 255.0)
    b = torch.from_numpy(truth.astype(np.float32) / 255.0)
    boxes = mouth_boxes(clip["lm2d"][:n] * size / clip["frames"].shape[1], size)
    head = _head_masks(clip, n, size)
    render: dict[str, Any] = {
        "frames": int(n), "size": int(size),
        "psnr_head": round(psnr_where(a.numpy(), b.numpy(), np.repeat(head[..., None], 3, -1)), 2),
        "psnr_lip": round(psnr_where(a.numpy(), b.numpy(), boxes), 2),
        "psnr_whole_frame": round(psnr(a, b), 2),
        "ssim_whole_frame": round(ssim(a, b), 4),
    }  # fmt: skip
    start, track = poses
    if track:
        used = pose_indices(n, track, "pingpong", start=start)
        render["poses"] = {
            "track_start": int(start), "track_frames": int(track),
            "frames_on_unseen_poses": int((used >= start).sum()),
            "note": f"the avatar's track from frame {start} on (its held-out stretch) was "
                    "never trained on",
        }  # fmt: skip
    audio, rate = read_wav(clip_dir / "audio.wav")
    predicted = predict_landmarks(bundle_dir, audio, ckpt_dir / "motion")
    projected = predicted["projection"].lm3d
    gt = np.asarray(clip["lm3d"], np.float32)
    m = min(len(projected), len(gt))
    lips = motion_metrics([projected[:m]], [gt[:m]])
    scorer = SyncScorer.load(ck.model_dir(ckpt_dir, "syncnet"))
    face = predicted["mean_face"]  # the avatar's, from its training frames only
    features = predicted["features"].features
    sync = scorer.score([(features, projected[:m], face)])
    sync_truth = scorer.score([(features, gt[:m], face)])
    judged: dict[str, Any] = {}
    judges = {"sync_conf": "the sync expert the motion model was trained against (flatters it)"}
    if judge_dir is not None and (Path(judge_dir) / "judge.json").is_file():
        from talkingface.judge import Judge

        judge = Judge.load(judge_dir)
        mine, real = judge.score([(features, projected[:m])]), judge.score([(features, gt[:m])])
        judged = {"judge_conf": _r(mine["judge_conf"]), "judge_conf_truth": _r(real["judge_conf"]),
                  "judge_offset_ok": mine["judge_offset_ok"]}  # fmt: skip
        judges["judge_conf"] = f"the independent judge {judge.version} (docs/judge.md)"
    return {
        "judges": judges,
        "render": render,
        "lip_sync": {
            "mouth_lmd_mm": round(lips["mouth_lmd_mm"], 3),
            "mouth_open_r": round(lips["mouth_open_r"], 3),
            "l2_mm": round(lips["l2_mm"], 3),
            **judged,
            "sync_conf": round(sync["sync_conf"], 3),
            "sync_conf_truth": round(sync_truth["sync_conf"], 3),
            "landmark_ood_rate": round(float(predicted["projection"].bad_case_rate), 4),
        },
        "clip": {
            "language": clip["manifest"]["language"],
            "voice": clip["manifest"]["voice"]["voice_id"],
            "seconds": round(len(audio) / rate, 2),
        },
    }


def _r(value: float) -> float | None:
    return round(float(value), 3) if np.isfinite(value) else None


def _head_masks(clip: dict[str, Any], n: int, size: int) -> np.ndarray:
    """The clip's head masks [n, size, size] (bool) at the rendered size, resized as the
    frames are (`_at_size`)."""
    masks = np.asarray(clip["masks"][:n], bool).astype(np.uint8)  # bool on disk (SynthTalk)
    return _at_size(masks[..., None] * 255, size)[..., 0] >= 128


def side_by_side(clip_dir: Path, video_path: Path, out: Path) -> None:
    """ground truth | rendered, frame by frame, with the clip's audio."""
    from talkingface.media import read_wav, write_mp4

    _, video, truth = _frame_pairs(clip_dir, video_path)
    audio, rate = read_wav(clip_dir / "audio.wav")
    pairs = (np.concatenate([t, v], axis=1) for t, v in zip(truth, video, strict=True))
    write_mp4(out, pairs, 25, audio, rate)


def print_report(report: dict[str, Any], say=print) -> None:
    m = report["metrics"]
    r, lips, clip = m["render"], m["lip_sync"], m["clip"]
    say("")
    say(f"demo: wrote {report['out']} and {report['side_by_side']} (ground truth | rendered)")
    from_synthtalk = report.get("source", "SynthTalk") == "SynthTalk"
    if from_synthtalk:
        say(f"demo: input: {clip['seconds']} s of {clip['language']} speech, voice "
            f"{clip['voice']} (a language and voice never seen in training)")  # fmt: skip
    else:
        say(f"demo: input: the video's held-out last {clip['seconds']} s (never trained on)")
    say(f"demo: rendering vs ground truth: head PSNR {r['psnr_head']} dB, lip-box PSNR "
        f"{r['psnr_lip']} dB (whole frame, background plate included: PSNR "
        f"{r['psnr_whole_frame']} dB, SSIM {r['ssim_whole_frame']}) at {r['size']}x{r['size']}, "
        f"{m['render_fps']} fps")  # fmt: skip
    if "poses" in r:
        p = r["poses"]
        say(f"demo: {p['frames_on_unseen_poses']} of {r['frames']} frames on head poses the "
            f"renderer never trained on (its track from frame {p['track_start']} on)")  # fmt: skip
    # A video's truth is the landmarks the ingest tracked in that stretch, not exact ones. The
    # judge reads them nearly as it reads exact ones; the sync expert, trained on SynthTalk's
    # exact landmarks, scores them low (docs/ingest.md, docs/judge.md "Read from a video").
    truth = "ground truth" if from_synthtalk else "tracked landmarks"
    judged = (f"judge confidence {lips['judge_conf']} ({truth} {lips['judge_conf_truth']}), "
              if "judge_conf" in lips else "")  # fmt: skip
    say(f"demo: lip sync{'' if from_synthtalk else ' against the tracked landmarks'}: mouth LMD "
        f"{lips['mouth_lmd_mm']} mm, mouth-opening r {lips['mouth_open_r']}, {judged}"
        f"sync-expert confidence {lips['sync_conf']} ({truth} {lips['sync_conf_truth']}; the "
        f"motion model trained against it), landmarks out of distribution "
        f"{lips['landmark_ood_rate']:.1%}")  # fmt: skip
    times = report["seconds"]
    say(f"demo: {times['total'] / 60:.1f} min in all ({times['prepare'] / 60:.1f} preparing; "
        f"cached steps: {', '.join(report['cached_steps']) or 'none'})")  # fmt: skip
