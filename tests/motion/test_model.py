"""The motion networks and inference: shapes, masking, the flow prior, windowing, seeds."""

import numpy as np
import pytest
import torch

from talkingface.motion.config import preset
from talkingface.motion.infer import MotionModel, PostnetModel, receptive_field
from talkingface.motion.nets import FlowPrior, MotionVAE


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> MotionModel:
    return MotionModel.load(tiny_ckpt / "motion", device="cpu")


@pytest.fixture(scope="module")
def long_input(tiny_data):
    """About 12 s of real features: several utterances end to end."""
    utts, _ = tiny_data
    feats = np.concatenate([u.features for u in utts[:5]])
    bins = np.concatenate([u.f0_bins for u in utts[:5]])
    return feats, bins


def test_generate_contract(model, long_input):
    feats, bins = long_input
    lm = model.generate(feats, bins, seed=1)
    assert lm.shape == (feats.shape[0], 68, 3)
    assert lm.dtype == np.float32
    assert np.isfinite(lm).all()
    # around the generic mean face: the motion is small next to the face itself
    assert np.abs(lm - model.stats.mean_face).mean() < 0.2 * np.abs(model.stats.mean_face).mean()


def test_same_seed_same_output_other_seed_differs(model, long_input):
    feats, bins = long_input
    a = model.generate(feats, bins, seed=7, temperature=1.0)
    b = model.generate(feats, bins, seed=7, temperature=1.0)
    c = model.generate(feats, bins, seed=8, temperature=1.0)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_windowed_generation_equals_one_pass(model, long_input):
    feats, bins = long_input
    t = feats.shape[0]
    reach = receptive_field(model.config)
    small = 2 * (2 * reach + 8)
    assert t > 3 * small, "the input must span several windows"
    whole = model.predict(feats, bins, seed=3, window=t + 100)
    windowed = model.predict(feats, bins, seed=3, window=small)
    np.testing.assert_allclose(windowed, whole, atol=1e-4)


def test_postnet_changes_the_output_and_supplies_its_mean_face(model, tiny_postnet, long_input):
    feats, bins = long_input
    pm = PostnetModel.load(tiny_postnet)
    base = model.generate(feats, bins, seed=2, mean_face=pm.mean_face)
    adapted = model.generate(feats, bins, seed=2, postnet=pm)
    assert adapted.shape == base.shape
    assert not np.allclose(adapted, base)
    assert (
        np.abs(adapted.mean(axis=0) - pm.mean_face).mean()
        < np.abs(adapted.mean(axis=0) - model.stats.mean_face).mean() + 1e-6
    )


def test_bad_inputs_are_clear_errors(model):
    good = np.zeros((30, model.feature_dim), np.float32)
    bins = np.zeros(30, np.int64)
    with pytest.raises(ValueError, match=str(model.feature_dim)):
        model.generate(np.zeros((30, model.feature_dim + 1), np.float32), bins)
    with pytest.raises(ValueError, match="f0_bins"):
        model.generate(good, bins[:29])
    bad = good.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.generate(bad, bins)
    with pytest.raises(ValueError, match="no frames"):
        model.generate(good[:0], bins[:0])


def test_padding_does_not_leak_into_real_frames():
    config = preset("tiny").vae
    torch.manual_seed(0)
    vae = MotionVAE(12, config).eval()
    feats = torch.randn(2, 40, 12)
    bins = torch.randint(0, 300, (2, 40))
    mask = torch.ones(2, 40)
    mask[1, 24:] = 0.0
    eps = torch.randn(2, config.latent, 10)
    both = vae.infer(feats, bins, mask, eps)
    alone = vae.infer(feats[1:, :24], bins[1:, :24], torch.ones(1, 24), eps[1:, :, :6])
    torch.testing.assert_close(both[1, :24], alone[0], atol=1e-5, rtol=1e-4)


def test_flow_prior_inverts_and_has_a_finite_density():
    config = preset("tiny").vae
    torch.manual_seed(0)
    flow = FlowPrior(config)
    for layer in flow.layers:  # leave the zero init so the couplings do something
        torch.nn.init.normal_(layer.post.weight, std=0.1)
    g = torch.randn(3, config.cond, 9)
    mask = torch.ones(3, 1, 9)
    eps = torch.randn(3, config.latent, 9)
    z = flow.sample(eps, g, mask)
    assert not torch.allclose(z, eps)
    y = z
    for layer in flow.layers:
        y, _ = layer(y, g, mask)
    torch.testing.assert_close(y, eps, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(flow.log_prob(z, g, mask)).all()
