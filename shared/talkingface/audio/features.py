"""The audio-features stage: 16 kHz audio -> per-frame features, f0, bins and loudness at 25 fps.

Alignment (every array has the same T frames): frame i covers samples
[i * 640, (i + 1) * 640) of the 16 kHz audio and is centred at (i + 0.5) * 40 ms.
T = frame_count(N) = floor(N / 640 + 0.5), i.e. N / 640 rounded half up, so
T = duration * 25 +- 0.5. Front-end outputs are cropped or edge-padded to T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from talkingface.audio.decode import SAMPLE_RATE
from talkingface.audio.logmel import LogMelFrontEnd
from talkingface.audio.pitch import PitchMethod, f0_to_bins, loudness_db, pitch
from talkingface.errors import TalkingFaceError
from talkingface.lm3d import FPS

HOP = SAMPLE_RATE // FPS  # 640 samples
# Audio is "silent" when no frame reaches this RMS level (dBFS): digital silence, dither
# and a quiet noise floor are below it; any speech recording is far above it.
SILENCE_DB = -60.0


class FrontEnd(Protocol):
    """What `extract` needs from a front end: a name, a width and audio -> [T, dim]."""

    name: str
    dim: int

    def __call__(self, audio16k: np.ndarray) -> np.ndarray: ...


@dataclass
class AudioFeatures:
    """All per-frame audio features of one utterance, T frames each at 25 fps."""

    features: np.ndarray  # [T, D] float32: log-mel (D=80) or HuBERT hidden state
    f0: np.ndarray  # [T] float32 Hz, 0 = unvoiced
    f0_bins: np.ndarray  # [T] int32, 0 = unvoiced, 1..F0_BINS-1 voiced (mel scale)
    voiced: np.ndarray  # [T] bool
    loudness_db: np.ndarray  # [T] float32 RMS dBFS, floor -100
    kind: str  # "logmel" | "hubert"
    duration: float  # seconds of audio (N / 16000)
    silent: bool  # no frame reaches SILENCE_DB
    voiced_fraction: float  # share of voiced frames

    def frames(self) -> int:
        return int(self.features.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-frame arrays under the names the protos use."""
        return {
            "features": self.features,
            "f0": self.f0,
            "f0_bins": self.f0_bins,
            "voiced": self.voiced,
            "loudness_db": self.loudness_db,
        }


def frame_count(num_samples: int) -> int:
    """T = num_samples / 640 rounded half up (so T = duration x 25 within 0.5)."""
    return int(num_samples + HOP // 2) // HOP


def fit_frames(array: np.ndarray, frames: int) -> np.ndarray:
    """Crop `array` [T', D] to `frames` rows, or pad it by repeating the last row."""
    if array.shape[0] >= frames:
        return array[:frames]
    if array.shape[0] == 0:
        return np.zeros((frames, *array.shape[1:]), array.dtype)
    pad = np.repeat(array[-1:], frames - array.shape[0], axis=0)
    return np.concatenate([array, pad], axis=0)


def extract(
    audio16k: np.ndarray,
    front_end: FrontEnd | None = None,
    pitch_method: PitchMethod = "dio",
) -> AudioFeatures:
    """Features, pitch and loudness of float 16 kHz mono audio (see the module docstring)."""
    audio = np.asarray(audio16k, np.float32)
    if audio.ndim != 1:
        raise TalkingFaceError("INVALID_REQUEST", f"audio must be 1-D, got shape {audio.shape}")
    if audio.shape[0] == 0:
        raise TalkingFaceError("AUDIO_EMPTY", "no audio samples")
    if not np.all(np.isfinite(audio)):
        raise TalkingFaceError("AUDIO_NON_FINITE", "audio contains NaN or Inf samples")
    front_end = front_end if front_end is not None else LogMelFrontEnd()
    frames = frame_count(audio.shape[0])
    if frames == 0:
        raise TalkingFaceError("AUDIO_EMPTY", "audio is shorter than half a frame (20 ms)")
    features = np.asarray(front_end(audio), np.float32)
    if features.ndim != 2 or features.shape[1] != front_end.dim:
        raise ValueError(f"front end {front_end.name} returned shape {features.shape}")
    features = np.ascontiguousarray(fit_frames(features, frames))
    f0, voiced = pitch(audio, frames, method=pitch_method)
    loudness = loudness_db(audio, frames)
    silent = bool(np.max(loudness) < SILENCE_DB)
    if silent:
        # pyworld can report spurious pitch in a noise floor; silence has none.
        f0 = np.zeros_like(f0)
        voiced = np.zeros_like(voiced)
    return AudioFeatures(
        features=features,
        f0=f0,
        f0_bins=f0_to_bins(f0),
        voiced=voiced,
        loudness_db=loudness,
        kind=front_end.name,
        duration=audio.shape[0] / SAMPLE_RATE,
        silent=silent,
        voiced_fraction=float(voiced.mean()),
    )
