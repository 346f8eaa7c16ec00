"""Hash-grid encoder: exactness against an independent reference, gradients against finite
differences, the table layout (dense levels collision-free, hashed levels in bounds), the
configuration schema shared with tiny-cuda-nn, and backend selection."""

import itertools
import json
import logging
import math

import numpy as np
import pytest
import torch

from talkingface.render.encoding import (
    EncoderBackendError,
    GridConfig,
    HashGridEncoder,
    make_encoder,
    per_level_scale_for,
    tcnn_status,
)

PRIMES = (1, 2654435761, 805459861, 3674653429)
TCNN_USABLE = tcnn_status()[0]


def tiny_config(input_dim: int, **overrides) -> GridConfig:
    """Three levels (res 2, 4, 8) over a 32-row table: 2-D has two dense levels and a hashed
    one (81 vertices > 32 rows); 3-D one dense level (27 vertices) and two hashed."""
    fields = dict(
        input_dim=input_dim,
        num_levels=3,
        base_resolution=2,
        per_level_scale=2.0,
        log2_hashmap_size=5,
        implementation="torch",
    )
    return GridConfig(**(fields | overrides))


def filled_encoder(config: GridConfig, seed: int = 0) -> HashGridEncoder:
    """A float64 encoder with O(1) random table entries (the 1e-4 init hides mistakes)."""
    torch.manual_seed(seed)
    encoder = make_encoder(config).double()
    with torch.no_grad():
        encoder.table.normal_()
    return encoder


def reference_row(config: GridConfig, level: int, vertex) -> int:
    """Row of a vertex in the flat table, from the layout the module docstring describes."""
    resolutions = [
        math.floor(config.base_resolution * config.per_level_scale**lv + 1e-6)
        for lv in range(level + 1)
    ]
    t = 2**config.log2_hashmap_size
    offset = sum(min((n + 1) ** config.input_dim, t) for n in resolutions[:level])
    n = resolutions[level]
    if (n + 1) ** config.input_dim <= t:
        return offset + sum(int(v) * (n + 1) ** d for d, v in enumerate(vertex))
    h = 0
    for d, v in enumerate(vertex):
        h ^= (int(v) * PRIMES[d]) & 0xFFFFFFFF
    return offset + h % t


