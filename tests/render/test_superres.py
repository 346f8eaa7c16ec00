"""Super-resolution (render.superres): the network's sizes and start, its training on patches,
a tiny avatar at 2x output trained end to end, saved, loaded and served, and the `full`
preset (a 256 x 256 NeRF -> 512 x 512 frames) end to end for a few steps on the CPU."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkingface.config import Settings
from talkingface.landmarks.bundle import avatar_index, projection_files
from talkingface.render import checkpoint as rck
from talkingface.render.config import preset
from talkingface.render.data import load_avatar
from talkingface.render.renderer import new_renderer
from talkingface.render.servicer import RendererServicer
from talkingface.render.superres import SRTraining, SuperResolution
from talkingface.render.train import train
from talkingface.storage import LocalStore
from talkingface.tensors import to_tensor
from talkingface.v1 import common_pb2
from talkingface.v1 import renderer_pb2 as pb


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads spinning against
    other jobs made these tests 4-70x slower (the full-preset test: 300 s against 67 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_an_untrained_network_is_the_bilinear_upsample_and_keeps_the_plate():
    torch.manual_seed(0)
    sr = SuperResolution(width=8, scale=2)
    rgb = torch.rand(2, 12, 10, 3)
    plate = torch.rand(1, 24, 20, 3)
    head = sr(rgb, torch.ones(2, 12, 10), plate)
    assert head.shape == (2, 24, 20, 3)
    bilinear = F.interpolate(rgb.permute(0, 3, 1, 2), size=(24, 20), mode="bilinear")
    torch.testing.assert_close(head, bilinear.permute(0, 2, 3, 1).clamp(0, 1))
    empty = sr(torch.zeros_like(rgb), torch.zeros(2, 12, 10), plate)
    assert torch.equal(empty, plate.expand(2, -1, -1, -1))  # no head: the plate, exactly
    x4 = SuperResolution(width=8, scale=4)(rgb, torch.ones(2, 12, 10), torch.rand(1, 48, 40, 3))
    assert x4.shape == (2, 48, 40, 3)


@pytest.fixture(scope="module")
def videos(tiny_avatar):
    """The tiny avatar at the NeRF's size (32) and at the 2x output size (64)."""
    return load_avatar(tiny_avatar, 32), load_avatar(tiny_avatar, 64)


def test_training_steps_reduce_the_loss_on_a_fixed_patch(videos):
    """Given the true low-resolution head layer (box filter of the truth, inside the head
    mask), a few Adam steps take the network's 2x output closer to the truth than where it
    started (the bilinear upsample)."""
    video, hires = videos
    torch.manual_seed(0)
    renderer = new_renderer(
        preset("tiny", sr_scale=2, sr_width=16, sr_patch=16, torso=False), video
    )
    training = SRTraining(renderer, video, hires, np.arange(*video.train), seed=0)
    rows, corners = training.pick(4)
    truth, plate = training.targets(rows, corners)
    frames = training.frames[rows]
    rgb = torch.stack([torch.from_numpy(video.frames[f, i : i + 16, j : j + 16]).float() / 255
                       for f, (i, j) in zip(frames, corners, strict=True)])  # fmt: skip
    alpha = torch.stack([torch.from_numpy(video.masks[f, i : i + 16, j : j + 16]).float()
                         for f, (i, j) in zip(frames, corners, strict=True)])  # fmt: skip
    rgb = rgb * alpha[..., None]  # the head layer: colours premultiplied by the alpha
    assert truth.shape == (4, 32, 32, 3) and plate.shape == (4, 32, 32, 3)
    losses = [training.fit(rgb, alpha, plate, truth) for _ in range(60)]
    assert losses[-1] < 0.85 * losses[0], losses


