"""Training a judge: offset classification (SyncNet-style multi-way), never a contrastive loss.

Each example is an audio window centred at frame t of a training utterance and the 2K + 1
mouth-geometry windows of the same utterance centred at t + k, k = -K..K. The network scores
every (audio, mouth) pair; cross-entropy over the 2K + 1 logits teaches it to pick k = 0. The
negatives are the same person's mouth at other times, so the network must read timing, not
who is speaking or how wide they open their mouth.

Normalisation statistics (per-dimension std of the mean-removed audio features and mouth
geometry) come from the training split and are stored in the weights. Training examples are
augmented (`JudgeConfig.augment_gain`, `augment_noise`): each example's mouth measurements
are scaled by a random gain each and take white noise, as a tracker's reading of a real
mouth would (docs/judge.md, "Read from a video"); validation examples are not. Deterministic
for a seed on the CPU (numpy PCG64 for windows and augmentation, torch's generator for
initialisation).

After training, the judge is frozen: `judge.json` records its version (weights digest), the
corpus provenance and the truth report on the corpus's held-out `test` split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from talkingface.judge.config import JudgeConfig
from talkingface.judge.geometry import MOUTH_FEATURES, audio_features, mouth_features
from talkingface.judge.model import Judge, file_sha256
from talkingface.judge.nets import JudgeNet
from talkingface.judge.provenance import corpus_identity
from talkingface.motion.data import Utterance
from talkingface.threads import torch_threads

log = logging.getLogger(__name__)
VAL_WINDOWS = 1024  # fixed validation examples


class OffsetSampler:
    """Random (audio window, 2K + 1 mouth windows) examples, utterances drawn in proportion
    to their usable centre frames; with `augment`, each example's mouth frames are scaled
    per measurement and take noise (the config's `augment_gain`, `augment_noise`)."""

    def __init__(
        self,
        audio: list[np.ndarray],
        mouth: list[np.ndarray],
        config: JudgeConfig,
        seed: int,
        augment: bool = False,
    ):
        self.gain = config.augment_gain if augment else 0.0
        self.noise = config.augment_noise if augment else 0.0
        self.ha, self.hm = config.audio_window // 2, config.mouth_window // 2
        self.k = config.train_offsets
        self.lo = max(self.ha, self.hm + self.k)
        keep = [i for i, a in enumerate(audio) if len(a) - 2 * self.lo > 0]
        if not keep:
            raise ValueError(
                f"no utterance is long enough for the judge's windows ({2 * self.lo + 1} frames)"
            )
        self.audio = [audio[i] for i in keep]
        self.mouth = [mouth[i] for i in keep]
        counts = np.array([len(a) - 2 * self.lo for a in self.audio], np.float64)
        self.p = counts / counts.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        picks = self.rng.choice(len(self.audio), size=batch, p=self.p)
        ks = np.arange(-self.k, self.k + 1)
        da = np.arange(-self.ha, self.ha + 1)
        dm = np.arange(-self.hm, self.hm + 1)
        audio, mouths = [], []
        reach = self.k + self.hm
        for i in picks:
            t = len(self.audio[i])
            c = int(self.rng.integers(self.lo, t - self.lo))
            audio.append(self.audio[i][c + da])
            # The frames every mouth window of the example reads, augmented once.
            frames = self.mouth[i][c - reach : c + reach + 1]
            if self.gain or self.noise:
                gain = np.exp(self.rng.normal(0.0, self.gain, frames.shape[1]))
                noise = self.rng.normal(0.0, self.noise, frames.shape)
                frames = (frames * gain + noise).astype(np.float32)
            mouths.append(frames[reach + ks[:, None] + dm[None, :]])  # [2K+1, Wm, F]
        return torch.from_numpy(np.stack(audio)), torch.from_numpy(np.stack(mouths))


def fit_stats(train: list[Utterance], config: JudgeConfig) -> tuple[np.ndarray, np.ndarray]:
    audio = np.concatenate([audio_features(u.features) for u in train])
    mouth = np.concatenate([mouth_features(u.lm3d, config.sequence_scale) for u in train])
    return (
        np.maximum(audio.std(axis=0), 1e-3).astype(np.float32),
        np.maximum(mouth.std(axis=0), 1e-4).astype(np.float32),
    )


def _arrays(utts: list[Utterance], audio_std: np.ndarray, mouth_std: np.ndarray,
            config: JudgeConfig):  # fmt: skip
    audio, mouth = [], []
    for u in utts:
        f, g = audio_features(u.features), mouth_features(u.lm3d, config.sequence_scale)
        t = min(len(f), len(g))
        audio.append((f[:t] / audio_std).astype(np.float32))
        mouth.append((g[:t] / mouth_std).astype(np.float32))
    return audio, mouth


def train_judge(
    utterances: list[Utterance],
    corpus_dir: Path | str,
    out: Path | str,
    config: JudgeConfig,
    seed: int = 1,
    front_end: str = "logmel",
    progress: bool = True,
) -> dict[str, Any]:
    """Train a judge on the corpus's `train` split, write it (frozen) to OUT; returns the
    summary: loss curve ends, validation, the held-out truth report, version, seconds."""
    with torch_threads(1):
        return _train(utterances, corpus_dir, Path(out), config, seed, front_end, progress)


def _train(
    utterances: list[Utterance],
    corpus_dir: Path | str,
    out: Path,
    config: JudgeConfig,
    seed: int,
    front_end: str,
    progress: bool,
) -> dict[str, Any]:
    if (out / "judge.json").exists():
        raise FileExistsError(f"{out}: already holds a judge; judges are frozen, use a new --out")
    train = [u for u in utterances if u.split == "train"]
    val = [u for u in utterances if u.split == "val"]
    heldout = [u for u in utterances if u.split == "test"] or val
    if not train:
        raise ValueError(f"{corpus_dir}: the corpus has no 'train' utterances")
    started = time.perf_counter()
    torch.manual_seed(seed)
    audio_std, mouth_std = fit_stats(train, config)
    feature_dim = int(audio_std.shape[0])
    net = JudgeNet(feature_dim, MOUTH_FEATURES, config)
    sampler = OffsetSampler(*_arrays(train, audio_std, mouth_std, config), config, seed,
                            augment=True)  # fmt: skip
    val_batch = None
    if val:
        val_sampler = OffsetSampler(*_arrays(val, audio_std, mouth_std, config), config,
                                    seed + 1)  # fmt: skip
        val_batch = val_sampler.sample(VAL_WINDOWS)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    target = offset_target(config)
    losses: list[float] = []
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.steps), desc="judge", unit="step", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = config.lr * config.lr_decay ** (step / max(config.steps, 1))
        net.train()
        audio, mouths = sampler.sample(config.batch)
        logits = net(audio, mouths)
        loss = F.cross_entropy(logits, target.expand_as(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        last = step + 1 == config.steps
        if val_batch is not None and ((step + 1) % config.val_every == 0 or last):
            row = {"step": step + 1, "train_loss": float(np.mean(losses[-config.val_every :]))}
            row.update(_validate(net, val_batch, target))
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_acc']:.3f}")
            log.info("judge step %d: %s", step + 1, row)
    bar.close()
    train_seconds = time.perf_counter() - started
    judge = Judge(net, audio_std, mouth_std, {})
    report = judge.truth_report([(u.features, u.lm3d) for u in heldout])
    head = max(1, min(50, len(losses) // 10))
    meta = {
        "seed": seed,
        "front_end": front_end,
        "corpus": corpus_identity(corpus_dir),
        "training": {
            "steps": config.steps,
            "seconds": round(train_seconds, 1),
            "train_utterances": len(train),
            "train_seconds_of_audio": round(sum(u.frames for u in train) / 25, 1),
            "loss_first": float(np.mean(losses[:head])),
            "loss_last": float(np.mean(losses[-head:])),
            "chance_loss": float(np.log(2 * config.train_offsets + 1)),  # uniform guess
            "loss_floor": float(-(target * target.log()).sum()),  # the target's entropy
            "history": history,
        },
        "truth_report": {
            "split": "test" if any(u.split == "test" for u in utterances) else "val",
            "utterances": len(heldout),
            **report,
        },
    }
    meta = judge.save(out, meta)
    assert file_sha256(out / "judge.safetensors")[:12] == meta["version"]
    return {
        "out": str(out),
        "version": meta["version"],
        "seed": seed,
        "training": {k: v for k, v in meta["training"].items() if k != "history"},
        "validation": history[-1] if history else {},
        "truth_report": meta["truth_report"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def offset_target(config: JudgeConfig) -> torch.Tensor:
    """The training distribution over offsets -K..K: mostly k = 0, with neighbours getting
    mass that decays as exp(-|k| / target_width), plus a little uniform smoothing. Near
    offsets are nearly in sync, so the judge learns a peak that widens gradually rather
    than a spike: its score of a sequence falls steadily as the sequence drifts out of sync,
    and its log-probabilities stay finite."""
    ks = torch.arange(-config.train_offsets, config.train_offsets + 1, dtype=torch.float32)
    peak = torch.softmax(-ks.abs() / config.target_width, dim=0)
    eps = config.label_smoothing
    return (1 - eps) * peak + eps / len(ks)


@torch.no_grad()
def _validate(net: JudgeNet, batch: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor):
    net.eval()
    logits = net(*batch)
    centre = len(target) // 2
    found = logits.argmax(dim=1)
    return {
        "val_loss": F.cross_entropy(logits, target.expand_as(logits)).item(),
        "val_acc": (found == centre).float().mean().item(),
        "val_acc_pm1": ((found - centre).abs() <= 1).float().mean().item(),
    }
