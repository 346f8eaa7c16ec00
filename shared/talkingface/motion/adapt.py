"""Per-avatar adaptation: the domain-adaptive postnet (paper §4.1, eq. 2 and 15).

The VAE (and its pitch encoder) are frozen. Each step draws training windows of the person's
own audio, samples the VAE's motion from the flow prior, refines it with the postnet and
updates a per-frame discriminator against the person's true landmark frames:

- discriminator: LSGAN + gradient penalty (WGAN-GP on real/fake interpolates by default, or
  the paper's eq. 14 penalty on real frames, `loss.gp_mode`);
- postnet: LSGAN generator loss + the frozen sync expert's loss + L2 to its own input (stay
  near the VAE) + L2 to the person's landmarks (the avatar's audio and landmarks are paired;
  `loss.post_l2 = 0` gives the paper's unpaired objective) + the temporal loss.

Then the calibration (`fit_calibration`, not in the paper): a linear map of the trained
postnet's output onto the person's own landmarks, one 3 x 3 ridge map per landmark fitted
over their training frames (normalised motion), applied after the postnet wherever it runs
(`MotionModel.predict`). The motion model was trained on SynthTalk's exact landmarks; an
avatar ingested from a video has the face mesh's (a jaw contour that is the cheek's outline,
corners and openings read further than they move), which a few hundred postnet steps do not
learn: on SynthTalk videos ingested from pixels, the held-out landmark L2 falls by about a
third (docs/motion.md, "Calibration"). The ridge is chosen by cross-validation on the
training frames, and where no map does better there than none, none is kept.

`avatar_target` turns a SynthTalk avatar directory into this training data;
`postnet_config` builds the configuration for a given motion model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from talkingface.lm3d import NUM_LANDMARKS
from talkingface.motion.config import MotionConfig, preset
from talkingface.motion.data import Stats, Utterance, WindowSampler
from talkingface.motion.infer import Calibration, MotionModel, PostnetModel
from talkingface.motion.metrics import motion_metrics
from talkingface.motion.nets import FrameDiscriminator, PitchEncoder, Postnet, SyncExpert
from talkingface.motion.train import (
    Run,
    batch_tensors,
    last_validation,
    masked_mse,
    sync_loss,
    velocity_mse,
)

CALIBRATION_RIDGES = (1e-3, 1e-2, 1e-1, 1.0)  # times the mean eigenvalue of a point's X^T X
CALIBRATION_FOLDS = 5


def fit_calibration(model: MotionModel, postnet: PostnetModel, utterances: list[Utterance],
                    mean_face: np.ndarray) -> np.ndarray | None:  # fmt: skip
    """[68, 3, 3]: for each landmark j, the 3 x 3 ridge map W_j minimising
    |X_j W_j - Y_j|^2 + lambda_j |W_j|^2, X_j the postnet's normalised motion of that point
    on the utterances' audio (seed 0), Y_j its true normalised motion around `mean_face`;
    lambda_j = one of CALIBRATION_RIDGES x trace(X_j^T X_j) / 3, chosen by cross-validation
    over CALIBRATION_FOLDS contiguous stretches of these frames (nothing of the avatar's
    held-out frames). One map per point, not one 204 x 204 map: that would learn how this
    recording's voice moves the whole face, which another voice does not share (on the
    SynthTalk demo's clip in an unseen voice, a full map raised the mouth LMD by 0.13 mm, the
    per-point maps by 0.02). None when no map does better in the cross-validation than none."""
    xs, ys = [], []
    for u in utterances:
        x = model.predict(u.features, u.f0_bins, seed=0, postnet=postnet)
        y = model.stats.delta(u.lm3d, mean_face)
        t = min(len(x), len(y))
        xs.append(x[:t])
        ys.append(y[:t])
    if sum(len(x) for x in xs) < 2 * CALIBRATION_FOLDS:
        return None
    x = np.concatenate(xs).astype(np.float64).reshape(-1, NUM_LANDMARKS, 3)
    y = np.concatenate(ys).astype(np.float64).reshape(-1, NUM_LANDMARKS, 3)

    def grams(i):  # per point: X_j^T X_j and X_j^T Y_j, [68, 3, 3] each
        return np.einsum("tpi,tpj->pij", x[i], x[i]), np.einsum("tpi,tpj->pij", x[i], y[i])

    folds = np.array_split(np.arange(len(x)), CALIBRATION_FOLDS)
    gram, cross = grams(slice(None))
    parts = [(*grams(f), f) for f in folds]
    scale = np.maximum(np.trace(gram, axis1=1, axis2=2) / 3, 1e-12)[:, None, None] * np.eye(3)

    def solve(g, c, ridge):
        return np.linalg.solve(g + ridge * scale, c)

    errors = {}
    for ridge in CALIBRATION_RIDGES:
        err = 0.0
        for g, c, f in parts:
            w = solve(gram - g, cross - c, ridge)
            err += float(((np.einsum("tpi,pij->tpj", x[f], w) - y[f]) ** 2).sum())
        errors[ridge] = err
    best = min(errors, key=errors.__getitem__)
    if errors[best] >= float(((x - y) ** 2).sum()):
        return None
    return solve(gram, cross, best).astype(np.float32)


def gradient_penalty(disc: FrameDiscriminator, real: torch.Tensor, fake: torch.Tensor, mode: str):
    if mode == "real":
        x = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(disc(x).sum(), x, create_graph=True)
        return (grad**2).sum(-1).mean()
    alpha = torch.rand(real.shape[0], 1, device=real.device)
    x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(x).sum(), x, create_graph=True)
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()


def train_postnet(
    model: MotionModel,
    target_train: list[Utterance],
    target_val: list[Utterance],
    mean_face: np.ndarray,
    out: Path | str | None,
    config: MotionConfig,
    sync: SyncExpert | None,
    use_pitch: bool = True,
    progress: bool = True,
    title: str = "postnet",
) -> tuple[PostnetModel, dict[str, Any]]:
    """Adapt the frozen `model` to one person (their utterances; `mean_face` is theirs).

    Returns the postnet and its validation metrics. With `out`, the postnet directory is
    written there (weights, config.json with the motion model's version, curves).
    """
    dev = model.device
    config = copy.deepcopy(config)
    plan, weights = config.postnet_plan, config.loss
    pconfig = config.postnet
    pconfig.use_pitch = use_pitch
    config.postnet = pconfig
    torch.manual_seed(config.seed)
    vae = model.vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    own = None
    if use_pitch and vae.pitch_encoder is None:
        own = PitchEncoder(config.vae.pitch_embed, config.vae.cond, config.vae.pitch_kernel).to(dev)
    net = Postnet(pconfig, config.vae.cond, own).to(dev)
    disc = FrameDiscriminator(pconfig).to(dev)
    opt_g = torch.optim.AdamW(net.parameters(), lr=plan.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=plan.lr, betas=(0.5, 0.9))
    stats = model.stats
    person = [
        Utterance(
            u.id,
            u.speaker,
            u.split,
            u.language,
            u.voice_id,
            u.features,
            u.f0_bins,
            u.lm3d,
            mean_face,
        )
        for u in target_train
    ]
    sampler = WindowSampler(person, stats, plan.window, config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    temperature = config.temperature
    directory = Path(out) if out is not None else None
    run = Run(directory or Path("."), title, plan, progress)

    def pitch_of(bins, mask):
        if not use_pitch:
            return None
        encoder = own if own is not None else vae.pitch_encoder
        return encoder(bins, mask[:, None, :])

    def step(_: int) -> dict[str, float]:
        net.train()
        disc.train()
        feats, bins, real, mask = batch_tensors(sampler.sample(plan.batch), dev)
        with torch.no_grad():
            ds = config.vae.downsample
            eps = (
                torch.randn(
                    feats.shape[0], config.vae.latent, -(-feats.shape[1] // ds), generator=gen
                ).to(dev)
                * temperature
            )
            pred = vae.infer(feats, bins, mask, eps)
        out_ = net(pred, pitch_of(bins, mask), mask)
        valid = mask.bool()
        fake_frames = out_[valid]
        real_frames = real[valid]
        # discriminator
        d_real = disc(real_frames)
        d_fake = disc(fake_frames.detach())
        gp = gradient_penalty(disc, real_frames, fake_frames, weights.gp_mode)
        d_loss = ((d_real - 1) ** 2).mean() + (d_fake**2).mean() + weights.gp * gp
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # postnet
        adv = ((disc(fake_frames) - 1) ** 2).mean()
        s = sync_loss(sync, feats, out_, mask, gen) if sync is not None else adv * 0.0
        g_loss = (
            weights.adv * adv
            + weights.post_sync * s
            + weights.post_mse * masked_mse(out_, pred, mask)
            + weights.post_l2 * masked_mse(out_, real, mask)
            + weights.post_temporal * velocity_mse(out_, real, mask)
        )
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), plan.grad_clip)
        opt_g.step()
        return {
            "g_loss": g_loss.item(),
            "d_loss": d_loss.item(),
            "adv": adv.item(),
            "gp": gp.item(),
            "sync": s.item(),
        }

    calibration: np.ndarray | None = None

    def current(version: str = "training") -> PostnetModel:
        pstats = Stats(stats.feature_std, stats.delta_scale, np.asarray(mean_face, np.float32))
        return PostnetModel(net, pstats, {"motion_version": model.version}, version,
                            calibration)  # fmt: skip

    @torch.no_grad()
    def validate() -> dict[str, float]:
        if not target_val:
            return {}
        net.eval()
        pm = current()
        pred = [
            model.generate(u.features, u.f0_bins, seed=0, postnet=pm, mean_face=mean_face)
            for u in target_val
        ]
        metrics = motion_metrics(pred, [u.lm3d for u in target_val])
        net.train()
        return {"val_l2_mm": metrics["l2_mm"], "val_mouth_open_r": metrics["mouth_open_r"]}

    def save() -> None:
        if directory is None:
            return
        modules: dict[str, nn.Module] = {"postnet": net, "disc": disc}
        if own is not None:
            modules["own_pitch"] = own
        if calibration is not None:
            modules["calibration"] = Calibration(calibration)
        meta = {
            "kind": "postnet",
            "config": config.to_dict(),
            "feature_dim": model.feature_dim,
            "front_end": model.front_end,
            "motion_version": model.version,
            "use_pitch": use_pitch,
        }
        pstats = Stats(stats.feature_std, stats.delta_scale, np.asarray(mean_face, np.float32))
        run.save(modules, pstats, meta, {"g": opt_g, "d": opt_d}, {})

    run.loop(step, validate, save, [opt_g, opt_d])
    net.eval()
    validation = last_validation(run)
    if person:
        # The loop's last validation was of this very postnet (it validates at the last step).
        uncalibrated = {k: v for k, v in validation.items() if k != "step"}
        calibration = fit_calibration(model, current(), person, mean_face)
        if calibration is not None:
            validation["calibration"] = {"before": uncalibrated, "after": validate()}
            save()
        else:
            validation["calibration"] = {"before": uncalibrated, "after": None}
    version = "untracked"
    if directory is not None:
        version = PostnetModel.load(directory, dev).version
    return current(version), validation


def avatar_target(
    avatar_dir: Path | str, hubert: str | None = None, pitch_method: str = "dio"
) -> tuple[list[Utterance], list[Utterance], np.ndarray]:
    """A SynthTalk avatar as postnet data: (train part, val part, mean face of train frames)."""
    from talkingface.audio import extract
    from talkingface.data.synthtalk.fileformat import read_avatar
    from talkingface.motion.data import _front_end

    avatar = read_avatar(avatar_dir)
    feats = extract(avatar["audio"], _front_end(hubert), pitch_method=pitch_method)  # type: ignore[arg-type]
    lm = np.asarray(avatar["lm3d"], np.float32)
    t = min(lm.shape[0], feats.frames())
    splits = avatar["manifest"]["splits"]
    train_range, val_range = splits["train"], splits["val"]
    mean_face = lm[train_range[0] : train_range[1]].mean(axis=0).astype(np.float32)

    def part(name: str, lo: int, hi: int) -> list[Utterance]:
        hi = min(hi, t)
        if hi - lo < 8:
            return []
        return [
            Utterance(
                f"avatar-{name}",
                "avatar",
                name,
                "",
                "",
                feats.features[lo:hi],
                feats.f0_bins[lo:hi].astype(np.int64),
                lm[lo:hi],
                mean_face,
            )
        ]

    return part("train", *train_range), part("val", *val_range), mean_face


def postnet_config(
    model_config: MotionConfig,
    preset_name: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
) -> MotionConfig:
    """The configuration to train a postnet for a model: the frozen VAE's own sizes, and the
    postnet sizes, plan and loss weights of `preset_name` (default: the model's preset) as
    this release defines them."""
    base = preset(
        preset_name or model_config.preset, seed=model_config.seed if seed is None else seed
    )
    config = MotionConfig.from_dict(model_config.to_dict())
    config.seed = base.seed
    config.postnet, config.postnet_plan, config.loss = base.postnet, base.postnet_plan, base.loss
    if steps is not None:
        plan = config.postnet_plan
        plan.steps = steps
        plan.val_every = min(plan.val_every, steps)
        plan.ckpt_every = min(plan.ckpt_every, steps)
    return config
