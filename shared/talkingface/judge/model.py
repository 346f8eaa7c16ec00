"""A trained, frozen judge: load, integrity check, and the scores it gives.

A judge directory holds:

- `judge.safetensors`: the network's weights (`net.*`) and its normalisation statistics
  (`stats.audio_std` [D], `stats.mouth_std` [12]) fitted on the judge's own training split;
- `judge.json` (written last): format, `version` (the first 12 hex digits of the sha256 of
  the weights file, with the full digest in `weights_sha256`), the architecture config, the
  audio front end and feature width, the training seed, the training corpus's provenance
  (manifest seed, speaker ids and identity-vector digests: `talkingface.judge.provenance`)
  and the truth report on the corpus's held-out `test` split.

`Judge.load` recomputes the weights' digest and refuses a file that does not match the
recorded version, so a judge cannot be retrained, edited or swapped in place unnoticed.

Scores (`offsets`): for every centre frame t of a sequence at which all candidates exist,
the audio window at t is scored against the mouth windows at t + k for k = -8..8; a softmax
over those 17 logits gives log-probabilities of each offset, averaged over the centres.
A well-synchronised sequence puts its mass at k = 0.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from talkingface.judge.config import OFFSETS, JudgeConfig
from talkingface.judge.geometry import MOUTH_FEATURES, audio_features, mouth_features
from talkingface.judge.nets import JudgeNet
from talkingface.threads import torch_threads

WEIGHTS = "judge.safetensors"
META = "judge.json"
FORMAT = "talkingface-judge"
FORMAT_VERSION = 1
SHIFTS = tuple(range(-OFFSETS, OFFSETS + 1))  # the truth report's audio shifts
REPORTED_SHIFTS = (0, 2, 4, 8)  # shifted-truth scores in the report (both signs averaged)
CHUNK = 4096  # centres scored at once (bounds memory on long audio)

Item = tuple[np.ndarray, np.ndarray]  # (features [T, D], lm3d [T, 68, 3])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def shift_pair(features: np.ndarray, lm3d: np.ndarray, shift: int) -> Item:
    """Shift the audio against the mouth by `shift` frames: the audio at frame t becomes the
    true audio of frame t + shift, so the judge should find offset k = shift (the mouth that
    matches the audio at t is at t + shift). Both are trimmed to their common frames."""
    t = min(len(features), len(lm3d))
    f, lm = features[:t], lm3d[:t]
    if shift >= 0:
        return f[shift:], lm[: t - shift]
    return f[: t + shift], lm[-shift:]


class Judge:
    """A frozen lip-sync judge (never used as a training loss)."""

    def __init__(
        self,
        net: JudgeNet,
        audio_std: np.ndarray,
        mouth_std: np.ndarray,
        meta: dict[str, Any],
    ):
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.audio_std = np.asarray(audio_std, np.float32)
        self.mouth_std = np.asarray(mouth_std, np.float32)
        self.meta = meta
        self.config: JudgeConfig = net.config

    @property
    def version(self) -> str:
        return str(self.meta.get("version", ""))

    @property
    def feature_dim(self) -> int:
        return int(self.audio_std.shape[0])

    # ------------------------------------------------------------------ files

    def save(self, directory: Path | str, meta: dict[str, Any]) -> dict[str, Any]:
        """Write the weights, then judge.json with the weights' digest as the version."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.net.state_dict()
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
        tensors["stats.audio_std"] = torch.from_numpy(self.audio_std.copy())
        tensors["stats.mouth_std"] = torch.from_numpy(self.mouth_std.copy())
        _atomic_write(directory / WEIGHTS, lambda p: save_file(tensors, str(p)))
        digest = file_sha256(directory / WEIGHTS)
        meta = {
            **meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "feature_dim": self.feature_dim,
            "mouth_dim": MOUTH_FEATURES,
            "version": digest[:12],
            "weights_sha256": digest,
        }
        text = json.dumps(meta, indent=2, sort_keys=True)
        _atomic_write(directory / META, lambda p: p.write_text(text))
        self.meta = meta
        return meta

    @classmethod
    def load(cls, directory: Path | str) -> Judge:
        """Load a judge directory; a weights file whose sha256 is not the recorded version
        (edited, retrained in place, truncated) is refused with a ValueError."""
        meta = read_meta(directory)
        weights = Path(directory) / WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{directory}: no {WEIGHTS}")
        digest = file_sha256(weights)
        if digest != meta.get("weights_sha256") or digest[:12] != meta.get("version"):
            raise ValueError(
                f"{weights}: sha256 {digest[:12]} does not match the judge's version "
                f"{meta.get('version')!r} in {META}: the weights were modified or replaced; "
                "a judge is frozen (train a new one into a new directory)"
            )
        tensors = load_file(str(weights))
        config = JudgeConfig.from_dict(meta["config"])
        net = JudgeNet(int(meta["feature_dim"]), int(meta["mouth_dim"]), config)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(
            net,
            tensors["stats.audio_std"].numpy(),
            tensors["stats.mouth_std"].numpy(),
            meta,
        )

    # ------------------------------------------------------------------ scoring

    def _inputs(self, features: np.ndarray, lm3d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = audio_features(features)
        if f.shape[1] != self.feature_dim:
            raise ValueError(
                f"features are {f.shape[1]}-wide but this judge reads {self.feature_dim} "
                f"({self.meta.get('front_end', '?')} front end)"
            )
        g = mouth_features(lm3d, self.config.sequence_scale)
        t = min(len(f), len(g))
        return f[:t] / self.audio_std, g[:t] / self.mouth_std

    @torch.no_grad()
    def log_probs(self, features: np.ndarray, lm3d: np.ndarray) -> np.ndarray:
        """Per centre frame, log-probabilities of offsets -8..8: [N, 17] (N = 0 when the
        sequence is shorter than the windows plus 16 frames)."""
        with torch_threads(1):
            return self._log_probs(*self._inputs(features, lm3d))

    def _log_probs(self, f: np.ndarray, g: np.ndarray) -> np.ndarray:
        c = self.config
        ha, hm, reach = c.audio_window // 2, c.mouth_window // 2, c.reach
        t = len(f)
        centres = np.arange(reach, t - reach)
        if len(centres) == 0:
            return np.zeros((0, 2 * OFFSETS + 1), np.float32)
        ft, gt = torch.from_numpy(f), torch.from_numpy(g)
        audio_win = ft.unfold(0, c.audio_window, 1).transpose(1, 2)  # [t-Wa+1, Wa, D]
        mouth_win = gt.unfold(0, c.mouth_window, 1).transpose(1, 2)  # [t-Wm+1, Wm, F]
        mouth = self.net.mouth(mouth_win)  # window i is centred on frame i + hm
        ks = torch.arange(-OFFSETS, OFFSETS + 1)
        out = []
        for start in range(0, len(centres), CHUNK):
            cs = torch.from_numpy(centres[start : start + CHUNK])
            a = self.net.audio(audio_win[cs - ha])
            m = mouth[cs[:, None] + ks[None, :] - hm]  # [n, 17, E]
            out.append(torch.log_softmax(self.net.pair(a[:, None, :], m), dim=1))
        return torch.cat(out).numpy()

    def offsets(self, features: np.ndarray, lm3d: np.ndarray) -> np.ndarray:
        """Mean log-probability of each offset -8..8 (mouth at t + k for audio at t): [17];
        all NaN when the sequence is too short (fewer than windows + 16 frames)."""
        lp = self.log_probs(features, lm3d)
        if len(lp) == 0:
            return np.full(2 * OFFSETS + 1, np.nan)
        return lp.mean(axis=0).astype(np.float64)

    def score(self, items: Iterable[Item]) -> dict[str, float]:
        """`judge_logp`: mean log-probability of offset 0; `judge_conf`: that minus the
        median over offsets -8..8 (like LSE-C), averaged over sequences; `judge_offset_ok`:
        share of sequences whose best offset is within +-1 frame of 0."""
        rows = [self.offsets(f, lm) for f, lm in items]
        rows = [r for r in rows if np.isfinite(r).all()]
        if not rows:
            nan = float("nan")
            return {"judge_logp": nan, "judge_conf": nan, "judge_offset_ok": nan,
                    "judge_sequences": 0}  # fmt: skip
        r = np.stack(rows)
        return {
            "judge_logp": float(r[:, OFFSETS].mean()),
            "judge_conf": float((r[:, OFFSETS] - np.median(r, axis=1)).mean()),
            "judge_offset_ok": float((np.abs(r.argmax(axis=1) - OFFSETS) <= 1).mean()),
            "judge_sequences": len(rows),
        }

    def truth_report(self, items: Sequence[Item]) -> dict[str, Any]:
        """On ground-truth sequences: shift the audio by every k in -8..8 and ask the judge
        for the offset (`offset_accuracy`: share of (sequence, k) pairs found within +-1
        frame; `offset_accuracy_exact`: exactly), per-window accuracy at k = 0, and the
        judge's scores of the truth shifted by 0, 2, 4, 8 frames (both directions averaged):
        they must fall as the shift grows."""
        hits, exact, per_shift = [], [], {s: [] for s in SHIFTS}
        scores: dict[int, list[tuple[float, float]]] = {s: [] for s in REPORTED_SHIFTS}
        windows, skipped = [], 0
        for features, lm3d in items:
            lp = self.log_probs(features, lm3d)
            if len(lp):
                windows.append(np.abs(lp.argmax(axis=1) - OFFSETS) <= 1)
            for s in SHIFTS:
                r = self.offsets(*shift_pair(features, lm3d, s))
                if not np.isfinite(r).all():
                    skipped += 1
                    continue
                found = int(r.argmax()) - OFFSETS
                hits.append(abs(found - s) <= 1)
                exact.append(found == s)
                per_shift[s].append(abs(found - s) <= 1)
                if abs(s) in scores:
                    scores[abs(s)].append((float(r[OFFSETS]), float(r[OFFSETS] - np.median(r))))
        mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
        return {
            "sequences": len(items),
            "pairs": len(hits),
            "skipped_pairs": skipped,
            "offset_accuracy": mean(hits),
            "offset_accuracy_exact": mean(exact),
            "accuracy_by_shift": {str(s): mean(v) for s, v in per_shift.items()},
            "window_accuracy": mean(np.concatenate(windows)) if windows else float("nan"),
            "shifted": {
                str(s): {"logp": mean([a for a, _ in v]), "conf": mean([c for _, c in v])}
                for s, v in scores.items()
            },
        }


def read_meta(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {META}; not a trained judge")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: holds {meta.get('format')!r}, not a {FORMAT}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: judge format {meta.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    return meta