def test_tiny_avatar_at_twice_the_size_trains_saves_loads_and_serves(videos, tiny_avatar, tmp_path):
    video, hires = videos
    torch.manual_seed(0)
    config = preset("tiny", sr_scale=2, torso=False, steps=12, batch_rays=256, val_every=12,
                    val_frames=1, sr_start=0.5, sr_patch=16)  # fmt: skip
    renderer = new_renderer(config, video)
    report = train(renderer, video, hires=hires)
    assert [h["step"] for h in report.history] == [12]
    assert float(renderer.sr.tail.weight.detach().abs().sum()) > 0  # the network trained
    with pytest.raises(ValueError, match="at 64 x 64"):
        train(new_renderer(config, video), video)  # no frames at the output size
    directory = tmp_path / "renderer"
    rck.save_renderer(directory, renderer, video.R, video.t, hires.background)
    loaded, track = rck.load_renderer(directory)
    assert track["background"].shape == (64, 64, 3) and loaded.config.output_size == 64
    f = [video.val[0], video.val[0] + 1]
    before, _ = renderer.render(video.lm3d[f], video.R[f], video.t[f], hires.background)
    after, _ = loaded.render(video.lm3d[f], video.R[f], video.t[f], track["background"])
    assert after.shape == (2, 64, 64, 3)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="output is 64 x 64"):
        loaded.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    # Served: resolution 0 is the avatar's output size.
    store = LocalStore(tmp_path / "store")
    files = {f"{rck.RENDERER_DIR}/{name}": directory / name for name in rck.FILES}
    files.update(projection_files(avatar_index(tiny_avatar)))
    store.publish_version("avatars/sr", files)
    settings = Settings.from_env({"TALKINGFACE_STORE_DIR": str(tmp_path / "store"),
                                  "TALKINGFACE_CACHE_DIR": str(tmp_path / "cache"),
                                  "TALKINGFACE_DEVICE": "cpu"})  # fmt: skip
    request = pb.RenderRequest(avatar=common_pb2.AvatarRef(avatar_id="sr"),
                               lm3d=common_pb2.TensorPayload(inline=to_tensor(video.lm3d[f])),
                               pose_mode=pb.POSE_MODE_EXPLICIT, pose_indices=f)  # fmt: skip
    responses = list(RendererServicer(settings)._render(request))
    assert (responses[0].summary.width, responses[0].summary.height) == (64, 64)
    served = np.stack([np.frombuffer(r.frame.data, np.uint8).reshape(64, 64, 3)
                       for r in responses[1:]])  # fmt: skip
    expected = np.rint(after.numpy() * 255)
    assert np.abs(served.astype(float) - expected).max() <= 1


def test_a_renderer_saved_before_super_resolution_still_loads(videos, tmp_path):
    video, _ = videos
    renderer = new_renderer(preset("tiny", steps=2, batch_rays=128, val_frames=1), video)
    train(renderer, video)
    directory = rck.save_renderer(tmp_path / "renderer", renderer, video.R, video.t,
                                  video.background)  # fmt: skip
    meta = json.loads((directory / "config.json").read_text())
    meta["config"] = {k: v for k, v in meta["config"].items() if not k.startswith("sr_")}
    (directory / "config.json").write_text(json.dumps(meta))
    loaded, track = rck.load_renderer(directory)
    assert loaded.sr is None and loaded.config.output_size == 32
    f = [video.val[0]]
    images, _ = loaded.render(video.lm3d[f], video.R[f], video.t[f], track["background"])
    assert images.shape == (1, 32, 32, 3)


@pytest.mark.slow
def test_the_full_preset_at_512_runs_end_to_end(tmp_path):
    """The real `full` preset (256 x 256 NeRF, x2 super-resolution) for a handful of steps
    and a small batch on a 1-second SynthTalk avatar made at 512 x 512: trains (NeRF and
    network), saves, loads and renders a 512 x 512 frame."""
    from talkingface.data.synthtalk.avatar import build_avatar

    root = tmp_path / "avatar512"
    build_avatar(root, seconds=1.0, seed=3, size=512, progress=False)
    config = preset("full", steps=3, batch_rays=256, val_frames=1, carve_frames=8, sr_patch=16)
    assert (config.size, config.output_size) == (256, 512)
    video, hires = load_avatar(root, config.size), load_avatar(root, config.output_size)
    torch.manual_seed(0)
    renderer = new_renderer(config, video)
    report = train(renderer, video, hires=hires)
    assert report.steps == 3 and np.isfinite(report.val_psnr) and report.val_psnr > 10
    assert float(renderer.sr.tail.weight.detach().abs().sum()) > 0
    rck.save_renderer(tmp_path / "renderer", renderer, report.R, report.t, hires.background)
    loaded, track = rck.load_renderer(tmp_path / "renderer")
    f = [video.val[0]]
    frame, _ = loaded.render(video.lm3d[f], track["R"][f], track["t"][f], track["background"])
    assert frame.shape == (1, 512, 512, 3)
    assert float(frame.min()) >= 0 and float(frame.max()) <= 1
    truth = torch.from_numpy(hires.frames[f]).float() / 255
    assert float(((frame - truth) ** 2).mean()) < 0.1  # the plate and a rough head, not noise
