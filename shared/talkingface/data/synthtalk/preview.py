"""`--preview`: an mp4 (H.264 + AAC) of a SynthTalk product with its landmarks drawn on top."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from talkingface import lm3d as L
from talkingface.data.synthtalk import fileformat as ff
from talkingface.media import draw_points, write_mp4

LANDMARK_COLOUR = (40, 255, 60)
INNER_LIP_COLOUR = (255, 60, 200)
CANVAS = 256
CORPUS_PREVIEW_SECONDS = 20.0


def _overlay(image: np.ndarray, lm2d: np.ndarray) -> np.ndarray:
    image = draw_points(image, lm2d[: L.INNER_LIPS[0]], LANDMARK_COLOUR)
    return draw_points(image, lm2d[L.INNER_LIPS], INNER_LIP_COLOUR)


def avatar_preview(root: Path | str, out: Path | str | None = None) -> Path:
    """preview.mp4 of an avatar directory: every frame with its projected landmarks."""
    root = Path(root)
    data = ff.read_avatar(root)
    out = Path(out) if out else root / "preview.mp4"
    frames = (
        _overlay(np.asarray(f), lm) for f, lm in zip(data["frames"], data["lm2d"], strict=True)
    )
    write_mp4(out, frames, data["manifest"]["fps"], data["audio"], ff.SAMPLE_RATE)
    return out


def _frontal(lm3d: np.ndarray) -> np.ndarray:
    """Orthographic front view of canonical landmarks on the preview canvas (x right, y down)."""
    scale = CANVAS / 2.6
    return np.stack([CANVAS / 2 + lm3d[:, 0] * scale, CANVAS / 2 - (lm3d[:, 1] + 0.3) * scale], 1)


def corpus_preview(root: Path | str, out: Path | str | None = None) -> Path:
    """preview.mp4 of a corpus: the first ~20 s of utterances, landmarks in front view."""
    root = Path(root)
    manifest, utterances = ff.read_corpus(root)
    fps = manifest["fps"]
    chosen, total = [], 0.0
    for utt in utterances:
        if total >= CORPUS_PREVIEW_SECONDS:
            break
        chosen.append(utt)
        total += utt.record["frames"] / fps
    audio = []
    for utt in chosen:
        # Pad or cut each clip to its frame count so sound and picture stay aligned.
        samples = utt.record["frames"] * ff.SAMPLE_RATE // fps
        clip = utt.audio()[:samples]
        audio.append(np.pad(clip, (0, samples - len(clip))))
    blank = np.full((CANVAS, CANVAS, 3), 24, np.uint8)

    def frames() -> Iterator[np.ndarray]:
        for utt in chosen:
            for lm in utt.arrays()["lm3d"]:
                yield _overlay(blank, _frontal(lm))

    out = Path(out) if out else root / "preview.mp4"
    write_mp4(out, frames(), fps, np.concatenate(audio) if audio else None, ff.SAMPLE_RATE)
    return out
