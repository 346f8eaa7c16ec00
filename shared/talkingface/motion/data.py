"""Training and evaluation data for the motion stage: corpus -> per-utterance arrays.

For each utterance of a SynthTalk corpus (or any corpus in its format) we hold:

- `features` [T, D]: the audio-features stage's output (`talkingface.audio.extract`, log-mel by
  default or HuBERT when configured) computed from the utterance's audio: the model sees at
  training time exactly what the service sees at inference;
- `f0_bins` [T]: the stage's discretised pitch (0 = unvoiced);
- `lm3d` [T, 68, 3] ground truth, and the speaker's mean face: over all of the speaker's
  frames, except for `test` speakers, whose evaluated utterances (`evaluated_half`) take no
  part: their mean face comes from their adaptation half only, as an avatar's comes from its
  training video, so no evaluation reads anything of what it scores but the model's inputs.

The model predicts **motion**: `delta = lm3d - mean face of that person`. Identity is not
predictable from audio; at inference the person's mean face comes from the avatar (its
training landmarks) or, without an avatar, the generic mean face of the training speakers.

Normalisation (`Stats`, stored in every checkpoint): features have their per-utterance mean
removed (cepstral-mean-style: robust to gain and voice colour) and are divided by the
training set's per-dimension std; deltas are divided by one global scale (the training set's
RMS delta), so errors keep their physical proportions (the mouth dominates).

Features are cached under `<cache_dir>/motion-features/` keyed by the corpus manifest, the
front end and its width, so every train/eval command on the same corpus extracts once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from talkingface.data.synthtalk.fileformat import read_corpus
from talkingface.lm3d import MOUTH

log = logging.getLogger(__name__)
LM_DIM = 68 * 3
MOUTH_INDEX = MOUTH


@dataclass
class Utterance:
    id: str
    speaker: str
    split: str
    language: str
    voice_id: str
    features: np.ndarray  # [T, D] float32, raw front-end output
    f0_bins: np.ndarray  # [T] int64
    lm3d: np.ndarray  # [T, 68, 3] float32
    mean_face: np.ndarray  # [68, 3] float32: the speaker's mean (module docstring)

    @property
    def frames(self) -> int:
        return int(self.lm3d.shape[0])

    @property
    def delta(self) -> np.ndarray:
        return self.lm3d - self.mean_face


@dataclass
class Stats:
    """Normalisation constants, fitted on the training split and saved with each model."""

    feature_std: np.ndarray  # [D]
    delta_scale: float
    mean_face: np.ndarray  # [68, 3]: generic mean face (mean over training speakers)

    def features(self, features: np.ndarray) -> np.ndarray:
        """Per-utterance mean removed, divided by the training std."""
        f = np.asarray(features, np.float32)
        return ((f - f.mean(axis=0, keepdims=True)) / self.feature_std).astype(np.float32)

    def delta(self, lm3d: np.ndarray, mean_face: np.ndarray) -> np.ndarray:
        """lm3d [T, 68, 3] -> normalised motion [T, 204]."""
        d = (np.asarray(lm3d, np.float32) - mean_face) / self.delta_scale
        return d.reshape(d.shape[0], LM_DIM).astype(np.float32)

    def lm3d(self, delta: np.ndarray, mean_face: np.ndarray) -> np.ndarray:
        """Normalised motion [T, 204] -> lm3d [T, 68, 3] around `mean_face`."""
        d = np.asarray(delta, np.float32).reshape(-1, 68, 3) * self.delta_scale
        return (d + mean_face).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature_std": self.feature_std.astype(np.float32),
            "delta_scale": np.array([self.delta_scale], np.float32),
            "mean_face": self.mean_face.astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Stats:
        return cls(
            feature_std=np.asarray(arrays["feature_std"], np.float32),
            delta_scale=float(np.asarray(arrays["delta_scale"]).reshape(-1)[0]),
            mean_face=np.asarray(arrays["mean_face"], np.float32),
        )

    @classmethod
    def fit(cls, train: list[Utterance]) -> Stats:
        if not train:
            raise ValueError("no training utterances to fit normalisation statistics on")
        centred = np.concatenate([u.features - u.features.mean(axis=0) for u in train])
        std = np.maximum(centred.std(axis=0), 1e-3).astype(np.float32)
        deltas = np.concatenate([u.delta.reshape(-1) for u in train])
        scale = float(np.sqrt(np.mean(deltas**2)))
        faces = {u.speaker: u.mean_face for u in train}
        mean_face = np.mean(list(faces.values()), axis=0).astype(np.float32)
        return cls(std, max(scale, 1e-6), mean_face)


def _extract_one(args: tuple[str, str | None, str]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: features and f0 bins of one wav file (runs in a spawned process)."""
    import torch

    from talkingface.audio import extract
    from talkingface.media import read_wav

    torch.set_num_threads(1)
    path, hubert, pitch_method = args
    audio, _ = read_wav(path)
    front_end = _front_end(hubert)
    out = extract(audio, front_end, pitch_method=pitch_method)  # type: ignore[arg-type]
    return out.features, out.f0_bins.astype(np.int64)


_FRONT_ENDS: dict[str | None, object] = {}


def _front_end(hubert: str | None):
    if hubert not in _FRONT_ENDS:
        if hubert:
            from talkingface.audio.hubert import HubertFrontEnd

            _FRONT_ENDS[hubert] = HubertFrontEnd(hubert, device="cpu")
        else:
            from talkingface.audio.logmel import LogMelFrontEnd

            _FRONT_ENDS[hubert] = LogMelFrontEnd()
    return _FRONT_ENDS[hubert]


