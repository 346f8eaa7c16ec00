"""The hash grid's lookups on the torch backend (`talkingface.render.encoding`'s maths, see
there): `HashGridLookup`, vectorised PyTorch with a hand-written backward, the reference and
the fallback; and `FusedLookup`, the same maths as one compiled pass per level
(`csrc/hashgrid.cpp` through `talkingface.render.kernels`). Both take the encoder (`grid`)
for its level layout: `_locate`, `_resolution`, `_offset`, `_hashed`, `_multipliers`,
`_hash_mask`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from talkingface.render import kernels


def outer(parts: torch.Tensor, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """[D, 2, B] -> [2^D, B]: for every corner o in {0, 1}^D (axis 0 most significant),
    op-reduce parts[d, o_d] over the axes d."""
    acc = parts[0]
    for d in range(1, parts.shape[0]):
        acc = op(acc.unsqueeze(1), parts[d].unsqueeze(0)).flatten(0, 1)
    return acc


def _corner_weights(frac: torch.Tensor) -> torch.Tensor:
    """D-linear weights [2^D, B] of the corners, from the in-cell positions t [D, B]."""
    return outer(torch.stack((1 - frac, frac), dim=1), torch.mul)


def _in_cell_grad(dout_dw: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Chain rule through the weights: dL/dt [D, B] from dL/dw [2^D, B].

    dw_o/dt_d = (1 if o_d else -1) * prod_{e != d} (t_e if o_e else 1 - t_e), so dL/dt_d is
    the upper-minus-lower difference along axis d, weighted (D-1)-linearly over the others.
    """
    dims, batch = frac.shape
    per_axis = dout_dw.view(*([2] * dims), batch)
    pairs = torch.stack((1 - frac, frac), dim=1)  # [D, 2, B]
    grad = torch.empty_like(frac)
    for d in range(dims):
        diff = (per_axis.select(d, 1) - per_axis.select(d, 0)).reshape(-1, batch)
        others = pairs[[e for e in range(dims) if e != d]]
        torch.sum(diff * outer(others, torch.mul), dim=0, out=grad[d])
    return grad


class HashGridLookup(torch.autograd.Function):
    """out[b, l] = sum_o w_o(t_l(x_b)) * table[row_l,o(x_b)], one level at a time.

    A loop over levels rather than one [L, 2^D, B] pass: each level's gather and gradient
    scatter then stay inside its own few-MB slice of the table, and every temporary is a few
    MB that the allocator reuses; on CPU that roughly halves the time. Hand-written
    rather than autograd over index_select + mul + sum, which would keep [2^D, B, F] tensors
    per level alive and pass over them three more times: the backward scatters into the
    table gradient with one index_add_ per level, and for x applies the chain rule through
    the weights analytically (`_in_cell_grad`). Only once differentiable.
    """

    @staticmethod
    def forward(ctx, x, table, grid):
        batch, features, levels = x.shape[0], table.shape[1], len(grid.levels)
        out = table.new_empty(levels, batch, features)
        located = []
        for index in range(levels):
            rows, frac = grid._locate(x, index)
            corners = gather_rows(table, rows.view(-1)).view(*rows.shape, features)
            weights = _corner_weights(frac)
            for f in range(features):  # per feature: broadcasting over F = 2 is slow on CPU
                torch.sum(corners[..., f] * weights, dim=0, out=out[index, :, f])
            located += (rows, frac)
        ctx.save_for_backward(table, *located)
        ctx.resolutions = [level.resolution for level in grid.levels]
        return out.transpose(0, 1).reshape(batch, levels * features)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        table, *located = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        batch, features = grad_out.shape[0], table.shape[1]
        grad_out = grad_out.reshape(batch, -1, features)
        grad_table = torch.zeros_like(table) if need_table else None
        grad_xt = None
        for index, (rows, frac) in enumerate(zip(located[::2], located[1::2], strict=True)):
            grad = grad_out[:, index].unsqueeze(0)  # [1, B, F]
            if need_table:
                per_corner = _corner_weights(frac).unsqueeze(-1) * grad  # [2^D, B, F]
                grad_table.index_add_(0, rows.view(-1), per_corner.view(-1, features))
            if need_x:
                corners = gather_rows(table, rows.view(-1)).view(*rows.shape, features)
                dout_dw = corners[..., 0] * grad[..., 0]  # [2^D, B]
                for f in range(1, features):
                    dout_dw.addcmul_(corners[..., f], grad[..., f])
                dout_dt = _in_cell_grad(dout_dw, frac)  # [D, B]
                step = dout_dt * ctx.resolutions[index]  # dt/dx = N_l
                grad_xt = step if grad_xt is None else grad_xt.add_(step)
        grad_x = None if grad_xt is None else grad_xt.t().contiguous()
        return grad_x, grad_table, None


class FusedLookup(torch.autograd.Function):
    """`HashGridLookup`'s maths in one compiled pass per call (csrc/hashgrid.cpp): the
    lookup, and a backward that adds into the table gradient and applies the chain rule to
    x as `HashGridLookup.backward` does."""

    @staticmethod
    def forward(ctx, x, table, grid):
        kernel = kernels.compiled()
        layout = (grid._resolution, grid._offset, grid._hashed, grid._multipliers)
        out = kernel.forward(x, table, *layout, grid._hash_mask)
        ctx.save_for_backward(x, table)
        ctx.grid = grid
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, table = ctx.saved_tensors
        grid = ctx.grid
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        layout = (grid._resolution, grid._offset, grid._hashed, grid._multipliers)
        grad_x, grad_table = kernels.compiled().backward(
            grad_out.contiguous(), x, table, *layout, grid._hash_mask, need_x, need_table
        )
        return (grad_x if need_x else None), (grad_table if need_table else None), None


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a [R, F] table; an 8-byte row (2 float32 features) is gathered as one
    int64, which makes the gather about 1.5x faster on CPU."""
    if table.shape[1] * table.element_size() == 8 and table.is_contiguous():
        as_words = table.view(torch.int64).view(-1)
        return as_words.index_select(0, index).view(table.dtype).view(-1, table.shape[1])
    return table.index_select(0, index)
