"""`talkingface eval avatar`: the renderer on the avatar's held-out frames, driven by their
ground-truth landmarks and recorded poses, and the paper's table-5 ablation.

Evaluation set (fixed): every frame of the avatar's `val` split (the last 1/11 of the video,
never trained on), or `max_frames` of them evenly spaced. Reported:

- `psnr`, `ssim`: whole frames (the head composited over the background plate, as served);
  `psnr_head`: the head-mask pixels only; `psnr_lip`: the mouth box (the outer-lip landmarks'
  bounding box, 2 px margin) -- paper table 5's PSNR(Lip); `psnr_torso` (avatars with torso
  masks): the torso-mask pixels (neck and shoulders);
- `mouth_open_r`: Pearson r between the mouth opening the driving landmarks ask for (inner-lip
  gap, `talkingface.lm3d.mouth_opening`) and the opening measured in the rendered pixels
  (pixels of the mouth box darker than DARK: the open mouth is dark); `mouth_open_r_truth`
  gives the same measure on the real frames (the ceiling of this pixel measure), and
  `mouth_pixels_r` the agreement of rendered and real pixel openings;
- `eye_open_r`: Pearson r between the eyes' opening the driving landmarks ask for (the
  eye-opening ratio, `render.regions.eye_ratio`) and the opening measured in the rendered
  pixels (`eye_pixels`: the share of each eye box, fixed in size by the eye's width, that is
  sclera or iris -- pixels less red than skin, blue minus red above EYE_CHROMA);
  `eye_open_r_truth` the same on the real frames (the ceiling), `eye_pixels_r` rendered
  against real; `closed_eye_frames`: how many evaluated frames have the eyes at most half as
  open as their median (r rests on them);
- `fps`: frames per second rendered (batches of RENDER_BATCH frames, this process's device).

Table 5 (`ablation`): the renderer trained from scratch with hyper-space dimensions N = 2, 3, 4
(same preset and steps), each evaluated as above.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkingface.lm3d import OUTER_LIPS, mouth_opening
from talkingface.render.regions import eye_measure_boxes, eye_ratio

DARK = 0.3
EYE_CHROMA = -0.1  # blue minus red: skin is well below, sclera and irises above
LIP_MARGIN = 2
RENDER_BATCH = 8


def _luminance(images: np.ndarray) -> np.ndarray:
    return images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114


def mouth_boxes(lm2d: np.ndarray, size: int, margin: int = LIP_MARGIN) -> np.ndarray:
    """Boolean masks [B, H, W] of each frame's outer-lip bounding box (pixels)."""
    boxes = np.zeros((len(lm2d), size, size), bool)
    for b, points in enumerate(lm2d):
        lo = np.floor(points[OUTER_LIPS].min(0) - margin).astype(int).clip(0, size)
        hi = np.ceil(points[OUTER_LIPS].max(0) + margin).astype(int).clip(0, size)
        boxes[b, lo[1] : hi[1], lo[0] : hi[0]] = True
    return boxes


