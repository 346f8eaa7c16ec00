"""`talkingface eval motion`: the motion stage on held-out speakers, voices and languages.

Evaluation set (fixed, documented in docs/motion.md): every `test` speaker of the corpus
(unseen faces and voices; the held-out language's speakers are all `test`). Each test
speaker's utterances, in id order, are split in two: the first half is that person's
**adaptation** data (their "avatar video": the postnet is trained on it, as it would be on an
avatar's training video), the second half is **evaluated**. Every row below is measured on
the same evaluated utterances, so the rows compare directly.

Identity is not predicted from audio: every prediction is placed around the speaker's own
mean face (as an avatar supplies it), so the metrics measure motion only.

Rows
- `mean_face`: no motion at all (every frame = the speaker's mean face);
- `ridge`: ridge regression from the same normalised features (+-4 frames of context) and
  pitch (log f0 and voicing) to the motion, regularisation chosen on the `val` split;
- `vae[...]`: a VAE variant alone (no postnet);
- the paper's table 3: `GeneFace++` (pitch VAE + pitch postnet), `w/o P-VAE`,
  `w/o P-Postnet`, `GeneFace` (no pitch anywhere) and `w/o temporal loss`, each VAE variant
  with a postnet adapted to every test speaker.
A row whose VAE variant is missing from the checkpoint directory is listed in `missing`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.motion import checkpoint as ck
from talkingface.motion.config import MotionConfig
from talkingface.motion.data import Stats, Utterance, split
from talkingface.motion.infer import MotionModel, SyncScorer
from talkingface.motion.metrics import motion_metrics
from talkingface.motion.train import generate_many, load_syncnet, prepare_corpus, train_postnet

log = logging.getLogger(__name__)
RIDGE_CONTEXT = 4
RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
EVAL_SEED = 1234

TABLE3 = (
    # name, VAE variant, postnet uses pitch
    ("GeneFace++", "full", True),
    ("w/o P-VAE", "no_pitch", True),
    ("w/o P-Postnet", "full", False),
    ("GeneFace (no pitch)", "no_pitch", False),
    ("w/o temporal loss", "no_temporal", True),
)


def eval_split(test: list[Utterance]) -> tuple[dict[str, list[Utterance]], list[Utterance]]:
    """(adaptation utterances per speaker, evaluated utterances) as in the module docstring."""
    by_speaker: dict[str, list[Utterance]] = {}
    for u in sorted(test, key=lambda u: u.id):
        by_speaker.setdefault(u.speaker, []).append(u)
    adapt, evaluated = {}, []
    for speaker, utts in sorted(by_speaker.items()):
        if len(utts) < 2:
            continue
        half = len(utts) // 2
        adapt[speaker] = utts[:half]
        evaluated += utts[half:]
    return adapt, evaluated


def _ridge_inputs(u: Utterance, stats: Stats) -> np.ndarray:
    f = stats.features(u.features)
    voiced = (u.f0_bins > 0).astype(np.float32)
    logf0 = np.where(voiced > 0, u.f0_bins / 300.0, 0.0).astype(np.float32)
    x = np.concatenate([f, voiced[:, None], logf0[:, None]], axis=1)
    pad = np.pad(x, ((RIDGE_CONTEXT, RIDGE_CONTEXT), (0, 0)), mode="edge")
    t = x.shape[0]
    cols = [pad[k : k + t] for k in range(2 * RIDGE_CONTEXT + 1)]
    return np.concatenate([*cols, np.ones((t, 1), np.float32)], axis=1)


class Ridge:
    """Closed-form ridge regression from context-stacked features to normalised motion."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self.weights: np.ndarray | None = None
        self.lam = 0.0

    def fit(self, train: list[Utterance], val: list[Utterance]) -> Ridge:
        x = np.concatenate([_ridge_inputs(u, self.stats) for u in train]).astype(np.float64)
        y = np.concatenate([self.stats.delta(u.lm3d, u.mean_face) for u in train])
        xtx, xty = x.T @ x, x.T @ y
        best = None
        for lam in RIDGE_LAMBDAS:
            reg = lam * np.eye(xtx.shape[0])
            reg[-1, -1] = 0.0  # no penalty on the bias
            self.weights = np.linalg.solve(xtx + reg, xty)
            err = motion_metrics(self.predict(val), [u.lm3d for u in val])["l2_mm"]
            if best is None or err < best[0]:
                best = (err, lam, self.weights)
        assert best is not None
        _, self.lam, self.weights = best
        return self

    def predict(self, utts: list[Utterance]) -> list[np.ndarray]:
        assert self.weights is not None
        return [
            self.stats.lm3d(_ridge_inputs(u, self.stats) @ self.weights, u.mean_face) for u in utts
        ]


def _row(name: str, pred, evaluated, scorer: SyncScorer, extra: dict | None = None) -> dict:
    metrics = motion_metrics(pred, [u.lm3d for u in evaluated])
    metrics.update(
        scorer.score([(u.features, p, u.mean_face) for u, p in zip(evaluated, pred, strict=True)])
    )
    return {"name": name, **(extra or {}), **{k: round(v, 5) for k, v in metrics.items()}}


