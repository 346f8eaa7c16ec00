"""The landmark condition at inference (render.condition): the percentile clamp stored with
the field and applied when rendering, and the temporal smoothing of a sequence."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from talkingface.render import checkpoint as rck
from talkingface.render.condition import landmark_bounds, smooth_landmarks
from talkingface.render.config import preset
from talkingface.render.renderer import new_renderer


def test_bounds_leave_the_chosen_share_of_training_values_outside():
    rng = np.random.default_rng(0)
    lm = rng.normal(0, 1, (2000, 68, 3))
    lo, hi = landmark_bounds(lm, 3.0)
    flat = lm.reshape(2000, -1)
    below, above = (flat < lo).mean(0), (flat > hi).mean(0)
    assert np.all(np.abs(below - 0.03) < 0.005) and np.all(np.abs(above - 0.03) < 0.005)
    lo0, hi0 = landmark_bounds(lm, 0.0)
    assert np.all(np.isneginf(lo0)) and np.all(np.isposinf(hi0))


def test_rendering_clamps_the_landmarks_to_the_training_range(video):
    renderer = new_renderer(preset("tiny"), video)
    lo, hi = video.train
    train_lm = video.lm3d[lo:hi].reshape(hi - lo, -1)
    lo_, hi_ = renderer.field.lm_lo.numpy(), renderer.field.lm_hi.numpy()
    assert np.all(lo_ >= train_lm.min(0)) and np.all(hi_ <= train_lm.max(0))
    moving = train_lm.max(0) > train_lm.min(0)  # some points hardly move in a tiny video
    assert np.mean(lo_[moving] > train_lm.min(0)[moving]) > 0.5
    wild = video.lm3d[hi : hi + 1].copy()
    wild[0, 48:68] *= 3.0  # a mouth far wider than any in the video
    clamped = np.clip(wild.reshape(1, -1), renderer.field.lm_lo.numpy(),
                      renderer.field.lm_hi.numpy()).reshape(wild.shape)  # fmt: skip
    pose = (video.R[hi : hi + 1], video.t[hi : hi + 1], video.background)
    a, _ = renderer.render(wild, *pose)
    b, _ = renderer.render(clamped, *pose)
    assert torch.equal(a, b)
    # With the clamp off the wild mouth reaches the field: a different condition.
    free = dataclasses.replace(renderer, field=new_renderer(preset("tiny", lm_clamp=0.0),
                                                            video).field)  # fmt: skip
    assert torch.all(torch.isinf(free.field.lm_hi))
    cond = free.field.encode_landmarks(free.field.clamp_landmarks(torch.from_numpy(wild)))
    assert not torch.allclose(cond, free.field.encode_landmarks(torch.from_numpy(clamped)))


def test_bounds_round_trip_and_older_bundles_render_unclamped(video, tmp_path):
    renderer = new_renderer(preset("tiny"), video)
    directory = rck.save_renderer(tmp_path / "r", renderer, video.R, video.t, video.background)
    loaded, _ = rck.load_renderer(directory)
    assert torch.equal(loaded.field.lm_lo, renderer.field.lm_lo)
    assert torch.equal(loaded.field.lm_hi, renderer.field.lm_hi)
    # A bundle written before the bounds existed: its weights without them.
    weights = directory / rck.WEIGHTS
    tensors = load_file(str(weights))
    del tensors["field.lm_lo"], tensors["field.lm_hi"]
    save_file(tensors, str(weights))
    older, _ = rck.load_renderer(directory)
    assert torch.all(torch.isinf(older.field.lm_hi)) and torch.all(older.field.lm_lo < 0)
    wild = torch.from_numpy(video.lm3d[:1] * 3.0)
    assert torch.equal(older.field.clamp_landmarks(wild), wild)


def test_smoothing_keeps_constants_and_lines_and_spreads_a_spike():
    t = np.arange(30, dtype=np.float64)
    base = np.ones((30, 68, 3))
    assert np.allclose(smooth_landmarks(base * 2.5, 1.0), 2.5)
    ramp = base * t[:, None, None]
    smoothed = smooth_landmarks(ramp, 1.0)
    assert np.allclose(smoothed[4:-4], ramp[4:-4])  # a symmetric kernel keeps a line
    spike = np.zeros((30, 68, 3))
    spike[15] = 1.0
    out = smooth_landmarks(spike, 1.0)
    assert out[15, 0, 0] < 0.5 and out[14, 0, 0] == pytest.approx(out[16, 0, 0])
    assert out[:, 0, 0].sum() == pytest.approx(1.0)  # nothing lost away from the ends
    assert np.array_equal(smooth_landmarks(spike, 0.0), spike)
    assert smooth_landmarks(spike[:1], 2.0).shape == (1, 68, 3)
    assert smooth_landmarks(spike[:3], 2.0).shape == (3, 68, 3)  # shorter than the kernel


def test_smoothing_lowers_frame_to_frame_jitter(video):
    rng = np.random.default_rng(1)
    noisy = video.lm3d + rng.normal(0, 0.01, video.lm3d.shape).astype(np.float32)

    def jitter(lm):
        return np.abs(np.diff(lm, 2, axis=0)).mean()

    assert jitter(smooth_landmarks(noisy, 1.0)) < 0.5 * jitter(noisy)
    assert smooth_landmarks(noisy, 1.0).dtype == noisy.dtype