def reference_encode(config: GridConfig, table: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Brute-force D-linear interpolation, one point, level and corner at a time."""
    dims = config.input_dim
    out = []
    for p in points:
        features = []
        for level, n in enumerate(config.resolutions()):
            q = np.clip(p, 0.0, 1.0) * n
            low = np.minimum(np.floor(q), n - 1).astype(int)
            t = q - low
            acc = np.zeros(table.shape[1])
            for corner in itertools.product((0, 1), repeat=dims):
                weight = np.prod([t[d] if corner[d] else 1 - t[d] for d in range(dims)])
                acc += weight * table[reference_row(config, level, low + np.array(corner))]
            features.append(acc)
        out.append(np.concatenate(features))
    return np.array(out)


def away_from_grid_lines(config: GridConfig, count: int, seed: int) -> torch.Tensor:
    """Random points at least 1e-3 cells from every level's grid lines (kinks of the
    piecewise-linear encoding, where finite differences are meaningless)."""
    gen = torch.Generator().manual_seed(seed)
    points = []
    while len(points) < count:
        p = torch.rand(config.input_dim, generator=gen, dtype=torch.float64)
        if all(((p * n) % 1 - 0.5).abs().max() < 0.499 for n in config.resolutions()):
            points.append(p)
    return torch.stack(points)


@pytest.mark.parametrize("input_dim", [2, 3, 4])
def test_matches_bruteforce_reference(input_dim):
    config = tiny_config(input_dim, num_levels=4, log2_hashmap_size=8, base_resolution=3)
    encoder = filled_encoder(config)
    points = torch.rand(40, input_dim, dtype=torch.float64)
    points[:4] = torch.tensor([0.0, 1.0]).repeat(input_dim)[:input_dim]  # the cube's corners
    points[4] = 1.0
    expected = reference_encode(config, encoder.table.detach().numpy(), points.numpy())
    np.testing.assert_allclose(encoder(points).detach().numpy(), expected, rtol=0, atol=1e-12)


def test_float32_matches_reference_and_keeps_dtype():
    config = GridConfig(input_dim=3, num_levels=6, log2_hashmap_size=10, implementation="torch")
    encoder = make_encoder(config)
    with torch.no_grad():
        encoder.table.normal_()
    points = torch.rand(300, 3)
    out = encoder(points)
    assert out.dtype == torch.float32 and out.shape == (300, config.output_dim)
    table = encoder.table.detach().double().numpy()
    expected = reference_encode(config, table, points.double().numpy())
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("input_dim", [2, 3])
def test_exact_at_vertices_and_linear_along_edges(input_dim):
    config = tiny_config(input_dim)
    encoder = filled_encoder(config)
    table = encoder.table.detach()
    level, n = 0, config.resolutions()[0]
    assert (n + 1) ** input_dim <= config.hashmap_size  # level 0 is dense
    features = config.features_per_level
    for vertex in itertools.product(range(n + 1), repeat=input_dim):
        x = torch.tensor(vertex, dtype=torch.float64) / n
        got = encoder(x.unsqueeze(0))[0, level * features : (level + 1) * features]
        row = sum(v * (n + 1) ** d for d, v in enumerate(vertex))
        torch.testing.assert_close(got, table[row], rtol=0, atol=1e-12)
    # Along an axis-parallel segment inside one cell every level's output is linear.
    start = torch.full((input_dim,), 0.3, dtype=torch.float64)
    ts = torch.linspace(0, 1, 5, dtype=torch.float64).unsqueeze(1)
    step = torch.zeros(input_dim, dtype=torch.float64)
    step[-1] = 1e-2  # 0.08 cells at the finest level: no line crossed from 0.3
    out = encoder(start + ts * step).detach()
    torch.testing.assert_close(out[2] - out[1], out[1] - out[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[4] - out[2], 2 * (out[2] - out[1]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("input_dim", [2, 3])
def test_gradients_match_central_differences(input_dim):
    config = tiny_config(input_dim)
    hashed = [level.hashed for level in config.levels()]
    assert not hashed[0] and hashed[-1]  # both kinds of level exercised
    encoder = filled_encoder(config, seed=input_dim)
    x = away_from_grid_lines(config, 5, seed=input_dim).requires_grad_(True)
    probe = torch.randn(5, config.output_dim, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (encoder(x) * probe).sum()

    loss().backward()
    eps = 1e-6
    with torch.no_grad():
        numeric_table = torch.zeros_like(encoder.table)
        for i in range(encoder.table.numel()):
            entry = encoder.table.view(-1)[i : i + 1]
            entry += eps
            up = loss()
            entry -= 2 * eps
            down = loss()
            entry += eps
            numeric_table.view(-1)[i] = (up - down) / (2 * eps)
        numeric_x = torch.zeros_like(x)
        for i in range(x.numel()):
            x.view(-1)[i] += eps
            up = loss()
            x.view(-1)[i] -= 2 * eps
            down = loss()
            x.view(-1)[i] += eps
            numeric_x.view(-1)[i] = (up - down) / (2 * eps)
    assert encoder.table.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    torch.testing.assert_close(encoder.table.grad, numeric_table, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x.grad, numeric_x, rtol=1e-6, atol=1e-6)


def test_upper_boundary_uses_the_last_cell():
    """x_d = 1 lies on the last vertex; it must be interpolated (and differentiated) inside
    the grid's last cell, never from a cell beyond it (all-dense grid: no row to spare)."""
    config = tiny_config(2, log2_hashmap_size=8)
    assert not any(level.hashed for level in config.levels())
    encoder = filled_encoder(config)
    x = torch.tensor([[1.0, 0.3], [0.7, 1.0]], dtype=torch.float64, requires_grad=True)
    probe = torch.randn(2, config.output_dim, dtype=torch.float64)
    (encoder(x) * probe).sum().backward()
    eps = 1e-7
    with torch.no_grad():
        for i in range(2):
            inside = x.detach().clone()
            inside[i, i] -= eps  # the coordinate that is 1
            slope = ((encoder(x) - encoder(inside)) * probe).sum() / eps
            torch.testing.assert_close(x.grad[i, i], slope, rtol=1e-5, atol=1e-5)


