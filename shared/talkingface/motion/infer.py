"""Inference: audio features + pitch -> lm3d, and the sync expert as a scorer.

`MotionModel.generate` runs the whole sequence feed-forward in windows of
`config.infer_window` frames (41 s by default) that overlap by at least
`config.infer_overlap` frames and at least twice the model's receptive field
(`receptive_field`: every layer is per-frame or a finite convolution, normalisation included).
The flow-prior noise is drawn once for the whole sequence from the seed and each window takes
its slice; window starts are multiples of the latent downsampling. Each window contributes
only the frames at least half an overlap from its inner edges, where its output equals that of
a single pass over the whole sequence, so the stitching is seamless (equal to float rounding;
tested). Memory is bounded by the window, whatever the audio length.

Same inputs + same seed + same temperature -> the same output (CPU; CUDA kernels may differ
in the last bits).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from talkingface.lm3d import NUM_LANDMARKS
from talkingface.motion import checkpoint as ck
from talkingface.motion.config import MotionConfig
from talkingface.motion.data import LM_DIM, Stats
from talkingface.motion.nets import MotionVAE, PitchEncoder, Postnet, SyncExpert, mouth_of

SYNC_OFFSETS = 8  # the sync confidence compares offset 0 with offsets -8..8 frames (+-320 ms)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_inputs(
    features: np.ndarray, bins: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float32)
    b = np.asarray(bins)
    if f.ndim != 2 or f.shape[1] != dim:
        raise ValueError(f"features must be [T, {dim}] for this model, got {list(f.shape)}")
    if f.shape[0] == 0:
        raise ValueError("features have no frames")
    if b.shape != (f.shape[0],):
        raise ValueError(f"f0_bins must be [T] = [{f.shape[0]}], got {list(b.shape)}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f, b.astype(np.int64)


def receptive_field(config: MotionConfig) -> int:
    """Frames on either side of a frame that can influence its generated motion."""
    v = config.vae
    cond = max(2, 2 * (v.pitch_kernel // 2))
    flow = v.flow_layers * v.flow_depth * (v.flow_kernel // 2) * v.downsample
    return cond + flow + 2 * v.downsample + v.dec_layers * (v.kernel // 2)


def postnet_reach(postnet: PostnetModel) -> int:
    c = postnet.net.config
    return c.layers * (c.kernel // 2) + 2


class PostnetModel:
    """One avatar's domain-adaptive postnet plus that avatar's mean face, and the linear maps
    of the postnet's output onto that avatar's own landmarks (`calibration`: one 3 x 3 map
    per landmark of the normalised motion, [68, 3, 3]; None for postnets trained before it
    existed: `motion.adapt`)."""

    def __init__(self, net: Postnet, stats: Stats, meta: dict, version: str,
                 calibration: np.ndarray | None = None):  # fmt: skip
        self.net = net.eval()
        self.stats = stats
        self.meta = meta
        self.version = version
        self.calibration = calibration

    @property
    def mean_face(self) -> np.ndarray:
        return self.stats.mean_face

    @classmethod
    def load(cls, directory: Path | str, device: torch.device | str = "cpu") -> PostnetModel:
        directory = Path(directory)
        meta = ck.read_meta(directory)
        groups, stats = ck.load_weights(directory)
        config = ck.config_of(meta)
        own = None
        if "own_pitch" in groups:
            own = PitchEncoder(config.vae.pitch_embed, config.vae.cond, config.vae.pitch_kernel)
            own.load_state_dict(groups["own_pitch"])
        net = Postnet(config.postnet, config.vae.cond, own)
        net.load_state_dict(groups["postnet"], strict=True)
        calibration = None
        if "calibration" in groups:
            calibration = groups["calibration"]["weight"].numpy().astype(np.float32)
            if calibration.shape != (NUM_LANDMARKS, 3, 3):
                shape = list(calibration.shape)
                raise ValueError(f"{directory}: its calibration is {shape}, not one 3 x 3 map "
                                 "per landmark; retrain the postnet")  # fmt: skip
        return cls(net.to(device), stats, meta, _digest(directory / ck.WEIGHTS), calibration)


class Calibration(nn.Module):
    """A postnet's calibration as a module (so it is saved with the postnet's weights)."""

    def __init__(self, weight: np.ndarray):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(np.asarray(weight, np.float32)))


class MotionModel:
    """A trained pitch-aware VAE with its flow prior, ready to generate lm3d sequences."""

    def __init__(
        self,
        vae: MotionVAE,
        config: MotionConfig,
        stats: Stats,
        meta: dict,
        version: str,
        device: torch.device,
    ):
        self.vae = vae.eval()
        self.config = config
        self.stats = stats
        self.meta = meta
        self.version = version
        self.device = device

    @property
    def feature_dim(self) -> int:
        return self.vae.feature_dim

    @property
    def front_end(self) -> str:
        return self.meta.get("front_end", "logmel")

    @classmethod
    def load(cls, directory: Path | str, device: str = "auto") -> MotionModel:
        directory = Path(directory)
        meta = ck.read_meta(directory)
        if meta.get("kind") != "motion":
            raise ValueError(f"{directory}: holds a {meta.get('kind')!r} model, not 'motion'")
        config = ck.config_of(meta)
        groups, stats = ck.load_weights(directory)
        vae = MotionVAE(int(meta["feature_dim"]), config.vae)
        vae.load_state_dict(groups["vae"], strict=True)
        dev = resolve_device(device)
        return cls(vae.to(dev), config, stats, meta, _digest(directory / ck.WEIGHTS), dev)

    def check_postnet(self, postnet: PostnetModel) -> None:
        if postnet.meta.get("motion_version") != self.version:
            raise ValueError(
                f"the postnet was trained on motion model {postnet.meta.get('motion_version')}, "
                f"this is {self.version}; retrain the postnet"
            )

    def noise(self, frames: int, seed: int, temperature: float) -> torch.Tensor:
        ds = self.config.vae.downsample
        gen = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
        latent_frames = -(-frames // ds)
        eps = torch.randn(1, self.config.vae.latent, latent_frames, generator=gen)
        return eps * float(temperature)

    @torch.no_grad()
    def predict(
        self,
        features: np.ndarray,
        f0_bins: np.ndarray,
        seed: int = 0,
        temperature: float | None = None,
        postnet: PostnetModel | None = None,
        window: int | None = None,
        overlap: int | None = None,
    ) -> np.ndarray:
        """Normalised motion [T, 204] (see `generate` for lm3d)."""
        f, b = _check_inputs(features, f0_bins, self.feature_dim)
        temperature = (
            self.config.temperature if temperature is None or temperature <= 0 else temperature
        )
        if postnet is not None:
            self.check_postnet(postnet)
        ds = self.config.vae.downsample
        t_all = f.shape[0]
        window, overlap, starts = self.windows(t_all, postnet, window, overlap)
        feats = torch.from_numpy(self.stats.features(f)).to(self.device)[None]
        bins = torch.from_numpy(b).to(self.device)[None]
        eps = self.noise(t_all, seed, temperature).to(self.device)
        out = torch.zeros(t_all, LM_DIM, device=self.device)
        for k, s in enumerate(starts):
            e = min(s + window, t_all)
            n = e - s
            mask = torch.ones(1, n, device=self.device)
            z = eps[:, :, s // ds : s // ds + -(-n // ds)]
            pred = self.vae.infer(feats[:, s:e], bins[:, s:e], mask, z)
            if postnet is not None:
                pred = self._postnet(postnet, pred, bins[:, s:e], mask)
            # Each window owns the frames at least half an overlap (>= the receptive field)
            # away from its inner edges, where it equals one pass over the whole sequence.
            lo = s + overlap // 2 if k > 0 else s
            hi = e - overlap // 2 if k < len(starts) - 1 else e
            out[lo:hi] = pred[0, lo - s : hi - s]
        motion = out.cpu().numpy()
        if postnet is not None and postnet.calibration is not None:
            points = motion.reshape(t_all, NUM_LANDMARKS, 3)
            motion = np.einsum("tpi,pij->tpj", points, postnet.calibration).reshape(t_all, -1)
        return motion

    def windows(
        self,
        frames: int,
        postnet: PostnetModel | None = None,
        window: int | None = None,
        overlap: int | None = None,
    ) -> tuple[int, int, list[int]]:
        """(window, overlap, window starts) used to generate `frames` frames."""
        ds = self.config.vae.downsample
        reach = receptive_field(self.config) + (postnet_reach(postnet) if postnet else 0)
        overlap = max(self.config.infer_overlap if overlap is None else overlap, 2 * reach + ds)
        overlap += (-overlap) % (2 * ds)  # even multiple of ds: the seam sits on the grid
        window = max(window or self.config.infer_window, 2 * overlap)
        window -= window % ds
        starts = [0]
        while starts[-1] + window < frames:
            starts.append(starts[-1] + window - overlap)
        return window, overlap, starts

    def _postnet(self, postnet: PostnetModel, pred, bins, mask):
        m = mask[:, None, :]
        pitch = None
        if postnet.net.config.use_pitch:
            encoder = postnet.net.own_pitch or self.vae.pitch_encoder
            pitch = encoder(bins, m)
        return postnet.net(pred, pitch, mask)

    def generate(
        self,
        features: np.ndarray,
        f0_bins: np.ndarray,
        seed: int = 0,
        temperature: float | None = None,
        postnet: PostnetModel | None = None,
        mean_face: np.ndarray | None = None,
    ) -> np.ndarray:
        """lm3d [T, 68, 3] float32 around the avatar's mean face (the postnet's, else the
        generic training mean, unless `mean_face` is given)."""
        delta = self.predict(features, f0_bins, seed, temperature, postnet)
        if mean_face is None:
            mean_face = postnet.mean_face if postnet is not None else self.stats.mean_face
        face = np.asarray(mean_face, np.float32)
        if face.shape != (NUM_LANDMARKS, 3):
            raise ValueError(f"mean face must be [68, 3], got {list(face.shape)}")
        return self.stats.lm3d(delta, face)


class SyncScorer:
    """The trained sync expert as an evaluation score (ours, not SyncNet's LSE)."""

    def __init__(self, net: SyncExpert, stats: Stats):
        self.net = net.eval()
        self.stats = stats
        self.window = net.config.window

    @classmethod
    def load(cls, directory: Path | str) -> SyncScorer:
        meta = ck.read_meta(directory)
        config = ck.config_of(meta)
        groups, stats = ck.load_weights(directory)
        net = SyncExpert(int(meta["feature_dim"]), config.sync)
        net.load_state_dict(groups["syncnet"], strict=True)
        return cls(net, stats)

    @torch.no_grad()
    def offsets(self, features: np.ndarray, lm3d: np.ndarray, mean_face: np.ndarray) -> np.ndarray:
        """Mean cosine similarity at audio/mouth offsets -8..8 frames: [17] (NaN if too short)."""
        w = self.window
        f = torch.from_numpy(self.stats.features(features))
        d = torch.from_numpy(self.stats.delta(lm3d, mean_face))
        t = min(f.shape[0], d.shape[0])
        n = t - w + 1
        sims = np.full(2 * SYNC_OFFSETS + 1, np.nan)
        if n <= 0:
            return sims
        audio = self.net.embed_audio(f[:t].unfold(0, w, 1).transpose(1, 2))  # [n, E]
        mouth = self.net.embed_mouth(mouth_of(d[:t]).unfold(0, w, 1).transpose(1, 2))
        for i, k in enumerate(range(-SYNC_OFFSETS, SYNC_OFFSETS + 1)):
            if n - abs(k) <= 0:  # shorter than the offset (a negative stop would wrap)
                continue
            a = audio[max(0, -k) : n - max(0, k)]
            m = mouth[max(0, k) : n - max(0, -k)]
            sims[i] = float((a * m).sum(-1).mean())
        return sims

    def score(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
        """`sync_cos`: aligned similarity; `sync_conf`: aligned minus the median over offsets
        (like LSE-C); `sync_offset_ok`: share of sequences whose best offset is 0 +- 1."""
        rows = [self.offsets(f, lm, face) for f, lm, face in items]
        rows = [r for r in rows if np.isfinite(r[SYNC_OFFSETS])]
        if not rows:
            return {
                "sync_cos": float("nan"),
                "sync_conf": float("nan"),
                "sync_offset_ok": float("nan"),
            }
        aligned = np.array([r[SYNC_OFFSETS] for r in rows])
        conf = np.array([r[SYNC_OFFSETS] - np.nanmedian(r) for r in rows])
        best = np.array([abs(int(np.nanargmax(r)) - SYNC_OFFSETS) <= 1 for r in rows])
        return {
            "sync_cos": float(aligned.mean()),
            "sync_conf": float(conf.mean()),
            "sync_offset_ok": float(best.mean()),
        }
