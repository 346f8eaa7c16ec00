"""The torso layer: training on the torso masks, compositing under the head, bundles with and
without it, on the tiny SynthTalk avatar (whose neck and shoulders move on their own)."""

import json

import numpy as np
import torch

from talkingface.render import checkpoint as rck
from talkingface.render.config import RenderConfig, preset
from talkingface.render.evaluate import evaluate_renderer
from talkingface.render.files import CONFIG
from talkingface.render.renderer import new_renderer
from talkingface.render.torso import new_torso, train_torso
from talkingface.render.train import RaySampler


def _train_frames(video):
    return np.arange(*video.train)


def _torso_error(torso, video, frames):
    """Mean squared error of the torso layer over the plate on the torso-mask pixels."""
    layer = torso.layer(torch.from_numpy(video.R[frames]), torch.from_numpy(video.t[frames]),
                        torch.from_numpy(video.background))  # fmt: skip
    truth = torch.from_numpy(np.asarray(video.frames[frames])).float().reshape(len(frames), -1, 3)
    where = torch.from_numpy(np.asarray(video.torso[frames])).reshape(len(frames), -1)
    return float(((layer - truth / 255) ** 2)[where].mean())


def test_the_avatar_has_torso_masks_apart_from_the_head(video):
    assert video.torso is not None and video.torso.shape == video.masks.shape
    assert video.torso.any() and not (video.torso & video.masks).any()


def test_the_torso_trains_and_its_error_falls(video):
    config = preset("tiny").torso_model
    frames = _train_frames(video)
    torch.manual_seed(0)
    torso = new_torso(config, video.R, video.t, frames)
    check = frames[::15]
    before = _torso_error(torso, video, check)
    report = train_torso(torso, video, frames, video.R, video.t, steps=60)
    after = _torso_error(torso, video, check)
    assert after < 0.5 * before, (before, after)
    losses = [h["torso_loss"] for h in report.history]
    assert losses[-1] < losses[0] and report.steps == 60


def test_the_torso_layer_follows_the_head_pose(video):
    """Two head poses give two torso layers (the deformation is conditioned on the pose),
    and the layer equals the plate where the torso is transparent."""
    frames = _train_frames(video)
    torch.manual_seed(0)
    torso = new_torso(preset("tiny").torso_model, video.R, video.t, frames)
    train_torso(torso, video, frames, video.R, video.t, steps=30)
    f = [int(frames[0]), int(frames[-1])]
    layer = torso.layer(torch.from_numpy(video.R[f]), torch.from_numpy(video.t[f]),
                        torch.from_numpy(video.background))  # fmt: skip
    assert (layer[0] - layer[1]).abs().max() > 1e-3


def test_head_training_sees_the_true_torso_as_background(video):
    frames = _train_frames(video)
    sampler = RaySampler(video, frames, seed=0, with_torso=True)
    frame, xy, target, background, inside = sampler.sample(4096)
    i = (xy[:, 1] - 0.5).long()
    j = (xy[:, 0] - 0.5).long()
    torso = torch.from_numpy(video.torso[frames])[frame, i, j]
    assert torso.any() and (~torso).any()
    assert torch.equal(background[torso], target[torso])
    plate = torch.from_numpy(video.background)[i, j]
    assert torch.equal(background[~torso], plate[~torso])
    head = torch.from_numpy(video.masks[frames])[frame, i, j]
    assert torch.equal(inside, head.float()) and not inside[torso].any()


def _renderer_with_torso(video):
    torch.manual_seed(0)
    renderer = new_renderer(preset("tiny"), video)
    frames = _train_frames(video)
    renderer.torso = new_torso(renderer.config.torso_model, video.R, video.t, frames)
    train_torso(renderer.torso, video, frames, video.R, video.t, steps=20)
    return renderer


def test_a_renderer_with_a_torso_draws_it_under_the_head_and_round_trips(video, tmp_path):
    renderer = _renderer_with_torso(video)
    f = [video.val[0], video.val[0] + 3]
    with_torso, _ = renderer.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    # With no head at all (every cell empty) the frame is the torso layer over the plate.
    renderer.occupancy.carve.zero_()
    alone, spent = renderer.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    layer = renderer.torso.layer(torch.from_numpy(video.R[f]), torch.from_numpy(video.t[f]),
                                 torch.from_numpy(video.background))  # fmt: skip
    assert spent == 0
    torch.testing.assert_close(alone.reshape(2, -1, 3), layer.clamp(0, 1))
    renderer.occupancy.carve.fill_(True)
    rck.save_renderer(tmp_path / "r", renderer, video.R, video.t, video.background)
    loaded, track = rck.load_renderer(tmp_path / "r")
    assert loaded.torso is not None and loaded.config.torso
    again, _ = loaded.render(video.lm3d[f], track["R"][f], track["t"][f], track["background"])
    assert torch.equal(with_torso, again)
    metrics = evaluate_renderer(loaded, video, max_frames=2)
    assert metrics["torso"] is True and np.isfinite(metrics["psnr_torso"])


def test_a_bundle_without_a_torso_loads_and_renders_as_before(video, tmp_path):
    """A bundle written before the torso existed: no torso tensors, no torso fields in its
    config.json. It loads without a torso layer and draws the plate around the head."""
    torch.manual_seed(0)
    renderer = new_renderer(preset("tiny", torso=False), video)
    rck.save_renderer(tmp_path / "r", renderer, video.R, video.t, video.background)
    meta = json.loads((tmp_path / "r" / CONFIG).read_text())
    del meta["config"]["torso"], meta["config"]["torso_model"]
    (tmp_path / "r" / CONFIG).write_text(json.dumps(meta))
    loaded, track = rck.load_renderer(tmp_path / "r")
    assert loaded.torso is None and not loaded.config.torso
    assert RenderConfig.from_dict(meta["config"]).torso is False
    f = [video.val[0]]
    a, _ = renderer.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    b, _ = loaded.render(video.lm3d[f], track["R"][f], track["t"][f], track["background"])
    assert torch.equal(a, b)
    loaded.occupancy.carve.zero_()
    plate, _ = loaded.render(video.lm3d[f], track["R"][f], track["t"][f], track["background"])
    assert torch.equal(plate[0], torch.from_numpy(video.background))
