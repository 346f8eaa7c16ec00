"""The motion networks and inference: shapes, masking, the flow prior, windowing, seeds."""

import dataclasses
from pathlib import Path

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


def test_a_postnet_carries_its_calibration(model, tiny_postnet, long_input, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from talkingface.motion import checkpoint as ck

    def copy_with(name: str, weight: np.ndarray | None) -> Path:
        out = tmp_path / name
        shutil.copytree(tiny_postnet, out)
        tensors = load_file(str(out / ck.WEIGHTS))
        tensors = {k: v for k, v in tensors.items() if not k.startswith("calibration.")}
        if weight is not None:
            tensors["calibration.weight"] = torch.from_numpy(weight)
        save_file(tensors, str(out / ck.WEIGHTS))
        return out

    feats, bins = long_input
    # A postnet from before calibrations existed loads without one.
    old = PostnetModel.load(copy_with("old", None))
    assert old.calibration is None
    diagonal = np.linspace(0.5, 1.5, 204, dtype=np.float32).reshape(68, 3)
    weight = np.einsum("pi,ij->pij", diagonal, np.eye(3, dtype=np.float32))  # [68, 3, 3]
    pm = PostnetModel.load(copy_with("calibrated", weight))
    np.testing.assert_array_equal(pm.calibration, weight)
    assert pm.version != old.version  # the weights' digest covers it
    # applied after the postnet, wherever the postnet runs
    np.testing.assert_allclose(
        model.predict(feats, bins, seed=2, postnet=pm),
        model.predict(feats, bins, seed=2, postnet=old) * diagonal.reshape(-1),
        atol=1e-5,
    )
    # A calibration of another shape is refused, saying what to do.
    with pytest.raises(ValueError, match="retrain the postnet"):
        PostnetModel.load(copy_with("full", np.eye(204, dtype=np.float32)))


def test_calibration_recovers_a_linear_reading(model, tiny_postnet, tiny_data):
    """Landmarks that are a known linear map of the postnet's output, point by point (a
    tracker that reads the mouth wider, the jaw otherwise): the ridge fit finds the map, and
    the calibrated postnet reproduces those landmarks."""
    from talkingface.motion.adapt import fit_calibration

    utts, _ = tiny_data
    loaded = PostnetModel.load(tiny_postnet)
    pm = PostnetModel(loaded.net, loaded.stats, loaded.meta, loaded.version)  # uncalibrated
    rng = np.random.default_rng(0)
    # each point's motion read through its own 3 x 3 map
    truth_map = np.einsum("pi,ij->pij", rng.uniform(0.6, 1.6, (68, 3)), np.eye(3))
    truth_map += rng.normal(0, 0.1, (68, 3, 3))

    def read_through(maps: np.ndarray, motion: np.ndarray) -> np.ndarray:
        return np.einsum("tpi,pij->tpj", motion.reshape(len(motion), 68, 3), maps)

    read = []
    for u in utts[:6]:
        x = model.predict(u.features, u.f0_bins, seed=0, postnet=pm)
        lm = model.stats.lm3d(read_through(truth_map, x), pm.mean_face)
        read.append(dataclasses.replace(u, lm3d=lm, mean_face=pm.mean_face))
    fitted = fit_calibration(model, pm, read, pm.mean_face)
    assert fitted is not None
    assert fitted.shape == (68, 3, 3)  # one map per point
    x = np.concatenate([model.predict(u.features, u.f0_bins, seed=0, postnet=pm) for u in read])
    target = read_through(truth_map, x)
    before = np.abs(x.reshape(target.shape) - target).mean()
    after = np.abs(read_through(fitted, x) - target).mean()
    assert after < 0.05 * before
    calibrated = PostnetModel(pm.net, pm.stats, pm.meta, pm.version, fitted)
    u = read[0]
    np.testing.assert_allclose(
        model.generate(u.features, u.f0_bins, seed=0, postnet=calibrated), u.lm3d, atol=2e-3
    )


def test_no_calibration_where_none_helps(model, tiny_postnet, tiny_data):
    """Landmarks that are the postnet's own output: no map beats none, so none is kept."""
    from talkingface.motion.adapt import fit_calibration

    utts, _ = tiny_data
    loaded = PostnetModel.load(tiny_postnet)
    pm = PostnetModel(loaded.net, loaded.stats, loaded.meta, loaded.version)  # uncalibrated
    same = []
    for u in utts[:6]:
        lm = model.generate(u.features, u.f0_bins, seed=0, postnet=pm)
        same.append(dataclasses.replace(u, lm3d=lm, mean_face=pm.mean_face))
    assert fit_calibration(model, pm, same, pm.mean_face) is None
    assert fit_calibration(model, pm, [], pm.mean_face) is None


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
