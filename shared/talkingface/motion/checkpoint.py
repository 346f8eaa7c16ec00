"""Motion checkpoints on disk: safetensors weights + config.json, and resumable train state.

A checkpoint directory (`talkingface train syncnet|motion --out CKPT_DIR`) holds one
sub-directory per trained model:

    CKPT_DIR/syncnet/             the sync expert
    CKPT_DIR/motion/              the pitch-aware VAE (variant "full")
    CKPT_DIR/motion-no_pitch/     ablation: no pitch in the VAE
    CKPT_DIR/motion-no_temporal/  ablation: no temporal loss

and a postnet directory (`talkingface train postnet --out DIR`) holds one avatar's postnet.
Each model directory contains:

- `model.safetensors`: the weights, plus the normalisation statistics under `stats.*`;
- `config.json`: the full MotionConfig, feature width and front end, step, final metrics;
- `train_state.pt`: optimiser, step and random-generator states (only to resume training);
- `history.json` and `curves.png`: losses and validation metrics over training.

Files are written to a temporary name and renamed, and `config.json` last, so a directory
with a `config.json` always has matching weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from talkingface.motion.config import MotionConfig
from talkingface.motion.data import Stats

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.pt"
HISTORY = "history.json"
CURVES = "curves.png"


def model_dir(ckpt: Path | str, kind: str, variant: str = "full") -> Path:
    """CKPT_DIR/syncnet, CKPT_DIR/motion or CKPT_DIR/motion-<variant>."""
    if kind == "syncnet":
        return Path(ckpt) / "syncnet"
    return Path(ckpt) / ("motion" if variant == "full" else f"motion-{variant}")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_model(
    directory: Path,
    modules: dict[str, nn.Module],
    stats: Stats,
    meta: dict[str, Any],
) -> None:
    """Write weights (every module under its prefix) and config.json (last)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().cpu().contiguous()
    for key, value in stats.arrays().items():
        tensors[f"stats.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
    _atomic(directory / WEIGHTS, lambda p: save_file(tensors, str(p)))
    text = json.dumps(meta, indent=2, sort_keys=True)
    _atomic(directory / CONFIG, lambda p: p.write_text(text))


def read_meta(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG}; not a trained motion model")
    return json.loads(path.read_text())


def load_weights(directory: Path | str) -> tuple[dict[str, dict[str, torch.Tensor]], Stats]:
    """Weights grouped by module prefix, and the normalisation statistics."""
    tensors = load_file(str(Path(directory) / WEIGHTS))
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        groups.setdefault(prefix, {})[rest] = value
    stats = Stats.from_arrays({k: v.numpy() for k, v in groups.pop("stats").items()})
    return groups, stats


def config_of(meta: dict[str, Any]) -> MotionConfig:
    return MotionConfig.from_dict(meta["config"])


def save_state(directory: Path, state: dict[str, Any]) -> None:
    _atomic(directory / STATE, lambda p: torch.save(state, p))


def load_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss curves (left) and validation metrics (right) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if h.get("kind") == "train"]
    val = [h for h in history if h.get("kind") == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, rows, label in ((axes[0], train, "training losses"), (axes[1], val, "validation")):
        keys = sorted({k for r in rows for k in r if k not in ("kind", "step")})
        for key in keys:
            xs = [r["step"] for r in rows if key in r]
            ys = [r[key] for r in rows if key in r]
            if xs:
                ax.plot(xs, ys, label=key, marker="o" if rows is val else None, markersize=3)
        ax.set_xlabel("step")
        if rows is train:  # losses differ by orders of magnitude (the KL starts high)
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(label)
        if keys:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"), dpi=90)
    plt.close(fig)
    os.replace(path.with_name(path.name + ".tmp.png"), path)