def feature_key(corpus: Path, hubert: str | None, pitch_method: str) -> str:
    manifest = (corpus / "synthtalk.json").read_bytes()
    utterances = (corpus / "utterances.jsonl").read_bytes()
    h = hashlib.sha256(manifest + b"\0" + utterances)
    h.update(json.dumps([hubert or "logmel", pitch_method]).encode())
    return h.hexdigest()[:16]


def load_corpus(
    corpus: Path | str,
    cache_dir: Path | str | None = None,
    hubert: str | None = None,
    pitch_method: str = "dio",
    workers: int = 2,
    progress: bool = True,
) -> list[Utterance]:
    """Every utterance of `corpus` with features, f0 bins, landmarks and speaker mean face."""
    corpus = Path(corpus)
    _, records = read_corpus(corpus)
    if not records:
        raise ValueError(f"{corpus}: the corpus has no utterances")
    cache = None
    if cache_dir is not None:
        cache = (
            Path(cache_dir)
            / "motion-features"
            / (feature_key(corpus, hubert, pitch_method) + ".npz")
        )
    feats: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            feats = {k: data[k] for k in data.files}
    if not all(f"{r.id}/features" in feats for r in records):
        jobs = [(str(r.root / r.record["audio"]), hubert, pitch_method) for r in records]
        bar = tqdm(total=len(jobs), desc="audio features", unit="utt", disable=not progress)
        results = []
        if workers > 1 and len(jobs) > 4:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for item in pool.map(_extract_one, jobs, chunksize=4):
                    results.append(item)
                    bar.update()
        else:
            for job in jobs:
                results.append(_extract_one(job))
                bar.update()
        bar.close()
        feats = {}
        for r, (f, b) in zip(records, results, strict=True):
            feats[f"{r.id}/features"] = f
            feats[f"{r.id}/f0_bins"] = b
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, **feats)
            tmp.replace(cache)
    lms = {r.id: r.arrays()["lm3d"].astype(np.float32) for r in records}
    per_speaker: dict[str, list[np.ndarray]] = {}
    evaluated = evaluated_ids([(r.id, r.record["speaker"], r.record["split"]) for r in records])
    for r in records:
        if r.id not in evaluated:
            per_speaker.setdefault(r.record["speaker"], []).append(lms[r.id])
    means = {s: np.concatenate(v).mean(axis=0).astype(np.float32) for s, v in per_speaker.items()}
    out = []
    for r in records:
        lm = lms[r.id]
        f = feats[f"{r.id}/features"]
        b = feats[f"{r.id}/f0_bins"]
        t = min(lm.shape[0], f.shape[0])
        if abs(lm.shape[0] - f.shape[0]) > 1:
            raise ValueError(f"{r.id}: {lm.shape[0]} landmark frames but {f.shape[0]} features")
        rec = r.record
        out.append(
            Utterance(
                rec["id"],
                rec["speaker"],
                rec["split"],
                rec.get("language", ""),
                rec.get("voice_id", ""),
                f[:t],
                b[:t],
                lm[:t],
                means[rec["speaker"]],
            )
        )
    return out


def evaluated_half(ids: list[str]) -> list[str]:
    """The evaluated part of one `test` speaker's utterance ids: the second half in id order
    (the first half is their adaptation data); none when they have fewer than two."""
    ids = sorted(ids)
    return ids[len(ids) // 2 :] if len(ids) >= 2 else []


def evaluated_ids(records: list[tuple[str, str, str]]) -> set[str]:
    """Ids of the utterances `eval motion` scores, from (id, speaker, split) records."""
    by_speaker: dict[str, list[str]] = {}
    for uid, speaker, name in records:
        if name == "test":
            by_speaker.setdefault(speaker, []).append(uid)
    return {uid for ids in by_speaker.values() for uid in evaluated_half(ids)}


def split(utterances: list[Utterance], name: str) -> list[Utterance]:
    return [u for u in utterances if u.split == name]


@dataclass
class Batch:
    features: np.ndarray  # [B, L, D] normalised
    f0_bins: np.ndarray  # [B, L] int64
    delta: np.ndarray  # [B, L, 204] normalised
    mask: np.ndarray  # [B, L] float32 (1 = real frame)


class WindowSampler:
    """Random training windows of `window` frames, utterances drawn in proportion to length.

    Utterances shorter than the window are zero-padded and masked. Deterministic given the
    seed (numpy PCG64).
    """

    def __init__(self, utterances: list[Utterance], stats: Stats, window: int, seed: int):
        if not utterances:
            raise ValueError("no utterances to sample training windows from")
        self.window = window
        self.rng = np.random.default_rng(seed)
        self.feats = [stats.features(u.features) for u in utterances]
        self.bins = [u.f0_bins for u in utterances]
        self.deltas = [stats.delta(u.lm3d, u.mean_face) for u in utterances]
        lengths = np.array([u.frames for u in utterances], np.float64)
        self.p = lengths / lengths.sum()

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, batch: int) -> Batch:
        L = self.window
        dim = self.feats[0].shape[1]
        feats = np.zeros((batch, L, dim), np.float32)
        bins = np.zeros((batch, L), np.int64)
        deltas = np.zeros((batch, L, LM_DIM), np.float32)
        mask = np.zeros((batch, L), np.float32)
        picks = self.rng.choice(len(self.feats), size=batch, p=self.p)
        for i, k in enumerate(picks):
            t = self.feats[k].shape[0]
            start = int(self.rng.integers(0, max(t - L, 0) + 1))
            n = min(L, t - start)
            feats[i, :n] = self.feats[k][start : start + n]
            bins[i, :n] = self.bins[k][start : start + n]
            deltas[i, :n] = self.deltas[k][start : start + n]
            mask[i, :n] = 1.0
        return Batch(feats, bins, deltas, mask)
