"""Inference-only ray marching: the image `volume.render_rays` draws, for fewer field
evaluations and less work per evaluation. `Renderer.render` uses it (training and the
occupancy refresh keep `render_rays` and the field's own forward).

Same samples. Each ray takes the same `samples` points as `render_rays` without jitter (the
centres of equal steps across the bounding cube), and the occupancy grid drops the same
empty ones (on the CPU the compiled `occupied_samples` of `csrc/march.cpp` picks them from each
ray, never building the [rays, samples, 3] points; `_occupied`). What changes is the order of
work and where a ray stops:

- Per-ray compaction. A ray's occupied samples are numbered front to back (their rank);
  the march takes, in each step, the next `step` ranks of every ray still alive, so a step
  evaluates only live rays' next occupied samples: no [rays, samples] tensors are filled,
  cumulated or scanned per step, and a ray that turned opaque at its 3rd occupied sample
  stops there rather than at the end of a fixed group of sample positions (`render_rays`
  marches the cube's 48 positions in `chunks` = 4 groups of 12).
- Early termination after every step (steps of MARCH_STEP ranks, widening by GROWTH as the
  march goes deeper, where few rays are left): a ray whose transmittance T fell to
  `stop_transmittance` or below takes the background for the rest, T * background, in place
  of T * (the rest of its march). Both are colours in [0, 1] weighted by T, so no channel
  moves by more than `stop_transmittance` from the full, never-stopped march (the test
  checks this against a dense, unpruned march).
- Cheaper evaluations (`FieldEvaluator`): what depends only on a frame (the landmark
  condition's share of the hyper-space MLP's first layer) or only on a ray (the view
  direction's spherical harmonics) is computed once per frame or ray and gathered; the
  first layers multiply their inputs' parts separately instead of concatenating them for
  every sample; the hash grids run the compiled CPU kernel (`talkingface.render.kernels`)
  or, where it is not built (and on CUDA without tiny-cuda-nn), look up their coarse levels
  through dense volumes (`talkingface.render.dense_lookup`). The arithmetic is the field's
  own, regrouped: equal up to float rounding.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from talkingface.render import kernels
from talkingface.render.data import ray_box
from talkingface.render.dense_lookup import dense_lookups
from talkingface.render.field import DENSITY_CLAMP, LandmarkField, sh_degree2
from talkingface.render.volume import OccupancyGrid, Rendered

MARCH_STEP = 2
GROWTH = 1.5
"""Occupied samples per live ray per step: small enough that an opaque ray wastes little
after its surface, large enough that each step's field batch amortises its fixed cost."""


def _split_first(mlp: nn.Sequential, widths: tuple[int, ...]) -> tuple[list[torch.Tensor],
                                                                        torch.Tensor]:  # fmt: skip
    """The first Linear's weight split by input columns (transposed, [in_i, out]) and bias."""
    first = mlp[0]
    parts = torch.split(first.weight, list(widths), dim=1)
    return [p.t() for p in parts], first.bias


