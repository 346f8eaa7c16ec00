"""`talkingface bench render`: frames per second of the renderer at 128² and 256².

Times `Renderer.render` (camera rays, occupancy-grid lookups, the landmark-conditioned field
on every occupied sample, front-to-back compositing with early ray termination, the clamp),
`batch` frames per call as the render service runs it (TALKINGFACE_RENDERER_BATCH_FRAMES)
and one frame per call, over `frames` distinct frames of a short SynthTalk avatar, on CPU
and, when torch sees a GPU, on CUDA (synchronised before each timer read). Encoding and
sending frames are not included.

The field is the `cpu` preset's, randomly initialised ("weights": "random-init"), at the
avatar's size; its occupancy grid is carved from the avatar's head masks as training starts
and refreshed once from the random field, so only the head's cells are marched. Random
weights do not learn the head's opaque surface: their densities are low and even, so rays
cross the whole carved volume and are rarely stopped early, while a trained head turns
opaque within a few samples and its rays stop there. A trained avatar therefore renders
faster than these figures (`samples_per_ray` says how many field evaluations a ray cost
here; compare it with `samples_per_ray` in a trained avatar's renderer/config.json metrics).

Two paths are timed, alternating call by call so that they share the machine's load:
`Renderer.render`'s inference march (`talkingface.render.march`: per-ray compaction, early
termination after every step, cheaper field evaluations, the compiled CPU hash-grid kernel
of `talkingface.render.kernels` where it builds) gives each entry's figures, and cff8805's
path (the training march `volume.render_rays` with the pure-PyTorch hash-grid lookup) gives
`reference`; `speedup` is their frames/s ratio and `max_pixel_difference` the largest change
of a pixel between them (each path is within the stop transmittance, 1e-3, of the
never-stopped march). With random weights the two spend the same samples (nothing turns
opaque), so the speed-up here is the cheaper evaluation alone.

`--bundle DIR --data AVATAR_DIR` times a trained avatar bundle instead, on `frames` evenly
spaced held-out frames of its avatar (their own landmarks and poses, as `eval avatar` renders
them), and reports each path's head PSNR beside its speed: where early termination pays, at
equal quality.

`--against OLD_DIR` (with `--bundle`) makes `reference` another bundle of the same avatar,
rendered on cff8805's path: the comparison the renderer's speed goal names, each version's
own trained model at its own quality (a bundle trained by cff8805's code, for instance, whose
semi-transparent head stops rays later). The two renderers alternate call by call as above;
`max_pixel_difference` is left out (different models), each path's head PSNR stays.

frames_per_second = frames / median wall seconds of rendering them (after one warm-up call).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from talkingface.bench.machine import environment, load_average, sync
from talkingface.render.config import preset
from talkingface.render.data import AvatarVideo, load_avatar
from talkingface.render.renderer import Renderer, new_renderer
from talkingface.render.train import carve
from talkingface.render.volume import update_occupancy

PRESET = "cpu"
AVATAR_SECONDS = 2.0
OCCUPANCY_CONDITIONS = 256  # landmark frames the one occupancy refresh draws from
PATHS = ("march", "reference")  # Renderer.render's inference march; render_rays (training's)

NOTE = (
    "frames_per_second: frames / median wall seconds of Renderer.render over `frames` "
    "distinct frames, `batch` frames per call (batch_1: one per call); rays, occupancy "
    "lookups, field evaluations and compositing, no encoding. Random-init weights of the "
    "`cpu` preset with the occupancy grid carved from a SynthTalk avatar's head masks and "
    "refreshed once: random densities rarely stop a ray early, so a trained avatar (opaque "
    "after a few samples) renders faster; samples_per_ray = field evaluations per ray. "
    "Each entry is Renderer.render's inference march (render.march); `reference` is the "
    "training path's march (render_rays, the renderer's only path up to cff8805) timed "
    "alternately in the same run, with the pure-PyTorch hash-grid lookup (cff8805's path; the "
    "march uses the compiled CPU kernel where it builds), `speedup` their frames/s ratio."
)
NOTE_AGAINST = (
    " `reference` is the --against bundle (another model of the same avatar) on cff8805's "
    "path, the two renderers alternating: each version's own model at its own head PSNR."
)
NOTE_BUNDLE = (
    "A trained bundle on `frames` evenly spaced held-out frames of its avatar (their own "
    "landmarks and poses): frames_per_second as in the random-init bench, the march and "
    "`reference` (render_rays) alternating; psnr_head = PSNR over the head-mask pixels of "
    "each path's images against the real frames (equal quality: the march moves no pixel "
    "by more than the stop transmittance)."
)


def _renderer(video: AvatarVideo, device: str) -> Renderer:
    """A random-init `cpu`-preset renderer at the avatar's size with a carved, once-refreshed
    occupancy grid (torch grids on CPU; tiny-cuda-nn where the GPU has it)."""
    config = preset(PRESET, size=video.size)
    if not device.startswith("cuda"):
        config = config.with_backend("torch")
    torch.manual_seed(0)
    renderer = new_renderer(config, video, device)
    lo, hi = video.train
    frames = np.unique(np.linspace(lo, hi - 1, config.carve_frames).round().astype(int))
    carve(renderer.occupancy, video, frames)
    generator = torch.Generator().manual_seed(config.seed)
    pick = torch.randint(lo, hi, (OCCUPANCY_CONDITIONS,), generator=generator)
    with torch.no_grad():
        conds = renderer.field.encode_landmarks(torch.from_numpy(video.lm3d[pick]).to(device))
    delta = 2 * config.bound / config.samples
    update_occupancy(renderer.field, renderer.occupancy, conds, delta, config.occupancy_alpha,
                     config.occupancy_decay, generator)  # fmt: skip
    return renderer


Timed = dict[str, tuple[list[float], int, np.ndarray]]


class Job(NamedTuple):
    """What one path renders: a renderer (put on the path by `_take`) and the poses it uses."""

    renderer: Renderer
    R: np.ndarray
    t: np.ndarray


def _time(jobs: dict[str, Job], video: AvatarVideo, frames: np.ndarray, batch: int,
          device: str, repeats: int) -> Timed:  # fmt: skip
    """Per path (PATHS): wall seconds of rendering `frames` in calls of `batch`, per repeat
    (the paths alternate, so they share the machine's load), samples spent, the images."""

    def once(job: Job) -> tuple[int, np.ndarray]:
        spent, images = 0, []
        for lo in range(0, len(frames), batch):
            f = frames[lo : lo + batch]
            out, samples = job.renderer.render(video.lm3d[f], job.R[f], job.t[f],
                                               video.background)  # fmt: skip
            spent += samples
            images.append(out.cpu().numpy())
        return spent, np.concatenate(images)

    f = frames[:batch]
    results: Timed = {}
    for path in PATHS:  # warm-up (the march builds its dense grid volumes here)
        job = jobs[path]
        _take(job.renderer, path)
        job.renderer.render(video.lm3d[f], job.R[f], job.t[f], video.background)
        results[path] = ([], 0, np.empty(0))
    for _ in range(repeats):
        for path in PATHS:
            _take(jobs[path].renderer, path)
            sync(device)
            started = time.perf_counter()
            spent, images = once(jobs[path])
            sync(device)
            results[path][0].append(time.perf_counter() - started)
            results[path] = (results[path][0], spent, images)
    for job in jobs.values():
        _take(job.renderer, "march")
    return results


def _take(renderer: Renderer, path: str) -> None:
    """Set `renderer` on `path`: the march with the compiled CPU hash-grid kernel where it
    builds (render.kernels), or cff8805's path: render_rays and the pure-PyTorch lookup."""
    renderer.fast = path == "march"
    for grid in (renderer.field.spatial, renderer.field.landmark_grid):
        grid.use_kernel = renderer.fast


def run(
    sizes: Sequence[int] = (128, 256),
    batch: int = 4,
    frames: int = 8,
    repeats: int = 2,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
    bundle: str | Path | None = None,
    data: str | Path | None = None,
    against: str | Path | None = None,
) -> dict[str, Any]:
    """Entries per device ("cpu", "cuda") x size x batch_1 / batch_<batch>.

    `devices` defaults to cpu, plus cuda when available; `threads` sets torch's CPU threads
    for the run (default: leave torch's setting). Sizes must suit SynthTalk (even, >= 32).
    With `bundle` (a trained avatar bundle or its renderer/ directory) and `data` (its avatar
    directory) it times that renderer on the avatar's held-out frames instead, on CPU, and
    reports each path's head PSNR beside its speed; `against` (another bundle of that avatar)
    is then the reference path's model instead of `bundle` itself.
    """
    if (bundle is None) != (data is None):
        raise ValueError("--bundle and --data go together (the avatar the bundle was trained on)")
    if against is not None and bundle is None:
        raise ValueError("--against needs --bundle and --data (the two bundles' avatar)")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if bundle is not None:
            other = None if against is None else Path(against)
            return _run_bundle(Path(bundle), Path(data), batch, frames, repeats, other)
        return _run(sizes, batch, frames, repeats, devices)
    finally:
        torch.set_num_threads(previous)


def _load_bundle(bundle: Path) -> tuple[Renderer, dict[str, np.ndarray]]:
    """A bundle's (or its renderer/ directory's) renderer and saved pose track."""
    from talkingface.render.checkpoint import load_renderer

    return load_renderer(bundle / "renderer" if (bundle / "renderer").is_dir() else bundle)


def _job(loaded: tuple[Renderer, dict[str, np.ndarray]], video: AvatarVideo) -> Job:
    """The renderer with the poses `eval avatar` renders its avatar's frames with."""
    from talkingface.render.checkpoint import track_poses

    renderer, track = loaded
    return Job(renderer, *track_poses(track, video))


def _run_bundle(bundle: Path, data: Path, batch: int, frames: int, repeats: int,
                against: Path | None = None):  # fmt: skip
    """A trained avatar bundle's renderer on `frames` evenly spaced held-out frames of its
    avatar (their own landmarks and poses, as `eval avatar` renders them), on CPU: both
    paths' frames/s and samples per ray, and each path's head PSNR (head-mask pixels);
    with `against`, that bundle's renderer takes the reference path."""
    from talkingface.render.evaluate import psnr_where

    load_before = load_average()
    loaded = _load_bundle(bundle)
    size = loaded[0].config.size
    video = load_avatar(data, size)
    jobs = {"march": _job(loaded, video)}
    jobs["reference"] = jobs["march"] if against is None else _job(_load_bundle(against), video)
    other = jobs["reference"].renderer.config.size
    if other != size:
        raise ValueError(f"--against renders {other}x{other}, --bundle {size}x{size}: "
                         "compare bundles of one size")  # fmt: skip
    renderer = jobs["march"].renderer
    other_preset = jobs["reference"].renderer.config.preset
    lo, hi = video.val
    picked = np.unique(np.linspace(lo, hi - 1, frames).round().astype(int))
    truth = np.asarray(video.frames[picked], np.float32) / 255.0
    heads = np.asarray(video.masks[picked]) > 0
    entries = {}
    for b in sorted({1, max(1, int(batch))}):
        timed = _time(jobs, video, picked, b, "cpu", repeats)
        entry = _entry(timed, len(picked), size, same_model=against is None)
        entry["psnr_head"] = round(psnr_where(timed["march"][2], truth, heads), 3)
        entry["reference"]["psnr_head"] = round(psnr_where(timed["reference"][2], truth,
                                                           heads), 3)  # fmt: skip
        entry.update(backend=renderer.field.backend, device="cpu", batch=b, frames=len(picked),
                     repeats=repeats)  # fmt: skip
        entries[f"batch_{b}"] = entry
    return {
        "bench": "render",
        **environment(["cpu"], load_before),
        "weights": str(bundle),
        **({} if against is None else {"against": str(against), "against_preset": other_preset}),
        "avatar": str(data),
        "preset": renderer.config.preset,
        "note": NOTE_BUNDLE + ("" if against is None else NOTE_AGAINST),
        "cpu": {str(renderer.config.size): entries},
    }


def _entry(timed: Timed, frames: int, size: int, same_model: bool = True) -> dict[str, Any]:
    """The march's figures, with the reference path's beside them (`reference`), the ratio
    of their frames/s (`speedup`) and, when both rendered one model, the largest pixel
    difference between their images."""

    def figures(path: str) -> dict[str, Any]:
        times, spent, _ = timed[path]
        median = statistics.median(times)
        return {
            "frames_per_second": round(frames / median, 3),
            "ms_per_frame": round(1000.0 * median / frames, 2),
            "samples_per_ray": round(spent / (frames * size * size), 2),
        }

    entry = {"path": "march", **figures("march"), "reference": figures("reference")}
    entry["speedup"] = round(entry["frames_per_second"]
                             / entry["reference"]["frames_per_second"], 2)  # fmt: skip
    if same_model:
        diff = np.abs(timed["march"][2] - timed["reference"][2]).max()
        entry["max_pixel_difference"] = round(float(diff), 5)
    return entry


def _run(sizes, batch, frames, repeats, devices) -> dict[str, Any]:
    from talkingface.data.synthtalk.avatar import build_avatar

    load_before = load_average()
    if devices is None:
        devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    devices = list(devices)
    batches = sorted({1, max(1, int(batch))})
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="talkingface-bench-render-") as tmp:
        for size in sizes:
            root = Path(tmp) / f"avatar_{size}"
            build_avatar(root, seconds=AVATAR_SECONDS, seed=1, size=size, progress=False)
            video = load_avatar(root, size)
            picked = np.unique(np.linspace(0, len(video) - 1, frames).round().astype(int))
            for device in devices:
                renderer = _renderer(video, device)
                entries = report.setdefault(device.split(":")[0], {}).setdefault(str(size), {})
                for b in batches:
                    if device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats(torch.device(device))
                    job = Job(renderer, video.R, video.t)
                    timed = _time({path: job for path in PATHS}, video, picked, b, device,
                                  repeats)  # fmt: skip
                    entry = _entry(timed, len(picked), size)
                    entry.update(backend=renderer.field.backend, device=device, batch=b,
                                 frames=len(picked),
                                 occupancy=round(renderer.occupancy.occupancy_rate(), 4),
                                 repeats=repeats)  # fmt: skip
                    if device.startswith("cuda"):
                        peak = torch.cuda.max_memory_allocated(torch.device(device))
                        entry["peak_memory_mb"] = round(peak / 2**20, 1)
                    entries[f"batch_{b}"] = entry
                del renderer
    return {
        "bench": "render",
        **environment(devices, load_before),
        "weights": "random-init",
        "preset": PRESET,
        "note": NOTE,
        **report,
    }
