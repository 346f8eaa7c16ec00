"""extract(): frame count and alignment, shapes/dtypes, the log-mel front end, silence."""

from __future__ import annotations

import numpy as np
import pytest

from talkingface.audio import (
    FPS,
    HOP,
    AudioFeatures,
    LogMelFrontEnd,
    extract,
    frame_count,
)
from talkingface.audio.features import fit_frames
from talkingface.data.synthtalk.speech import random_voice, synthesize
from talkingface.errors import TalkingFaceError


def test_frame_count_rounding():
    assert HOP == 640 and FPS == 25
    assert [frame_count(n) for n in (0, 319, 320, 640, 959, 960, 16000)] == [0, 0, 1, 1, 1, 2, 25]
    for n in np.random.default_rng(0).integers(0, 10**7, 1000):
        assert abs(frame_count(int(n)) - n / 16000 * FPS) <= 0.5


@pytest.mark.parametrize("gender,seed", [("male", 1), ("female", 2), ("male", 5)])
def test_extract_on_speech(gender, seed):
    utterance = synthesize(
        "Please call Stella and ask her to bring these things.",
        random_voice(np.random.default_rng(seed), "en-us", gender),
    )
    feats = extract(utterance.audio)
    assert isinstance(feats, AudioFeatures)
    frames = feats.frames()
    assert abs(frames - utterance.duration * FPS) <= 1
    arrays = feats.arrays()
    assert list(arrays) == ["features", "f0", "f0_bins", "voiced", "loudness_db"]
    assert feats.features.shape == (frames, 80) and feats.features.dtype == np.float32
    assert feats.f0.shape == feats.loudness_db.shape == (frames,)
    assert feats.f0.dtype == feats.loudness_db.dtype == np.float32
    assert feats.f0_bins.dtype == np.int32 and feats.voiced.dtype == bool
    assert np.array_equal(feats.voiced, feats.f0_bins > 0)
    assert all(np.all(np.isfinite(a)) for a in arrays.values())
    assert feats.kind == "logmel" and not feats.silent
    assert feats.duration == pytest.approx(len(utterance.audio) / 16000)
    assert feats.voiced_fraction == pytest.approx(feats.voiced.mean())


def test_logmel_alignment_of_a_burst():
    # A 1 kHz burst filling exactly frames 10-14 lights those frames (and the neighbours'
    # window tails a little), nothing else.
    audio = np.zeros(30 * 640, np.float32)
    t = np.arange(5 * 640) / 16000
    audio[10 * 640 : 15 * 640] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    mel = LogMelFrontEnd()(audio)
    assert mel.shape == (30, 80)
    energy = mel.max(axis=1)
    assert np.all(energy[10:15] > -10)
    assert np.all(energy[:9] == -100) and np.all(energy[16:] == -100)
    assert energy[9] < energy[10] - 6 and energy[15] < energy[14] - 6
    # The 1 kHz band is the loudest one.
    band = int(np.argmax(mel[12]))
    from talkingface.audio.logmel import _mel_to_hz, mel_filterbank

    centres = _mel_to_hz(np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 82))[1:-1]
    assert abs(centres[band] - 1000) < 100
    assert mel_filterbank().shape == (80, 257)


def test_fit_frames_crops_and_edge_pads():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert fit_frames(x, 2).tolist() == x[:2].tolist()
    padded = fit_frames(x, 6)
    assert padded.shape == (6, 3) and np.array_equal(padded[4], x[3])


class _ShortFrontEnd:
    name = "logmel"
    dim = 4

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        return np.ones((3, 4), np.float32)


def test_front_end_output_fitted_to_frame_count():
    audio = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    feats = extract(audio, front_end=_ShortFrontEnd())
    assert feats.features.shape == (25, 4)


def test_silence_is_flagged_not_an_error():
    hiss = 1e-5 * np.random.default_rng(1).standard_normal(32000).astype(np.float32)
    for audio in (np.zeros(32000, np.float32), hiss):
        feats = extract(audio)
        assert feats.silent and feats.frames() == 50
        assert not feats.voiced.any() and feats.voiced_fraction == 0.0
        assert np.all(feats.f0_bins == 0)


def test_extract_rejects_bad_input():
    for audio, code in [
        (np.zeros(0, np.float32), "AUDIO_EMPTY"),
        (np.zeros(100, np.float32), "AUDIO_EMPTY"),
        (np.array([0.0, np.nan] * 1000, np.float32), "AUDIO_NON_FINITE"),
        (np.zeros((2, 1000), np.float32), "INVALID_REQUEST"),
    ]:
        with pytest.raises(TalkingFaceError) as err:
            extract(audio)
        assert err.value.code == code
