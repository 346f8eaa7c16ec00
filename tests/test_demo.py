"""`talkingface demo` end to end with the `tiny` plan, as `make demo` runs it (a process of
its own: its own Redis, Ray Serve and broker), then again from its cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from talkingface.media import probe, read_wav

pytestmark = pytest.mark.slow

# What the tiny plan reached (2026-12-03, 2 cores, the SynthTalk demo at 32 x 32 on unseen
# poses): head PSNR 15.59 dB, lip-box PSNR 16.48 dB, mouth LMD 3.33 mm, mouth-opening r 0.58.
# The bounds are those less a stated margin: 1.5 dB, +30 % of the LMD, 0.2 of r. The
# avatar's mean face in the motion model's place (no motion) scores r = 0 and fails the r
# bound (its LMD, 3.49 mm on that clip, is within the LMD bound, which alone has no teeth).
BOUNDS = {"psnr_head": 15.59 - 1.5, "psnr_lip": 16.48 - 1.5, "mouth_lmd_mm": 3.33 * 1.3,
          "mouth_open_r": 0.58 - 0.2}  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the video demo reuses the corpus and motion models."""
    return tmp_path_factory.mktemp("demo-cache")


def _demo(tmp_path, cache, *extra, **env_extra):
    env = dict(os.environ, TALKINGFACE_CACHE_DIR=str(cache), **env_extra)
    env.pop("TALKINGFACE_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "talkingface.cli", "demo", "--plan", "tiny", "--out",
         str(tmp_path / "out"), "--json", *extra],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_the_demo_renders_a_held_out_clip_through_the_fleet_and_caches_its_training(
    tmp_path, cache
):
    report, log = _demo(tmp_path, cache)
    assert report["cached_steps"] == []
    assert report["job"]["state"] == "SUCCEEDED"
    out, side = tmp_path / "out" / "demo.mp4", tmp_path / "out" / "demo_side_by_side.mp4"
    clip = report["cache"] + "/clip/data"
    samples, rate = read_wav(f"{clip}/audio.wav")
    video, pair = probe(out), probe(side)
    assert abs(video["video"]["duration"] - len(samples) / rate) <= 0.04
    assert video["audio"]["codec"] == "aac" and pair["audio"]["codec"] == "aac"
    assert pair["video"]["width"] == 2 * video["video"]["width"]  # ground truth | rendered
    metrics = report["metrics"]
    assert metrics["clip"]["language"] == "it"  # the language no model was trained on
    render, lips = metrics["render"], metrics["lip_sync"]
    assert render["psnr_head"] >= BOUNDS["psnr_head"], render
    assert render["psnr_lip"] >= BOUNDS["psnr_lip"], render
    assert lips["mouth_lmd_mm"] <= BOUNDS["mouth_lmd_mm"], lips
    assert lips["mouth_open_r"] >= BOUNDS["mouth_open_r"], lips
    # Each sync score is named for its judge; the independent one ran.
    assert "judge_conf" in lips and "judge_conf_truth" in lips
    assert "independent judge" in metrics["judges"]["judge_conf"]
    assert "flatters" in metrics["judges"]["sync_conf"]
    # Rendered on head poses the renderer never trained on: the clip replays the avatar's
    # track from the first frame of its held-out (val) split, as the fleet was asked to.
    avatar = json.loads(Path(report["cache"], "avatar/data/synthtalk.json").read_text())
    val_start = avatar["splits"]["val"][0]
    used = np.load(f"{clip}/pose_indices.npy")
    assert used[0] == val_start
    poses = metrics["render"]["poses"]
    assert poses["track_start"] == val_start
    assert poses["frames_on_unseen_poses"] == int((used >= val_start).sum()) > 0
    assert "never trained on" in log
    assert "lip sync: mouth LMD" in log
    saved = json.loads((tmp_path / "out" / "demo_metrics.json").read_text())
    assert saved["metrics"] == metrics
    (cache / "fleet_metrics.json").write_text(json.dumps(metrics))  # for eval all, below

    again, _ = _demo(tmp_path, cache)
    assert set(again["cached_steps"]) == {
        "corpus", "avatar", "clip", "syncnet", "motion", "renderer", "postnet", "judge-corpus",
        "judge",
    }  # fmt: skip
    assert again["metrics"]["render"] == metrics["render"]  # deterministic end to end


