"""Motion-model configuration: network sizes, loss weights and training plans, with presets.

Defaults are the paper's (GeneFace++ table 6, appendix A); where the paper is silent the
released GeneFace code's values are used (../shared/REFERENCE.md). Presets:

- `full`: table-6 sizes and step counts for a GPU (VAE 192 channels, 8 encoder / 4 decoder
  layers, kernel 5, latent 16; flow prior 4 layers, kernel 3, 64 channels; postnet 8 layers,
  kernel 3, 256 channels; discriminator 5 layers, dropout 0.25).
- `cpu`: the same VAE, a narrower sync expert and postnet, smaller batches and fewer steps,
  sized so that a 30-minute corpus plus syncnet and motion training take about 15 minutes
  on 2 CPU cores.
- `tiny`: a few hundred parameters' worth of everything, for tests.

A checkpoint stores the exact configuration it was trained with (`config.json`), so
inference never depends on the preset tables below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

PRESETS = ("tiny", "cpu", "full")
VARIANTS = ("full", "no_pitch", "no_temporal")  # motion-model training variants (table 3)


@dataclass
class SyncConfig:
    """Sync expert: audio-feature window vs mouth-landmark window, contrastive (CLIP-style)."""

    window: int = 5  # frames on both sides of the comparison (200 ms at 25 fps)
    audio_channels: int = 256
    mouth_hidden: int = 256
    embed: int = 128
    layers: int = 3  # conv layers of the audio branch, linear layers of the mouth branch


@dataclass
class VAEConfig:
    """Pitch-aware conditional VAE with a normalising-flow prior (paper table 6)."""

    hidden: int = 192
    enc_layers: int = 8
    dec_layers: int = 4
    kernel: int = 5
    latent: int = 16
    downsample: int = 4  # latent frames per landmark frame (released code: 4)
    cond: int = 128  # condition channels (audio encoding + pitch encoding)
    pitch_embed: int = 128
    pitch_kernel: int = 3
    flow_layers: int = 4
    flow_kernel: int = 3
    flow_hidden: int = 64
    flow_depth: int = 2  # conv layers inside each coupling network
    dropout: float = 0.0
    use_pitch: bool = True


@dataclass
class PostnetConfig:
    """Domain-adaptive postnet and its per-frame discriminator (paper table 6, appendix A)."""

    hidden: int = 256
    layers: int = 8
    kernel: int = 3
    use_pitch: bool = True
    disc_hidden: int = 256
    disc_layers: int = 5
    disc_dropout: float = 0.25


@dataclass
class LossWeights:
    l2: float = 1.0
    kl: float = 0.02  # released code; annealed from 0 over kl_anneal_steps
    kl_anneal_steps: int = 1000
    sync: float = 0.2
    temporal: float = 1.0
    # postnet (generator side): adversarial, sync, closeness to its input, temporal
    adv: float = 0.85
    post_sync: float = 0.1
    post_mse: float = 0.5
    post_l2: float = 1.0  # paired L2 to the person's landmarks (0 = the paper's unpaired loss)
    post_temporal: float = 1.0
    gp: float = 10.0  # WGAN-GP weight on the discriminator
    gp_mode: str = "wgan-gp"  # "wgan-gp" (interpolates, (|g|-1)^2) or "real" (paper eq. 14)


@dataclass
class TrainPlan:
    steps: int
    batch: int
    window: int  # frames per training example (sync expert: windows are sampled inside)
    lr: float
    val_every: int
    ckpt_every: int
    lr_decay: float = 0.5  # the learning rate falls exponentially to lr * lr_decay at the end
    grad_clip: float = 1.0


@dataclass
class MotionConfig:
    """Everything that defines a motion checkpoint (written to its config.json)."""

    preset: str = "full"
    seed: int = 1
    variant: str = "full"
    sync: SyncConfig = field(default_factory=SyncConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    postnet: PostnetConfig = field(default_factory=PostnetConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    syncnet_plan: TrainPlan = field(
        default_factory=lambda: TrainPlan(40000, 256, 64, 5e-4, 1000, 2000)
    )
    motion_plan: TrainPlan = field(
        default_factory=lambda: TrainPlan(40000, 32, 128, 5e-4, 1000, 2000)
    )
    postnet_plan: TrainPlan = field(
        default_factory=lambda: TrainPlan(10000, 32, 128, 1e-4, 500, 1000)
    )
    temperature: float = 0.5  # flow-prior sampling temperature at inference
    infer_window: int = 1024  # frames per feed-forward pass at inference (41 s)
    infer_overlap: int = 64  # minimum frames shared by consecutive passes (see motion.infer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MotionConfig:
        nested = {
            "sync": SyncConfig,
            "vae": VAEConfig,
            "postnet": PostnetConfig,
            "loss": LossWeights,
            "syncnet_plan": TrainPlan,
            "motion_plan": TrainPlan,
            "postnet_plan": TrainPlan,
        }
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown motion config field {key!r}")
            kwargs[key] = nested[key](**value) if key in nested else value
        return cls(**kwargs)


def preset(name: str, variant: str = "full", seed: int = 1) -> MotionConfig:
    """The configuration of preset `name` for training `variant` (see the module docstring)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    config = MotionConfig(preset=name, seed=seed, variant=variant)
    if name == "cpu":
        config.sync = SyncConfig(audio_channels=128, mouth_hidden=128, embed=64)
        # The VAE at table-6 sizes: measured on a 30-minute corpus it beats a 128-channel VAE
        # (held-out landmark error 1.18 vs 1.24 mm) and still trains in ~13 minutes.
        config.postnet = PostnetConfig(hidden=96, layers=4, disc_hidden=128)
        config.loss.kl_anneal_steps = 800
        config.syncnet_plan = TrainPlan(1200, 96, 64, 1e-3, 200, 400)
        config.motion_plan = TrainPlan(5000, 16, 96, 1e-3, 500, 1000)
        config.postnet_plan = TrainPlan(100, 8, 96, 2e-4, 50, 100)
        # Measured on SynthTalk (one held-out speaker, ~13 s of adaptation data): a strong
        # adversarial term and a loose tie to the VAE's output overfit and raise the error.
        config.loss.adv = 0.1
        config.loss.post_mse = 3.0
    elif name == "tiny":
        config.sync = SyncConfig(audio_channels=16, mouth_hidden=16, embed=8, layers=2)
        config.vae = VAEConfig(
            hidden=16,
            enc_layers=2,
            dec_layers=2,
            kernel=3,
            latent=4,
            cond=16,
            pitch_embed=8,
            flow_layers=2,
            flow_hidden=8,
            flow_depth=1,
        )
        config.postnet = PostnetConfig(hidden=16, layers=2, disc_hidden=16, disc_layers=3)
        config.loss.kl_anneal_steps = 10
        config.syncnet_plan = TrainPlan(30, 32, 32, 3e-3, 10, 20)
        config.motion_plan = TrainPlan(30, 8, 32, 3e-3, 10, 20)
        config.postnet_plan = TrainPlan(20, 8, 32, 1e-3, 10, 20)
        config.infer_window = 64
        config.infer_overlap = 16  # raised to twice the receptive field at inference
    if variant == "no_pitch":
        config.vae.use_pitch = False
    elif variant == "no_temporal":
        config.loss.temporal = 0.0
    return config
