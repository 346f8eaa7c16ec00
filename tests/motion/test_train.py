"""Training: losses fall, checkpoints round-trip, an interrupted run resumes exactly."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from talkingface.motion import checkpoint as ck
from talkingface.motion.infer import MotionModel, SyncScorer
from talkingface.motion.train import default_config, train_motion, train_syncnet


def _train_rows(directory, key):
    history = json.loads((directory / ck.HISTORY).read_text())
    return [row[key] for row in history if row["kind"] == "train" and key in row]


def test_checkpoint_directories_are_complete(tiny_ckpt):
    for name in ("syncnet", "motion"):
        directory = tiny_ckpt / name
        for file in (ck.WEIGHTS, ck.CONFIG, ck.STATE, ck.HISTORY, ck.CURVES):
            assert (directory / file).is_file(), f"{name}/{file} missing"
        assert (directory / ck.CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        meta = ck.read_meta(directory)
        assert meta["finished"] is True
        assert meta["config"]["preset"] == "tiny"
        assert meta["feature_dim"] == 80


def test_motion_losses_fall(tiny_data, tmp_path):
    _, corpus = tiny_data
    config = default_config("tiny", "full", 5, 80)
    config.loss.sync = 0.0  # no sync expert needed for this check
    config.motion_plan.val_every = config.motion_plan.ckpt_every = 80
    (tmp_path / "syncnet").mkdir()
    train_syncnet(corpus, tmp_path, default_config("tiny", "full", 5, 2), progress=False)
    train_motion(corpus, tmp_path, config, progress=False, device="cpu")
    l2 = _train_rows(tmp_path / "motion", "l2")
    assert len(l2) == 8
    assert np.mean(l2[-2:]) < 0.8 * np.mean(l2[:2]), l2


def test_syncnet_learns_alignment(tiny_ckpt):
    history = json.loads((tiny_ckpt / "syncnet" / ck.HISTORY).read_text())
    losses = [r["loss"] for r in history if r["kind"] == "train"]
    assert losses[-1] < losses[0], losses
    val = [r for r in history if r["kind"] == "val"][-1]
    assert val["val_cos_gap"] > 0.0  # aligned pairs score above mismatched ones


def test_weights_round_trip_through_safetensors(tiny_ckpt):
    model = MotionModel.load(tiny_ckpt / "motion", device="cpu")
    stored = load_file(str(tiny_ckpt / "motion" / ck.WEIGHTS))
    for key, value in model.vae.state_dict().items():
        torch.testing.assert_close(stored[f"vae.{key}"], value, rtol=0, atol=0)
    assert model.stats.delta_scale == pytest.approx(float(stored["stats.delta_scale"][0]))
    again = MotionModel.load(tiny_ckpt / "motion", device="cpu")
    assert again.version == model.version
    scorer = SyncScorer.load(tiny_ckpt / "syncnet")
    assert scorer.window == 5


def test_sync_score_of_sequences_shorter_than_the_offsets(tiny_ckpt, tiny_data):
    """10 frames make 6 windows: offsets of 6 or more frames are skipped (NaN), not wrapped."""
    utts, _ = tiny_data
    u = max(utts, key=lambda u: u.frames)
    scorer = SyncScorer.load(tiny_ckpt / "syncnet")
    sims = scorer.offsets(u.features[:10], u.lm3d[:10], u.mean_face)
    assert np.isfinite(sims[3:-3]).all() and np.isnan(sims[[0, 1, 2, -3, -2, -1]]).all()
    assert np.isfinite(scorer.score([(u.features[:10], u.lm3d[:10], u.mean_face)])["sync_conf"])


def test_interrupted_training_resumes_to_the_same_weights(tiny_data, tmp_path):
    _, corpus = tiny_data
    config = default_config("tiny", "full", 9, 20)
    config.motion_plan.val_every = 10
    config.motion_plan.ckpt_every = 20
    for run in ("straight", "resumed"):
        train_syncnet(corpus, tmp_path / run, default_config("tiny", "full", 9, 2), progress=False)
    train_motion(corpus, tmp_path / "straight", config, progress=False, device="cpu")
    train_motion(corpus, tmp_path / "resumed", config, progress=False, device="cpu", stop_at=10)
    assert ck.read_meta(tmp_path / "resumed" / "motion")["finished"] is False
    train_motion(corpus, tmp_path / "resumed", config, resume=True, progress=False, device="cpu")
    a = load_file(str(tmp_path / "straight" / "motion" / ck.WEIGHTS))
    b = load_file(str(tmp_path / "resumed" / "motion" / ck.WEIGHTS))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    steps = [
        r["step"]
        for r in json.loads((tmp_path / "resumed/motion" / ck.HISTORY).read_text())
        if r["kind"] == "train"
    ]
    assert steps == [10, 20]


def test_motion_training_needs_the_sync_expert(tiny_data, tmp_path):
    _, corpus = tiny_data
    with pytest.raises(FileNotFoundError, match="train syncnet"):
        train_motion(corpus, tmp_path, default_config("tiny", "full", 1, 2), progress=False)
