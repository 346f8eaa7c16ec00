"""Audio features: decode any audio to 16 kHz mono, then per-frame features at 25 fps.

`decode_audio` (bytes -> float32 16 kHz), `extract` (audio -> AudioFeatures) with the
built-in `LogMelFrontEnd` or a `HubertFrontEnd` loaded offline from a checkpoint directory
(imported lazily: it needs transformers). See docs/audio_features.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from talkingface.audio.decode import SAMPLE_RATE, decode_audio, decode_audio_file
from talkingface.audio.features import FPS, HOP, AudioFeatures, extract, frame_count
from talkingface.audio.logmel import LogMelFrontEnd
from talkingface.audio.pitch import F0_BINS, F0_MAX_HZ, F0_MIN_HZ, f0_to_bins, loudness_db, pitch

if TYPE_CHECKING:
    from talkingface.audio.hubert import HubertFrontEnd

__all__ = [
    "F0_BINS",
    "F0_MAX_HZ",
    "F0_MIN_HZ",
    "FPS",
    "HOP",
    "SAMPLE_RATE",
    "AudioFeatures",
    "HubertFrontEnd",
    "LogMelFrontEnd",
    "decode_audio",
    "decode_audio_file",
    "extract",
    "f0_to_bins",
    "frame_count",
    "loudness_db",
    "pitch",
]


def __getattr__(name: str) -> Any:
    # transformers takes seconds to import; only HuBERT users should pay for it.
    if name == "HubertFrontEnd":
        from talkingface.audio.hubert import HubertFrontEnd

        return HubertFrontEnd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
