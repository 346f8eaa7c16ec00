"""`talkingface bench motion`: milliseconds per second of audio of the motion stage.

Times `MotionModel.generate` (features + f0 bins -> lm3d) end to end: feature normalisation,
flow-prior noise, the windowed VAE decoder pass (`config.infer_window` frames per pass,
stitched seamlessly; see `talkingface.motion.infer`), the optional postnet and the copy back
to host memory. The audio front end is not included (see `talkingface bench features`).

Speed does not depend on the weights, so the models are randomly initialised
("weights": "random-init") from the `cpu` and `full` presets; inputs are random float32
features at 25 fps (80 wide like the log-mel front end; 1024 wide like HuBERT-large for the
full preset) and random f0 bins. Each row is warmed up once, then the median of `repeats`
timed runs is reported. Runs on CPU, and on CUDA too when torch sees a GPU.

ms_per_audio_second = median wall milliseconds / audio seconds; 1000 would be real time, so
1000 / ms_per_audio_second is the speed-up over real time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from talkingface.audio.pitch import F0_BINS
from talkingface.bench.machine import environment, load_average, sync
from talkingface.lm3d import FPS, NUM_LANDMARKS
from talkingface.motion.config import preset
from talkingface.motion.data import Stats
from talkingface.motion.infer import MotionModel, PostnetModel
from talkingface.motion.nets import MotionVAE, Postnet

LOGMEL_DIM = 80
HUBERT_DIM = 1024

NOTE = (
    "ms_per_audio_second: median wall milliseconds of MotionModel.generate (normalisation, "
    "flow-prior sampling, windowed VAE decoder, optional postnet, copy to host) per second of "
    "25 fps input; the audio front end is excluded. 1000 = real time; lower is faster. "
    "Random-init weights: speed does not depend on training. `windows` = feed-forward passes "
    "(long audio is cut into infer_window-frame windows, so time grows linearly with length "
    "and memory stays bounded)."
)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build(name: str, feature_dim: int) -> tuple[MotionModel, PostnetModel]:
    config = preset(name)
    torch.manual_seed(0)
    vae = MotionVAE(feature_dim, config.vae)
    stats = Stats(
        feature_std=np.ones(feature_dim, np.float32),
        delta_scale=0.03,
        mean_face=np.zeros((NUM_LANDMARKS, 3), np.float32),
    )
    model = MotionModel(vae, config, stats, meta={}, version="bench", device=torch.device("cpu"))
    net = Postnet(config.postnet, config.vae.cond, None)
    postnet = PostnetModel(net, stats, {"motion_version": model.version}, "bench")
    return model, postnet


def _to(model: MotionModel, postnet: PostnetModel, device: str) -> None:
    dev = torch.device(device)
    model.vae.to(dev)
    model.device = dev
    postnet.net.to(dev)


def _time_ms(fn, kwargs: dict[str, Any], device: str, repeats: int) -> list[float]:
    fn(**kwargs)  # warm-up: kernels, allocator, thread pool
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn(**kwargs)
        sync(device)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def run(
    presets: Sequence[str] = ("cpu", "full"),
    seconds: Sequence[float] = (10.0, 60.0),
    long_seconds: float | None = 300.0,
    long_presets: Sequence[str] = ("full",),
    hubert_dim: int = HUBERT_DIM,
    hubert_presets: Sequence[str] = ("full",),
    repeats: int = 3,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Rows for every device x preset x feature width x length x postnet off/on.

    Every preset gets log-mel-width rows at each of `seconds`; presets in `long_presets` also
    at `long_seconds`; presets in `hubert_presets` also get `hubert_dim`-wide rows at the
    same lengths. `devices` defaults to cpu, plus cuda when available; `threads` sets torch's
    CPU threads for the run (default: leave torch's setting).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(presets, seconds, long_seconds, long_presets, hubert_dim, hubert_presets,
                    repeats, devices)  # fmt: skip
    finally:
        torch.set_num_threads(previous)


def _run(presets, seconds, long_seconds, long_presets, hubert_dim, hubert_presets, repeats,
         devices) -> dict[str, Any]:  # fmt: skip
    load_before = load_average()
    if devices is None:
        devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    devices = list(devices)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for name in presets:
        lengths = list(seconds) + ([long_seconds] if long_seconds and name in long_presets else [])
        dims = [LOGMEL_DIM] + ([hubert_dim] if name in hubert_presets else [])
        for dim in dims:
            model, postnet = _build(name, dim)
            params, post_params = _params(model.vae), _params(postnet.net)
            inputs = {}
            for length in lengths:
                frames = round(length * FPS)
                inputs[length] = (
                    rng.standard_normal((frames, dim)).astype(np.float32),
                    rng.integers(0, F0_BINS, frames),
                )
            for device in devices:
                _to(model, postnet, device)
                for length in lengths:
                    feats, bins = inputs[length]
                    for use_postnet in (False, True):
                        post = postnet if use_postnet else None
                        if device.startswith("cuda"):
                            torch.cuda.reset_peak_memory_stats(torch.device(device))
                        times = _time_ms(
                            model.generate,
                            {"features": feats, "f0_bins": bins, "seed": 0, "postnet": post},
                            device,
                            repeats,
                        )
                        median = statistics.median(times)
                        row = {
                            "preset": name,
                            "feature_dim": dim,
                            "audio_seconds": float(length),
                            "frames": len(feats),
                            "windows": len(model.windows(len(feats), post)[2]),
                            "postnet": use_postnet,
                            "device": device,
                            "ms_total": round(median, 2),
                            "ms_min": round(min(times), 2),
                            "ms_per_audio_second": round(median / length, 3),
                            "params": params + (post_params if use_postnet else 0),
                            "repeats": repeats,
                        }
                        if device.startswith("cuda"):
                            peak = torch.cuda.max_memory_allocated(torch.device(device))
                            row["peak_memory_mb"] = round(peak / 2**20, 1)
                        rows.append(row)
    return {
        "bench": "motion",
        **environment(devices, load_before),
        "weights": "random-init",
        "fps": FPS,
        "note": NOTE,
        "results": rows,
    }
