"""Drive the SynthTalk face from speech: phoneme events + audio -> per-frame articulation.

Output is one row of `face.ARTICULATION_CONTROLS` per 25 fps frame, T = round(duration·25),
evaluated at frame centres t_i = (i + 0.5) / 25:

1. Visemes (`visemes.py`) give each phoneme part a target per speech control. Gaps between
   events (and the time before the first / after the last) are silence segments, whose
   target is the closed, neutral mouth.
2. Coarticulation (Cohen & Massaro 1993): control k at time t is
   F_k(t) = Σ_s D_sk(t)·T_sk / Σ_s D_sk(t), with dominance D_sk(t) = α_sk·exp(-θ_sk·d^c),
   θ_sk = w_sk^-c, c = 3 (α, w per class and control in `visemes.py`), and d the distance
   from t to the segment's core: the segment shrunk at each end by 30 ms or a quarter of
   its length, whichever is less, so long vowels and pauses hold their target. Jaw, spread
   and round targets get a per-segment lognormal jitter (σ 0.08).
3. Loudness (RMS dB over each 40 ms frame, smoothed over ~200 ms) scales the mouth controls
   by clip(10^((dB - ref)/40), 0.55, 1.2), ref = median loudness of active frames (within
   35 dB of the loudest): quiet stretches articulate less. Pitch above the utterance's median
   f0 opens the jaw by 2.5 % per semitone, up to +20 %. Jaw, spread, round and upper-lip
   raise are then capped at 1.0 (the speaker's articulation_gain applies after this).
4. The blended closure fraction becomes face.py's lip_close coefficient: the value that
   cancels that fraction of the inner-lip gap the other controls open (lip_close in face.py
   is additive against jaw_open, so lip_close = 1 with a small jaw would cross the lips).
5. Blinks: a renewal process with gaps 1 s + Exp(60/rate - 1 s) (mean rate = the speaker's
   blink_rate), durations U(100, 300) ms, closing over the first 35 % and opening over the
   rest (sin² ramps), the fully closed instant on a frame centre; each eye gets its own
   timing jitter (N(0, 4 ms) clipped to ±8 ms) and depth U(0.92, 1.0).
6. Brow raises on pitch accents: f0 peaks ≥ 2 semitones above the median, ≥ 0.8 s apart,
   each raising the brows with probability brow_activity by U(0.3, 0.8) with a 300 ms
   raised-cosine rise and fall.

All randomness comes from the Generator passed in, in this order: segment jitter, blinks,
brows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.ndimage import maximum_filter1d, uniform_filter1d
from scipy.signal import find_peaks, firwin

from talkingface import lm3d as L
from talkingface.audio.pitch import loudness_db as audio_loudness_db
from talkingface.data.synthtalk import face, visemes
from talkingface.data.synthtalk.speaker import Speaker, speaker_landmarks

SAMPLE_RATE_16K = 16000

FPS = L.FPS
DOMINANCE_EXPONENT = 3.0
CORE_MARGIN_S = 0.03
CORE_MARGIN_FRACTION = 0.25
NEIGHBOURS = 4  # segments either side that can influence a frame
MIN_SILENCE_S = 0.03  # shorter gaps between events are absorbed by coarticulation
BACKGROUND_DOMINANCE = 1e-4  # keeps the blend defined far from any segment
TARGET_JITTER = 0.08
LOUDNESS_SPAN_DB = 35.0
LOUDNESS_GAIN_RANGE = (0.55, 1.2)
MAX_CONTROL = 1.0  # cap on speech-driven controls before the speaker's gain
PITCH_JAW_PER_SEMITONE = 0.025
PITCH_JAW_MAX_SEMITONES = 8.0
F0_RANGE_HZ = (60.0, 500.0)
BLINK_MIN_GAP_S = 1.0
BLINK_DURATION_S = (0.10, 0.30)
BLINK_CLOSE_FRACTION = 0.35
BROW_ACCENT_SEMITONES = 2.0  # espeak-ng accents peak ~2-3 semitones over the median
BROW_MIN_GAP_S = 0.8
BROW_AMPLITUDE = (0.3, 0.8)
BROW_RAMP_S = 0.3

_HALF_BAND = firwin(19, 0.5, window=("kaiser", 6.0)).astype(np.float32)
_C = {name: i for i, name in enumerate(face.ARTICULATION_CONTROLS)}
_SILENCE = visemes.CLASS_INDEX["silence"]
_SHAPE_CONTROLS = ("jaw_open", "lip_spread", "lip_round", "upper_lip_raise")


class PhonemeEvent(Protocol):
    """What this module reads from speech.py's events (seconds, IPA string)."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def phoneme(self) -> str: ...


