"""Training of the motion stage: sync expert, pitch-aware VAE, domain-adaptive postnet.

Order (paper §4.1): the sync expert first (it is a loss of the others), then the VAE with its
flow prior on a multi-speaker corpus, then one postnet per avatar with the VAE frozen
(`talkingface.motion.adapt`, which reuses this module's `Run` and losses).

Losses
- Sync expert: symmetric InfoNCE (CLIP-style) over aligned (audio window, mouth window)
  pairs; each batch draws several positions per training window, so the negatives include
  the same utterance shifted in time.
- VAE (paper eq. 13): L2 on the normalised motion + KL(q(z|x, c) || flow prior p(z|c)),
  weight annealed from 0 + sync loss (1 - cosine of the frozen expert on predicted mouths) +
  temporal loss (L2 of velocities).
- Postnet: see `talkingface.motion.adapt`.

Every trainer: tqdm progress, validation every `val_every` steps, checkpoints every
`ckpt_every` steps and at the end (`motion.checkpoint`), a loss/metric plot beside them, and
`resume=True` continues from `train_state.pt` with the same data order and random streams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from talkingface.motion import checkpoint as ck
from talkingface.motion.config import MotionConfig, TrainPlan, preset
from talkingface.motion.data import Batch, Stats, Utterance, WindowSampler, split
from talkingface.motion.infer import MotionModel, SyncScorer, resolve_device
from talkingface.motion.metrics import motion_metrics
from talkingface.motion.nets import (
    MotionVAE,
    SyncExpert,
    mouth_of,
)

log = logging.getLogger(__name__)
PAIRS_PER_WINDOW = 4  # sync pairs drawn per training window
VAL_UTTERANCES = 32  # validation generates at most this many utterances


def batch_tensors(batch: Batch, device: torch.device):
    return (
        torch.from_numpy(batch.features).to(device),
        torch.from_numpy(batch.f0_bins).to(device),
        torch.from_numpy(batch.delta).to(device),
        torch.from_numpy(batch.mask).to(device),
    )


def sync_positions(mask: torch.Tensor, window: int, per: int, gen: torch.Generator):
    """(row, start) of `per` random fully valid windows per row (rows too short are skipped)."""
    lengths = mask.sum(1).long().cpu()
    rows, starts = [], []
    for i, n in enumerate(lengths.tolist()):
        if n >= window:
            s = torch.randint(0, n - window + 1, (per,), generator=gen)
            rows += [i] * per
            starts += s.tolist()
    return torch.tensor(rows, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def gather_windows(x: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, window: int):
    """x [B, L, C] -> [N, window, C] at (rows, starts)."""
    idx = starts[:, None] + torch.arange(window)[None, :]
    return x[rows[:, None].to(x.device), idx.to(x.device)]


def clip_loss(audio: torch.Tensor, mouth: torch.Tensor, scale: torch.Tensor):
    logits = scale.exp().clamp(max=100.0) * audio @ mouth.T
    target = torch.arange(len(audio), device=audio.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    acc = (logits.argmax(1) == target).float().mean()
    return loss, acc


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    err = ((a - b) ** 2).mean(-1)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def velocity_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[:, 1:] * mask[:, :-1]
    return masked_mse(pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1], m)


@dataclass
class Corpus:
    train: list[Utterance]
    val: list[Utterance]
    stats: Stats
    feature_dim: int
    front_end: str


def prepare_corpus(
    data: Path | str,
    cache_dir: Path | str | None,
    hubert: str | None = None,
    pitch_method: str = "dio",
    progress: bool = True,
) -> tuple[list[Utterance], Corpus]:
    from talkingface.motion.data import load_corpus

    utts = load_corpus(data, cache_dir, hubert, pitch_method, progress=progress)
    train, val = split(utts, "train"), split(utts, "val")
    if not train:
        raise ValueError(f"{data}: the corpus has no 'train' utterances")
    if not val:
        raise ValueError(f"{data}: the corpus has no 'val' utterances (make it bigger)")
    stats = Stats.fit(train)
    front = "hubert" if hubert else "logmel"
    return utts, Corpus(train, val, stats, int(train[0].features.shape[1]), front)


class Run:
    """Bookkeeping shared by the trainers: history, progress, checkpoints, plot, resume."""

    def __init__(self, directory: Path, title: str, plan: TrainPlan, progress: bool):
        self.directory = directory
        self.title = title
        self.plan = plan
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self._acc: dict[str, list[float]] = {}

    def lr(self, step: int) -> float:
        return self.plan.lr * self.plan.lr_decay ** (step / max(self.plan.steps, 1))

    def record(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._acc.setdefault(key, []).append(float(value))

    def flush(self) -> dict[str, float]:
        row = {k: float(np.mean(v)) for k, v in self._acc.items()}
        self._acc = {}
        if row:
            self.history.append({"kind": "train", "step": self.step, **row})
        return row

    def validate(self, values: dict[str, float]) -> None:
        self.history.append({"kind": "val", "step": self.step, **values})
        log.info("validation", extra={"model": self.title, "step": self.step, **values})

    def save(self, modules, stats, meta, optimizers, extra_state) -> None:
        meta = {**meta, "step": self.step, "finished": self.step >= self.plan.steps}
        val = [h for h in self.history if h["kind"] == "val"]
        if val:
            meta["last_validation"] = {k: v for k, v in val[-1].items() if k != "kind"}
        ck.save_model(self.directory, modules, stats, meta)
        state = {
            "step": self.step,
            "history": self.history,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "torch_rng": torch.get_rng_state(),
            **extra_state,
        }
        ck.save_state(self.directory, state)
        (self.directory / ck.HISTORY).write_text(json.dumps(self.history, indent=1))
        ck.plot_history(self.history, self.directory / ck.CURVES, self.title)

    def resume(self, modules, optimizers) -> dict[str, Any] | None:
        state = ck.load_state(self.directory)
        if state is None:
            return None
        groups, _ = ck.load_weights(self.directory)
        for prefix, module in modules.items():
            module.load_state_dict(groups[prefix])
        for key, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        return state

    def loop(
        self,
        step_fn: Callable[[int], dict[str, float]],
        val_fn: Callable[[], dict[str, float]],
        save_fn: Callable[[], None],
        optimizers: list[torch.optim.Optimizer],
        stop_at: int | None = None,
    ) -> None:
        """Run to `plan.steps` (or stop after step `stop_at`, checkpointing: an interruption)."""
        plan = self.plan
        bar = tqdm(
            total=plan.steps,
            initial=self.step,
            desc=self.title,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        while self.step < plan.steps:
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = self.lr(self.step)
            values = step_fn(self.step)
            self.step += 1
            self.record(values)
            bar.update()
            if self.step % 10 == 0 or self.step == plan.steps:
                row = self.flush()
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(row.items())[:4]})
            if self.step % plan.val_every == 0 or self.step == plan.steps:
                self.validate(val_fn())
            if self.step % plan.ckpt_every == 0 or self.step in (plan.steps, stop_at):
                save_fn()
            if self.step == stop_at:
                break
        bar.close()


@dataclass
class Streams:
    """A corpus trainer's random streams (training windows, sync positions) and its fixed
    validation batch; saved with the train state, so a resumed run continues them."""

    sampler: WindowSampler
    gen: torch.Generator
    val_batch: Batch

    @classmethod
    def create(cls, corpus: Corpus, plan: TrainPlan, seed: int, val_size: int) -> Streams:
        val = WindowSampler(corpus.val, corpus.stats, plan.window, seed + 1).sample(val_size)
        return cls(
            WindowSampler(corpus.train, corpus.stats, plan.window, seed),
            torch.Generator().manual_seed(seed),
            val,
        )

    def state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state(), "gen": self.gen.get_state()}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.sampler.set_state(state["sampler"])
            self.gen.set_state(state["gen"])


def _meta(kind: str, config: MotionConfig, corpus: Corpus, extra: dict | None = None) -> dict:
    return {
        "kind": kind,
        "config": config.to_dict(),
        "feature_dim": corpus.feature_dim,
        "front_end": corpus.front_end,
        "train_utterances": len(corpus.train),
        **(extra or {}),
    }


# ----------------------------------------------------------------------------- sync expert


def train_syncnet(
    corpus: Corpus,
    out: Path | str,
    config: MotionConfig,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train the sync expert into OUT/syncnet; returns its final validation metrics."""
    dev = resolve_device(device)
    directory = ck.model_dir(out, "syncnet")
    plan = config.syncnet_plan
    torch.manual_seed(config.seed)
    net = SyncExpert(corpus.feature_dim, config.sync).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=plan.lr, weight_decay=1e-4)
    streams = Streams.create(corpus, plan, config.seed, min(plan.batch, 128))
    sampler, gen, val_batch = streams.sampler, streams.gen, streams.val_batch
    run = Run(directory, "syncnet", plan, progress)
    if resume:
        streams.restore(run.resume({"syncnet": net}, {"opt": opt}))
    w = config.sync.window

    def pairs(batch: Batch, g: torch.Generator):
        feats, _, delta, mask = batch_tensors(batch, dev)
        rows, starts = sync_positions(mask, w, PAIRS_PER_WINDOW, g)
        audio = gather_windows(feats, rows, starts, w)
        mouth = gather_windows(mouth_of(delta), rows, starts, w)
        return net.embed_audio(audio), net.embed_mouth(mouth)

    def step(_: int) -> dict[str, float]:
        net.train()
        a, m = pairs(sampler.sample(plan.batch), gen)
        loss, acc = clip_loss(a, m, net.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), plan.grad_clip)
        opt.step()
        return {"loss": loss.item(), "acc": acc.item()}

    @torch.no_grad()
    def validate() -> dict[str, float]:
        net.eval()
        a, m = pairs(val_batch, torch.Generator().manual_seed(0))
        loss, acc = clip_loss(a, m, net.logit_scale)
        aligned = (a * m).sum(-1).mean().item()
        shuffled = (a * m.roll(1, 0)).sum(-1).mean().item()
        return {"val_loss": loss.item(), "val_acc": acc.item(), "val_cos_gap": aligned - shuffled}

    def save() -> None:
        meta = _meta("syncnet", config, corpus)
        run.save(
            {"syncnet": net},
            corpus.stats,
            meta,
            {"opt": opt},
            streams.state(),
        )

    run.loop(step, validate, save, [opt], stop_at)
    if not (directory / ck.CONFIG).is_file():  # resumed a finished run: nothing was saved
        save()
    return last_validation(run)


