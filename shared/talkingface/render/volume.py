"""Ray marching with an occupancy grid, early ray termination and compositing over the
background plate.

Each ray crosses the bounding cube in `samples` equal steps (jittered in training). Samples
in cells the occupancy grid marks empty are never evaluated (zero density). Samples are
marched front to back in `chunks` groups; after each group the rays whose transmittance fell
below `stop_transmittance` are done (early termination). The colour is
sum_i T_i alpha_i c_i + T_final * background, alpha_i = 1 - exp(-sigma_i delta), so the
accumulated alpha 1 - T_final composites the head over the plate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from talkingface.render.data import ray_box


@dataclass
class RayBatch:
    origins: torch.Tensor  # [R, 3]
    dirs: torch.Tensor  # [R, 3] unit
    cond: torch.Tensor  # [R, C] landmark condition of each ray's frame
    background: torch.Tensor  # [R, 3]


@dataclass
class Rendered:
    rgb: torch.Tensor  # [R, 3]
    alpha: torch.Tensor  # [R] accumulated opacity
    samples: int  # network evaluations spent


class OccupancyGrid(torch.nn.Module):
    """Which cells of the bounding cube may hold density: `carve` (from the training masks,
    fixed) and `density` (running maximum over training conditions, decayed)."""

    def __init__(self, res: int, bound: float):
        super().__init__()
        self.res, self.bound = res, bound
        self.register_buffer("carve", torch.ones(res, res, res, dtype=torch.bool))
        self.register_buffer("density", torch.full((res, res, res), 1e3))
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("updates", torch.tensor(0))

    def cell_of(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index of points [..., 3] and whether they are inside the cube."""
        u = (pts / self.bound + 1.0) * 0.5 * self.res
        inside = ((u >= 0) & (u < self.res)).all(-1)
        i = u.long().clamp_(0, self.res - 1)
        return (i[..., 0] * self.res + i[..., 1]) * self.res + i[..., 2], inside

    def occupied(self) -> torch.Tensor:
        return self.carve & (self.density > self.threshold)

    def lookup(self, pts: torch.Tensor) -> torch.Tensor:
        index, inside = self.cell_of(pts)
        return self.occupied().reshape(-1)[index] & inside

    def centres(self) -> torch.Tensor:
        """Cell centres [res^3, 3] in canonical coordinates, in flat-index order."""
        axis = (torch.arange(self.res, dtype=torch.float32) + 0.5) / self.res * 2 - 1
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
        return grid.reshape(-1, 3) * self.bound

    def occupancy_rate(self) -> float:
        return float(self.occupied().float().mean())


def render_rays(
    field,
    rays: RayBatch,
    occupancy: OccupancyGrid,
    samples: int,
    chunks: int = 4,
    stop_transmittance: float = 1e-3,
    jitter: bool = False,
    generator: torch.Generator | None = None,
) -> Rendered:
    device = rays.origins.device
    n = rays.origins.shape[0]
    near, far, hit = ray_box(rays.origins, rays.dirs, occupancy.bound)
    delta = torch.where(hit, (far - near) / samples, torch.zeros_like(near))  # [R]
    steps = torch.arange(samples, device=device, dtype=torch.float32)
    if jitter:
        offset = torch.rand(n, samples, device=device, generator=generator)
    else:
        offset = torch.full((n, samples), 0.5, device=device)
    t = near[:, None] + (steps[None] + offset) * delta[:, None]  # [R, S]
    pts = rays.origins[:, None] + t[..., None] * rays.dirs[:, None]  # [R, S, 3]
    occ = occupancy.lookup(pts) & hit[:, None]
    colour = torch.zeros(n, 3, device=device)
    trans = torch.ones(n, device=device)
    evaluated = 0
    bounds = torch.linspace(0, samples, chunks + 1).round().long().tolist()
    for lo, hi in itertools.pairwise(bounds):
        if hi <= lo:
            continue
        alive = trans.detach() > stop_transmittance
        mask = occ[:, lo:hi] & alive[:, None]
        ray_i, s_i = mask.nonzero(as_tuple=True)
        if ray_i.numel() == 0:
            continue
        evaluated += int(ray_i.numel())
        sigma, rgb = field(pts[ray_i, lo + s_i], rays.cond[ray_i], rays.dirs[ray_i])
        alpha = 1.0 - torch.exp(-sigma * delta[ray_i])
        width = hi - lo
        a = torch.zeros(n, width, device=device, dtype=alpha.dtype).index_put((ray_i, s_i), alpha)
        c = torch.zeros(n, width, 3, device=device, dtype=rgb.dtype).index_put((ray_i, s_i), rgb)
        through = torch.cumprod(1.0 - a + 1e-10, dim=1)
        before = torch.cat([torch.ones_like(through[:, :1]), through[:, :-1]], dim=1)
        weights = trans[:, None] * before * a
        colour = colour + (weights[..., None] * c).sum(1)
        trans = trans * through[:, -1]
    colour = colour + trans[:, None] * rays.background
    return Rendered(colour, 1.0 - trans, evaluated)


@torch.no_grad()
def update_occupancy(
    field,
    occupancy: OccupancyGrid,
    conds: torch.Tensor,
    delta: float,
    alpha: float,
    decay: float,
    generator: torch.Generator | None = None,
    batch: int = 1 << 16,
) -> None:
    """Refresh the density of every carved cell at a jittered point under a random training
    condition per cell, keeping the maximum with the decayed old value (max over conditions
    accumulates across updates). `threshold` = the density that makes one sample of length
    `delta` `alpha` opaque."""
    cells = occupancy.carve.reshape(-1).nonzero()[:, 0]
    centres = occupancy.centres().to(conds.device)
    size = 2 * occupancy.bound / occupancy.res
    fresh = torch.zeros(cells.numel(), device=conds.device)
    for lo in range(0, cells.numel(), batch):
        idx = cells[lo : lo + batch]
        jitter = (torch.rand(idx.numel(), 3, generator=generator) - 0.5) * size
        pick = torch.randint(0, conds.shape[0], (idx.numel(),), generator=generator)
        fresh[lo : lo + batch] = field.density(centres[idx] + jitter.to(conds.device), conds[pick])
    flat = occupancy.density.view(-1)
    if int(occupancy.updates) == 0:  # the initial "everything may be dense" is no estimate
        flat[cells] = fresh
    else:
        flat[cells] = torch.maximum(flat[cells] * decay, fresh)
    occupancy.updates += 1
    occupancy.threshold.fill_(-torch.log1p(torch.tensor(-alpha)).item() / max(delta, 1e-6))