@dataclass(frozen=True)
class ArticulationTrack:
    """Per-frame articulation of one utterance at 25 fps."""

    controls: np.ndarray  # [T, 8] float32, face.ARTICULATION_CONTROLS order, before speaker gain
    loudness_db: np.ndarray  # [T] float32, RMS dBFS of each 40 ms frame
    f0_hz: np.ndarray  # [T] float32, 0 where unvoiced
    blink: np.ndarray  # [T] float32, max of the two blink controls
    landmarks: np.ndarray  # [T, 68, 3] float32, speaker_landmarks(speaker, controls)
    blink_events: np.ndarray  # [B, 2] float64: onset s, duration s
    brow_events: np.ndarray  # [R, 2] float64: peak time s, amplitude


def _gap_gains() -> np.ndarray:
    """Inner-lip gap (canonical units) opened by one unit of each control, [8]."""
    base = L.mouth_opening(face.MEAN_SHAPE)
    return np.array([L.mouth_opening(face.MEAN_SHAPE + b) - base for b in face.ARTICULATION_BASIS])


_GAP_GAIN = _gap_gains()


def frame_count(duration: float) -> int:
    """T = round(duration · 25)."""
    return round(duration * FPS)


def loudness_db(audio: np.ndarray, sample_rate: int, num_frames: int) -> np.ndarray:
    """RMS level in dBFS of each 40 ms frame [i/25, (i+1)/25), [T] float32: the same measure
    the audio-features stage reports (talkingface.audio.pitch.loudness_db)."""
    if sample_rate != SAMPLE_RATE_16K:
        raise ValueError(f"SynthTalk audio is 16 kHz, got {sample_rate} Hz")
    return audio_loudness_db(audio, num_frames)


