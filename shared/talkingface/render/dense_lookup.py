"""Inference-only hash-grid lookups through dense vertex volumes and `grid_sample`.

A level of the hash grid (see `talkingface.render.encoding`) is a D-linear interpolation of
one value per vertex of an N^D cell lattice; the value of vertex v is table[row(v)], where
row(v) is the dense index or the spatial hash. Writing every vertex's value out once into a
dense [F, N+1, ..., N+1] volume ("materialising" the level) turns each lookup into one
trilinear (bilinear for D = 2) `torch.nn.functional.grid_sample` with align_corners=True:
the same vertex values, the same weights, one fused multi-threaded kernel instead of ~25
tensor passes (hashing, gather, weights, sums) over [2^D, B] temporaries. The result equals
the hash lookup up to float rounding (a few 1e-7 relative); hash collisions are kept, since
each vertex holds exactly the row the hash picks.

A volume costs (N+1)^D * F floats, so only the coarse levels are materialised, coarsest
first, while their total stays within `budget_rows` vertices (default DENSE_BUDGET_ROWS:
2^23 rows = 64 MiB at F = 2); finer levels use the hash lookup. For the `cpu` preset's
spatial grid (12 levels, 16 -> 512 cells) that is the 8 levels up to 145 cells (5.0M
vertices, 40 MiB), for its landmark grid all 6 levels (0.3M vertices).

Active only inside `dense_lookups()` (Renderer.render enters it), only without autograd
(training keeps the reference lookup and its hand-written backward), only for the torch
backend and D = 2 or 3. The volumes are cached on the encoder and rebuilt when its table
changes (an optimiser step bumps the table's version counter).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DENSE_BUDGET_ROWS = 1 << 23

_state = threading.local()


@contextlib.contextmanager
def dense_lookups(budget_rows: int = DENSE_BUDGET_ROWS) -> Iterator[None]:
    """Within this block, no-grad lookups of torch hash grids go through dense volumes of
    their coarse levels (at most `budget_rows` vertices per encoder)."""
    previous = getattr(_state, "budget", None)
    _state.budget = int(budget_rows)
    try:
        yield
    finally:
        _state.budget = previous


def active_budget() -> int | None:
    """The vertex budget of the enclosing `dense_lookups()`, or None outside one."""
    return getattr(_state, "budget", None)


def usable(encoder, x: torch.Tensor) -> bool:
    """Whether `lookup` may serve this call of `encoder` (see the module docstring)."""
    return (
        active_budget() is not None
        and encoder.backend == "torch"
        and encoder.config.input_dim in (2, 3)
        and not (torch.is_grad_enabled() and (x.requires_grad or encoder.table.requires_grad))
    )


@dataclass
class _Volumes:
    key: tuple
    dense: list[int]  # level indices served by grid_sample
    volumes: list[torch.Tensor]  # [1, F, N+1, ..., N+1] per dense level
    groups: list[tuple[list[int], tuple]]
    """Levels served by the hash lookup, batched by indexing rule: (indices, (resolutions
    [H], multipliers [H, D], offsets [H], hashed))."""


def dense_levels(encoder, budget_rows: int) -> list[int]:
    """Indices of the levels materialised under `budget_rows`: coarsest first, while the
    running total of vertices fits."""
    dims, total, picked = encoder.config.input_dim, 0, []
    for index, level in enumerate(encoder.levels):
        total += (level.resolution + 1) ** dims
        if total > budget_rows:
            break
        picked.append(index)
    return picked


def _vertex_rows(encoder, index: int) -> torch.Tensor:
    """Table rows of every vertex of level `index`, shaped [N+1] * D with axis 0 the last
    coordinate (the layout grid_sample reads: depth, height, width = x2, x1, x0)."""
    level = encoder.levels[index]
    dims, device = encoder.config.input_dim, encoder.table.device
    axis = torch.arange(level.resolution + 1, dtype=torch.int64, device=device)
    rows = None
    for d in range(dims):
        term = axis * level.multipliers[d]
        if level.hashed:  # as in HashGridEncoder._locate: mask each term, then xor
            term = term.bitwise_and(encoder._hash_mask)
        shape = [1] * dims
        shape[dims - 1 - d] = -1
        term = term.view(shape)
        if rows is None:
            rows = term
        else:
            rows = torch.bitwise_xor(rows, term) if level.hashed else rows + term
    return rows + level.offset


def _build(encoder, budget_rows: int, key: tuple) -> _Volumes:
    table = encoder.table.detach()
    dense = dense_levels(encoder, budget_rows)
    volumes = []
    for index in dense:
        rows = _vertex_rows(encoder, index)
        values = table.index_select(0, rows.reshape(-1)).view(*rows.shape, table.shape[1])
        volumes.append(values.movedim(-1, 0).unsqueeze(0).contiguous())
    groups = []
    for hashed in (False, True):
        picked = [
            i for i, lv in enumerate(encoder.levels) if i not in dense and lv.hashed == hashed
        ]
        if not picked:
            continue
        levels = [encoder.levels[i] for i in picked]
        params = (
            torch.tensor([lv.resolution for lv in levels], dtype=table.dtype, device=table.device),
            torch.tensor([lv.multipliers for lv in levels], dtype=torch.int64, device=table.device),
            torch.tensor([lv.offset for lv in levels], dtype=torch.int64, device=table.device),
            hashed,
        )
        groups.append((picked, params))
    return _Volumes(key, dense, volumes, groups)


def _volumes(encoder, budget_rows: int) -> _Volumes:
    table = encoder.table
    key = (table.data_ptr(), table._version, table.dtype, table.device, budget_rows)
    cached = getattr(encoder, "_dense_volumes", None)
    if cached is None or cached.key != key:
        cached = _build(encoder, budget_rows, key)
        encoder._dense_volumes = cached  # plain attribute: not a buffer, never saved
    return cached


@torch.no_grad()
def lookup(encoder, x: torch.Tensor) -> torch.Tensor:
    """The encoding [B, L * F] of points x [B, D] in [0, 1] (already clamped), level-major
    as HashGridEncoder returns it, as a transposed view of a [L * F, B] tensor (each level
    writes its features contiguously; matrix products take the view without a copy)."""
    cache = _volumes(encoder, active_budget())
    table = encoder.table.detach()
    batch, features, dims = x.shape[0], table.shape[1], x.shape[1]
    out = table.new_empty(len(encoder.levels), features, batch)
    if cache.dense:
        # grid_sample runs its batch entries in parallel, one volume each: split the points
        # into one entry per thread over the same (expanded, not copied) volume.
        parts = max(1, min(torch.get_num_threads(), batch // 4096))
        size = -(-batch // parts)
        grid = (x * 2.0 - 1.0).new_zeros(parts * size, dims)
        grid[:batch] = x * 2.0 - 1.0
        grid = grid.view(parts, *([1] * (dims - 1)), size, dims)
        for index, volume in zip(cache.dense, cache.volumes, strict=True):
            sampled = F.grid_sample(volume.expand(parts, *volume.shape[1:]), grid,
                                    mode="bilinear", padding_mode="border",
                                    align_corners=True)  # fmt: skip
            out[index] = (
                sampled.view(parts, features, size)
                .transpose(0, 1)
                .reshape(features, parts * size)[:, :batch]
            )
    for indices, params in cache.groups:
        out[indices] = _hash_levels(encoder, x, params).transpose(1, 2)
    return out.view(-1, batch).t()


def _hash_levels(encoder, x: torch.Tensor, params: tuple) -> torch.Tensor:
    """[H, B, F] features of H levels with the same indexing rule (hashed or dense-indexed),
    computed for all of them at once: HashGridEncoder._locate's arithmetic with a level
    axis, so each step is one tensor operation rather than one per level."""
    from talkingface.render.grid_lookup import gather_rows

    table = encoder.table.detach()
    dims, batch, features = x.shape[1], x.shape[0], table.shape[1]
    res, mult, offset, hashed = params
    pos = x.t().unsqueeze(0) * res.view(-1, 1, 1)  # [H, D, B]
    cell = torch.minimum(pos.floor(), (res - 1).view(-1, 1, 1))
    frac = pos - cell
    lower = cell.long() * mult.unsqueeze(-1)  # [H, D, B]
    upper = lower + mult.unsqueeze(-1)
    if hashed:
        lower.bitwise_and_(encoder._hash_mask)
        upper.bitwise_and_(encoder._hash_mask)
    combine = torch.bitwise_xor if hashed else torch.add
    rows = torch.stack((lower[:, 0], upper[:, 0]), 1)  # [H, 2, B], corner bits axis 0 first
    for d in range(1, dims):
        pair = torch.stack((lower[:, d], upper[:, d]), 1)  # [H, 2, B]
        rows = combine(rows.unsqueeze(2), pair.unsqueeze(1)).flatten(1, 2)
    rows += offset.view(-1, 1, 1)
    corners = gather_rows(table, rows.view(-1)).view(-1, *([2] * dims), batch, features)
    for d in reversed(range(dims)):  # interpolate the last axis first
        t = frac[:, d].view(-1, *([1] * d), batch, 1)
        corners = torch.lerp(corners.select(d + 1, 0), corners.select(d + 1, 1), t)
    return corners
