"""The renderer's camera, ray marching, training and checkpoints on a tiny SynthTalk avatar."""

import numpy as np
import pytest
import torch

from talkingface.render import checkpoint as rck
from talkingface.render.config import preset
from talkingface.render.data import camera_rays, load_avatar, ray_box
from talkingface.render.renderer import new_renderer, psnr, ssim
from talkingface.render.train import train
from talkingface.render.volume import RayBatch, render_rays

MOUTH = slice(48, 68)


@pytest.fixture(scope="module")
def trained(video):
    torch.manual_seed(0)
    renderer = new_renderer(preset("tiny"), video)
    before = train(renderer, video, stop_at=1)
    renderer = new_renderer(preset("tiny"), video)
    report = train(renderer, video)
    return renderer, before, report


def test_rays_through_the_projected_landmarks_pass_through_them(tiny_avatar):
    video = load_avatar(tiny_avatar)  # native 64 x 64
    for f in (0, 37, len(video) - 1):
        xy = torch.from_numpy(video.lm2d[f])
        R = torch.from_numpy(video.R[f]).expand(68, 3, 3)
        t = torch.from_numpy(video.t[f]).expand(68, 3)
        origins, dirs = camera_rays(torch.from_numpy(video.K), R, t, xy)
        to_point = torch.from_numpy(video.lm3d[f]) - origins
        along = (to_point * dirs).sum(1, keepdim=True)
        miss = (to_point - along * dirs).norm(dim=1)
        assert float(miss.max()) < 1e-3  # 0.1 mm
        np.testing.assert_allclose(dirs.norm(dim=1).numpy(), 1.0, atol=1e-6)


def test_downsampling_scales_the_camera(tiny_avatar):
    full, half = load_avatar(tiny_avatar), load_avatar(tiny_avatar, 32)
    assert half.frames.shape[1:] == (32, 32, 3) and half.K[0, 0] == pytest.approx(full.K[0, 0] / 2)
    np.testing.assert_allclose(half.lm2d, full.lm2d / 2, atol=1e-5)
    block = full.frames[3, :2, :2].astype(float).mean((0, 1))
    np.testing.assert_allclose(half.frames[3, 0, 0], np.rint(block), atol=1)
    with pytest.raises(ValueError, match="must divide"):
        load_avatar(tiny_avatar, 48)


