"""The landmark-conditioned grid NeRF (GeneFace++ §4.3, eq. 11): F(f_x, f_l, d) -> (c, sigma).

    x (canonical, in the cube [-bound, bound]^3) --spatial hash grid--> f_x
    lm3d (z-scored by the avatar's training statistics) --MLP--> condition c
    (f_x, c) --MLP, tanh--> ambient coordinate a in [-1, 1]^N --N-d hash grid--> f_l
    (f_x, f_l[, e]) --MLP--> density sigma (exp), geometry features g
        (e: the eyes' opening ratios, with `eye_condition`, as RAD-NeRF/GeneFace++ feed theirs)
    (g, SH(d)) --MLP--> colour (sigmoid)

The landmark hyper-space keeps the landmark's say over the geometry in a lookup rather than
a deep MLP: a shallow network places each point in an N-d space where a grid stores how it
looks under that deformation (HyperNeRF's ambient slicing, with a grid).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from talkingface.render.config import RenderConfig
from talkingface.render.encoding import make_encoder
from talkingface.render.regions import eye_ratios

DENSITY_CLAMP = 15.0  # exp(15) ~ 3e6: opaque within any sample spacing, finite gradients


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of `sizes` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def sh_degree2(dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 2 of unit directions [..., 3] -> [..., 9]."""
    x, y, z = dirs.unbind(-1)
    return torch.stack(
        [
            torch.full_like(x, 0.28209479),
            -0.48860251 * y,
            0.48860251 * z,
            -0.48860251 * x,
            1.09254843 * x * y,
            -1.09254843 * y * z,
            0.31539157 * (2 * z * z - x * x - y * y),
            -1.09254843 * x * z,
            0.54627421 * (x * x - y * y),
        ],
        dim=-1,
    )


class LandmarkField(nn.Module):
    def __init__(
        self,
        config: RenderConfig,
        lm_mean: torch.Tensor,
        lm_std: torch.Tensor,
        lm_lo: torch.Tensor | None = None,
        lm_hi: torch.Tensor | None = None,
        frames: int = 0,
    ):
        """`frames`: training frames, one appearance code each (with `appearance_dim`)."""
        super().__init__()
        self.config = config
        self.register_buffer("lm_mean", lm_mean.reshape(-1).float().clone())
        self.register_buffer("lm_std", lm_std.reshape(-1).float().clone())
        # The bounds of `clamp_landmarks` (render.condition; +-inf: none, as in bundles
        # written before them).
        inf = torch.full_like(self.lm_mean, torch.inf)
        lo = -inf if lm_lo is None else lm_lo.reshape(-1).float().clone()
        hi = inf if lm_hi is None else lm_hi.reshape(-1).float().clone()
        self.register_buffer("lm_lo", lo)
        self.register_buffer("lm_hi", hi)
        self.spatial = make_encoder(config.spatial)
        self.landmark_grid = make_encoder(config.landmark_grid)
        fx, fl, h = self.spatial.output_dim, self.landmark_grid.output_dim, config.hidden
        self.condition = mlp([self.lm_mean.numel(), h, config.cond_dim])
        self.ambient = mlp([fx + config.cond_dim, h, config.ambient_dim])
        self.eye_dim = 2 if config.eye_condition else 0
        self.sigma_net = mlp([fx + fl + self.eye_dim, h, 1 + config.geo_features])
        self.code_dim = config.appearance_dim
        self.color_net = mlp([config.geo_features + 9 + self.code_dim, h, 3])
        if self.code_dim:
            if frames < 1:
                raise ValueError("appearance codes need the number of training frames")
            self.appearance = nn.Embedding(frames, self.code_dim)
            nn.init.zeros_(self.appearance.weight)  # every frame starts at the neutral code

    @property
    def backend(self) -> str:
        return self.spatial.backend

    def clamp_landmarks(self, lm3d: torch.Tensor) -> torch.Tensor:
        """Landmark frames [B, 68, 3] with every value clamped to the training frames'
        percentile bounds (`RenderConfig.lm_clamp`); rendering does this, training does not."""
        flat = lm3d.reshape(lm3d.shape[0], -1).to(self.lm_mean.dtype)
        return torch.maximum(torch.minimum(flat, self.lm_hi), self.lm_lo).reshape(lm3d.shape)

    def encode_landmarks(self, lm3d: torch.Tensor) -> torch.Tensor:
        """Conditions [B, cond_dim (+ 2)] of landmark frames [B, 68, 3] (or [B, 204]); with
        `eye_condition`, the two eyes' opening ratios (`render.regions.eye_ratios`) relative to
        those of the mean training landmarks, less 1 (0: as open as usual, -1: closed), are
        appended."""
        flat = lm3d.reshape(lm3d.shape[0], -1).to(self.lm_mean.dtype)
        cond = self.condition((flat - self.lm_mean) / self.lm_std)
        if not self.eye_dim:
            return cond
        usual = eye_ratios(self.lm_mean.reshape(1, -1, 3))
        eyes = eye_ratios(flat.reshape(flat.shape[0], -1, 3)) / usual - 1.0
        return torch.cat([cond, eyes], dim=-1)

    def with_codes(self, cond: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Conditions [B, C] with the appearance codes of training rows `rows` [B] appended
        (training); without them (`encode_landmarks` alone) the field uses the neutral code."""
        if not self.code_dim:
            return cond
        return torch.cat([cond, self.appearance(rows)], dim=-1)

    def _features(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        bound = self.config.bound
        fx = self.spatial((x / bound + 1.0) * 0.5)
        c = self.config.cond_dim
        ambient = torch.tanh(self.ambient(torch.cat([fx, cond[:, :c]], dim=-1)))
        fl = self.landmark_grid((ambient + 1.0) * 0.5)
        return self.sigma_net(torch.cat([fx, fl, cond[:, c : c + self.eye_dim]], dim=-1))

    def _codes(self, cond: torch.Tensor) -> torch.Tensor:
        """The appearance codes [S, code_dim] carried by `cond`, or the neutral code."""
        start = self.config.cond_dim + self.eye_dim
        if cond.shape[1] > start:
            return cond[:, start:]
        return cond.new_zeros(cond.shape[0], self.code_dim)

    def density(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self._features(x, cond)
        return torch.exp(h[:, 0].clamp(max=DENSITY_CLAMP))

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, dirs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [S], rgb [S, 3]) at points x [S, 3] under conditions [S, C], seen along
        unit directions [S, 3]."""
        h = self._features(x, cond)
        sigma = torch.exp(h[:, 0].clamp(max=DENSITY_CLAMP))
        parts = [h[:, 1:], sh_degree2(dirs)]
        if self.code_dim:
            parts.append(self._codes(cond))
        rgb = torch.sigmoid(self.color_net(torch.cat(parts, dim=-1)))
        return sigma, rgb