def last_validation(run: Run) -> dict[str, Any]:
    val = [h for h in run.history if h["kind"] == "val"]
    return {k: v for k, v in (val[-1] if val else {}).items() if k != "kind"}


def load_syncnet(ckpt: Path | str, dev: torch.device) -> SyncExpert:
    directory = ck.model_dir(ckpt, "syncnet")
    if not (directory / ck.CONFIG).is_file():
        raise FileNotFoundError(
            f"{directory}: no trained sync expert; run `talkingface train syncnet` first"
        )
    scorer = SyncScorer.load(directory)
    net = scorer.net.to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def sync_loss(sync: SyncExpert, feats, pred, mask, gen) -> torch.Tensor:
    """1 - cosine of the frozen expert between audio windows and predicted mouth windows."""
    w = sync.config.window
    rows, starts = sync_positions(mask, w, PAIRS_PER_WINDOW, gen)
    if len(rows) == 0:
        return pred.sum() * 0.0
    with torch.no_grad():
        a = sync.embed_audio(gather_windows(feats, rows, starts, w))
    m = sync.embed_mouth(gather_windows(mouth_of(pred), rows, starts, w))
    return (1.0 - (a * m).sum(-1)).mean()


# ----------------------------------------------------------------------------- VAE


def generate_many(
    model: MotionModel, utts: list[Utterance], seed: int, postnet=None
) -> list[np.ndarray]:
    """lm3d predictions around each utterance's own mean face (identity is not predicted)."""
    return [
        model.generate(u.features, u.f0_bins, seed=seed, postnet=postnet, mean_face=u.mean_face)
        for u in utts
    ]


