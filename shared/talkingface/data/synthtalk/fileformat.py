"""SynthTalk on-disk format, version 1: names, the manifest, and readers (docs/synthtalk.md).

A SynthTalk directory holds one product: a corpus (many speakers: audio + landmarks, for the
generic motion model), an avatar (one person: video frames + audio + landmarks + poses,
for the renderer) or a clip (an avatar's person saying new sentences in a new voice: the
input audio and ground truth of a demo). `synthtalk.json` at its root names the product and
the format version and is written last, so a directory without it is incomplete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.media import read_wav

FORMAT_VERSION = 1
MANIFEST = "synthtalk.json"
CORPUS = "synthtalk-corpus"
AVATAR = "synthtalk-avatar"
CLIP = "synthtalk-clip"
SAMPLE_RATE = 16000


class FormatError(ValueError):
    """A directory is not a complete SynthTalk product of a version this code reads."""


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(root / MANIFEST)


def read_manifest(root: Path | str, product: str) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FormatError(f"{root}: no {MANIFEST}; not a (complete) SynthTalk directory")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != product:
        raise FormatError(f"{root}: holds {manifest.get('format')!r}, expected {product!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise FormatError(
            f"{root}: format version {manifest.get('version')}, this code reads {FORMAT_VERSION}"
        )
    return manifest


@dataclass(frozen=True)
class CorpusUtterance:
    """One utterance record of a corpus (a line of utterances.jsonl)."""

    root: Path
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def split(self) -> str:
        return self.record["split"]

    def audio(self) -> np.ndarray:
        audio, rate = read_wav(self.root / self.record["audio"])
        if rate != SAMPLE_RATE:
            raise FormatError(f"{self.record['audio']}: {rate} Hz, expected {SAMPLE_RATE}")
        return audio

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.root / self.record["landmarks"]) as data:
            return {name: data[name] for name in data.files}


def read_corpus(root: Path | str) -> tuple[dict[str, Any], list[CorpusUtterance]]:
    """The corpus manifest and its utterances in file order."""
    root = Path(root)
    manifest = read_manifest(root, CORPUS)
    lines = (root / "utterances.jsonl").read_text().splitlines()
    return manifest, [CorpusUtterance(root, json.loads(line)) for line in lines if line]


def read_avatar(root: Path | str, mmap: bool = True) -> dict[str, Any]:
    """Every array of an avatar directory plus its manifest (frames memory-mapped)."""
    root = Path(root)
    manifest = read_manifest(root, AVATAR)
    mode = "r" if mmap else None
    out: dict[str, Any] = {"manifest": manifest}
    out["frames"] = np.load(root / "frames.npy", mmap_mode=mode)
    out["masks"] = np.load(root / "masks.npy", mmap_mode=mode)
    if (root / "torso_masks.npy").is_file():  # neck and shoulders (older avatars: none)
        out["torso_masks"] = np.load(root / "torso_masks.npy", mmap_mode=mode)
    out["background"] = np.load(root / "background.npy")
    for name in ("landmarks.npz", "poses.npz"):
        with np.load(root / name) as data:
            out.update({key: data[key] for key in data.files})
    out["audio"], _ = read_wav(root / "audio.wav")
    return out


def read_clip(root: Path | str, mmap: bool = True) -> dict[str, Any]:
    """Every array of a clip directory plus its manifest and script (frames memory-mapped)."""
    root = Path(root)
    manifest = read_manifest(root, CLIP)
    out: dict[str, Any] = {"manifest": manifest}
    mode = "r" if mmap else None
    out["frames"] = np.load(root / "frames.npy", mmap_mode=mode)
    out["masks"] = np.load(root / "masks.npy", mmap_mode=mode)
    if (root / "torso_masks.npy").is_file():
        out["torso_masks"] = np.load(root / "torso_masks.npy", mmap_mode=mode)
    out["pose_indices"] = np.load(root / "pose_indices.npy")
    for name in ("landmarks.npz", "poses.npz"):
        with np.load(root / name) as data:
            out.update({key: data[key] for key in data.files})
    out["audio"], _ = read_wav(root / "audio.wav")
    out["script"] = json.loads((root / "script.json").read_text())
    return out