def _half_band(x: np.ndarray) -> np.ndarray:
    """Low-pass at a quarter of the rate and keep every other sample (polyphase FIR)."""
    n = (len(x) + 1) // 2
    pad = len(_HALF_BAND) // 2
    xp = np.pad(x, (pad, pad + 1))
    phases = (np.ascontiguousarray(xp[0::2]), np.ascontiguousarray(xp[1::2]))
    y = np.zeros(n, x.dtype)
    for j in np.flatnonzero(np.abs(_HALF_BAND) > 1e-7):  # half the taps of a half-band are 0
        y += _HALF_BAND[j] * phases[j % 2][j // 2 : j // 2 + n]
    return y


def estimate_f0(audio: np.ndarray, sample_rate: int, num_frames: int) -> np.ndarray:
    """f0 in Hz at each frame centre (0 = unvoiced) with pyworld dio + stonemask, [T]."""
    f0 = np.zeros(num_frames, np.float32)
    if num_frames == 0 or len(audio) < sample_rate // 10:
        return f0
    from talkingface.audio.pitch import pyworld  # imported there without its warning

    # f0 <= 500 Hz needs nothing above 4 kHz: halving 16 kHz to 8 kHz makes dio and
    # stonemask ~1.5x faster with the same estimates (checked against 16 kHz on test tones).
    x, fs = np.asarray(audio, np.float32), sample_rate
    while fs >= 16000 and fs % 2 == 0:
        x, fs = _half_band(x), fs // 2
    x = np.ascontiguousarray(x, np.float64)
    # dio on a 20 ms grid puts every odd frame on a 25 fps frame centre; stonemask refines
    # only those. dio's `speed` decimates internally to ~1.3 kHz, ample for f0 <= 500 Hz.
    raw, times = pyworld.dio(
        x,
        fs,
        f0_floor=F0_RANGE_HZ[0],
        f0_ceil=F0_RANGE_HZ[1],
        channels_in_octave=1.0,
        frame_period=1000.0 / (2 * FPS),
        speed=int(np.clip(round(fs / 1333), 1, 12)),
    )
    raw, times = np.ascontiguousarray(raw[1::2]), np.ascontiguousarray(times[1::2])
    refined = pyworld.stonemask(x, raw, times, fs)
    n = min(num_frames, len(refined))
    f0[:n] = refined[:n]
    return f0


def _segments(
    events: Sequence[PhonemeEvent], duration: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Viseme parts of the events plus silence for gaps -> (start, end, class) sorted."""
    events = sorted(events, key=lambda e: e.start)
    starts, ends, classes = visemes.segment_table(
        [e.start for e in events], [e.end for e in events], [e.phoneme for e in events]
    )
    edges = np.r_[0.0, ends] if len(ends) else np.array([0.0])
    nexts = np.r_[starts, duration] if len(starts) else np.array([duration])
    gap_ends = np.maximum.accumulate(edges)  # an event may end after a later one starts
    silent = nexts - gap_ends >= MIN_SILENCE_S
    starts = np.r_[starts, gap_ends[silent]]
    ends = np.r_[ends, nexts[silent]]
    classes = np.r_[classes, np.full(int(silent.sum()), _SILENCE)]
    order = np.argsort(0.5 * (starts + ends), kind="stable")
    return starts[order], ends[order], classes[order].astype(np.int64)


def coarticulate(
    starts: np.ndarray,
    ends: np.ndarray,
    classes: np.ndarray,
    times: np.ndarray,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Dominance-blended speech controls at `times` -> [T, 5] (visemes.SPEECH_CONTROLS)."""
    num_seg = len(classes)
    targets = visemes.TARGETS[classes].copy()
    if rng is not None and num_seg:
        jitter = np.exp(rng.normal(0.0, TARGET_JITTER, (num_seg, 3)))
        targets[:, :3] = np.where(
            (classes == _SILENCE)[:, None], targets[:, :3], targets[:, :3] * jitter
        )
    neutral = visemes.TARGETS[_SILENCE]
    if num_seg == 0:
        return np.tile(neutral, (len(times), 1))
    centre = 0.5 * (starts + ends)
    half = 0.5 * (ends - starts)
    half_core = half - np.minimum(CORE_MARGIN_S, CORE_MARGIN_FRACTION * 2 * half)
    # Each frame looks at the NEIGHBOURS segment centres before it and as many after.
    k = np.searchsorted(centre, times) + np.arange(-NEIGHBOURS, NEIGHBOURS)[:, None]
    k = k.T  # [T, W]
    valid = (k >= 0) & (k < num_seg)
    k = np.clip(k, 0, num_seg - 1)
    dist = np.maximum(np.abs(times[:, None] - centre[k]) - half_core[k], 0.0)  # [T, W]
    cls = classes[k]
    theta = visemes.WIDTH[cls] ** -DOMINANCE_EXPONENT  # [T, W, 5]
    dom = visemes.ALPHA[cls] * np.exp(-theta * (dist**DOMINANCE_EXPONENT)[..., None])
    dom *= valid[..., None]
    num = np.einsum("twk,twk->tk", dom, targets[k]) + BACKGROUND_DOMINANCE * neutral
    return num / (dom.sum(axis=1) + BACKGROUND_DOMINANCE)


def _modulate(speech: np.ndarray, db: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """Scale blended speech controls by loudness and pitch -> [T, 8] face controls."""
    jaw, spread, rnd, closure, raise_ = speech.T
    smooth = uniform_filter1d(maximum_filter1d(db, 5, mode="nearest"), 5, mode="nearest")
    active = db > db.max(initial=-200.0) - LOUDNESS_SPAN_DB
    ref = np.median(smooth[active]) if active.any() else 0.0
    loud = np.clip(10.0 ** ((smooth - ref) / 40.0), *LOUDNESS_GAIN_RANGE)
    semis = _semitones(f0)
    boost = 1.0 + PITCH_JAW_PER_SEMITONE * np.clip(semis, 0.0, PITCH_JAW_MAX_SEMITONES)
    out = np.zeros((len(db), len(face.ARTICULATION_CONTROLS)))
    out[:, _C["jaw_open"]] = jaw * loud * boost
    out[:, _C["lip_spread"]] = spread * loud
    out[:, _C["lip_round"]] = rnd * loud
    out[:, _C["upper_lip_raise"]] = raise_ * loud
    # Jitter, loudness and pitch compound; keep the mouth within a plausible range.
    shape = [_C[c] for c in _SHAPE_CONTROLS]
    out[:, shape] = np.clip(out[:, shape], 0.0, MAX_CONTROL)
    # Close the chosen fraction of whatever gap the other controls open.
    opened = np.maximum(out @ _GAP_GAIN, 0.0)
    out[:, _C["lip_close"]] = np.clip(closure, 0.0, 1.0) * opened / -_GAP_GAIN[_C["lip_close"]]
    return out


def _semitones(f0: np.ndarray) -> np.ndarray:
    """Pitch relative to the voiced median in semitones, smoothed; 0 where unvoiced."""
    voiced = f0 > 0
    if not voiced.any():
        return np.zeros(len(f0))
    semis = np.where(voiced, 12.0 * np.log2(np.maximum(f0, 1e-3) / np.median(f0[voiced])), 0.0)
    return uniform_filter1d(semis, 3, mode="nearest") * voiced


def _blinks(
    rng: np.random.Generator, times: np.ndarray, duration: float, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-eye blink controls [T, 2] and the events [B, 2] (onset, duration)."""
    mean_gap = 60.0 / rate
    n = int(duration / BLINK_MIN_GAP_S) + 2  # fixed draw count: reproducible per seed
    gaps = BLINK_MIN_GAP_S + rng.exponential(max(mean_gap - BLINK_MIN_GAP_S, 1e-3), n)
    durs = rng.uniform(*BLINK_DURATION_S, n)
    shift = np.clip(rng.normal(0.0, 0.004, (n, 2)), -0.008, 0.008)
    depth = rng.uniform(0.92, 1.0, (n, 2))
    peaks = rng.uniform(0.0, mean_gap) + np.cumsum(gaps) - gaps[0]
    peaks = (np.round(peaks * FPS - 0.5) + 0.5) / FPS  # the closed instant on a frame centre
    onsets = peaks - BLINK_CLOSE_FRACTION * durs
    keep = (onsets >= 0.0) & (onsets + durs <= duration)
    onsets, durs, shift, depth = onsets[keep], durs[keep], shift[keep], depth[keep]
    u = (times[:, None, None] - onsets[None, :, None] - shift[None]) / durs[None, :, None]
    closing = np.sin(0.5 * np.pi * np.clip(u / BLINK_CLOSE_FRACTION, 0.0, 1.0)) ** 2
    opening = (
        np.cos(
            0.5 * np.pi * np.clip((u - BLINK_CLOSE_FRACTION) / (1 - BLINK_CLOSE_FRACTION), 0.0, 1.0)
        )
        ** 2
    )
    profile = np.where(u < BLINK_CLOSE_FRACTION, closing, opening) * ((u > 0) & (u < 1))
    eyes = (profile * depth[None]).max(axis=1, initial=0.0)  # [T, 2]
    return eyes, np.c_[onsets, durs]


def _brows(
    rng: np.random.Generator, times: np.ndarray, f0: np.ndarray, activity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Brow raise control [T] on pitch accents and the events [R, 2] (peak, amplitude)."""
    semis = np.where(f0 > 0, _semitones(f0), -100.0)
    peaks, _ = find_peaks(semis, height=BROW_ACCENT_SEMITONES, distance=round(BROW_MIN_GAP_S * FPS))
    fire = rng.uniform(size=len(peaks)) < activity
    amps = rng.uniform(*BROW_AMPLITUDE, len(peaks))
    centres, amps = times[peaks[fire]], amps[fire]
    d = np.abs(times[:, None] - centres[None]) / BROW_RAMP_S
    raise_ = (amps * 0.5 * (1.0 + np.cos(np.pi * np.minimum(d, 1.0)))).max(axis=1, initial=0.0)
    return raise_, np.c_[centres, amps]


def articulate(
    phonemes: Sequence[PhonemeEvent],
    audio: np.ndarray,
    sample_rate: int,
    speaker: Speaker,
    rng: np.random.Generator,
    f0_hz: np.ndarray | None = None,
) -> ArticulationTrack:
    """Articulation track of one utterance; `f0_hz` [T] skips pitch estimation if given."""
    audio = np.asarray(audio, np.float32)
    duration = len(audio) / sample_rate
    num_frames = frame_count(duration)
    times = (np.arange(num_frames) + 0.5) / FPS
    db = loudness_db(audio, sample_rate, num_frames)
    if f0_hz is None:
        f0 = estimate_f0(audio, sample_rate, num_frames)
    else:
        f0 = np.zeros(num_frames, np.float32)
        given = np.asarray(f0_hz, np.float32)[:num_frames]
        f0[: len(given)] = given
    starts, ends, classes = _segments(phonemes, duration)
    speech = coarticulate(starts, ends, classes, times, rng)
    controls = _modulate(speech, db, f0)
    eyes, blink_events = _blinks(rng, times, duration, speaker.blink_rate)
    controls[:, _C["blink_right"]] = eyes[:, 0]
    controls[:, _C["blink_left"]] = eyes[:, 1]
    controls[:, _C["brow_raise"]], brow_events = _brows(rng, times, f0, speaker.brow_activity)
    controls = controls.astype(np.float32)
    return ArticulationTrack(
        controls=controls,
        loudness_db=db,
        f0_hz=f0,
        blink=eyes.max(axis=1, initial=0.0).astype(np.float32),
        landmarks=speaker_landmarks(speaker, controls),
        blink_events=blink_events,
        brow_events=brow_events,
    )
