"""`talkingface demo` end to end with the `tiny` plan, as `make demo` runs it (a process of
its own: its own Redis, Ray Serve and broker), then again from its cache."""

import json
import os
import subprocess
import sys

import pytest

from talkingface.media import probe, read_wav

pytestmark = pytest.mark.slow


def _demo(tmp_path, *extra):
    env = dict(os.environ, TALKINGFACE_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TALKINGFACE_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "talkingface.cli", "demo", "--plan", "tiny", "--out",
         str(tmp_path / "out"), "--json", *extra],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_the_demo_renders_a_held_out_clip_through_the_fleet_and_caches_its_training(tmp_path):
    report, log = _demo(tmp_path)
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
    assert 10 < metrics["render"]["psnr"] < 60
    assert metrics["lip_sync"]["mouth_lmd_mm"] > 0
    assert "lip sync: mouth LMD" in log
    saved = json.loads((tmp_path / "out" / "demo_metrics.json").read_text())
    assert saved["metrics"] == metrics

    again, _ = _demo(tmp_path)
    assert set(again["cached_steps"]) == {
        "corpus", "avatar", "clip", "syncnet", "motion", "renderer", "postnet"
    }  # fmt: skip
    assert again["metrics"]["render"] == metrics["render"]  # deterministic end to end