def eye_pixels(images: np.ndarray, lm2d: np.ndarray) -> np.ndarray:
    """Eye opening seen in images [B, H, W, 3] in [0, 1]: the share of pixels in both eyes'
    measuring boxes (`render.regions.eye_measure_boxes` of lm2d [B, 68, 2]) whose blue minus
    red exceeds EYE_CHROMA (an open eye shows sclera and iris; a closed one, lid skin)."""
    boxes = eye_measure_boxes(lm2d, images.shape[1])
    out = np.zeros(len(images))
    for b, image in enumerate(images):
        hits = total = 0
        for x0, y0, x1, y1 in boxes[b]:
            patch = image[y0:y1, x0:x1]
            hits += int(((patch[..., 2] - patch[..., 0]) > EYE_CHROMA).sum())
            total += patch.shape[0] * patch.shape[1]
        out[b] = hits / max(total, 1)
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def psnr_where(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    mse = float(((a - b) ** 2)[mask].mean()) if mask.any() else float("nan")
    return 10.0 * np.log10(1.0 / max(mse, 1e-12))


def _torso_psnr(out: np.ndarray, truth: np.ndarray, video, frames: np.ndarray) -> dict:
    """{"psnr_torso": PSNR over the torso-mask pixels} when the avatar has torso masks."""
    torso = getattr(video, "torso", None)
    if torso is None or not np.asarray(torso[frames]).any():
        return {}
    return {"psnr_torso": round(psnr_where(out, truth, np.asarray(torso[frames])), 3)}


def eval_frames(video, max_frames: int | None = None) -> np.ndarray:
    """The evaluated frames: the `val` split, or `max_frames` of it evenly spaced."""
    frames = np.arange(*video.val)
    if max_frames is not None and len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    return frames


def evaluate_renderer(renderer, video, max_frames: int | None = None) -> dict[str, Any]:
    from talkingface.render.renderer import psnr, ssim

    frames = eval_frames(video, max_frames)
    rendered, spent = [], 0
    started = time.perf_counter()
    for i in range(0, len(frames), RENDER_BATCH):
        f = frames[i : i + RENDER_BATCH]
        images, samples = renderer.render(video.lm3d[f], video.R[f], video.t[f], video.background)
        rendered.append(images.cpu().numpy())
        spent += samples
    seconds = time.perf_counter() - started
    out = np.concatenate(rendered)
    truth = np.asarray(video.frames[frames], np.float32) / 255.0
    heads = np.asarray(video.masks[frames])
    boxes = mouth_boxes(video.lm2d[frames], video.size)
    gap = mouth_opening(video.lm3d[frames])
    dark_rendered = ((_luminance(out) < DARK) & boxes).sum((1, 2))
    dark_truth = ((_luminance(truth) < DARK) & boxes).sum((1, 2))
    ratio = eye_ratio(video.lm3d[frames])
    eyes_rendered = eye_pixels(out, video.lm2d[frames])
    eyes_truth = eye_pixels(truth, video.lm2d[frames])
    rendered_t, truth_t = torch.from_numpy(out), torch.from_numpy(truth)
    return {
        "frames": len(frames),
        "size": video.size,
        "psnr": round(psnr(rendered_t, truth_t), 3),
        "ssim": round(ssim(rendered_t, truth_t), 4),
        "psnr_head": round(psnr_where(out, truth, heads), 3),
        "psnr_lip": round(psnr_where(out, truth, boxes), 3),
        **_torso_psnr(out, truth, video, frames),
        "mouth_open_r": round(_pearson(dark_rendered, gap), 4),
        "mouth_open_r_truth": round(_pearson(dark_truth, gap), 4),
        "mouth_pixels_r": round(_pearson(dark_rendered, dark_truth), 4),
        "eye_open_r": round(_pearson(eyes_rendered, ratio), 4),
        "eye_open_r_truth": round(_pearson(eyes_truth, ratio), 4),
        "eye_pixels_r": round(_pearson(eyes_rendered, eyes_truth), 4),
        "closed_eye_frames": int((ratio <= 0.5 * np.median(ratio)).sum()),
        "fps": round(len(frames) / seconds, 2),
        "samples_per_pixel": round(spent / (len(frames) * renderer.config.size**2), 2),  # NeRF px
        "backend": renderer.field.backend,
        "device": str(renderer.device),
        "torso": renderer.torso is not None,
    }


def evaluate(
    avatar_dir: Path | str,
    bundle_dir: Path | str,
    max_frames: int | None = None,
    device: str = "cpu",
    align: bool = False,
) -> dict[str, Any]:
    """`eval avatar`: the measures above; with `align`, also `aligned`: the same PSNRs and
    SSIM with each evaluated frame's pose fitted to its pixels, the field frozen
    (`render.poses.align_poses`), and how far the poses moved."""
    from talkingface.render.checkpoint import load_renderer, read_meta, track_poses
    from talkingface.render.data import load_avatar

    renderer_dir = Path(bundle_dir) / "renderer"
    renderer, track = load_renderer(renderer_dir, device)
    video = load_avatar(avatar_dir, renderer.config.output_size)
    video.R, video.t = track_poses(track, video)
    result = evaluate_renderer(renderer, video, max_frames)
    if align:
        result["aligned"] = _aligned(renderer, video, avatar_dir, max_frames)
    meta = read_meta(renderer_dir)
    result.update(
        preset=meta["config"]["preset"],
        ambient_dim=meta["config"]["ambient_dim"],
        trained=meta.get("metrics", {}),
    )
    return result


ALIGNED = ("psnr", "ssim", "psnr_head", "psnr_lip", "psnr_torso")


def _aligned(renderer, video, avatar_dir, max_frames: int | None) -> dict[str, Any]:
    from dataclasses import replace

    from talkingface.render.data import load_avatar
    from talkingface.render.poses import align_poses

    started = time.perf_counter()
    frames = eval_frames(video, max_frames)
    nerf = video  # the pose is fitted at the NeRF's size (below the output's with sr)
    if renderer.config.size != video.size:
        nerf = replace(load_avatar(avatar_dir, renderer.config.size), R=video.R, t=video.t)
    R, t, moved = align_poses(renderer, nerf, frames)
    fitted = replace(video, R=np.array(video.R), t=np.array(video.t))
    fitted.R[frames], fitted.t[frames] = R, t
    scores = evaluate_renderer(renderer, fitted, max_frames)
    return {**{k: scores[k] for k in ALIGNED if k in scores}, **moved,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def ablation(
    avatar_dir: Path | str,
    preset_name: str,
    steps: int | None,
    dims: tuple[int, ...] = (2, 3, 4),
    max_frames: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Table 5: one renderer per hyper-space dimension N, trained and evaluated alike."""
    from tqdm import tqdm

    from talkingface.render.config import preset
    from talkingface.render.data import load_avatar
    from talkingface.render.renderer import new_renderer
    from talkingface.render.train import train

    rows = []
    for n in dims:
        overrides: dict[str, Any] = {"ambient_dim": n}
        if steps is not None:
            overrides["steps"] = steps
        config = preset(preset_name, **overrides)
        video = load_avatar(avatar_dir, config.size)
        shown = load_avatar(avatar_dir, config.output_size) if config.sr_scale > 1 else None
        renderer = new_renderer(config, video, device)
        bar = tqdm(total=config.steps, desc=f"N={n}", unit="step", disable=not progress)
        report = train(renderer, video, lambda *_, bar=bar: bar.update(), hires=shown)
        bar.close()
        row = {"name": f"dim={n}", "ambient_dim": n, "train_seconds": report.seconds}
        row.update(evaluate_renderer(renderer, shown or video, max_frames))
        rows.append(row)
    return rows
