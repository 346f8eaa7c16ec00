"""The inference march (`talkingface.render.march`) against the training path's march."""

import dataclasses

import numpy as np
import pytest
import torch

from talkingface.render.config import preset
from talkingface.render.data import camera_rays
from talkingface.render.march import FieldEvaluator, march_rays
from talkingface.render.renderer import new_renderer
from talkingface.render.train import carve
from talkingface.render.volume import RayBatch, render_rays


@pytest.fixture(scope="module")
def renderer(video):
    """A random tiny renderer, its occupancy carved from the head masks, with the density's
    bias raised so a sample is about half opaque: rays turn opaque after some ten occupied
    samples, at different depths, so early termination has work to do."""
    torch.manual_seed(0)
    renderer = new_renderer(preset("tiny"), video)
    carve(renderer.occupancy, video, np.arange(0, 90, 10))
    with torch.no_grad():
        renderer.field.sigma_net[-1].bias[0] += 1.0
    return renderer


def _rays(renderer, video, frames):
    size = video.size
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    xy = torch.from_numpy(np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], -1)).float()
    frame = torch.arange(len(frames)).repeat_interleave(len(xy))
    R = torch.from_numpy(video.R[frames])[frame]
    t = torch.from_numpy(video.t[frames])[frame]
    origins, dirs = camera_rays(renderer.K, R, t, xy.repeat(len(frames), 1))
    with torch.no_grad():
        cond = renderer.field.encode_landmarks(torch.from_numpy(video.lm3d[frames]))
    background = torch.rand(len(origins), 3, generator=torch.Generator().manual_seed(1))
    return origins, dirs, frame, cond, background


def _dense(renderer, origins, dirs, frame, cond, background):
    """The training path's march with one group and no early termination: every occupied
    sample of every ray composited."""
    with torch.no_grad():
        return render_rays(renderer.field, RayBatch(origins, dirs, cond[frame], background),
                           renderer.occupancy, renderer.config.samples, chunks=1,
                           stop_transmittance=0.0)  # fmt: skip


def test_without_termination_it_is_the_dense_march(renderer, video):
    rays = _rays(renderer, video, [video.val[0], video.val[0] + 5])
    dense = _dense(renderer, *rays)
    fast = march_rays(renderer.field, *rays, renderer.occupancy, renderer.config.samples,
                      stop_transmittance=0.0)  # fmt: skip
    assert fast.samples == dense.samples > 0
    torch.testing.assert_close(fast.rgb, dense.rgb, atol=2e-5, rtol=0)
    torch.testing.assert_close(fast.alpha, dense.alpha, atol=2e-5, rtol=0)


@pytest.mark.parametrize("stop", [1e-3, 0.05])
def test_early_termination_moves_no_pixel_more_than_the_stop_threshold(renderer, video, stop):
    rays = _rays(renderer, video, [video.val[0], video.val[0] + 5])
    dense = _dense(renderer, *rays)
    fast = march_rays(renderer.field, *rays, renderer.occupancy, renderer.config.samples,
                      stop_transmittance=stop)  # fmt: skip
    assert fast.samples < dense.samples  # rays did stop early
    assert float((fast.rgb - dense.rgb).abs().max()) <= stop + 1e-5
    if stop == 0.05:
        assert float((fast.rgb - dense.rgb).abs().max()) > 1e-4  # and it shows


def test_it_spends_fewer_samples_than_the_training_march(renderer, video):
    rays = _rays(renderer, video, [video.val[0]])
    origins, dirs, frame, cond, background = rays
    config = renderer.config
    with torch.no_grad():
        grouped = render_rays(renderer.field, RayBatch(origins, dirs, cond[frame], background),
                              renderer.occupancy, config.samples, config.chunks,
                              config.stop_transmittance)  # fmt: skip
    fast = march_rays(renderer.field, *rays, renderer.occupancy, config.samples,
                      config.stop_transmittance)  # fmt: skip
    assert fast.samples < grouped.samples
    assert float((fast.rgb - grouped.rgb).abs().max()) <= config.stop_transmittance + 1e-5


def test_rays_that_miss_take_the_background_exactly(renderer, video):
    origins = torch.tensor([[0.0, 0.0, -10.0], [0.0, 50.0, -10.0]])
    dirs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # parallel to the cube; outside
    background = torch.rand(2, 3)
    cond = torch.zeros(1, renderer.config.cond_dim)
    out = march_rays(renderer.field, origins, dirs, torch.zeros(2, dtype=torch.long), cond,
                     background, renderer.occupancy, renderer.config.samples)  # fmt: skip
    assert torch.equal(out.rgb, background) and out.samples == 0
    with pytest.raises(ValueError, match="step"):
        march_rays(renderer.field, origins, dirs, torch.zeros(2, dtype=torch.long), cond,
                   background, renderer.occupancy, renderer.config.samples, step=0)  # fmt: skip


@pytest.mark.parametrize("eyes", [False, True])
def test_field_evaluator_is_the_field(renderer, video, eyes):
    """Also with the eyes' opening as the density MLP's own input (eye_condition)."""
    if eyes:
        torch.manual_seed(0)
        renderer = new_renderer(preset("tiny", eye_condition=True), video)
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(300, 3, generator=gen) - 0.5) * 2
    width = renderer.config.cond_dim + renderer.field.eye_dim
    cond = torch.randn(4, width, generator=gen)
    dirs = torch.nn.functional.normalize(torch.randn(10, 3, generator=gen), dim=1)
    frame = torch.randint(0, 4, (300,), generator=gen)
    ray = torch.randint(0, 10, (300,), generator=gen)
    with torch.no_grad():
        sigma, rgb = renderer.field(x, cond[frame], dirs[ray])
        fast_sigma, fast_rgb = FieldEvaluator(renderer.field, cond, dirs)(x, frame, ray)
    torch.testing.assert_close(fast_sigma, sigma, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_rgb, rgb, rtol=1e-5, atol=1e-6)


def test_renderer_fast_and_reference_paths_agree(renderer, video):
    f = [video.val[0], video.val[0] + 3]
    fast = dataclasses.replace(renderer, fast=True)
    reference = dataclasses.replace(renderer, fast=False)
    a, spent_fast = fast.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    b, spent_ref = reference.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    assert spent_fast < spent_ref
    # each within the stop threshold of the never-stopped march, so of each other twice that
    assert float((a - b).abs().max()) <= 2 * renderer.config.stop_transmittance + 1e-5
