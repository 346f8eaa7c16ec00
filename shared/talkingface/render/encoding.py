"""Multiresolution hash-grid encoder (instant-NGP) for the renderer's spatial and landmark grids.

Maths. A point x in [0, 1]^D is looked up at L levels. Level l has N_l = floor(N_min * b^l)
cells per axis (b = `per_level_scale`), so N_l + 1 vertices per axis. Scaled to the level,
p = x * N_l; the point lies in the cell with lower corner c = floor(p) (clamped to N_l - 1 so
that x_d = 1 falls in the last cell) at t = p - c in [0, 1]^D. Each of the cell's 2^D corners
c + o, o in {0, 1}^D, gets the weight w_o = prod_d (t_d if o_d = 1 else 1 - t_d), and the
level's F features are sum_o w_o * table_l[index_l(c + o)]. This D-linear interpolation is
continuous in x, exact at the vertices, and differentiable in x inside a cell through the
weights (dt/dx = N_l); the landmark hyper-grid relies on that to train the MLP that produces
its coordinate. The output concatenates the levels, level-major: [B, L * F], the order
tiny-cuda-nn uses too. Inputs outside [0, 1] are clamped (gradient zero there).

Indexing. Storing every vertex of level l takes (N_l + 1)^D rows. Where that fits in the
hash-table size T = 2^log2_hashmap_size the level is dense: index = sum_d v_d * (N_l + 1)^d,
one row per vertex, no collisions. Otherwise the level is hashed: index = (xor_d v_d * pi_d)
mod T with instant-NGP's primes pi = (1, 2654435761, 805459861, 3674653429) in 32-bit
arithmetic, so distinct vertices may share a row; training averages their gradients and the
coarser, collision-free levels tell them apart. N_l grows with l, so dense levels come first.

Table layout. One parameter `table` of shape [R, F] with R = sum_l R_l, R_l = (N_l + 1)^D for
a dense level and T for a hashed one; level l owns rows [offset_l, offset_l + R_l), offsets as
in tiny-cuda-nn, so coarse levels do not waste T rows each. Initialised uniform(-1e-4, 1e-4)
as in instant-NGP. A lookup runs level by level, each vectorised over all points and the 2^D
corners: a few integer passes give the corner rows, one index_select on the flat table
gathers them; `grid_lookup.HashGridLookup` has a hand-written backward (see there). On the
CPU the same maths runs as one compiled pass per level (`grid_lookup.FusedLookup`,
`csrc/hashgrid.cpp`, built on first use by `talkingface.render.kernels`) where that kernel
builds; `HashGridLookup` stays the reference it is tested against and the fallback
(`TALKINGFACE_CPU_KERNELS=0` forces it).

Backends. `GridConfig.implementation` chooses "torch" (this module: CPU or CUDA, any float
dtype) or "tcnn" (tiny-cuda-nn's fused CUDA kernel, configured from the same GridConfig via
`to_tcnn()`); "auto" takes tcnn where it imports and CUDA is available. With `strict` an
unusable tcnn raises EncoderBackendError instead of falling back. The backends share the
configuration, not the parameters: tiny-cuda-nn places its vertices differently (its own
resolution rule, a half-cell offset, padded levels), so a checkpoint loads only into the
backend that wrote it; `encoder.backend` says which, and is logged when an encoder is built.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from talkingface.render import dense_lookup, kernels
from talkingface.render.grid_lookup import FusedLookup, HashGridLookup, outer

logger = logging.getLogger(__name__)

HASH_PRIMES = (1, 2654435761, 805459861, 3674653429)
IMPLEMENTATIONS = ("auto", "torch", "tcnn")
INIT_RANGE = 1e-4


def per_level_scale_for(base_resolution: float, finest_resolution: float, levels: int) -> float:
    """The growth factor b with base * b^(levels - 1) = finest (1.0 for a single level)."""
    if levels < 1 or base_resolution <= 0 or finest_resolution < base_resolution:
        raise ValueError(
            f"need levels >= 1 and 0 < base <= finest, got levels={levels}, "
            f"base={base_resolution}, finest={finest_resolution}"
        )
    if levels == 1:
        return 1.0
    return math.exp(math.log(finest_resolution / base_resolution) / (levels - 1))


class EncoderBackendError(RuntimeError):
    """A strict grid configuration asked for tiny-cuda-nn where it cannot run."""


@dataclass(frozen=True)
class GridLevel:
    """Where one level lives in the table and how its vertices map to rows."""

    resolution: int
    """Cells per axis N_l (N_l + 1 vertices)."""
    offset: int
    """First table row of the level."""
    rows: int
    """Rows R_l: (N_l + 1)^D when dense, T when hashed."""
    hashed: bool
    multipliers: tuple[int, ...]
    """Per axis, what a vertex coordinate is multiplied by: (N_l + 1)^d, or the hash prime."""


@dataclass(frozen=True)
class GridConfig:
    """One hash grid, for either backend; JSON-serialisable for checkpoints."""

    input_dim: int = 3
    """Coordinate dimensions D: 3 for the spatial grid, N for the landmark hyper-grid (2-4)."""
    num_levels: int = 16
    """Resolution levels L."""
    features_per_level: int = 2
    """Features F stored per table row (1, 2, 4 or 8, as tiny-cuda-nn supports)."""
    log2_hashmap_size: int = 19
    """log2 of the rows T a hashed level may use."""
    base_resolution: int = 16
    """Cells per axis of the coarsest level."""
    per_level_scale: float = per_level_scale_for(16, 2048, 16)
    """Resolution growth per level; `from_finest` derives it from a finest resolution."""
    interpolation: str = "linear"
    """Only "linear" (D-linear) for now."""
    implementation: str = "auto"
    """Backend: "torch", "tcnn", or "auto" (tcnn where it imports and CUDA is available)."""
    strict: bool = False
    """Raise instead of falling back to torch when "tcnn"/"auto" cannot use tiny-cuda-nn."""

    def __post_init__(self) -> None:
        problems = []
        if not 2 <= self.input_dim <= len(HASH_PRIMES):
            problems.append(f"input_dim must be 2..{len(HASH_PRIMES)}, got {self.input_dim}")
        if self.num_levels < 1:
            problems.append(f"num_levels must be >= 1, got {self.num_levels}")
        if self.features_per_level not in (1, 2, 4, 8):
            problems.append(
                f"features_per_level must be 1, 2, 4 or 8, got {self.features_per_level}"
            )
        if not 2 <= self.log2_hashmap_size <= 26:
            problems.append(f"log2_hashmap_size must be 2..26, got {self.log2_hashmap_size}")
        if self.base_resolution < 1:
            problems.append(f"base_resolution must be >= 1, got {self.base_resolution}")
        if not self.per_level_scale >= 1.0:
            problems.append(f"per_level_scale must be >= 1, got {self.per_level_scale}")
        if self.interpolation != "linear":
            problems.append(f"interpolation must be 'linear', got {self.interpolation!r}")
        if self.implementation not in IMPLEMENTATIONS:
            problems.append(f"implementation must be one of {IMPLEMENTATIONS}")
        if problems:
            raise ValueError("invalid GridConfig: " + "; ".join(problems))

    @classmethod
    def from_finest(cls, finest_resolution: float, **fields: Any) -> GridConfig:
        """A config whose finest level has `finest_resolution` cells per axis."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        base = fields.get("base_resolution", defaults["base_resolution"])
        levels = fields.get("num_levels", defaults["num_levels"])
        return cls(per_level_scale=per_level_scale_for(base, finest_resolution, levels), **fields)

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    @property
    def hashmap_size(self) -> int:
        return 1 << self.log2_hashmap_size

    def resolutions(self) -> tuple[int, ...]:
        """Cells per axis N_l of every level (the epsilon absorbs rounding of b^l)."""
        scale, base = self.per_level_scale, self.base_resolution
        return tuple(math.floor(base * scale**level + 1e-6) for level in range(self.num_levels))

    def levels(self) -> tuple[GridLevel, ...]:
        """Every level's resolution, rows and indexing rule (the table layout)."""
        dims, t = self.input_dim, self.hashmap_size
        levels, offset = [], 0
        for n in self.resolutions():
            hashed = (n + 1) ** dims > t
            multipliers = HASH_PRIMES[:dims] if hashed else tuple((n + 1) ** d for d in range(dims))
            rows = t if hashed else (n + 1) ** dims
            levels.append(GridLevel(n, offset, rows, hashed, multipliers))
            offset += rows
        return tuple(levels)

    def to_tcnn(self) -> dict[str, Any]:
        """tiny-cuda-nn's `encoding_config` for this grid."""
        return {
            "otype": "HashGrid",
            "n_levels": self.num_levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown GridConfig fields: {unknown}")
        return cls(**data)


@functools.cache
def tcnn_status() -> tuple[bool, str]:
    """Whether tiny-cuda-nn can run in this process and, if not, why (probed once)."""
    try:
        import tinycudann  # noqa: F401
    except Exception as exc:  # ImportError, or its EnvironmentError when CUDA is missing
        return False, f"tinycudann does not import ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    return True, ""


def resolve_backend(config: GridConfig) -> str:
    """The backend, "torch" or "tcnn", that `config` gets in this process; raises
    EncoderBackendError where it is strict and tiny-cuda-nn cannot run."""
    if config.implementation == "torch":
        return "torch"
    usable, why = tcnn_status()
    if usable:
        return "tcnn"
    if config.strict:
        raise EncoderBackendError(
            f"GridConfig(implementation={config.implementation!r}, strict=True) needs "
            f"tiny-cuda-nn, which cannot run here: {why}. Install tinycudann on a CUDA machine, "
            "or use implementation='torch' or strict=False."
        )
    if config.implementation == "tcnn":
        logger.warning("tiny-cuda-nn requested but unusable (%s); using the torch hash grid", why)
    return "torch"


class HashGridEncoder(nn.Module):
    """Encodes points of [0, 1]^D, shape [..., D], as [..., L * F] float grid features."""

    def __init__(self, config: GridConfig) -> None:
        super().__init__()
        self.config = config
        self.backend = resolve_backend(config)
        if self.backend == "tcnn":
            self.tcnn = _make_tcnn_encoding(config)
        else:
            self._build_torch_table(config)
        logger.info(
            "hash-grid encoder: backend=%s input_dim=%d levels=%d features=%d log2_hashmap=%d",
            self.backend,
            config.input_dim,
            config.num_levels,
            config.features_per_level,
            config.log2_hashmap_size,
            extra={"backend": self.backend},
        )

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def extra_repr(self) -> str:
        return f"backend={self.backend}, {self.config}"

    def _build_torch_table(self, config: GridConfig) -> None:
        self.levels = config.levels()
        rows = self.levels[-1].offset + self.levels[-1].rows
        table = torch.empty(rows, config.features_per_level).uniform_(-INIT_RANGE, INIT_RANGE)
        self.table = nn.Parameter(table)
        self._hash_mask = config.hashmap_size - 1
        # Non-persistent: follows .to(device) but stays out of checkpoints.
        multipliers = torch.tensor([level.multipliers for level in self.levels])
        self.register_buffer("_multipliers", multipliers, persistent=False)
        # The level layout as the compiled CPU kernel reads it (render.kernels).
        layout = (
            torch.tensor([level.resolution for level in self.levels], dtype=torch.int64),
            torch.tensor([level.offset for level in self.levels], dtype=torch.int64),
            torch.tensor([level.hashed for level in self.levels], dtype=torch.bool),
        )
        for name, value in zip(("_resolution", "_offset", "_hashed"), layout, strict=True):
            self.register_buffer(name, value, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self.config.input_dim
        if x.shape[-1] != dims:
            raise ValueError(f"expected coordinates of shape [..., {dims}], got {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, dims)
        if self.backend == "tcnn":
            # tcnn pads the batch, takes float32 input and returns half by default.
            out = self.tcnn(flat.float().contiguous()).float()
        else:
            flat = flat.to(self.table.dtype).clamp(0.0, 1.0)  # zero gradient outside [0, 1]
            if self._kernel_usable(flat):  # the compiled kernel, faster than both below
                out = FusedLookup.apply(flat.contiguous(), self.table, self)
            elif dense_lookup.usable(self, flat):  # inference inside dense_lookups()
                out = dense_lookup.lookup(self, flat)
            else:
                out = HashGridLookup.apply(flat, self.table, self)
        return out.reshape(*lead, self.output_dim)

    def _kernel_usable(self, x: torch.Tensor) -> bool:
        """Whether the compiled CPU kernel (render.kernels) serves this lookup: float32 on
        the CPU, the kernel built, and not switched off for this encoder (`use_kernel`)."""
        return (
            self.use_kernel
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.table.dtype == torch.float32
            and kernels.compiled() is not None
        )

    use_kernel: bool = True
    """False: always the pure-PyTorch lookup (the reference the kernel is tested against)."""

    def _locate(self, x: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [2^D, B] of the corners of each point's cell at level `index`, and the points'
        in-cell positions t [D, B]. Points innermost: every elementwise op runs along B."""
        level = self.levels[index]
        pos = x.t() * level.resolution  # [D, B]
        cell = pos.floor().clamp_(max=level.resolution - 1)
        frac = pos - cell
        # Per axis the lower and upper vertex coordinate times its multiplier, [D, 2, B];
        # taking one of the two per axis and combining them gives each corner's row.
        multipliers = self._multipliers[index].view(-1, 1)
        term = torch.empty((x.shape[1], 2, x.shape[0]), dtype=torch.int64, device=x.device)
        torch.mul(cell.long(), multipliers, out=term[:, 0])
        torch.add(term[:, 0], multipliers, out=term[:, 1])
        if level.hashed:  # masking each term keeps the xor < T: mod T, T a power of two
            rows = outer(term.bitwise_and_(self._hash_mask), torch.bitwise_xor)
        else:  # sum < (N + 1)^D
            rows = outer(term, torch.add)
        return rows.add_(level.offset), frac


def make_encoder(config: GridConfig) -> HashGridEncoder:
    """The hash-grid encoder for `config`, on the backend `config.implementation` resolves to."""
    return HashGridEncoder(config)


def _make_tcnn_encoding(config: GridConfig) -> nn.Module:
    import tinycudann

    encoding = tinycudann.Encoding(config.input_dim, config.to_tcnn())
    if encoding.n_output_dims != config.output_dim:
        raise EncoderBackendError(
            f"tiny-cuda-nn encodes to {encoding.n_output_dims} dims, expected {config.output_dim}"
        )
    return encoding
