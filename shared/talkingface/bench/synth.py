"""`talkingface bench synth`: SynthTalk corpus real-time factor and avatar frames per second."""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkingface.data.synthtalk.avatar import build_avatar
from talkingface.data.synthtalk.corpus import build_corpus
from talkingface.data.synthtalk.fileformat import read_avatar

TARGETS = {"corpus_realtime_factor": 20.0, "avatar_fps_256": 10.0}


def _render_only_fps(root: Path, size: int, repeats: int) -> float:
    """Frames/s of the renderer alone on the frames of an avatar that was just built."""
    from talkingface.data.synthtalk.video import PersonRenderer, sample_appearance

    data = read_avatar(root)
    appearance = sample_appearance(np.random.default_rng(0))
    renderer = PersonRenderer(data["neutral_lm3d"], appearance, size=size)
    count = min(repeats, len(data["lm3d"]))
    renderer.render(data["lm3d"][0], data["R"][0], data["t"][0])  # warm-up
    started = time.perf_counter()
    for i in range(count):
        renderer.render(data["lm3d"][i], data["R"][i], data["t"][i])
    return count / (time.perf_counter() - started)


def run(corpus_seconds: float = 60.0, avatar_seconds: float = 4.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        started = time.perf_counter()
        manifest = build_corpus(Path(tmp) / "corpus", corpus_seconds / 60.0, seed=0, progress=False)
        corpus_wall = time.perf_counter() - started
        avatars = {}
        for size in (256, 128):
            root = Path(tmp) / f"avatar{size}"
            started = time.perf_counter()
            built = build_avatar(root, avatar_seconds, seed=0, size=size, progress=False)
            wall = time.perf_counter() - started
            avatars[str(size)] = {
                "frames": built["frames"],
                "wall_seconds": round(wall, 3),
                "frames_per_second": round(built["frames"] / wall, 2),
                "render_only_frames_per_second": round(_render_only_fps(root, size, 50), 2),
            }
    corpus_rtf = manifest["duration_seconds"] / corpus_wall
    return {
        "bench": "synth",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "corpus": {
            "audio_seconds": manifest["duration_seconds"],
            "wall_seconds": round(corpus_wall, 3),
            "realtime_factor": round(corpus_rtf, 2),
        },
        "avatar": avatars,
        "targets": TARGETS,
        "meets_targets": {
            "corpus_realtime_factor": corpus_rtf >= TARGETS["corpus_realtime_factor"],
            "avatar_fps_256": avatars["256"]["frames_per_second"] >= TARGETS["avatar_fps_256"],
        },
    }
