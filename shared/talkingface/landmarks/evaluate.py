"""`talkingface eval projection`: paper table 4 on SynthTalk -- what landmark LLE costs in lip
accuracy and what it saves in bad cases, for alpha in {0, 0.5, 1}.

Evaluation set (fixed, documented in docs/landmark_projection.md):

- the avatar's index is built from its `train` split (as `train avatar` builds it);
- **in-domain**: the motion model (with the avatar's postnet when one is given) drives the
  avatar from the audio of its own `val` split (the last 1/11 of the video); its ground-truth
  landmarks give mouth LMD and full-face L2 against the projected prediction;
- **out-of-domain** (with `--corpus`): the first OOD_UTTERANCES `test` utterances of the
  corpus's held-out language, in id order (an unseen language in unseen voices) drive the
  same avatar; there is no ground truth, so only the bad-case rate, the distance to the
  training set and the sync score are reported.

Every prediction uses seed EVAL_SEED and is placed around the avatar's mean face. A frame is a
landmark out-of-distribution case (`landmark_ood_pct`) when its distance to the avatar's
training landmarks exceeds the calibrated threshold (docs/landmark_projection.md), which is
what projection minimises, so its fall with alpha says little by itself; the `ground truth`
row gives the rate of the real val frames. `sync_conf` is the sync expert's aligned minus
median similarity, when CKPT_DIR holds one: the motion model was trained against it, so it
flatters predictions; `judge_conf` (with `judge_dir`) is the independent judge's
(`talkingface.judge`), the paper's Sync column.

With `bundle_dir` (the avatar's trained bundle), every row also counts **rendering failures**
on rendered pixels (`render_failure_pct`, `talkingface.render.failures`: the mouth drawn
disagrees with the mouth the landmarks ask for, against a line fitted on the avatar's
training frames): the projected landmarks of up to `render_frames` frames per row, evenly
spaced, are rendered at the val frames' own poses (in-domain) or on the avatar's track
replayed from its val split (out-of-domain: poses the renderer never trained on); the ground
truth row scores the real held-out frames. This is the rate paper table 4 reports.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.landmarks.projection import DEFAULT_K, ProjectionIndex

log = logging.getLogger(__name__)
ALPHAS = (0.0, 0.5, 1.0)
EVAL_SEED = 1234
OOD_UTTERANCES = 8
RENDER_FRAMES = 100  # rendered frames per row for the failure rate (evenly spaced)


def evaluate(
    avatar_dir: Path | str,
    ckpt: Path | str,
    hubert: str | None = None,
    pitch_method: str = "dio",
    corpus: Path | str | None = None,
    postnet_dir: Path | str | None = None,
    k: int = DEFAULT_K,
    device: str = "cpu",
    judge_dir: Path | str | None = None,
    bundle_dir: Path | str | None = None,
    render_frames: int = RENDER_FRAMES,
) -> dict[str, Any]:
    from talkingface.landmarks.bundle import avatar_index
    from talkingface.motion import checkpoint as ck
    from talkingface.motion.adapt import avatar_target
    from talkingface.motion.evaluate import Judges
    from talkingface.motion.infer import MotionModel, PostnetModel, SyncScorer

    started = time.perf_counter()
    model = MotionModel.load(ck.model_dir(ckpt, "motion"), device=device)
    postnet = None
    if postnet_dir is not None:
        postnet = PostnetModel.load(postnet_dir, model.device)
        model.check_postnet(postnet)
    sync_dir = ck.model_dir(ckpt, "syncnet")
    expert = SyncScorer.load(sync_dir) if (Path(sync_dir) / ck.WEIGHTS).is_file() else None
    judge, provenance = None, None
    if judge_dir is not None:
        from talkingface.judge import Judge, check_disjoint

        judge = Judge.load(judge_dir)
        provenance = {"dir": str(judge_dir), "version": judge.version}
        if corpus is not None:  # the OOD speakers must be new to the judge too
            provenance["disjoint"] = check_disjoint(judge_dir, corpus)
    sync = Judges(expert, judge) if expert is not None or judge is not None else None
    index = avatar_index(avatar_dir)
    _, val_part, mean_face = avatar_target(avatar_dir, hubert, pitch_method)
    if not val_part:
        raise ValueError(f"{avatar_dir}: the avatar's val split is too short to evaluate")
    if val_part[0].features.shape[1] != model.feature_dim:
        raise ValueError(
            f"the avatar's features are {val_part[0].features.shape[1]}-wide but the motion "
            f"model expects {model.feature_dim} ({model.front_end})"
        )

    def predict(features, bins) -> np.ndarray:
        return model.generate(features, bins, seed=EVAL_SEED, postnet=postnet, mean_face=mean_face)

    val_feats = [u.features for u in val_part]
    truth = [u.lm3d for u in val_part]
    preds = [predict(u.features, u.f0_bins) for u in val_part]
    pixels = _Failures(avatar_dir, bundle_dir, render_frames, device) if bundle_dir else None
    in_domain = [_reference_row(index, truth, val_feats, mean_face, sync,
                                pixels.truth if pixels else None)]  # fmt: skip
    in_domain += [_row(index, preds, truth, val_feats, mean_face, sync, k, a,
                       pixels.in_domain if pixels else None) for a in ALPHAS]  # fmt: skip
    result: dict[str, Any] = {
        "avatar": str(avatar_dir),
        "k": k,
        "alphas": list(ALPHAS),
        "motion_version": model.version,
        "postnet": postnet.version if postnet is not None else None,
        "index": {
            "frames": len(index.frames),
            "pca_dims": int(index.components.shape[0]),
            "kind": index.kind,
            "threshold_mm": round(index.threshold, 4),
        },
        "eval_set": {"in_domain_frames": int(sum(len(t) for t in truth))},
        "judges": {
            "sync_conf": "the sync expert the motion model was trained against (flatters it)",
            "judge_conf": f"the independent judge {judge.version}" if judge else "not run",
        },
        "judge": provenance,
        "render_failures": pixels.describe() if pixels else None,
        "table4": {"in_domain": in_domain},
    }
    if corpus is not None:
        ood_feats, ood_bins, language = _ood_audio(corpus, hubert, pitch_method)
        ood = [predict(f, b) for f, b in zip(ood_feats, ood_bins, strict=True)]
        result["table4"]["out_of_domain"] = [
            _row(index, ood, None, ood_feats, mean_face, sync, k, a,
                 pixels.out_of_domain if pixels else None)
            for a in ALPHAS
        ]  # fmt: skip
        result["eval_set"].update(
            ood_language=language,
            ood_utterances=len(ood),
            ood_frames=int(sum(len(p) for p in ood)),
        )
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _row(index: ProjectionIndex, preds, truth, feats, mean_face, sync, k, alpha,
         failures=None) -> dict:  # fmt: skip
    from talkingface.motion.metrics import l2_mm, mouth_lmd_mm

    results = [index.project(p, k=k, alpha=alpha) for p in preds]
    projected = [r.lm3d for r in results]
    bad = np.concatenate([r.bad for r in results])
    row: dict[str, Any] = {
        "name": f"alpha = {alpha:g}" + (" (no projection)" if alpha == 0 else ""),
        "alpha": alpha,
        "landmark_ood_pct": round(100.0 * float(bad.mean()), 2),
        "dist_mm": round(float(np.concatenate([r.dist_after for r in results]).mean()), 3),
    }
    if truth is not None:
        row["mouth_lmd_mm"] = round(mouth_lmd_mm(projected, truth), 3)
        row["l2_mm"] = round(l2_mm(projected, truth), 3)
    if sync is not None:
        items = [(f, p, mean_face) for f, p in zip(feats, projected, strict=True)]
        scores = sync.score(items)
        for key in ("sync_conf", "judge_conf"):
            if key in scores:
                row[key] = round(scores[key], 4) if np.isfinite(scores[key]) else None
    if failures is not None:
        row["render_failure_pct"] = failures(projected)
    return row


def _reference_row(index: ProjectionIndex, truth, feats, mean_face, sync, failures) -> dict:
    row = _row(index, truth, truth, feats, mean_face, sync, DEFAULT_K, 0.0, failures)
    row["name"] = "ground truth"
    row.pop("alpha")
    return row


class _Failures:
    """Rendering-failure rates (module docstring) of one avatar's renderer."""

    def __init__(self, avatar_dir, bundle_dir, frames: int, device: str) -> None:
        from talkingface.motion.infer import resolve_device
        from talkingface.render.checkpoint import load_renderer, track_poses
        from talkingface.render.data import load_avatar
        from talkingface.render.failures import MouthCheck

        device = str(resolve_device(device))
        self.renderer, track = load_renderer(Path(bundle_dir) / "renderer", device)
        self.video = load_avatar(avatar_dir, self.renderer.config.output_size)
        self.video.R, self.video.t = track_poses(track, self.video)
        self.background = np.asarray(track["background"], np.float32)
        self.check = MouthCheck.fit(self.video)
        self.frames = max(1, frames)

    def _pick(self, n: int) -> np.ndarray:
        return np.unique(np.linspace(0, n - 1, min(n, self.frames)).round().astype(int))

    def _render(self, lm3d: np.ndarray, poses: np.ndarray) -> float:
        from talkingface.render.failures import render_failures

        v = self.video
        failed = render_failures(self.renderer, self.check, lm3d, v.R[poses], v.t[poses],
                                 self.background)  # fmt: skip
        return round(100.0 * float(failed.mean()), 2)

    def truth(self, _projected) -> float:
        from talkingface.render.failures import projected_lm2d

        v = self.video
        frames = v.val[0] + self._pick(v.val[1] - v.val[0])
        lm = v.lm3d[frames]
        images = np.asarray(v.frames[frames], np.float32) / 255.0
        failed = self.check.failures(images, lm, projected_lm2d(lm, v.R[frames], v.t[frames], v.K))
        return round(100.0 * float(failed.mean()), 2)

    def in_domain(self, projected: list[np.ndarray]) -> float:
        lo, hi = self.video.val
        lm = np.concatenate(projected)[: hi - lo]
        pick = self._pick(len(lm))
        return self._render(lm[pick], lo + pick)

    def out_of_domain(self, projected: list[np.ndarray]) -> float:
        from talkingface.render.checkpoint import pose_indices

        lm = np.concatenate(projected)
        pick = self._pick(len(lm))
        poses = pose_indices(len(lm), len(self.video), "pingpong", start=self.video.val[0])
        return self._render(lm[pick], poses[pick])

    def describe(self) -> dict[str, Any]:
        return {**self.check.to_dict(), "frames_per_row": self.frames,
                "size": self.video.size}  # fmt: skip


def _ood_audio(corpus: Path | str, hubert: str | None, pitch_method: str):
    """Features and pitch bins of the OOD utterances (module docstring)."""
    from talkingface.audio import extract
    from talkingface.data.synthtalk.fileformat import read_corpus
    from talkingface.motion.data import _front_end

    manifest, utterances = read_corpus(corpus)
    language = manifest.get("heldout_language")
    chosen = sorted(
        (u for u in utterances if u.split == "test" and u.record["language"] == language),
        key=lambda u: u.id,
    )[:OOD_UTTERANCES]
    if not chosen:
        raise ValueError(f"{corpus}: no test utterance in the held-out language {language!r}")
    feats, bins = [], []
    for u in chosen:
        extracted = extract(u.audio(), _front_end(hubert), pitch_method=pitch_method)  # type: ignore[arg-type]
        feats.append(extracted.features)
        bins.append(extracted.f0_bins.astype(np.int64))
    return feats, bins, language