class FieldEvaluator:
    """LandmarkField.forward for samples that carry a frame index and a ray index, with the
    per-frame and per-ray shares of the first layers computed once (see the module
    docstring). `cond` [F, C]: the frames' landmark conditions; `dirs` [R, 3]: unit ray
    directions."""

    def __init__(self, field: LandmarkField, cond: torch.Tensor, dirs: torch.Tensor):
        self.field = field
        fx = field.spatial.output_dim
        fl = field.landmark_grid.output_dim
        geo = field.config.geo_features
        c = field.config.cond_dim
        (self.amb_fx, amb_cond), amb_bias = _split_first(field.ambient, (fx, c))
        self.frame_ambient = torch.addmm(amb_bias, cond[:, :c], amb_cond)  # [F, h]
        # The density MLP's own per-frame input (the eyes' opening, with eye_condition).
        extra = field.eye_dim
        (self.sig_fx, self.sig_fl, sig_cond), sig_bias = _split_first(field.sigma_net,
                                                                      (fx, fl, extra))  # fmt: skip
        self.frame_sigma = torch.addmm(sig_bias, cond[:, c : c + extra], sig_cond)  # [F, h]
        # Rendering draws the neutral appearance code (zero): its columns add nothing.
        (self.col_geo, col_sh, _), col_bias = _split_first(field.color_net,
                                                           (geo, 9, field.code_dim))  # fmt: skip
        # The view direction's share of the colour MLP's first layer, once per ray.
        self.ray_colour = torch.addmm(col_bias, sh_degree2(dirs), col_sh)  # [R, h]

    def __call__(self, x: torch.Tensor, frame: torch.Tensor,
                 ray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(sigma [S], rgb [S, 3]) at canonical points x [S, 3] of frames `frame` [S] on rays
        `ray` [S]."""
        field = self.field
        fx = field.spatial((x / field.config.bound + 1.0) * 0.5)
        # Each first layer starts from its gathered per-frame or per-ray share and adds the
        # per-sample parts in place (addmm into a fresh tensor would copy the share first).
        hidden = self.frame_ambient.index_select(0, frame).addmm_(fx, self.amb_fx)
        ambient = torch.tanh(field.ambient[1:](hidden))
        fl = field.landmark_grid((ambient + 1.0) * 0.5)
        hidden = self.frame_sigma.index_select(0, frame).addmm_(fx, self.sig_fx)
        hidden.addmm_(fl, self.sig_fl)
        h = field.sigma_net[1:](hidden)
        sigma = torch.exp(h[:, 0].clamp(max=DENSITY_CLAMP))
        hidden = self.ray_colour.index_select(0, ray).addmm_(h[:, 1:], self.col_geo)
        rgb = torch.sigmoid(field.color_net[1:](hidden))
        return sigma, rgb


@torch.no_grad()
def march_rays(
    field: LandmarkField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    frame: torch.Tensor,
    cond: torch.Tensor,
    background: torch.Tensor,
    occupancy: OccupancyGrid,
    samples: int,
    stop_transmittance: float = 1e-3,
    step: int = MARCH_STEP,
) -> Rendered:
    """Colours [R, 3] of rays (origins, unit dirs [R, 3]) of frames `frame` [R] (rows of the
    frames' conditions `cond` [F, C]) over `background` [R, 3]; see the module docstring."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    n, device = origins.shape[0], origins.device
    colour = torch.zeros(n, 3, device=device)
    trans = torch.ones(n, device=device)
    near, far, hit = ray_box(origins, dirs, occupancy.bound)
    rays = hit.nonzero()[:, 0]  # only rays that cross the cube have samples
    evaluated = 0
    if rays.numel():
        o, d, start = origins[rays], dirs[rays], near[rays]  # [H, 3], [H, 3], [H]
        delta = (far[rays] - start) / samples  # [H]
        mid = torch.arange(samples, device=device, dtype=torch.float32) + 0.5
        occ = _occupied(occupancy, o, d, start, delta, mid)  # [H, S]
        local, sample = occ.nonzero(as_tuple=True)  # ray-major, front to back within a ray
        if local.numel():
            per_ray = occ.sum(1)
            first = torch.cumsum(per_ray, 0) - per_ray
            rank = torch.arange(local.numel(), device=device) - first[local]
            order = torch.argsort(rank, stable=True)  # rank-major, ray order within a rank
            local, sample, rank = local[order], sample[order], rank[order]
            top = int(per_ray.max())
            edges = [0]
            while edges[-1] < top:  # steps of `step` ranks, growing by GROWTH
                width = max(step, int(edges[-1] * (GROWTH - 1)))
                edges.append(min(top, edges[-1] + width))
            bounds = torch.searchsorted(rank, torch.tensor(edges, device=device)).tolist()
            ray_of = rays[local]
            slot = torch.zeros(n, dtype=torch.int64, device=device)
            evaluate = FieldEvaluator(field, cond, dirs)
            with dense_lookups():
                for (lo, hi), r0, width in zip(itertools.pairwise(bounds), edges,
                                               np.diff(edges).tolist(), strict=False):  # fmt: skip
                    r = ray_of[lo:hi]
                    keep = (trans[r] > stop_transmittance).nonzero()[:, 0]
                    if keep.numel() == 0:
                        continue
                    r, at = r[keep], (local[lo:hi][keep], sample[lo:hi][keep])
                    # The sample's point, by the same float operations as _occupied's.
                    t = start[at[0]] + mid[at[1]] * delta[at[0]]
                    x = o[at[0]] + t[:, None] * d[at[0]]
                    sigma, rgb = evaluate(x, frame.index_select(0, r), r)
                    evaluated += int(r.numel())
                    alpha = 1.0 - torch.exp(-sigma * delta[at[0]])
                    # Rank-major: the rays at the step's first rank are all its live rays.
                    live = r[: int((rank[lo:hi][keep] == r0).sum())]
                    slot[live] = torch.arange(live.numel(), device=device)
                    where = (slot[r], rank[lo:hi][keep] - r0)
                    a = alpha.new_zeros(live.numel(), width).index_put_(where, alpha)
                    c = rgb.new_zeros(live.numel(), width, 3).index_put_(where, rgb)
                    through = torch.cumprod(1.0 - a, dim=1)
                    before = torch.cat([torch.ones_like(through[:, :1]), through[:, :-1]], 1)
                    t_live = trans[live]
                    weights = (t_live[:, None] * before * a)[..., None]
                    colour[live] += (weights * c).sum(1)
                    trans[live] = t_live * through[:, -1]
    colour += trans[:, None] * background
    return Rendered(colour, 1.0 - trans, evaluated)


def _occupied(occupancy: OccupancyGrid, o: torch.Tensor, d: torch.Tensor, start: torch.Tensor,
              delta: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Which samples [H, S] of rays (o, d [H, 3]) at start + mid * delta lie in occupied cells:
    the compiled CPU kernel (`render.kernels`) where it builds, else the points [H, S, 3]
    built and looked up in torch. The same float operations either way: the same samples."""
    kernel = kernels.compiled() if o.device.type == "cpu" else None
    if kernel is not None:
        return kernel.occupied_samples(o.contiguous(), d.contiguous(), start.contiguous(),
                                       delta.contiguous(), mid.numel(),
                                       occupancy.occupied().reshape(-1).contiguous(),
                                       occupancy.res, float(occupancy.bound))  # fmt: skip
    t = start[:, None] + mid[None] * delta[:, None]  # [H, S]
    return occupancy.lookup(o[:, None] + t[..., None] * d[:, None])
