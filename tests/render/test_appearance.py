"""Per-frame appearance codes (RenderConfig.appearance_dim): learned per training frame, fed
to the colour MLP only, kept centred on the neutral code that rendering uses."""

import copy

import numpy as np
import pytest
import torch

from talkingface.render import checkpoint as rck
from talkingface.render.config import preset
from talkingface.render.march import FieldEvaluator
from talkingface.render.renderer import new_renderer
from talkingface.render.train import train


@pytest.fixture(scope="module")
def trained(video):
    torch.manual_seed(0)
    renderer = new_renderer(preset("tiny", appearance_dim=4, steps=40), video)
    train(renderer, video)
    return renderer


def test_codes_are_learned_per_training_frame_and_stay_centred(trained, video):
    lo, hi = video.train
    codes = trained.field.appearance.weight.detach()
    assert codes.shape == (hi - lo, 4)
    assert codes.abs().max() > 1e-4  # training moved them away from their zero start
    assert codes.mean(0).abs().max() < 1e-6  # the neutral code is their mean


def test_codes_change_the_colour_not_the_density(trained):
    field = copy.deepcopy(trained.field)  # its codes are changed below
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(200, 3, generator=gen) - 0.5) * 2
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=gen), dim=1)
    cond = field.encode_landmarks(torch.randn(1, 68, 3, generator=gen)).expand(200, -1)
    with torch.no_grad():
        neutral_sigma, neutral_rgb = field(x, cond, dirs)
        field.appearance.weight[3] = 2.0  # a frame far from the neutral one
        sigma, rgb = field(x, field.with_codes(cond, torch.full((200,), 3)), dirs)
    assert torch.equal(sigma, neutral_sigma)
    assert (rgb - neutral_rgb).abs().max() > 1e-3


def test_rendering_uses_the_neutral_code_and_round_trips(trained, video, tmp_path):
    f = np.arange(video.val[0], video.val[0] + 2)
    pose = (video.lm3d[f], video.R[f], video.t[f], video.background)
    before, _ = trained.render(*pose)
    directory = rck.save_renderer(tmp_path / "r", trained, video.R, video.t, video.background)
    loaded, _ = rck.load_renderer(directory)
    assert torch.equal(loaded.field.appearance.weight, trained.field.appearance.weight)
    after, _ = loaded.render(*pose)
    assert torch.allclose(after, before, atol=1e-6)
    with torch.no_grad():
        loaded.field.appearance.weight.add_(5.0)  # codes are training's business only
    moved, _ = loaded.render(*pose)
    assert torch.allclose(moved, before, atol=1e-6)


def test_the_march_evaluator_draws_the_neutral_code(trained):
    field = trained.field
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(300, 3, generator=gen) - 0.5) * 2
    cond = torch.randn(4, field.config.cond_dim + field.eye_dim, generator=gen)
    dirs = torch.nn.functional.normalize(torch.randn(10, 3, generator=gen), dim=1)
    frame = torch.randint(0, 4, (300,), generator=gen)
    ray = torch.randint(0, 10, (300,), generator=gen)
    with torch.no_grad():
        sigma, rgb = field(x, cond[frame], dirs[ray])
        fast_sigma, fast_rgb = FieldEvaluator(field, cond, dirs)(x, frame, ray)
    torch.testing.assert_close(fast_sigma, sigma, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_rgb, rgb, rtol=1e-5, atol=1e-6)


def test_appearance_dim_is_checked():
    with pytest.raises(ValueError, match="appearance_dim"):
        preset("tiny", appearance_dim=-1)
