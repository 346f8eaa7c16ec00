"""Judge configuration: window sizes, network widths and the training plan, with presets.

- `tiny`: a few thousand parameters and 150 steps, for tests (seconds on a CPU).
- `cpu`: the measured judge (docs/judge.md): trains in a few minutes on 2 CPU cores.
- `full`: the same network trained longer on bigger batches.

A judge directory stores the exact configuration it was trained with (`judge.json`), so
scoring never depends on the preset tables below. Judges written before `sequence_scale`
existed read their mouth measurements with the mean removed only; `from_dict` keeps them so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

PRESETS = ("tiny", "cpu", "full")
OFFSETS = 8  # scored offsets: -8..8 frames (+-320 ms at 25 fps), like SyncNet's LSE-C


@dataclass
class JudgeConfig:
    audio_window: int = 9  # frames of audio features around the centre frame (odd)
    mouth_window: int = 9  # frames of mouth geometry around the (shifted) centre frame (odd)
    audio_channels: int = 64
    audio_layers: int = 3  # conv layers of the audio encoder
    mouth_hidden: int = 128
    embed: int = 64
    score_hidden: int = 128
    dropout: float = 0.1  # on the audio window and inside the pair scorer
    train_offsets: int = 8  # training softmax over offsets -K..K
    target_width: float = 2.0  # soft target over offsets: exp(-|k| / width) (frames)
    label_smoothing: float = 0.05  # plus this share spread uniformly over all offsets
    # Each mouth measurement / its own std over the sequence (docs/judge.md, "Read from a
    # video"): the judge reads timing, not how far a tracker's reading of the mouth moves.
    sequence_scale: bool = True
    # Training only: each example's mouth measurements times exp(N(0, gain)) each, plus
    # N(0, noise) per frame (in units of their training std).
    augment_gain: float = 0.3
    augment_noise: float = 0.3
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    lr_decay: float = 0.05  # the learning rate falls exponentially to lr * lr_decay
    weight_decay: float = 1e-2
    val_every: int = 500

    def __post_init__(self) -> None:
        for name in ("audio_window", "mouth_window"):
            value = getattr(self, name)
            if value < 1 or value % 2 == 0:
                raise ValueError(f"{name} must be odd and positive, got {value}")
        if self.train_offsets < OFFSETS:
            raise ValueError(f"train_offsets must be at least {OFFSETS}")
        if self.augment_gain < 0 or self.augment_noise < 0:
            raise ValueError("augment_gain and augment_noise must be >= 0")

    @property
    def reach(self) -> int:
        """Frames between a scored centre and the sequence edge (all 17 candidates exist)."""
        return max(self.audio_window // 2, self.mouth_window // 2 + OFFSETS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {"sequence_scale": False, **data}  # a judge from before it existed
        return cls(**{k: v for k, v in data.items() if k in names})


def preset(name: str, steps: int | None = None) -> JudgeConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown judge preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name == "tiny":
        config = JudgeConfig(
            audio_window=5,
            mouth_window=5,
            audio_channels=16,
            audio_layers=2,
            mouth_hidden=32,
            embed=16,
            score_hidden=32,
            steps=150,
            batch=32,
            lr=3e-3,
            val_every=50,
        )
    elif name == "full":
        config = JudgeConfig(steps=6000, batch=128)
    else:
        config = JudgeConfig()
    if steps is not None:
        if steps <= 0:
            raise ValueError(f"--steps must be positive, got {steps}")
        config.steps = steps
    return config