def test_outside_the_unit_cube_is_clamped():
    config = tiny_config(3)
    encoder = filled_encoder(config)
    x = torch.rand(50, 3, dtype=torch.float64) * 1.4 - 0.2
    x.requires_grad_(True)
    probe = torch.randn(50, config.output_dim, dtype=torch.float64)
    out = encoder(x)
    (out * probe).sum().backward()
    torch.testing.assert_close(out, encoder(x.detach().clamp(0, 1)), rtol=0, atol=0)
    outside = (x < 0) | (x > 1)
    assert outside.any() and (x.grad[outside] == 0).all() and (x.grad[~outside] != 0).all()


def test_no_input_gradient_unless_asked_and_graph_can_be_retained():
    encoder = make_encoder(tiny_config(3))
    x = torch.rand(10, 3)
    out = encoder(x).sum()
    out.backward(retain_graph=True)
    assert x.grad is None and encoder.table.grad is not None
    once = encoder.table.grad.clone()
    out.backward()
    torch.testing.assert_close(encoder.table.grad, 2 * once)


def vertex_rows(config: GridConfig, level: int) -> tuple[torch.Tensor, list]:
    """The table row every vertex of `level` reads, recovered through the public forward:
    with table[r] = r, the output at a vertex is that vertex's row number."""
    encoder = make_encoder(config).double()
    with torch.no_grad():
        encoder.table[:, 0] = torch.arange(encoder.table.shape[0], dtype=torch.float64)
    n = config.resolutions()[level]
    vertices = list(itertools.product(range(n + 1), repeat=config.input_dim))
    x = torch.tensor(vertices, dtype=torch.float64) / n
    out = encoder(x).detach()[:, level * config.features_per_level]
    return out.round().long(), vertices


@pytest.mark.parametrize("input_dim", [2, 3])
def test_dense_levels_are_collision_free_and_hashed_levels_in_bounds(input_dim):
    config = tiny_config(input_dim)
    offset = 0
    for index, level in enumerate(config.levels()):
        assert level.offset == offset
        rows, vertices = vertex_rows(config, index)
        assert rows.min() >= offset and rows.max() < offset + level.rows
        assert rows.tolist() == [reference_row(config, index, v) for v in vertices]
        if not level.hashed:
            assert sorted(rows.tolist()) == list(range(offset, offset + level.rows))
        else:
            assert level.rows == config.hashmap_size < len(vertices)
            distinct = len(set(rows.tolist()))
            assert distinct < len(vertices)  # collisions happen
            assert distinct > 0.75 * level.rows  # and the hash spreads over the table
        offset += level.rows
    assert offset == make_encoder(config).table.shape[0]


def test_level_layout_of_default_config():
    config = GridConfig()
    levels = config.levels()
    assert levels[0].resolution == 16 and levels[-1].resolution == 2048
    assert all(a.resolution <= b.resolution for a, b in itertools.pairwise(levels))
    for level in levels:
        assert level.hashed == ((level.resolution + 1) ** 3 > 2**19)
        assert level.rows == (2**19 if level.hashed else (level.resolution + 1) ** 3)
    assert not levels[0].hashed and levels[-1].hashed


