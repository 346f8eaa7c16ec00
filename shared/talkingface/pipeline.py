"""The whole pipeline in one process: audio file + avatar bundle directory -> mp4
(`talkingface render`). The same four stages the fleet runs as services, called directly:

    audio -> features + pitch (talkingface.audio) -> lm3d (talkingface.motion; the avatar's
    postnet when its bundle has one) -> projected lm3d (talkingface.landmarks, K and alpha)
    -> frames (talkingface.render, the recorded pose track replayed) -> H.264 + AAC of the
    original audio (talkingface.media)

Frames are rendered in batches and streamed into the encoder, so memory does not grow with
the length of the audio. The video has round(duration x 25) frames, so its duration matches
the audio's to within half a frame (20 ms).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.lm3d import FPS

SAMPLE_RATE = 16000


def predict_landmarks(
    bundle_dir: Path | str,
    audio: np.ndarray,
    motion_dir: Path | str,
    *,
    k: int = 20,
    alpha: float = 0.5,
    seed: int = 0,
    temperature: float | None = None,
    hubert: str | None = None,
    pitch_method: str = "dio",
    device: str = "cpu",
) -> dict[str, Any]:
    """The first three stages on 16 kHz audio: `features` (the extraction), `motion` (lm3d
    from the motion model with the bundle's postnet, or around the avatar's mean face) and
    `projection` (onto the avatar's training landmarks), plus `postnet` (applied or not) and
    `mean_face` (the avatar's, [68, 3], which the motion was placed around)."""
    from talkingface.audio import extract
    from talkingface.landmarks.bundle import PROJECTION_CONFIG, PROJECTION_INDEX, index_from_files
    from talkingface.motion.data import _front_end
    from talkingface.motion.infer import MotionModel, PostnetModel

    bundle = Path(bundle_dir)
    feats = extract(audio, _front_end(hubert), pitch_method=pitch_method)  # type: ignore[arg-type]
    model = MotionModel.load(motion_dir, device=device)
    index = index_from_files(
        (bundle / PROJECTION_INDEX).read_bytes(), (bundle / PROJECTION_CONFIG).read_bytes()
    )
    postnet = None
    if (bundle / "postnet" / "model.safetensors").is_file():
        postnet = PostnetModel.load(bundle / "postnet", model.device)
        model.check_postnet(postnet)
    # The avatar's mean face: the postnet's when it has one, else its training landmarks'.
    mean_face = None if postnet is not None else index.frames.mean(axis=0).reshape(-1, 3)
    bins = feats.f0_bins.astype(np.int64)
    lm3d = model.generate(
        feats.features, bins, seed=seed, temperature=temperature, postnet=postnet,
        mean_face=mean_face,
    )  # fmt: skip
    return {
        "features": feats,
        "motion": lm3d,
        "projection": index.project(lm3d, k=k, alpha=alpha),
        "postnet": postnet is not None,
        "mean_face": np.asarray(postnet.mean_face if postnet else mean_face, np.float32),
    }


def render_file(
    bundle_dir: Path | str,
    audio_path: Path | str,
    out: Path | str,
    motion_dir: Path | str,
    *,
    k: int = 20,
    alpha: float = 0.5,
    seed: int = 0,
    temperature: float | None = None,
    pose_mode: str = "pingpong",
    pose_start: int = 0,
    batch_frames: int = 4,
    hubert: str | None = None,
    pitch_method: str = "dio",
    device: str = "cpu",
    max_seconds: float = 900.0,
) -> dict[str, Any]:
    from talkingface.audio import decode_audio_file
    from talkingface.media import write_mp4
    from talkingface.render.checkpoint import load_renderer, pose_indices
    from talkingface.render.condition import smooth_landmarks

    started = time.perf_counter()
    bundle = Path(bundle_dir)
    audio = decode_audio_file(audio_path, max_seconds=max_seconds)
    predicted = predict_landmarks(
        bundle, audio, motion_dir, k=k, alpha=alpha, seed=seed, temperature=temperature,
        hubert=hubert, pitch_method=pitch_method, device=device,
    )  # fmt: skip
    projected = predicted["projection"]
    renderer, track = load_renderer(bundle / "renderer", device)
    if not 0 <= pose_start < len(track["R"]):
        raise ValueError(f"pose_start must lie in 0..{len(track['R']) - 1} (the avatar's track)")
    poses = pose_indices(len(projected.lm3d), len(track["R"]), pose_mode, start=pose_start)
    frames_lm = smooth_landmarks(projected.lm3d, renderer.config.lm_smooth)
    render_started = time.perf_counter()

    def frames() -> Iterator[np.ndarray]:
        for lo in range(0, len(frames_lm), batch_frames):
            p = poses[lo : lo + batch_frames]
            images, _ = renderer.render(
                frames_lm[lo : lo + batch_frames], track["R"][p], track["t"][p], track["background"]
            )
            yield from np.clip(np.rint(images.cpu().numpy() * 255), 0, 255).astype(np.uint8)

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    count = write_mp4(out, frames(), FPS, audio, SAMPLE_RATE)
    render_seconds = time.perf_counter() - render_started
    return {
        "out": str(out),
        "frames": count,
        "audio_seconds": round(len(audio) / SAMPLE_RATE, 3),
        "video_seconds": round(count / FPS, 3),
        "postnet": predicted["postnet"],
        "bad_case_rate": round(projected.bad_case_rate, 4),
        "bad_case_rate_before": round(projected.bad_case_rate_before, 4),
        "render_fps": round(count / max(render_seconds, 1e-9), 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


def fetch_bundle(store, avatar_id: str, cache_dir: Path | str, version: str = "") -> Path:
    """A published avatar's bundle files (renderer, projection, postnet when present) copied
    into `<cache_dir>/avatars/<id>/<version>/`, checked against the manifest; that directory.
    AVATAR_NOT_FOUND, AVATAR_VERSION_NOT_FOUND, AVATAR_NOT_READY (no renderer or projection
    index), AVATAR_BUNDLE_CORRUPT as for the services."""
    from talkingface.bundle import AVATARS, fetch_files
    from talkingface.landmarks.bundle import PROJECTION_FILES
    from talkingface.render.bundle import RENDERER_FILES

    version, manifest = renderable_version(store, avatar_id, version)
    root = Path(cache_dir) / AVATARS / avatar_id / version
    postnet = tuple(n for n in ("postnet/model.safetensors", "postnet/config.json")
                    if n in manifest["files"])  # fmt: skip
    for folder, names in (("renderer", RENDERER_FILES), ("projection", PROJECTION_FILES),
                          ("postnet", postnet if len(postnet) == 2 else ())):  # fmt: skip
        if names:
            fetch_files(store, avatar_id, version, manifest, names, root / folder, folder)
    return root


def renderable_version(store, avatar_id: str, version: str = "") -> tuple[str, dict[str, Any]]:
    """(version, manifest) of a published avatar version that can be rendered: `version`, or
    the latest. AVATAR_NOT_FOUND, AVATAR_VERSION_NOT_FOUND, AVATAR_NOT_READY (no renderer
    or projection index in it)."""
    from talkingface.bundle import read_manifest, require_files, resolve_version
    from talkingface.landmarks.bundle import PROJECTION_FILES
    from talkingface.render.bundle import RENDERER_FILES

    version = resolve_version(store, avatar_id, version)
    manifest = read_manifest(store, avatar_id, version)
    require_files(
        manifest, RENDERER_FILES + PROJECTION_FILES, avatar_id, version,
        f"train and publish it with `talkingface train avatar --publish {avatar_id}`",
    )  # fmt: skip
    return version, manifest
