"""`talkingface bench features`: real-time factors of the audio-features stage.

Measures `extract` (decode excluded) with the built-in log-mel front end and with a
hubert-large-shaped HubertModel of random weights (24 layers, 1024 wide: the same compute as
facebook/hubert-large-ls960-ft, which cannot be downloaded here), on CPU and on CUDA when
present. Real-time factor = processing seconds / audio seconds (lower is faster).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from talkingface.audio.features import extract
from talkingface.audio.hubert import HubertFrontEnd
from talkingface.audio.logmel import LogMelFrontEnd
from talkingface.data.synthtalk.sentences import sentence
from talkingface.data.synthtalk.speech import random_voice, synthesize


def _speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    voice = random_voice(rng, "en-us", "male")
    pieces, total = [], 0
    while total < seconds * 16000:
        pieces.append(synthesize(sentence(rng, "en-us"), voice).audio)
        total += len(pieces[-1])
    return np.concatenate(pieces)[: int(seconds * 16000)]


def _hubert_large() -> torch.nn.Module:
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
    )
    torch.manual_seed(0)
    return HubertModel(config)


def _timed(fn, audio: np.ndarray) -> float:
    started = time.perf_counter()
    fn(audio)
    return time.perf_counter() - started


def run(logmel_seconds: float = 60.0, hubert_seconds: float = 10.0) -> dict[str, Any]:
    audio = _speech(max(logmel_seconds, hubert_seconds))
    logmel_audio = audio[: int(logmel_seconds * 16000)]
    front = LogMelFrontEnd()
    wall = _timed(lambda a: extract(a, front_end=front), logmel_audio)
    frontend_only = _timed(front, logmel_audio)
    report: dict[str, Any] = {
        "bench": "features",
        "torch_threads": torch.get_num_threads(),
        "logmel": {
            "device": "cpu",
            "audio_seconds": logmel_seconds,
            "extract_rtf": round(wall / logmel_seconds, 4),
            "front_end_rtf": round(frontend_only / logmel_seconds, 5),
        },
        "hubert_large_random": [],
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    model = _hubert_large()
    hubert_audio = audio[: int(hubert_seconds * 16000)]
    for device in devices:
        hubert = HubertFrontEnd.from_model(model, device=device)
        hubert(hubert_audio[:16000])  # warm-up (kernels, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = _timed(hubert, hubert_audio)
        report["hubert_large_random"].append(
            {
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "audio_seconds": hubert_seconds,
                "rtf": round(seconds / hubert_seconds, 4),
            }
        )
    report["device"] = devices[-1]
    return report