def test_per_level_scale_for():
    assert per_level_scale_for(16, 2048, 16) == pytest.approx(2 ** (7 / 15))
    assert per_level_scale_for(16, 16, 1) == 1.0
    config = GridConfig.from_finest(512, num_levels=8, base_resolution=8)
    assert config.resolutions()[0] == 8 and config.resolutions()[-1] == 512
    with pytest.raises(ValueError):
        per_level_scale_for(16, 8, 4)


def test_tcnn_config_shares_the_schema():
    config = GridConfig(input_dim=3, num_levels=12, features_per_level=4, log2_hashmap_size=17)
    assert config.to_tcnn() == {
        "otype": "HashGrid",
        "n_levels": 12,
        "n_features_per_level": 4,
        "log2_hashmap_size": 17,
        "base_resolution": 16,
        "per_level_scale": config.per_level_scale,
    }


def test_dict_round_trip_through_json():
    config = GridConfig.from_finest(1024, input_dim=4, num_levels=8, implementation="torch")
    data = json.loads(json.dumps(config.to_dict()))
    assert GridConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown GridConfig fields"):
        GridConfig.from_dict(data | {"n_levels": 8})


@pytest.mark.parametrize(
    "fields",
    [
        {"input_dim": 1},
        {"input_dim": 5},
        {"features_per_level": 3},
        {"per_level_scale": 0.9},
        {"interpolation": "smoothstep"},
        {"implementation": "cuda"},
    ],
)
def test_invalid_config_is_rejected(fields):
    with pytest.raises(ValueError, match="invalid GridConfig"):
        GridConfig(**fields)


@pytest.mark.skipif(TCNN_USABLE, reason="tiny-cuda-nn is usable here")
@pytest.mark.parametrize("implementation", ["tcnn", "auto"])
def test_strict_refuses_to_fall_back(implementation):
    with pytest.raises(EncoderBackendError, match="tiny-cuda-nn"):
        make_encoder(GridConfig(implementation=implementation, strict=True))


@pytest.mark.skipif(TCNN_USABLE, reason="tiny-cuda-nn is usable here")
def test_auto_falls_back_to_torch_and_logs_it(caplog):
    small = dict(num_levels=2, log2_hashmap_size=8)
    with caplog.at_level(logging.INFO, logger="talkingface.render.encoding"):
        encoder = make_encoder(GridConfig(implementation="auto", **small))
    assert encoder.backend == "torch"
    ours = [r for r in caplog.records if r.name == "talkingface.render.encoding"]
    assert [(r.levelname, r.backend) for r in ours] == [("INFO", "torch")]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="talkingface.render.encoding"):
        assert make_encoder(GridConfig(implementation="tcnn", **small)).backend == "torch"
    assert [r.levelname for r in caplog.records if r.name == "talkingface.render.encoding"] == [
        "WARNING",
        "INFO",
    ]


def test_batch_shapes_and_bad_input():
    encoder = make_encoder(tiny_config(3))
    assert encoder.output_dim == 6
    assert encoder(torch.rand(4, 5, 3)).shape == (4, 5, 6)
    assert encoder(torch.rand(0, 3)).shape == (0, 6)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        encoder(torch.rand(4, 2))


def test_state_dict_holds_only_the_table():
    encoder = make_encoder(tiny_config(3))
    assert list(encoder.state_dict()) == ["table"]
    assert encoder.table.abs().max() <= 1e-4


@pytest.mark.gpu
def test_cuda_matches_cpu():
    config = GridConfig(input_dim=3, num_levels=8, log2_hashmap_size=12, implementation="torch")
    cpu = make_encoder(config)
    with torch.no_grad():
        cpu.table.normal_()
    gpu = make_encoder(config).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.rand(5000, 3, requires_grad=True)
    x_gpu = x.detach().cuda().requires_grad_(True)
    probe = torch.randn(5000, config.output_dim)
    (cpu(x) * probe).sum().backward()
    (gpu(x_gpu) * probe.cuda()).sum().backward()
    torch.testing.assert_close(gpu.table.grad.cpu(), cpu.table.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, rtol=1e-4, atol=1e-3)
