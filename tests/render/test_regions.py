"""Eye and lip regions: the eye-opening ratio, the region share of the ray sampler, the eye
condition of the field, and training with all of it on."""

import dataclasses

import numpy as np
import pytest
import torch

from talkingface.render import checkpoint as rck
from talkingface.render.config import preset
from talkingface.render.regions import draw_in_boxes, eye_ratio, eye_ratios, landmark_boxes
from talkingface.render.renderer import new_renderer
from talkingface.render.train import RaySampler, train


def eye_shape(points: np.ndarray, lid: float) -> np.ndarray:
    """Both eyes of `points` [68, 2] as hexagons 4 wide with lids `lid` above and below."""
    points = points.copy()
    for corner_a, corner_b, up, low, x0 in ((36, 39, (37, 38), (41, 40), 0.0),
                                            (42, 45, (43, 44), (47, 46), 10.0)):  # fmt: skip
        points[corner_a] = (x0, 0.0)
        points[corner_b] = (x0 + 4.0, 0.0)
        points[list(up)] = [(x0 + 1.0, lid), (x0 + 3.0, lid)]
        points[list(low)] = [(x0 + 1.0, -lid), (x0 + 3.0, -lid)]
    return points


def test_eye_ratio_of_known_shapes():
    base = np.zeros((68, 2))
    # gaps 2 * lid each, two of them, over twice the width 4: lid / 2
    assert eye_ratio(eye_shape(base, 1.0)) == pytest.approx(0.5)
    assert eye_ratio(eye_shape(base, 0.4)) == pytest.approx(0.2)
    assert eye_ratio(eye_shape(base, 0.0)) == pytest.approx(0.0)
    one_closed = eye_shape(base, 1.0)
    one_closed[[43, 44, 46, 47], 1] = 0.0
    assert eye_ratios(one_closed).tolist() == pytest.approx([0.5, 0.0])
    # scale-free, and 3-D points read the same
    flat3d = np.concatenate([eye_shape(base, 1.0) * 7.0, np.ones((68, 1))], axis=1)
    assert eye_ratio(flat3d) == pytest.approx(0.5)


def test_synthtalk_blinks_close_the_landmark_eyes(video):
    ratio = eye_ratio(video.lm3d)
    assert np.median(ratio) > 0.15 and ratio.min() < 0.05


