"""Renderer configuration: network sizes, ray marching and the training plan, by preset.

Presets: `tiny` (tests: seconds), `cpu` (the demo: a 128 x 128 avatar in about 20 minutes on
2 cores), `full` (GPU: a 256 x 256 NeRF, instant-NGP sized grids, GeneFace++'s N = 3 hyper-space,
and a super-resolution network to 512 x 512 output, as GeneFace++'s code does).
Every field is saved with a trained avatar (`config.json` of its renderer), so a bundle always
renders with the configuration it was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from talkingface.render.encoding import GridConfig

PRESETS = ("tiny", "cpu", "full")


def _strict(cls, data: dict[str, Any], what: str):
    """`cls(**data)`, refusing fields `cls` does not have (a config.json from elsewhere)."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} fields: {unknown}")
    return cls(**data)


@dataclass
class TorsoConfig:
    """The torso layer (`talkingface.render.torso`): sizes and its training plan."""

    levels: int = 4
    """Dense 2-D feature grids, resolutions spaced geometrically from coarsest to finest."""
    coarsest: int = 16
    finest: int = 128
    features: int = 4
    hidden: int = 64
    pose_dim: int = 16
    code_dim: int = 8
    """Per-training-frame code (the torso's own motion); zero when rendering."""
    frequencies: int = 4
    """Positional-encoding octaves of the pixel position fed to the deformation MLP."""
    max_offset: float = 0.2
    """Largest deformation, in half-widths of the image."""
    steps: int = 400
    batch: int = 4096
    lr: float = 1e-2
    lr_grid: float = 5e-2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TorsoConfig:
        return _strict(cls, data, "torso config")


@dataclass
class RenderConfig:
    preset: str = "cpu"
    size: int = 128
    """Training and rendering resolution, pixels per side."""
    bound: float = 2.0
    """The head lives in the cube [-bound, bound]^3 of its canonical frame (1 unit = 10 cm)."""
    spatial: GridConfig = field(default_factory=GridConfig)
    ambient_dim: int = 3
    """N: dimensions of the landmark hyper-space coordinate (paper table 5: 2, 3, 4)."""
    landmark_grid: GridConfig = field(default_factory=lambda: GridConfig(input_dim=3))
    cond_dim: int = 32
    """Width of the landmark condition (lm3d -> MLP) fed to the ambient MLP."""
    hidden: int = 64
    geo_features: int = 15
    samples: int = 48
    """Samples per ray across the bounding cube (uniform, jittered in training)."""
    chunks: int = 4
    """Groups of samples marched front to back; rays stop after a group once opaque."""
    stop_transmittance: float = 1e-3
    occupancy_res: int = 64
    occupancy_alpha: float = 0.01
    """A cell is occupied while its density could make a sample this opaque."""
    occupancy_every: int = 32
    occupancy_decay: float = 0.9
    carve_frames: int = 64
    """Training frames whose masks carve the empty space before training."""
    steps: int = 3000
    batch_rays: int = 4096
    lr_grid: float = 1e-2
    lr_mlp: float = 2e-3
    warmup_steps: int = 100
    val_every: int = 250
    val_frames: int = 8
    seed: int = 1
    refine_poses: bool = False
    """Refine each training frame's head pose photometrically with the field. Off: on avatars
    ingested from video it made the held-out frames worse (docs/renderer.md, "Estimated
    poses")."""
    pose_lr: float = 1e-3
    pose_start: int = 100
    """Training step from which the poses move (the field first takes a rough shape)."""
    sr_scale: int = 1
    """Super-resolution factor (`talkingface.render.superres`): the NeRF renders `size`, a
    small conv network takes it to `size * sr_scale` (1 = off)."""
    sr_width: int = 32
    """Channels of the super-resolution network."""
    sr_patch: int = 32
    """Side, in NeRF pixels, of the patches the super-resolution network trains on."""
    sr_start: float = 0.25
    """Fraction of `steps` after which the super-resolution network trains (NeRF warm-up)."""
    sr_lr: float = 1e-3

    appearance_dim: int = 0
    """Width of a per-training-frame appearance code fed to the colour MLP (GeneFace++'s 4-d
    latent): it absorbs what changes from frame to frame and the landmarks do not explain
    (exposure, white balance, light); rendering uses the neutral code, zero, which training
    keeps at the codes' mean. 0: none."""
    alpha_weight: float = 0.0
    """Weight of the silhouette loss: the squared difference between each training ray's
    accumulated head opacity and the head mask at its pixel, added to the colour MSE (an
    opaque head lets rays stop at its surface and the plate not show through it)."""

    eye_condition: bool = False
    """Feed the eyes' opening ratios from the landmarks to the density MLP (blinks render)."""
    region_share: float = 0.0
    """Share of each batch's rays drawn inside the eye and lip boxes of the training frames
    (`render.regions`; a box picked uniformly among both eyes and the lips)."""
    lip_patch: int = 0
    """Side (pixels) of a window of rays around the mouth rendered each step for the patch
    loss (`render.patches`); 0: none."""
    lip_patch_weight: float = 0.0
    """Weight of the lip patch loss (1 - SSIM) added to the pixel MSE."""

    lm_clamp: float = 0.5
    """At inference, each landmark coordinate is clamped to the training frames' [lm_clamp,
    100 - lm_clamp] percentiles: predicted landmarks outside what the field was trained on
    are pulled back to its edge. The official code's 3rd-97th clamps every blink away (closed
    eyes are rarer than 3 % of frames: eye-open r 0.66 instead of 0.82, docs/renderer.md).
    0: off."""
    lm_smooth: float = 0.0
    """At inference, the landmark sequence of a request is smoothed over time by a Gaussian of
    this standard deviation, in frames (`render.condition.smooth_landmarks`). 0: off."""

    torso: bool = False
    """Model the neck and shoulders with their own layer (`render.torso`), trained after the
    head on the avatar's torso masks and drawn under the head. Off, everything inside the
    person's masks (head and torso) is modelled rigid with the head."""
    torso_model: TorsoConfig = field(default_factory=TorsoConfig)

    def __post_init__(self) -> None:
        if isinstance(self.torso_model, dict):
            self.torso_model = TorsoConfig.from_dict(self.torso_model)
        if isinstance(self.spatial, dict):
            self.spatial = GridConfig.from_dict(self.spatial)
        if isinstance(self.landmark_grid, dict):
            self.landmark_grid = GridConfig.from_dict(self.landmark_grid)
        if self.landmark_grid.input_dim != self.ambient_dim:
            self.landmark_grid = dataclasses.replace(self.landmark_grid, input_dim=self.ambient_dim)
        if self.spatial.input_dim != 3:
            raise ValueError("the spatial grid is 3-D")
        if self.sr_scale not in (1, 2, 4):
            raise ValueError(f"sr_scale must be 1 (off), 2 or 4, got {self.sr_scale}")
        if self.torso and self.sr_scale > 1:
            raise ValueError("the torso layer does not work with super-resolution yet: "
                             "set torso false or sr_scale 1")  # fmt: skip
        if not 0.0 <= self.region_share < 1.0:
            raise ValueError(f"region_share must be in [0, 1), got {self.region_share}")
        if self.appearance_dim < 0:
            raise ValueError(f"appearance_dim must be >= 0, got {self.appearance_dim}")
        if not 0.0 <= self.lm_clamp < 50.0:
            raise ValueError(f"lm_clamp must be a percentile in [0, 50), got {self.lm_clamp}")
        if not 0.0 <= self.lm_smooth <= 10.0:
            raise ValueError(f"lm_smooth must be in [0, 10] frames, got {self.lm_smooth}")
        if self.lip_patch < 0 or (0 < self.lip_patch < 8):
            raise ValueError(f"lip_patch must be 0 (off) or >= 8 pixels, got {self.lip_patch}")

    @property
    def output_size(self) -> int:
        """Side of the frames a renderer returns: `size * sr_scale`."""
        return self.size * self.sr_scale

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderConfig:
        return _strict(cls, data, "renderer config")

    def with_backend(self, implementation: str, strict: bool = False) -> RenderConfig:
        """The same configuration with both grids on `implementation` (auto, torch, tcnn)."""
        return dataclasses.replace(
            self,
            spatial=dataclasses.replace(self.spatial, implementation=implementation, strict=strict),
            landmark_grid=dataclasses.replace(
                self.landmark_grid, implementation=implementation, strict=strict
            ),
        )


