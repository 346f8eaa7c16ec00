"""Pitch (f0 with pyworld), its log-scale discretisation into bins, and loudness per frame.

f0 is estimated at a 5 ms step with pyworld's DIO refined by StoneMask (default) or with
Harvest, over F0_MIN_HZ..F0_MAX_HZ, and read at each 25 fps frame's centre,
(i + 0.5) * 40 ms, which falls exactly on the 5 ms grid (index 8 i + 4). 0 Hz = unvoiced.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

from talkingface.audio.decode import SAMPLE_RATE

with warnings.catch_warnings():
    # pyworld's __init__ imports pkg_resources, whose deprecation warning would reach every
    # user of every command; nothing of pkg_resources is used.
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    import pyworld

HOP = 640  # samples per 25 fps frame (40 ms)
F0_BINS = 300  # embedding rows (paper: 300 bins); bin 0 = unvoiced
F0_MIN_HZ = 50.0  # as the reference code's mel-scale binning (50-1100 Hz)
F0_MAX_HZ = 1100.0
FRAME_PERIOD_MS = 5.0
LOUDNESS_FLOOR_DB = -100.0

PitchMethod = Literal["dio", "harvest"]


def pitch(
    audio16k: np.ndarray, frames: int, method: PitchMethod = "dio"
) -> tuple[np.ndarray, np.ndarray]:
    """(f0 in Hz [frames] float32 with 0 = unvoiced, voiced [frames] bool) at frame centres."""
    if method not in ("dio", "harvest"):
        raise ValueError(f"pitch method must be 'dio' or 'harvest', got {method!r}")
    audio = np.asarray(audio16k, np.float64).reshape(-1)
    if frames <= 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    # Zero-pad to cover every frame centre, so the 5 ms track reaches the last one.
    needed = frames * HOP
    if audio.shape[0] < needed:
        audio = np.concatenate([audio, np.zeros(needed - audio.shape[0])])
    if method == "dio":
        f0, times = pyworld.dio(
            audio, SAMPLE_RATE, f0_floor=F0_MIN_HZ, f0_ceil=F0_MAX_HZ,
            frame_period=FRAME_PERIOD_MS,
        )  # fmt: skip
        f0 = pyworld.stonemask(audio, f0, times, SAMPLE_RATE)
    else:
        f0, _ = pyworld.harvest(
            audio, SAMPLE_RATE, f0_floor=F0_MIN_HZ, f0_ceil=F0_MAX_HZ,
            frame_period=FRAME_PERIOD_MS,
        )  # fmt: skip
    step = round(HOP / (SAMPLE_RATE * FRAME_PERIOD_MS / 1000.0))  # 8 points of the 5 ms track
    index = np.minimum(np.arange(frames) * step + step // 2, f0.shape[0] - 1)
    out = np.asarray(f0[index], np.float32)
    out[~np.isfinite(out) | (out < F0_MIN_HZ * 0.5)] = 0.0
    return out, out > 0


def _mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def f0_to_bins(f0_hz: np.ndarray) -> np.ndarray:
    """Mel-scale bins: 0 = unvoiced (f0 <= 0 or not finite), 1..F0_BINS-1 voiced.

    Voiced f0 is clipped to F0_MIN_HZ..F0_MAX_HZ and mapped linearly in mel
    (1127 ln(1 + f/700)) onto 1..F0_BINS-1, rounding to the nearest bin; the map is
    non-decreasing in f0.
    """
    f0 = np.asarray(f0_hz, np.float64)
    voiced = np.isfinite(f0) & (f0 > 0)
    lo, hi = _mel(F0_MIN_HZ), _mel(F0_MAX_HZ)
    mel = _mel(np.clip(np.where(voiced, f0, F0_MIN_HZ), F0_MIN_HZ, F0_MAX_HZ))
    bins = 1 + np.rint((mel - lo) / (hi - lo) * (F0_BINS - 2))
    return np.where(voiced, bins, 0).astype(np.int32)


def loudness_db(audio16k: np.ndarray, frames: int) -> np.ndarray:
    """RMS level of each frame's samples [i*640, (i+1)*640) in dBFS, floored at -100 dB.

    Samples past the end of the audio count as zeros (the last frame may be partial).
    """
    audio = np.asarray(audio16k, np.float64).reshape(-1)
    padded = np.zeros(frames * HOP, np.float64)
    take = min(audio.shape[0], padded.shape[0])
    padded[:take] = audio[:take]
    rms = np.sqrt(np.mean(padded.reshape(frames, HOP) ** 2, axis=1))
    with np.errstate(divide="ignore"):
        level = 20.0 * np.log10(rms)
    return np.maximum(level, LOUDNESS_FLOOR_DB).astype(np.float32)
