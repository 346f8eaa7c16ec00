"""`talkingface train avatar`: the renderer, the projection index and (with --ckpt) the
postnet of one avatar, written as an avatar bundle directory and, with --publish, published
to the object store as a new version of the avatar (docs/renderer.md)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BUNDLE_DIRS = ("renderer", "projection", "postnet")
POSTNET_FILES = ("model.safetensors", "config.json")


def train_avatar(
    args: argparse.Namespace,
    settings,
    device: str,
    on_progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Train and write (and with args.publish publish) one avatar's bundle; its report.

    `on_progress(stage, fraction)` (stage TRAIN or PUBLISH, fraction of the whole in [0, 1])
    runs after every training step and between phases; an exception it raises (a job's
    cancellation) stops the training there.
    """
    import torch
    from tqdm import tqdm

    from talkingface.landmarks.bundle import avatar_index, projection_files
    from talkingface.render import checkpoint as rck
    from talkingface.render.config import preset
    from talkingface.render.data import load_avatar
    from talkingface.render.renderer import new_renderer
    from talkingface.render.train import evaluate_frames, train, val_frames

    if args.publish:
        from talkingface.bundle import avatar_prefix

        avatar_prefix(args.publish)  # a bad id fails now, not after training
    started = time.perf_counter()
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if getattr(args, "no_torso", False):
        overrides["torso"] = False
    config = preset(args.preset or "cpu", **overrides)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    video = load_avatar(args.data, config.size)
    # With super-resolution, the frames at the output size: its targets, the plate, previews.
    shown = load_avatar(args.data, config.output_size) if config.sr_scale > 1 else video
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    renderer = new_renderer(config, video, device)
    bar = tqdm(total=config.steps, desc="renderer", unit="step", disable=args.quiet,
               dynamic_ncols=True)  # fmt: skip

    def progress(step: int, record: dict) -> None:
        bar.update()
        if on_progress is not None:
            on_progress("TRAIN", 0.9 * min(step + 1, config.steps) / config.steps)
        if "val_psnr" in record:
            bar.set_postfix(val_psnr=f"{record['val_psnr']:.2f}", occ=f"{record['occupancy']:.3f}")

    report = train(renderer, video, progress, hires=shown if shown is not video else None)
    bar.close()
    metrics = {
        "val_psnr": round(report.val_psnr, 3),
        "val_ssim": round(report.val_ssim, 4),
        "occupancy": round(report.occupancy, 4),
        "samples_per_ray": round(report.samples_per_ray, 2),
        "train_seconds": report.seconds,
        "steps": report.steps,
        "size": config.output_size,
        "backend": renderer.field.backend,
    }
    if report.pose_refinement:
        metrics["pose_refinement"] = report.pose_refinement
    if report.torso:
        metrics["torso"] = {k: report.torso[k] for k in ("steps", "seconds", "loss")}
    rck.save_renderer(out / "renderer", renderer, report.R, report.t, shown.background, metrics)
    (out / "history.json").write_text(json.dumps(report.history, indent=1) + "\n")
    _curves(report.history, out / "curves.png")
    frames = val_frames(video, config.val_frames)
    rendered, truth, _ = evaluate_frames(renderer, shown, frames, report.R, report.t)
    _previews(rendered.cpu().numpy(), truth.cpu().numpy(), frames, out / "previews")
    index = avatar_index(args.data)
    for name, data in projection_files(index).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    result: dict[str, Any] = {
        "out": str(out),
        "preset": config.preset,
        "renderer": metrics,
        "projection": {"frames": len(index.frames), "threshold_mm": round(index.threshold, 4)},
    }
    if args.ckpt is not None:
        from talkingface.motion.commands import _train_postnet

        if on_progress is not None:
            on_progress("TRAIN", 0.9)
        postnet_args = argparse.Namespace(**{**vars(args), "out": out / "postnet", "publish": None,
                                             "steps": None, "preset": None})  # fmt: skip
        result["postnet"] = _train_postnet(postnet_args, settings, device)
    if args.publish:
        from talkingface.bundle import avatar_prefix
        from talkingface.storage import store_from_settings

        if on_progress is not None:
            on_progress("PUBLISH", 0.97)
        files = bundle_files(out)
        published = store_from_settings(settings).publish_version(
            avatar_prefix(args.publish), files, metadata={"renderer": metrics}
        )
        result["published"] = {
            "avatar_id": args.publish,
            "version": published.version,
            "files": sorted(files),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def bundle_files(directory: Path | str) -> dict[str, Path]:
    """The files of a trained avatar directory that make its bundle (bundle name -> path)."""
    from talkingface.landmarks.bundle import PROJECTION_FILES
    from talkingface.render.files import RENDERER_FILES

    root = Path(directory)
    names = list(RENDERER_FILES) + list(PROJECTION_FILES)
    names += [f"postnet/{name}" for name in POSTNET_FILES if (root / "postnet" / name).is_file()]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a trained avatar ({', '.join(missing)} missing)")
    return {name: root / name for name in names}


def _curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["val_psnr"] for h in history], marker="o", label="held-out PSNR")
    ax.plot(steps, [h["train_psnr"] for h in history], alpha=0.6, label="training batch PSNR")
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _previews(rendered: np.ndarray, truth: np.ndarray, frames: np.ndarray, folder: Path) -> None:
    """One PNG per held-out frame: ground truth | rendered."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.image import imsave

    folder.mkdir(parents=True, exist_ok=True)
    for image, real, frame in zip(rendered, truth, frames, strict=True):
        pair = np.concatenate([real, image], axis=1)
        imsave(folder / f"val_{int(frame):05d}.png", np.clip(pair, 0.0, 1.0))
