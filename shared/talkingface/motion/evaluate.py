"""`talkingface eval motion`: the motion stage on held-out speakers, voices and languages.

Evaluation set (fixed, documented in docs/motion.md): every `test` speaker of the corpus
(unseen faces and voices; the held-out language's speakers are all `test`). Each test
speaker's utterances, in id order, are split in two: the first half is that person's
**adaptation** data (their "avatar video": the postnet is trained on it, as it would be on an
avatar's training video), the second half is **evaluated**. Every row below is measured on
the same evaluated utterances, so the rows compare directly.

Identity is not predicted from audio: every prediction is placed around the speaker's own
mean face (as an avatar supplies it), so the metrics measure motion only. That mean face is
taken from the speaker's adaptation half alone (`motion.data.evaluated_half`): nothing of the
evaluated utterances but their audio reaches a prediction.

Rows
- `mean_face`: no motion at all (every frame = the speaker's mean face);
- `ridge`: ridge regression from the same normalised features (+-4 frames of context) and
  pitch (log f0 and voicing) to the motion, regularisation chosen on the `val` split;
- `vae[...]`: a VAE variant alone (no postnet);
- `table3`: the paper's table 3 on the evaluated utterances of `POSTNET_SPEAKERS` test
  speakers (held-out-language and seen-language speakers in turn; training a postnet per
  speaker and row is the expensive part): `GeneFace++` (pitch VAE + pitch postnet),
  `w/o P-VAE`, `w/o P-Postnet`, `GeneFace` (no pitch anywhere) and `w/o temporal loss`,
  each VAE variant with a postnet adapted to each of those speakers, next to the baselines
  and `vae[full]` on the same utterances.
A row whose VAE variant is missing from the checkpoint directory is listed in `missing`.

Lip sync is scored twice, and each score is named for its judge: `sync_*` by our sync
expert, which the motion model was trained against as a loss (it flatters the model:
predictions outscore the truth), and, with `judge_dir`, `judge_*` by the independent judge
(`talkingface.judge`: its own architecture, objective and training speakers, checked
disjoint from this corpus's; never a loss), whose report on the evaluated ground truth is in
`judge.truth`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.data.synthtalk.corpus import HELDOUT_LANGUAGE
from talkingface.motion import checkpoint as ck
from talkingface.motion.adapt import postnet_config, train_postnet
from talkingface.motion.data import Stats, Utterance, evaluated_half, split
from talkingface.motion.infer import MotionModel, SyncScorer
from talkingface.motion.metrics import motion_metrics
from talkingface.motion.train import generate_many, load_syncnet, prepare_corpus

log = logging.getLogger(__name__)
RIDGE_CONTEXT = 4
RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
EVAL_SEED = 1234
POSTNET_SPEAKERS = 4  # test speakers that get per-speaker postnets in the table-3 rows

TABLE3 = (
    # name, VAE variant, postnet uses pitch
    ("GeneFace++", "full", True),
    ("w/o P-VAE", "no_pitch", True),
    ("w/o P-Postnet", "full", False),
    ("GeneFace (no pitch)", "no_pitch", False),
    ("w/o temporal loss", "no_temporal", True),
)


@dataclass
class Judges:
    """The sync expert (`sync_*`) and, when given, the independent judge (`judge_*`)."""

    expert: SyncScorer | None
    judge: Any = None  # talkingface.judge.Judge

    def score(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
        out = self.expert.score(items) if self.expert is not None else {}
        if self.judge is not None:
            out.update(self.judge.score([(f, lm) for f, lm, _ in items]))
        return out


def load_judge(judge_dir: Path | str, corpus: Path | str) -> tuple[Any, dict[str, Any]]:
    """(the judge, its provenance) after checking its speakers are not the corpus's."""
    from talkingface.judge import Judge, check_disjoint

    disjoint = check_disjoint(judge_dir, corpus)
    judge = Judge.load(judge_dir)
    return judge, {"dir": str(judge_dir), "version": judge.version, "disjoint": disjoint}