def train_motion(
    corpus: Corpus,
    out: Path | str,
    config: MotionConfig,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train the pitch-aware VAE (variant `config.variant`) into OUT/motion[-variant]."""
    dev = resolve_device(device)
    directory = ck.model_dir(out, "motion", config.variant)
    plan, weights = config.motion_plan, config.loss
    torch.manual_seed(config.seed)
    sync = load_syncnet(out, dev)
    vae = MotionVAE(corpus.feature_dim, config.vae).to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=plan.lr, weight_decay=1e-4)
    streams = Streams.create(corpus, plan, config.seed, min(plan.batch * 2, 64))
    sampler, gen, val_batch = streams.sampler, streams.gen, streams.val_batch
    val_utts = corpus.val[:VAL_UTTERANCES]
    run = Run(directory, f"motion ({config.variant})", plan, progress)
    if resume:
        streams.restore(run.resume({"vae": vae}, {"opt": opt}))

    def losses(batch: Batch, g: torch.Generator, kl_weight: float):
        feats, bins, delta, mask = batch_tensors(batch, dev)
        pred, kl = vae(feats, bins, delta, mask)
        parts = {
            "l2": masked_mse(pred, delta, mask),
            "kl": kl,
            "sync": sync_loss(sync, feats, pred, mask, g) if weights.sync else kl * 0.0,
            "temporal": velocity_mse(pred, delta, mask),
        }
        total = (
            weights.l2 * parts["l2"]
            + kl_weight * parts["kl"]
            + weights.sync * parts["sync"]
            + weights.temporal * parts["temporal"]
        )
        return total, parts

    def step(i: int) -> dict[str, float]:
        vae.train()
        kl_weight = weights.kl * min(1.0, i / max(weights.kl_anneal_steps, 1))
        total, parts = losses(sampler.sample(plan.batch), gen, kl_weight)
        opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), plan.grad_clip)
        opt.step()
        return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}}

    @torch.no_grad()
    def validate() -> dict[str, float]:
        vae.eval()
        _, parts = losses(val_batch, torch.Generator().manual_seed(0), weights.kl)
        model = MotionModel(vae, config, corpus.stats, {}, "training", dev)
        pred = generate_many(model, val_utts, seed=0)
        metrics = motion_metrics(pred, [u.lm3d for u in val_utts])
        vae.eval()
        return {
            "val_l2": parts["l2"].item(),
            "val_kl": parts["kl"].item(),
            "gen_l2_mm": metrics["l2_mm"],
            "gen_mouth_open_r": metrics["mouth_open_r"],
        }

    def save() -> None:
        meta = _meta("motion", config, corpus)
        run.save(
            {"vae": vae},
            corpus.stats,
            meta,
            {"opt": opt},
            streams.state(),
        )

    run.loop(step, validate, save, [opt], stop_at)
    if not (directory / ck.CONFIG).is_file():
        save()
    return last_validation(run)


def default_config(preset_name: str, variant: str, seed: int, steps: int | None) -> MotionConfig:
    config = preset(preset_name, variant, seed)
    if steps is not None:
        for plan in (config.syncnet_plan, config.motion_plan, config.postnet_plan):
            plan.steps = steps
            plan.val_every = min(plan.val_every, steps)
            plan.ckpt_every = min(plan.ckpt_every, steps)
    return config