def test_ray_box():
    origins = torch.tensor([[0.0, 0.0, -10.0], [0.0, 5.0, -10.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = ray_box(origins, dirs, 2.0)
    assert hit.tolist() == [True, False]
    assert (float(near[0]), float(far[0])) == pytest.approx((8.0, 12.0))


def test_empty_space_renders_the_background_exactly(video):
    renderer = new_renderer(preset("tiny"), video)
    renderer.occupancy.carve.zero_()
    origins = torch.tensor([[0.0, 0.0, -10.0]]).repeat(4, 1)
    dirs = torch.nn.functional.normalize(
        torch.randn(4, 3) * 0.05 + torch.tensor([0, 0, 1.0]), dim=1
    )
    background = torch.rand(4, 3)
    cond = renderer.field.encode_landmarks(torch.from_numpy(video.lm3d[:4]))
    out = render_rays(
        renderer.field, RayBatch(origins, dirs, cond, background), renderer.occupancy, 16
    )
    assert torch.equal(out.rgb, background) and out.samples == 0 and float(out.alpha.max()) == 0


def test_tiny_training_raises_psnr(trained):
    _, before, report = trained
    assert report.val_psnr > before.val_psnr + 1.0, (before.val_psnr, report.val_psnr)
    assert 0 < report.occupancy < 1 and report.samples_per_ray < preset("tiny").samples
    assert [h["step"] for h in report.history] == [40, 80]


def test_mouth_landmarks_change_the_mouth_not_the_background(trained, video):
    renderer, _, _ = trained
    f = video.val[0]
    lm = np.repeat(video.lm3d[f : f + 1], 2, axis=0).copy()
    # The mouth of the training frame where it is open widest (rendering clamps landmarks
    # to the training range, so a made-up mouth beyond it would be pulled back).
    lo, hi = video.train
    gap = video.lm3d[lo:hi, 57, 1] - video.lm3d[lo:hi, 51, 1]  # lower lip to upper, y up
    lm[1, MOUTH] = video.lm3d[lo + int(np.argmin(gap)), MOUTH]
    images, _ = renderer.render(lm, video.R[[f, f]], video.t[[f, f]], video.background)
    diff = (images[0] - images[1]).abs().sum(-1).numpy()
    occupied = _footprint(renderer, video, f)
    assert diff[~occupied].max() == 0.0  # rays that miss the head: the plate, exactly
    mouth = _mouth_box(video.lm2d[f], video.size)
    assert diff[mouth].mean() > 1e-4
    # How much of the change stays in the mouth is a matter of training (a tiny model after
    # 80 steps spreads it over the face); `eval avatar` measures it on the cpu preset.


def _footprint(renderer, video, f):
    """Pixels whose rays cross an occupied cell."""
    size = video.size
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    xy = torch.from_numpy(np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], -1)).float()
    R = torch.from_numpy(video.R[f]).expand(len(xy), 3, 3)
    t = torch.from_numpy(video.t[f]).expand(len(xy), 3)
    origins, dirs = camera_rays(renderer.K, R, t, xy)
    s = torch.linspace(0, 1, 400)
    near, far, _ = ray_box(origins, dirs, renderer.config.bound)
    pts = origins[:, None] + (near[:, None] + s * (far - near)[:, None])[..., None] * dirs[:, None]
    return renderer.occupancy.lookup(pts).any(1).reshape(size, size).numpy()


def _mouth_box(lm2d, size):
    lo = np.floor(lm2d[MOUTH].min(0) - 2).astype(int).clip(0, size)
    hi = np.ceil(lm2d[MOUTH].max(0) + 3).astype(int).clip(0, size)
    box = np.zeros((size, size), bool)
    box[lo[1] : hi[1], lo[0] : hi[0]] = True
    return box


def test_checkpoint_round_trip(trained, video, tmp_path):
    renderer, _, _ = trained
    rck.save_renderer(tmp_path / "r", renderer, video.R, video.t, video.background, {"x": 1})
    loaded, track = rck.load_renderer(tmp_path / "r")
    f = [video.val[0], video.val[0] + 3]
    a, _ = renderer.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    b, _ = loaded.render(video.lm3d[f], track["R"][f], track["t"][f], track["background"])
    assert torch.equal(a, b)
    assert rck.read_meta(tmp_path / "r")["metrics"] == {"x": 1}


def test_pose_track_replay():
    np.testing.assert_array_equal(rck.pose_indices(7, 3, "loop"), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(rck.pose_indices(7, 3, "pingpong"), [0, 1, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(rck.pose_indices(3, 4, "pingpong", start=2), [2, 3, 2])
    np.testing.assert_array_equal(rck.pose_indices(3, 1), [0, 0, 0])
    with pytest.raises(ValueError):
        rck.pose_indices(3, 3, "bounce")


def test_image_metrics():
    a = torch.rand(2, 24, 24, 3)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) > 100
    noisy = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert 15 < psnr(a, noisy) < 25 and ssim(a, noisy) < 0.95


def test_so3_exp_is_rodrigues():
    from scipy.spatial.transform import Rotation

    from talkingface.render.poses import so3_exp

    w = np.concatenate([np.zeros((1, 3)), 1e-5 * np.ones((1, 3)),
                        np.random.default_rng(0).normal(0, 0.7, (20, 3))])  # fmt: skip
    got = so3_exp(torch.from_numpy(w)).numpy()
    assert np.allclose(got, Rotation.from_rotvec(w).as_matrix(), atol=1e-9)
    zero = torch.zeros(1, 3, requires_grad=True)  # differentiable at zero: d/dw R = [dw]x
    so3_exp(zero)[0, 0, 1].backward()
    assert np.allclose(zero.grad.numpy(), [[0, 0, -1]])


def test_held_out_poses_get_the_correction_their_pose_predicts(video):
    """The refinement's linear part (a function of the estimated pose, learned on the
    training frames) corrects held-out frames; the training frames add their own residual."""
    from scipy.spatial.transform import Rotation

    from talkingface.render.poses import PoseRefinement, corrected_track, pose_features

    train_frames = np.arange(*video.train)
    features = pose_features(video.R, video.t, train_frames)
    refinement = PoseRefinement(features, len(train_frames))
    slope = np.zeros((6, 6), np.float32)
    slope[0, 0] = 0.25  # the first axis-angle component read 0.8x: put back 1/0.8 - 1
    residual = np.random.default_rng(1).normal(0, 0.01, (len(train_frames), 6))
    with torch.no_grad():
        refinement.linear.copy_(torch.from_numpy(slope))
        refinement.residual.copy_(torch.from_numpy(residual))
    R, t, _ = corrected_track(video, train_frames, refinement)
    lo, hi = video.val
    turn = np.asarray(video.R, np.float64).transpose(0, 2, 1) @ R  # R = R_est exp([w]x)
    got = Rotation.from_matrix(turn).as_rotvec()
    assert np.allclose(got[lo:hi, 0], 0.25 * features[lo:hi, 0], atol=1e-5)  # predicted
    assert np.allclose(got[lo:hi, 1:], 0.0, atol=1e-5) and np.allclose(t[lo:hi], video.t[lo:hi])
    f = train_frames[7]
    assert np.allclose(got[f], [0.25 * features[f, 0], 0, 0] + residual[7, :3], atol=1e-5)
    assert np.allclose(t[f] - video.t[f], residual[7, 3:], atol=1e-6)


def test_refining_poses_with_the_field_undoes_a_pose_error(tiny_avatar):
    """Training poses shifted by known errors (~2 px, zero mean) come back towards the truth
    when refined with the field."""
    from dataclasses import replace

    video = load_avatar(tiny_avatar)  # 64 x 64
    lo, hi = video.train
    rng = np.random.default_rng(3)
    error = np.zeros_like(video.t)
    error[lo:hi, :2] = rng.uniform(-0.1, 0.1, (hi - lo, 2))  # canonical units: ~2 px here
    error[lo:hi] -= error[lo:hi].mean(axis=0)
    wrong = replace(video, t=(video.t + error).astype(np.float32))
    config = replace(preset("tiny"), size=64, steps=240, refine_poses=True, pose_start=40,
                     pose_lr=3e-3, val_every=1000)  # fmt: skip
    torch.manual_seed(0)
    report = train(new_renderer(config, wrong), wrong)
    left = np.linalg.norm((report.t - video.t)[lo:hi, :2], axis=1)
    before = np.linalg.norm(error[lo:hi, :2], axis=1)
    assert np.median(left) < 0.6 * np.median(before), (np.median(left), np.median(before))


def test_aligning_held_out_poses_with_the_frozen_field_undoes_a_pose_error(tiny_avatar):
    """`align_poses`: held-out poses shifted by known errors (~2 px) come back towards the
    truth, the field's weights untouched, and the head renders closer to the frames."""
    from dataclasses import replace

    from talkingface.render.evaluate import psnr_where
    from talkingface.render.poses import align_poses

    video = load_avatar(tiny_avatar)  # 64 x 64
    config = replace(preset("tiny"), size=64, steps=240, val_every=1000)
    torch.manual_seed(0)
    renderer = new_renderer(config, video)
    train(renderer, video)
    frames = np.arange(*video.val)
    rng = np.random.default_rng(4)
    error = np.zeros((len(frames), 3), np.float32)
    error[:, :2] = rng.choice([-1.0, 1.0], (len(frames), 2)) * rng.uniform(
        0.06, 0.1, (len(frames), 2)
    )
    wrong = replace(video, t=np.array(video.t))
    wrong.t[frames] += error
    weights = {k: v.clone() for k, v in renderer.field.state_dict().items()}
    R, t, moved = align_poses(renderer, wrong, frames, steps=120, rays=2048)
    assert all(torch.equal(v, renderer.field.state_dict()[k]) for k, v in weights.items())
    before = np.linalg.norm(error[:, :2], axis=1)
    left = np.linalg.norm((t - video.t[frames])[:, :2], axis=1)
    assert np.median(left) < 0.5 * np.median(before), (np.median(left), np.median(before))
    assert moved["steps"] == 120 and moved["shift_median"] > 0

    def head_psnr(R_, t_):
        with torch.no_grad():
            out, _ = renderer.render(video.lm3d[frames], R_, t_, video.background)
        truth = np.asarray(video.frames[frames], np.float32) / 255
        return psnr_where(out.numpy(), truth, np.asarray(video.masks[frames]))

    assert head_psnr(R, t) > head_psnr(wrong.R[frames], wrong.t[frames]) + 1.0
    headless = replace(video, masks=np.zeros_like(video.masks))
    with pytest.raises(ValueError, match="head masks are empty"):
        align_poses(renderer, headless, frames, steps=1)


def test_the_silhouette_loss_makes_the_head_opaque_in_its_mask_and_clear_outside(video):
    """`alpha_weight`: the head's accumulated opacity on training rays moves towards the head
    mask (1 inside, 0 outside, the torso included) compared with colour alone."""
    from talkingface.render.train import RaySampler

    lo, hi = video.train
    errors = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        renderer = new_renderer(preset("tiny", alpha_weight=weight), video)
        train(renderer, video)
        sampler = RaySampler(video, np.arange(lo, hi), seed=5, with_torso=True)
        frame, xy, _, bg, inside = sampler.sample(4096)
        origins, dirs = camera_rays(renderer.K, sampler.R[frame], sampler.t[frame], xy)
        with torch.no_grad():
            cond = renderer.field.encode_landmarks(sampler.lm3d[frame])
            out = render_rays(renderer.field, RayBatch(origins, dirs, cond, bg),
                              renderer.occupancy, renderer.config.samples)  # fmt: skip
        assert inside.any() and not inside.all()
        errors[weight] = float((out.alpha - inside).abs().mean())
    assert errors[1.0] < 0.7 * errors[0.0], errors