def preset(name: str, **overrides: Any) -> RenderConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown renderer preset {name!r}; choose from {', '.join(PRESETS)}")
    if name == "tiny":
        config = RenderConfig(
            preset="tiny",
            size=32,
            spatial=GridConfig.from_finest(64, num_levels=4, log2_hashmap_size=12),
            landmark_grid=GridConfig.from_finest(
                16, input_dim=3, num_levels=2, log2_hashmap_size=10, base_resolution=4
            ),
            cond_dim=8,
            hidden=32,
            geo_features=7,
            samples=16,
            chunks=2,
            occupancy_res=16,
            occupancy_every=8,
            carve_frames=8,
            steps=80,
            batch_rays=512,
            lr_mlp=1e-2,
            warmup_steps=5,
            val_every=40,
            val_frames=2,
            torso=True,
            torso_model=TorsoConfig(levels=2, coarsest=8, finest=32, features=2, hidden=16,
                                    pose_dim=4, code_dim=2, frequencies=2, steps=30, batch=512,
                                    lr=2e-2, lr_grid=1e-1),
        )  # fmt: skip
    elif name == "cpu":
        config = RenderConfig(
            preset="cpu",
            size=128,
            spatial=GridConfig.from_finest(512, num_levels=12, log2_hashmap_size=16),
            landmark_grid=GridConfig.from_finest(
                64, input_dim=3, num_levels=6, log2_hashmap_size=14, base_resolution=4
            ),
            # Twice the steps of half the rays each, the same samples as 600 x 4096 before
            # the compiled hash-grid kernel and in less time: +2.3 dB on the head, +2.6 on
            # the lips (docs/renderer.md, "Measured").
            steps=1600,
            batch_rays=2048,
            alpha_weight=0.03,
            lr_mlp=5e-3,
            val_every=400,
            torso=True,
            # 800 steps, ~10 s: at 400 the layer's torso PSNR spread 1.3 dB over initial
            # weights, at 800 0.4 dB (docs/renderer.md, "The torso").
            torso_model=TorsoConfig(steps=800),
        )
    else:
        config = RenderConfig(
            preset="full",
            size=256,
            spatial=GridConfig.from_finest(2048, num_levels=16, log2_hashmap_size=19),
            landmark_grid=GridConfig.from_finest(
                2048, input_dim=3, num_levels=16, log2_hashmap_size=19
            ),
            cond_dim=64,
            hidden=128,
            samples=96,
            occupancy_res=128,
            occupancy_every=16,
            steps=40000,
            batch_rays=16384,
            val_every=2000,
            sr_scale=2,
            # The torso layer is not yet composed with super-resolution (its layer would
            # have to be drawn at the output size): off here until it is.
            torso=False,
            torso_model=TorsoConfig(levels=6, finest=512, features=8, hidden=128, steps=20000),
        )
    return dataclasses.replace(config, **overrides) if overrides else config
