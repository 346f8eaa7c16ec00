"""Inference lookups through dense vertex volumes (`talkingface.render.dense_lookup`)."""

import numpy as np
import pytest
import torch

from talkingface.render import dense_lookup
from talkingface.render.encoding import GridConfig, make_encoder
from tests.render.test_encoding import reference_encode


def _encoder(input_dim: int) -> torch.nn.Module:
    # Levels 4, 6, 9, 13, 20 cells: dense-indexed while (N + 1)^D <= 2^8, hashed beyond.
    config = GridConfig.from_finest(20, input_dim=input_dim, num_levels=5, base_resolution=4,
                                    log2_hashmap_size=8, implementation="torch")  # fmt: skip
    encoder = make_encoder(config)
    with torch.no_grad():
        encoder.table.normal_(generator=torch.Generator().manual_seed(input_dim))
    assert any(level.hashed for level in encoder.levels)
    assert not all(level.hashed for level in encoder.levels)
    return encoder


@pytest.mark.parametrize("input_dim", [2, 3])
@pytest.mark.parametrize("budget", [0, 200, 1 << 20])
def test_matches_the_brute_force_hash_grid(input_dim, budget):
    encoder = _encoder(input_dim)
    gen = torch.Generator().manual_seed(5)
    points = torch.cat([torch.rand(200, input_dim, generator=gen),
                        torch.zeros(1, input_dim), torch.ones(1, input_dim)])  # fmt: skip
    expected = reference_encode(encoder.config, encoder.table.detach().double().numpy(),
                                points.double().numpy())  # fmt: skip
    with torch.no_grad(), dense_lookup.dense_lookups(budget):
        got = encoder(points)
    dense = dense_lookup.dense_levels(encoder, budget)
    assert len(dense) == {0: 0, 200: 1 if input_dim == 3 else 3, 1 << 20: 5}[budget]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)  # float32 vs float64


def test_only_inside_the_block_and_without_autograd():
    encoder = _encoder(3)
    x = torch.rand(50, 3)
    assert not dense_lookup.usable(encoder, x)  # outside dense_lookups()
    with dense_lookup.dense_lookups():
        assert not dense_lookup.usable(encoder, x)  # the table needs gradients here
        with torch.no_grad():
            assert dense_lookup.usable(encoder, x)
    assert dense_lookup.active_budget() is None


def test_volumes_follow_the_table():
    encoder = _encoder(3)
    x = torch.rand(64, 3)
    with torch.no_grad(), dense_lookup.dense_lookups():
        before = encoder(x)
        encoder.table.mul_(2.0)  # an optimiser step changes the table in place
        after = encoder(x)
    torch.testing.assert_close(after, 2.0 * before)
    with torch.no_grad():
        torch.testing.assert_close(after, encoder(x), atol=2e-6, rtol=0)


def test_points_split_across_threads_come_back_in_order():
    encoder = _encoder(3)
    x = torch.rand(9001, 3, generator=torch.Generator().manual_seed(7))  # 2 parts, padded
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            expected = encoder(x)
            with dense_lookup.dense_lookups():
                got = encoder(x)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
