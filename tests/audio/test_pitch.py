"""Pitch (dio/harvest at frame centres), f0 bins and loudness."""

from __future__ import annotations

import numpy as np
import pytest

from talkingface.audio import F0_BINS, F0_MAX_HZ, F0_MIN_HZ, f0_to_bins, loudness_db, pitch
from talkingface.audio.features import frame_count
from talkingface.data.synthtalk.speech import random_voice, synthesize

TEXTS = ["Please call Stella and ask her to bring these things with her from the store.",
         "We also need a small plastic snake and a big toy frog for the kids."]  # fmt: skip
PLAUSIBLE = {"male": (70.0, 180.0), "female": (150.0, 350.0)}


@pytest.mark.parametrize("gender,seed", [("male", 11), ("male", 12), ("female", 13),
                                         ("female", 14)])  # fmt: skip
def test_dio_agrees_with_harvest_on_speech(gender, seed):
    voice = random_voice(np.random.default_rng(seed), "en-us", gender)
    audio = synthesize(TEXTS[seed % 2], voice).audio
    frames = frame_count(len(audio))
    f0_dio, voiced_dio = pitch(audio, frames, "dio")
    f0_harvest, voiced_harvest = pitch(audio, frames, "harvest")
    assert f0_dio.shape == voiced_dio.shape == (frames,)
    assert f0_dio.dtype == np.float32 and voiced_dio.dtype == bool
    assert np.array_equal(voiced_dio, f0_dio > 0)
    median_dio = float(np.median(f0_dio[voiced_dio]))
    median_harvest = float(np.median(f0_harvest[voiced_harvest]))
    assert abs(median_dio / median_harvest - 1) < 0.10
    low, high = PLAUSIBLE[gender]
    assert low <= median_dio <= high
    assert 0.4 < voiced_dio.mean() < 0.95


def test_pitch_of_a_tone_at_frame_centres():
    # A harmonic tone whose f0 jumps from 120 to 240 Hz exactly at frame 25's start.
    t = np.arange(2 * 16000) / 16000
    f0 = np.where(t < 1.0, 120.0, 240.0)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    audio = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6)).astype(np.float32)
    got, voiced = pitch(audio, 50, "dio")
    assert voiced[2:23].all() and voiced[27:48].all()
    np.testing.assert_allclose(got[2:23], 120.0, rtol=0.02)
    np.testing.assert_allclose(got[27:48], 240.0, rtol=0.02)


def test_silence_is_unvoiced():
    f0, voiced = pitch(np.zeros(16000, np.float32), 25)
    assert not voiced.any() and not f0.any()
    with pytest.raises(ValueError):
        pitch(np.zeros(16000, np.float32), 25, "praat")  # type: ignore[arg-type]


def test_bins_monotonic_on_sweep_and_random_values():
    sweep = np.linspace(1.0, 2000.0, 20000)
    bins = f0_to_bins(sweep)
    assert bins.dtype == np.int32
    assert np.all(np.diff(bins) >= 0)
    assert bins.min() == 1 and bins.max() == F0_BINS - 1
    assert f0_to_bins(np.array([F0_MIN_HZ]))[0] == 1
    assert f0_to_bins(np.array([F0_MAX_HZ]))[0] == F0_BINS - 1
    # Every voiced bin is reachable: the sweep covers all of 1..F0_BINS-1.
    assert len(np.unique(bins)) == F0_BINS - 1
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1500, 5000)
    order = np.argsort(values)
    assert np.all(np.diff(f0_to_bins(values)[order]) >= 0)


def test_bins_unvoiced_is_zero():
    bins = f0_to_bins(np.array([0.0, -5.0, np.nan, np.inf, 100.0], np.float32))
    assert bins.tolist()[:4] == [0, 0, 0, 0] and bins[4] > 0


def test_loudness():
    t = np.arange(16000) / 16000
    audio = np.concatenate([np.sin(2 * np.pi * 440 * t), np.zeros(16000)]).astype(np.float32)
    level = loudness_db(audio, 50)
    assert level.dtype == np.float32 and level.shape == (50,)
    np.testing.assert_allclose(level[:25], 20 * np.log10(np.sqrt(0.5)), atol=0.05)
    assert np.all(level[25:] == -100.0)
    # The frame containing a single click (and only that one) is above the floor.
    click = np.zeros(6400, np.float32)
    click[3 * 640 + 17] = 1.0
    assert np.flatnonzero(loudness_db(click, 10) > -100).tolist() == [3]