def judge_verdict(rows: list[dict[str, Any]], truth_name: str) -> dict[str, Any]:
    """Does the judge score the ground truth at least as high as every other row?"""
    truth = next(r for r in rows if r["name"] == truth_name)
    above = [r["name"] for r in rows if r is not truth and r.get("judge_conf", -np.inf)
             > truth.get("judge_conf", np.inf)]  # fmt: skip
    return {"truth_scores_highest": not above, "rows_above_truth": above}


def eval_split(test: list[Utterance]) -> tuple[dict[str, list[Utterance]], list[Utterance]]:
    """(adaptation utterances per speaker, evaluated utterances) as in the module docstring."""
    by_speaker: dict[str, list[Utterance]] = {}
    for u in sorted(test, key=lambda u: u.id):
        by_speaker.setdefault(u.speaker, []).append(u)
    adapt, evaluated = {}, []
    for speaker, utts in sorted(by_speaker.items()):
        later = set(evaluated_half([u.id for u in utts]))
        if later:
            adapt[speaker] = [u for u in utts if u.id not in later]
            evaluated += [u for u in utts if u.id in later]
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


def _baselines(utts, corpus_ridge: Ridge, scorer: SyncScorer) -> list[dict[str, Any]]:
    rest = [np.repeat(u.mean_face[None], u.frames, 0) for u in utts]
    return [
        _row("ground truth (sync reference)", [u.lm3d for u in utts], utts, scorer),
        _row("mean_face", rest, utts, scorer),
        _row("ridge", corpus_ridge.predict(utts), utts, scorer, {"lambda": corpus_ridge.lam}),
    ]


def _margins(by_name: dict[str, dict[str, Any]], model_rows: tuple[str, ...]) -> dict[str, Any]:
    margins = {}
    for model_row in model_rows:
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
    return margins


def _summary(utts: list[Utterance], adapt: dict[str, list[Utterance]] | None = None) -> dict:
    out = {
        "speakers": sorted({u.speaker for u in utts}),
        "utterances": len(utts),
        "seconds": round(sum(u.frames for u in utts) / 25.0, 1),
        "languages": sorted({u.language for u in utts}),
    }
    if adapt is not None:
        out["adaptation_seconds"] = round(
            sum(u.frames for s in out["speakers"] for u in adapt.get(s, [])) / 25.0, 1
        )
    return out


