"""The compiled CPU hash-grid kernel (render.kernels, csrc/hashgrid.cpp) against the
pure-PyTorch lookup it replaces: the same features and the same gradients (to the table and
to the points) for dense and hashed levels, 2-, 3- and 4-D inputs, points on the cube's faces,
one thread and several."""

import os
from pathlib import Path

import pytest
import torch

from talkingface.render import kernels
from talkingface.render.config import preset
from talkingface.render.encoding import GridConfig, HashGridEncoder
from talkingface.render.grid_lookup import FusedLookup, HashGridLookup


@pytest.fixture(scope="module")
def built():
    module = kernels.compiled()
    assert module is not None, (
        "the CPU hash-grid kernel did not build (see the warning logged by "
        "talkingface.render.kernels); this machine kind has g++ and ninja, so it must"
    )
    return module


def _encoder(config: GridConfig) -> HashGridEncoder:
    encoder = HashGridEncoder(config)
    with torch.no_grad():  # values far from the tiny initial range, so errors would show
        encoder.table.uniform_(-1.0, 1.0)
    return encoder


def _points(n: int, dims: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dims, generator=g)
    x[:8] = 1.0  # the far faces fall in the last cell
    x[8:16] = 0.0
    x[16:24, 0] = 1.0
    return x


def _both(encoder, x, grad):
    """(out, grad_x, grad_table) of the reference and of the kernel."""
    results = []
    for lookup in (HashGridLookup, FusedLookup):
        xs = x.clone().requires_grad_()
        out = lookup.apply(xs, encoder.table, encoder)
        gx, gt = torch.autograd.grad(out, [xs, encoder.table], grad)
        results.append((out.detach(), gx, gt))
    return results