def evaluate(
    data: Path | str,
    ckpt: Path | str,
    cache_dir: Path | str | None = None,
    hubert: str | None = None,
    postnet_steps: int | None = None,
    postnet: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Every row of the module docstring as one JSON-ready dict."""
    started = time.perf_counter()
    ckpt = Path(ckpt)
    utts, corpus = prepare_corpus(data, cache_dir, hubert, progress=progress)
    test = split(utts, "test")
    if not test:
        raise ValueError(f"{data}: the corpus has no 'test' utterances")
    adapt, evaluated = eval_split(test)
    if not evaluated:
        raise ValueError(f"{data}: no test speaker has two or more utterances")
    scorer = SyncScorer.load(ck.model_dir(ckpt, "syncnet"))
    gt = [u.lm3d for u in evaluated]
    rows: list[dict[str, Any]] = []
    rows.append(_row("ground truth (sync reference)", gt, evaluated, scorer))
    rows.append(
        _row(
            "mean_face",
            [np.repeat(u.mean_face[None], u.frames, 0) for u in evaluated],
            evaluated,
            scorer,
        )
    )
    ridge = Ridge(corpus.stats).fit(corpus.train, corpus.val[:64])
    rows.append(_row("ridge", ridge.predict(evaluated), evaluated, scorer, {"lambda": ridge.lam}))
    models: dict[str, MotionModel] = {}
    missing = []
    for variant in ("full", "no_pitch", "no_temporal"):
        directory = ck.model_dir(ckpt, "motion", variant)
        if (directory / ck.CONFIG).is_file():
            models[variant] = MotionModel.load(directory)
            pred = generate_many(models[variant], evaluated, EVAL_SEED)
            rows.append(_row(f"vae[{variant}]", pred, evaluated, scorer, {"postnet": None}))
        else:
            missing.append(variant)
    if "full" not in models:
        raise FileNotFoundError(
            f"{ck.model_dir(ckpt, 'motion')}: no trained motion model; "
            "run `talkingface train motion`"
        )
    postnet_seconds = 0.0
    if postnet:
        for name, variant, use_pitch in TABLE3:
            if variant not in models:
                continue
            model = models[variant]
            config: MotionConfig = model.config
            if postnet_steps is not None:
                config = MotionConfig.from_dict(config.to_dict())
                config.postnet_plan.steps = postnet_steps
                config.postnet_plan.val_every = config.postnet_plan.ckpt_every = postnet_steps
            sync = load_syncnet(ckpt, model.device)
            t0 = time.perf_counter()
            pred_by_id: dict[str, np.ndarray] = {}
            for speaker, adaptation in adapt.items():
                mine = [u for u in evaluated if u.speaker == speaker]
                pm, _ = train_postnet(
                    model,
                    adaptation,
                    [],
                    adaptation[0].mean_face,
                    None,
                    config,
                    sync,
                    use_pitch=use_pitch,
                    progress=False,
                    title=f"postnet {speaker}",
                )
                for u, p in zip(mine, generate_many(model, mine, EVAL_SEED, pm), strict=True):
                    pred_by_id[u.id] = p
            postnet_seconds += time.perf_counter() - t0
            pred = [pred_by_id[u.id] for u in evaluated]
            rows.append(
                _row(name, pred, evaluated, scorer, {"vae": variant, "postnet_pitch": use_pitch})
            )
        missing += [name for name, variant, _ in TABLE3 if variant not in models]
    by_name = {r["name"]: r for r in rows}
    margins = {}
    for model_row in ("vae[full]", "GeneFace++"):
        if model_row not in by_name:
            continue
        m = by_name[model_row]
        for base in ("mean_face", "ridge"):
            b = by_name[base]
            margins[f"{model_row} vs {base}"] = {
                "l2_mm_ratio": round(m["l2_mm"] / b["l2_mm"], 4),
                "mouth_lmd_mm_ratio": round(m["mouth_lmd_mm"] / b["mouth_lmd_mm"], 4),
                "temporal_mm_ratio": round(m["temporal_mm"] / b["temporal_mm"], 4),
                "mouth_open_r_gain": round(m["mouth_open_r"] - b["mouth_open_r"], 4),
                "beats": bool(
                    m["l2_mm"] < b["l2_mm"]
                    and m["mouth_lmd_mm"] < b["mouth_lmd_mm"]
                    and m["mouth_open_r"] > b["mouth_open_r"]
                ),
            }
    # the held-out language alone, for the full model
    heldout = {}
    full = models["full"]
    for label, subset in (
        ("unseen_language", [u for u in evaluated if u.language == "it"]),
        ("unseen_speaker_seen_language", [u for u in evaluated if u.language != "it"]),
    ):
        if subset:
            pred = generate_many(full, subset, EVAL_SEED)
            heldout[label] = {
                k: round(v, 5) for k, v in motion_metrics(pred, [u.lm3d for u in subset]).items()
            }
            heldout[label]["utterances"] = len(subset)
    return {
        "data": str(data),
        "ckpt": str(ckpt),
        "eval_set": {
            "speakers": len({u.speaker for u in evaluated}),
            "utterances": len(evaluated),
            "seconds": round(sum(u.frames for u in evaluated) / 25.0, 1),
            "languages": sorted({u.language for u in evaluated}),
            "adaptation_seconds": round(sum(u.frames for a in adapt.values() for u in a) / 25.0, 1),
        },
        "units": "mm (1 lm3d unit = 100 mm); sync scores from our own sync expert",
        "rows": rows,
        "margins": margins,
        "heldout": heldout,
        "missing": missing,
        "postnet_seconds": round(postnet_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