def evaluate(
    data: Path | str,
    ckpt: Path | str,
    cache_dir: Path | str | None = None,
    hubert: str | None = None,
    postnet_steps: int | None = None,
    postnet: bool = True,
    progress: bool = True,
    postnet_speakers: int = POSTNET_SPEAKERS,
    judge_dir: Path | str | None = None,
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
    scorer = Judges(SyncScorer.load(ck.model_dir(ckpt, "syncnet")))
    provenance = None
    if judge_dir is not None:
        scorer.judge, provenance = load_judge(judge_dir, data)
    ridge = Ridge(corpus.stats).fit(corpus.train, corpus.val[:64])
    rows = _baselines(evaluated, ridge, scorer)
    models: dict[str, MotionModel] = {}
    missing: list[str] = []
    for variant in ("full", "no_pitch", "no_temporal"):
        directory = ck.model_dir(ckpt, "motion", variant)
        if (directory / ck.CONFIG).is_file():
            models[variant] = MotionModel.load(directory)
            pred = generate_many(models[variant], evaluated, EVAL_SEED)
            rows.append(_row(f"vae[{variant}]", pred, evaluated, scorer))
        else:
            missing.append(variant)
    if "full" not in models:
        raise FileNotFoundError(
            f"{ck.model_dir(ckpt, 'motion')}: no trained motion model; "
            "run `talkingface train motion`"
        )
    result: dict[str, Any] = {
        "data": str(data),
        "ckpt": str(ckpt),
        "units": "mm (1 lm3d unit = 100 mm)",
        "judges": {
            "sync_*": "the sync expert the motion model was trained against (flatters it)",
            "judge_*": "the independent judge (talkingface.judge)" if provenance else "not run",
        },
        "eval_set": _summary(evaluated, adapt),
        "rows": rows,
        "margins": _margins({r["name"]: r for r in rows}, ("vae[full]",)),
    }
    if scorer.judge is not None:
        truth = [(u.features, u.lm3d) for u in evaluated]
        result["judge"] = {**(provenance or {}), "truth": scorer.judge.truth_report(truth),
                           **judge_verdict(rows, "ground truth (sync reference)")}  # fmt: skip
    heldout = {}
    for label, subset in (
        ("unseen_language", [u for u in evaluated if u.language == HELDOUT_LANGUAGE]),
        ("unseen_speaker_seen_language", [u for u in evaluated if u.language != HELDOUT_LANGUAGE]),
    ):
        if subset:
            pred = generate_many(models["full"], subset, EVAL_SEED)
            metrics = motion_metrics(pred, [u.lm3d for u in subset])
            heldout[label] = {k: round(v, 5) for k, v in metrics.items()}
            heldout[label]["utterances"] = len(subset)
    result["heldout"] = heldout
    if postnet:
        t0 = time.perf_counter()
        result["table3"] = _table3(
            models, adapt, evaluated, ckpt, ridge, scorer, postnet_steps, postnet_speakers
        )
        result["table3"]["seconds"] = round(time.perf_counter() - t0, 1)
        missing += [name for name, variant, _ in TABLE3 if variant not in models]
    result["missing"] = missing
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def postnet_subset(adapt: dict[str, list[Utterance]], count: int) -> list[str]:
    """`count` test speakers for the postnet rows: held-out-language and seen-language
    speakers taken in turn, each group in id order (0 = all)."""
    speakers = sorted(adapt)
    if count <= 0 or count >= len(speakers):
        return speakers
    unseen = [s for s in speakers if adapt[s][0].language == HELDOUT_LANGUAGE]
    seen = [s for s in speakers if s not in unseen]
    chosen: list[str] = []
    while len(chosen) < count:
        for group in (unseen, seen):
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return sorted(chosen)


def _table3(models, adapt, evaluated, ckpt, ridge, scorer, postnet_steps, speakers_count):
    """Paper table 3 on the postnet speakers' evaluated utterances (same rows, same data)."""
    speakers = postnet_subset(adapt, speakers_count)
    subset = [u for u in evaluated if u.speaker in speakers]
    rows = _baselines(subset, ridge, scorer)[1:]
    rows.append(_row("vae[full]", generate_many(models["full"], subset, EVAL_SEED), subset, scorer))
    for name, variant, use_pitch in TABLE3:
        if variant not in models:
            continue
        model = models[variant]
        config = postnet_config(model.config, steps=postnet_steps)
        sync = load_syncnet(ckpt, model.device)
        pred_by_id: dict[str, np.ndarray] = {}
        for speaker in speakers:
            adaptation = adapt[speaker]
            mine = [u for u in subset if u.speaker == speaker]
            pm, _ = train_postnet(
                model, adaptation, [], adaptation[0].mean_face, None, config, sync,
                use_pitch=use_pitch, progress=False, title=f"postnet {speaker}",
            )  # fmt: skip
            for u, p in zip(mine, generate_many(model, mine, EVAL_SEED, pm), strict=True):
                pred_by_id[u.id] = p
        pred = [pred_by_id[u.id] for u in subset]
        rows.append(_row(name, pred, subset, scorer, {"vae": variant, "postnet_pitch": use_pitch}))
    return {
        "eval_set": _summary(subset, adapt),
        "postnet_steps": postnet_config(
            models["full"].config, steps=postnet_steps
        ).postnet_plan.steps,
        "rows": rows,
        "margins": _margins({r["name"]: r for r in rows}, ("GeneFace++",)),
    }