def test_eval_all_on_the_demos_models(tmp_path, cache):
    """`eval all` on the tiny demo's cached models: every section, each goal judged, the
    Markdown table, and the in-process end to end agreeing with the fleet's render."""
    (root,) = [p for p in cache.glob("demo/tiny-*") if "-video-" not in p.name]
    env = dict(os.environ, TALKINGFACE_CACHE_DIR=str(cache))
    table = tmp_path / "quality.md"
    done = subprocess.run(
        [sys.executable, "-m", "talkingface.cli", "eval", "all", "--root", str(root), "--json",
         "--quiet", "--markdown", str(table)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    sections = {r["section"] for r in result["rows"]}
    assert sections == {"judge", "motion", "projection", "render", "end to end"}
    judged = [r for r in result["rows"] if r["pass"] is not None]
    assert len(judged) >= 6 and all(isinstance(r["pass"], bool) for r in judged)
    assert result["goals"]["total"] == len(judged)
    assert all(r["judge"] for r in result["rows"] if "judge_conf" in r["name"])
    text = table.read_text()
    assert f"{result['goals']['held']} of {len(judged)} goals hold" in text
    assert text.count("\n| ") == len(result["rows"]) + 1  # the header's rule, then each row
    # The pipeline in this process renders what the fleet rendered (same models and poses).
    fleet = json.loads((cache / "fleet_metrics.json").read_text())["render"]
    mine = result["sections"]["end_to_end"]["render"]
    assert mine["poses"] == fleet["poses"]
    assert abs(mine["psnr_head"] - fleet["psnr_head"]) < 0.5, (mine, fleet)


def test_the_demo_on_a_persons_own_video(tmp_path, cache):
    """`demo --video F`: ingest -> training -> the video's held-out stretch through the fleet."""
    from talkingface.data.synthtalk.avatar import build_avatar
    from talkingface.data.synthtalk.fileformat import read_avatar
    from talkingface.face.models import models_dir
    from talkingface.media import write_mp4

    build_avatar(tmp_path / "person", seconds=8.0, seed=5, size=256, progress=False)
    person = read_avatar(tmp_path / "person")
    video = tmp_path / "me.mp4"
    write_mp4(video, person["frames"], 25, person["audio"], 16000, crf=18)
    # Run after the SynthTalk demo (file order), the corpus and motion models come cached.
    shared = any(cache.glob("demo/tiny-[0-9a-f]*/motion/.done"))
    if not (cache / "models").exists():
        (cache / "models").symlink_to(models_dir().parent)  # installed by make setup
    report, log = _demo(tmp_path, cache, "--video", str(video), "--fov", "18",
                        TALKINGFACE_VIDEO_MIN_SECONDS="5")  # fmt: skip
    assert report["source"] == str(video) and report["job"]["state"] == "SUCCEEDED"
    assert "-video-" in report["cache"]  # its own cache, keyed by the video's bytes
    for step in ("avatar", "renderer", "postnet"):
        assert step not in report["cached_steps"]
    assert {"corpus", "syncnet", "motion"} <= set(report["cached_steps"]) or not shared
    clip = report["cache"] + "/clip/data"
    samples, rate = read_wav(f"{clip}/audio.wav")
    # The held-out stretch is the video's last 1/11: 200 frames -> frames 181..199.
    assert len(samples) == (200 - 200 * 10 // 11) * 640 and rate == 16000

    def loudness(x):  # per 20 ms: robust to the codec's few ms of delay
        return np.sqrt((np.asarray(x[: len(x) // 320 * 320]).reshape(-1, 320) ** 2).mean(1))

    own = loudness(person["audio"][181 * 640 : 200 * 640])
    other = loudness(person["audio"][100 * 640 : 119 * 640])
    assert np.corrcoef(loudness(samples), own)[0, 1] > max(
        0.8, np.corrcoef(loudness(samples), other)[0, 1]
    )
    rendered = probe(tmp_path / "out" / "demo.mp4")
    assert abs(rendered["video"]["duration"] - len(samples) / rate) <= 0.04
    metrics = report["metrics"]
    # Reached on 2026-12-03 in three runs: head PSNR 20.33, >= 18.8 and 16.89 dB at 32 x 32
    # (19 frames; the ingest-and-train path is not bit-stable from run to run). The bound is the
    # lowest less 1.5 dB.
    assert metrics["render"]["psnr_head"] >= 16.89 - 1.5, metrics["render"]
    # The fleet replays the track from the held-out stretch: the frames are compared there.
    assert metrics["render"]["poses"]["track_start"] == 181
    assert metrics["render"]["poses"]["frames_on_unseen_poses"] == 19
    assert "held-out last" in log and "never trained on" in log
    # Its lips are judged against the landmarks the ingest tracked, and the log says so.
    assert "lip sync against the tracked landmarks: mouth LMD" in log
    assert "(tracked landmarks " in log and "ground truth 0" not in log