def in_boxes(flat: torch.Tensor, lm2d: np.ndarray, size: int) -> torch.Tensor:
    """Whether flat pixel indices lie within 2 px of a frame's eye or outer-lip points."""
    frame, pixel = flat // (size * size), flat % (size * size)
    y, x = (pixel // size).numpy() + 0.5, (pixel % size).numpy() + 0.5
    hit = np.zeros(len(flat), bool)
    for part in (range(36, 42), range(42, 48), range(48, 60)):
        pts = lm2d[frame.numpy()][:, list(part)]
        lo, hi = pts.min(1) - 3, pts.max(1) + 3
        hit |= (x >= lo[:, 0]) & (x <= hi[:, 0]) & (y >= lo[:, 1]) & (y <= hi[:, 1])
    return torch.from_numpy(hit)


def test_sampler_puts_the_region_share_in_the_eye_and_lip_boxes(video):
    frames = np.arange(*video.train)
    lm2d = video.lm2d[frames]
    shares = {}
    for share in (0.0, 0.4):
        sampler = RaySampler(video, frames, seed=3, region_share=share)
        n = 4000
        frame, xy, target, _, _ = sampler.sample(n)
        pixel = (xy[:, 1] - 0.5).long() * video.size + (xy[:, 0] - 0.5).long()
        drawn = frame * video.size**2 + pixel
        assert torch.equal(target, sampler.pixels[drawn].float() / 255)
        shares[share] = float(in_boxes(drawn, lm2d, video.size).float().mean())
    assert shares[0.4] >= 0.4
    assert shares[0.4] > shares[0.0] + 0.2


def test_draw_in_boxes_stays_inside():
    boxes = torch.tensor([[[2, 3, 5, 4], [0, 0, 0, 0]], [[10, 10, 12, 14], [1, 1, 2, 2]]])
    flat = draw_in_boxes(boxes, 3000, 16, torch.Generator().manual_seed(0))
    f, pixel = flat // 256, flat % 256
    i, j = pixel // 16, pixel % 16
    inside = torch.zeros_like(flat, dtype=torch.bool)
    for frame, box in ((0, (2, 3, 5, 4)), (1, (10, 10, 12, 14)), (1, (1, 1, 2, 2))):
        x0, y0, x1, y1 = box
        inside |= (f == frame) & (j >= x0) & (j < x1) & (i >= y0) & (i < y1)
    empty = (f == 0) & ~inside  # frame 0's empty box: anywhere in the frame
    assert bool((inside | empty).all()) and 0.2 < float(empty.float().mean()) < 0.3
    assert set(torch.unique(i[f == 0][~empty[f == 0]]).tolist()) == {3}


def test_landmark_boxes_cover_the_points(video):
    boxes = landmark_boxes(video.lm2d[:5], video.size, margin=1)
    lm = video.lm2d[:5]
    assert boxes.shape == (5, 3, 4)
    assert (boxes[:, 0, 0] <= np.floor(lm[:, 36:42, 0].min(1))).all()
    assert (boxes[:, 2, 3] >= np.ceil(lm[:, 48:60, 1].max(1))).all()


def test_the_eye_condition_changes_the_field(video):
    torch.manual_seed(0)
    config = dataclasses.replace(preset("tiny"), eye_condition=True)
    renderer = new_renderer(config, video)
    fld = renderer.field
    usual = fld.lm_mean.reshape(1, 68, 3).clone()
    closed = usual.clone()
    closed[:, [37, 38, 43, 44]] = closed[:, [41, 40, 47, 46]]  # upper lids onto the lower
    cond_open, cond_closed = fld.encode_landmarks(usual), fld.encode_landmarks(closed)
    assert cond_open.shape == (1, config.cond_dim + 2)
    assert cond_open[0, -2:].tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    assert cond_closed[0, -2:].tolist() == pytest.approx([-1.0, -1.0], abs=1e-5)
    # only the eye part differs: the field's output still changes
    swapped = torch.cat([cond_open[:, :-2], cond_closed[:, -2:]], dim=1)
    x = torch.rand(64, 3) - 0.5
    dirs = torch.nn.functional.normalize(torch.randn(64, 3), dim=1)
    with torch.no_grad():
        s_open, c_open = fld(x, cond_open.expand(64, -1), dirs)
        s_closed, c_closed = fld(x, swapped.expand(64, -1), dirs)
    assert not torch.allclose(s_open, s_closed) and not torch.allclose(c_open, c_closed)
    plain = new_renderer(preset("tiny"), video).field
    assert plain.encode_landmarks(usual).shape == (1, preset("tiny").cond_dim)


def test_training_with_eyes_regions_and_lip_patches(video):
    config = dataclasses.replace(
        preset("tiny"), eye_condition=True, region_share=0.3, lip_patch=8, lip_patch_weight=0.05
    )
    renderer = new_renderer(config, video)
    report = train(renderer, video, stop_at=6)
    assert np.isfinite(report.val_psnr) and report.steps == 6


def test_an_eye_conditioned_renderer_round_trips(video, tmp_path):
    torch.manual_seed(1)
    renderer = new_renderer(preset("tiny", eye_condition=True), video)
    rck.save_renderer(tmp_path / "r", renderer, video.R, video.t, video.background)
    loaded, track = rck.load_renderer(tmp_path / "r")
    assert loaded.config.eye_condition and loaded.field.eye_dim == 2
    f = [video.val[0]]
    a, _ = renderer.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    b, _ = loaded.render(video.lm3d[f], track["R"][f], track["t"][f], track["background"])
    assert torch.equal(a, b)


def test_config_checks_the_new_fields():
    with pytest.raises(ValueError, match="region_share"):
        preset("tiny", region_share=1.0)
    with pytest.raises(ValueError, match="lip_patch"):
        preset("tiny", lip_patch=4)