CONFIGS = {
    "spatial cpu (dense and hashed levels)": GridConfig.from_finest(
        512, num_levels=12, log2_hashmap_size=16
    ),
    "landmark 2-D": GridConfig.from_finest(
        64, input_dim=2, num_levels=4, log2_hashmap_size=10, base_resolution=4
    ),
    "landmark 4-D": GridConfig.from_finest(
        64, input_dim=4, num_levels=4, log2_hashmap_size=12, base_resolution=4
    ),
    "four features": GridConfig.from_finest(
        32, num_levels=3, log2_hashmap_size=10, features_per_level=4
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_kernel_matches_the_reference_lookup(built, name):
    config = CONFIGS[name]
    encoder = _encoder(config)
    assert any(level.hashed for level in encoder.levels)
    x = _points(3000, config.input_dim, seed=1)
    grad = torch.randn(3000, config.output_dim, generator=torch.Generator().manual_seed(2))
    (ref, ref_gx, ref_gt), (out, gx, gt) = _both(encoder, x, grad)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(gt, ref_gt, atol=1e-4, rtol=1e-4)
    assert torch.allclose(gx, ref_gx, atol=1e-3, rtol=1e-4)
    assert ref_gt.abs().max() > 1.0 and ref_gx.abs().max() > 1.0  # not trivially zero


def test_several_threads_add_the_same_table_gradient(built):
    config = CONFIGS["landmark 2-D"]  # few rows: many points add into each one
    encoder = _encoder(config)
    x = _points(20000, 2, seed=3)
    grad = torch.randn(20000, config.output_dim, generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, (_, _, one) = _both(encoder, x, grad)
        torch.set_num_threads(4)
        (_, _, ref), (_, _, four) = _both(encoder, x, grad)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(four, one, atol=1e-3, rtol=1e-4)
    assert torch.allclose(four, ref, atol=1e-3, rtol=1e-4)


def test_encoders_use_the_kernel_unless_switched_off(built, monkeypatch):
    encoder = _encoder(CONFIGS["landmark 2-D"])
    x = _points(10, 2, seed=5)
    assert encoder._kernel_usable(x)
    assert not encoder._kernel_usable(x.double())
    encoder.use_kernel = False
    assert not encoder._kernel_usable(x)
    encoder.use_kernel = True
    monkeypatch.setenv(kernels.ENV, "0")
    assert kernels.compiled() is None and not encoder._kernel_usable(x)


def test_a_field_trains_the_same_with_and_without_the_kernel(built):
    """One forward and backward of the `tiny` field: the same loss and parameter gradients."""
    from talkingface.render.field import LandmarkField

    config = preset("tiny")
    torch.manual_seed(0)
    field = LandmarkField(config, torch.zeros(204), torch.ones(204))
    x = (torch.rand(500, 3) - 0.5) * 3.0
    cond = field.encode_landmarks(torch.randn(500, 68, 3))
    dirs = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    grads = []
    for use in (False, True):
        field.spatial.use_kernel = field.landmark_grid.use_kernel = use
        field.zero_grad()
        sigma, rgb = field(x, cond.detach(), dirs)
        (sigma.mean() + rgb.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in field.named_parameters()
                      if p.grad is not None})  # fmt: skip
    assert grads[0].keys() == grads[1].keys() and "spatial.table" in grads[0]
    for name, ref in grads[0].items():
        assert torch.allclose(grads[1][name], ref, atol=1e-5, rtol=1e-4), name


def test_points_off_the_grid_never_read_outside_the_table(built):
    """NaN (a diverged field) and points below the cube (the encoder clamps them first, the
    kernel does not rely on it) give numbers or NaN, never a read outside the table."""
    encoder = _encoder(CONFIGS["spatial cpu (dense and hashed levels)"])
    x = torch.tensor([[float("nan"), 0.5, 0.5], [-3.0, -1e9, 0.2], [0.5, 0.5, 0.5]])
    out = FusedLookup.apply(x, encoder.table.detach(), encoder)
    assert out.shape == (3, encoder.output_dim)
    assert torch.isfinite(out[1:]).all()
    assert torch.isnan(encoder(x[:1])).any()  # NaN in, NaN out, through the encoder too


def test_a_built_kernel_loads_past_a_lock_left_by_a_killed_build(built, tmp_path, monkeypatch):
    """torch's loader takes its build lock even when nothing is to be built, and waits for
    ever on a lock whose holder was killed: a built, stamped library is imported without it."""
    import shutil
    import subprocess
    import sys

    from torch.utils.cpp_extension import _get_build_directory

    source = Path(_get_build_directory(kernels.NAME, verbose=False))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    target = Path(_get_build_directory(kernels.NAME, verbose=False))
    shutil.copytree(source, target, dirs_exist_ok=True)
    (target / "lock").touch()  # as a build killed midway leaves it
    done = subprocess.run([sys.executable, "-m", "talkingface.render.kernels"], env=os.environ,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "CPU kernels ready" in done.stdout, done.stdout + done.stderr
    assert str(target) in done.stdout


@pytest.mark.parametrize("threads", [1, 3])
def test_occupied_samples_are_the_torch_lookups(built, threads):
    """csrc/march.cpp keeps exactly the samples that the points built in torch and looked up in
    the occupancy grid keep (same float operations): random rays from outside the cube, some
    grazing its faces and edges, through a random grid, at the cube's size and the cpu grid's."""
    from talkingface.render.data import ray_box
    from talkingface.render.march import _occupied
    from talkingface.render.volume import OccupancyGrid

    g = torch.Generator().manual_seed(5)
    grid = OccupancyGrid(64, 2.0)
    grid.carve.copy_(torch.rand(64, 64, 64, generator=g) < 0.5)
    grid.density.copy_(torch.rand(64, 64, 64, generator=g))
    grid.threshold.fill_(0.3)
    origins = torch.randn(4000, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, -6.0])
    targets = (torch.rand(4000, 3, generator=g) * 2 - 1) * 2.2
    targets[:500, 0] = 2.0  # on a face
    targets[500:1000, :2] = -2.0  # on an edge
    dirs = torch.nn.functional.normalize(targets - origins, dim=-1)
    near, far, hit = ray_box(origins, dirs, grid.bound)
    o, d, start = origins[hit], dirs[hit], near[hit]
    delta = (far[hit] - start) / 48
    mid = torch.arange(48, dtype=torch.float32) + 0.5
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        compiled = _occupied(grid, o, d, start, delta, mid)
    finally:
        torch.set_num_threads(before)
    t = start[:, None] + mid[None] * delta[:, None]
    reference = grid.lookup(o[:, None] + t[..., None] * d[:, None])
    assert compiled.dtype == torch.bool and compiled.shape == (len(o), 48)
    assert 0.1 < reference.float().mean() < 0.9  # both kinds of sample are there
    assert torch.equal(compiled, reference)
