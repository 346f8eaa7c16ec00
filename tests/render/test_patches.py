"""The lip patch loss and the windows of rays it is computed on."""

import numpy as np
import pytest
import torch

from talkingface.render.patches import LipPatches, ssim_loss


def test_patch_loss_is_zero_for_identical_patches_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 16, 16, 3, generator=g)
    assert float(ssim_loss(a, a.clone())) == pytest.approx(0.0, abs=1e-6)
    blurred = torch.nn.functional.avg_pool2d(a.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    worse = float(ssim_loss(blurred, a))
    assert worse > 0.1
    assert float(ssim_loss((a + 0.02).clamp(0, 1), a)) < worse  # a shift keeps the structure


def test_patch_loss_has_gradients():
    a = torch.rand(1, 12, 12, 3, requires_grad=True)
    ssim_loss(a, torch.rand(1, 12, 12, 3)).backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0


def test_lip_patches_are_contiguous_windows_around_the_mouth():
    size, side = 64, 8
    lm2d = np.zeros((3, 68, 2))
    lm2d[:, 48:60] = [[20.0, 40.0]] * 12
    lm2d[1, 48:60] = [[62.0, 62.0]] * 12  # near the corner: the window is kept inside
    patches = LipPatches(lm2d, size, side, seed=0)
    flat = patches.sample(50).reshape(50, side, side)
    frame = flat // (size * size)
    i, j = (flat % (size * size)) // size, flat % size
    assert bool((frame == frame[:, :1, :1]).all())
    assert bool((torch.diff(j, dim=2) == 1).all()) and bool((torch.diff(i, dim=1) == 1).all())
    centre_x = j.float().mean((1, 2)) + 0.5
    centre_y = i.float().mean((1, 2)) + 0.5
    first = frame[:, 0, 0] != 1
    assert float((centre_x[first] - 20).abs().max()) <= 0.15 * side + 1
    assert float((centre_y[first] - 40).abs().max()) <= 0.15 * side + 1
    assert int(j.max()) == size - 1 or not bool((~first).any())
    with pytest.raises(ValueError, match="does not fit"):
        LipPatches(lm2d, 16, 32, seed=0)
