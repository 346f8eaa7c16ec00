"""Networks of the motion stage (paper §4.1, appendix A.1; sizes in `motion.config`).

Tensors are channel-first sequences `[B, C, T]` with a mask `[B, 1, T]` (1 = real frame);
every block multiplies its output by the mask so padding never leaks into real frames.

- `PitchEncoder`: f0 bin -> embedding -> conv1d + BN + GELU -> conv1d.
- `ConditionEncoder`: audio features (conv1d + BN + GELU + conv1d) plus the pitch encoding.
- `MotionVAE`: encoder (landmarks + condition -> latent, pooled `downsample`x in time),
  decoder (latent + condition -> landmarks) and a conditional normalising-flow prior of affine
  coupling layers over the latent; at inference the latent is sampled from the prior.
- `SyncExpert`: audio window and mouth-landmark window -> unit embeddings; cosine similarity
  is the sync score.
- `Postnet` and `FrameDiscriminator`: the domain-adaptive refinement and its per-frame critic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from talkingface.audio.pitch import F0_BINS
from talkingface.motion.config import PostnetConfig, SyncConfig, VAEConfig
from talkingface.motion.data import LM_DIM

MOUTH_DIM = 20 * 3
LOG_2PI = math.log(2 * math.pi)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each frame of [B, C, T]: per frame, so an output
    never depends on frames outside the receptive field (windows stitch seamlessly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ResConv(nn.Module):
    """Pre-norm residual conv block: x + Conv(GELU(ChannelNorm(x)))."""

    def __init__(self, channels: int, kernel: int, dropout: float = 0.0):
        super().__init__()
        self.norm = ChannelNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.gelu(self.norm(x * mask)))
        return (x + self.drop(h)) * mask


class ResStack(nn.Module):
    def __init__(self, channels: int, kernel: int, layers: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(ResConv(channels, kernel, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


class PitchEncoder(nn.Module):
    """Discretised log-f0 bins -> embedding -> conv1d + BN + GELU -> conv1d (paper §4.1)."""

    def __init__(self, embed: int, out: int, kernel: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(F0_BINS, embed)
        self.conv1 = nn.Conv1d(embed, out, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm1d(out)
        self.conv2 = nn.Conv1d(out, out, kernel, padding=kernel // 2)

    def forward(self, bins: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(bins.clamp(0, F0_BINS - 1)).transpose(1, 2) * mask
        x = F.gelu(self.bn(self.conv1(x))) * mask
        return self.conv2(x) * mask


class ConditionEncoder(nn.Module):
    """Audio features (+ pitch encoding when `use_pitch`) -> condition [B, cond, T]."""

    def __init__(self, feature_dim: int, config: VAEConfig):
        super().__init__()
        c = config.cond
        self.conv1 = nn.Conv1d(feature_dim, c, 3, padding=1)
        self.bn = nn.BatchNorm1d(c)
        self.conv2 = nn.Conv1d(c, c, 3, padding=1)
        self.pitch = (
            PitchEncoder(config.pitch_embed, c, config.pitch_kernel) if config.use_pitch else None
        )

    def forward(
        self, features: torch.Tensor, bins: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = features.transpose(1, 2) * mask
        x = self.conv2(F.gelu(self.bn(self.conv1(x))) * mask) * mask
        if self.pitch is not None:
            x = x + self.pitch(bins, mask)
        return x


def _pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool time by `factor` (T must be a multiple of it)."""
    if factor == 1:
        return x
    b, c, t = x.shape
    return x.reshape(b, c, t // factor, factor).mean(-1)


def _pool_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return mask
    b, c, t = mask.shape
    return mask.reshape(b, c, t // factor, factor).amax(-1)


class CouplingLayer(nn.Module):
    """Affine coupling over the latent channels, conditioned on the (pooled) condition."""

    def __init__(self, channels: int, cond: int, hidden: int, kernel: int, depth: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.cond = nn.Conv1d(cond, hidden, 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2) for _ in range(depth)
        )
        self.post = nn.Conv1d(hidden, 2 * (channels - self.half), 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def _params(self, xa: torch.Tensor, g: torch.Tensor, mask: torch.Tensor):
        h = (self.pre(xa) + self.cond(g)) * mask
        for conv in self.convs:
            h = (h + F.gelu(conv(h))) * mask
        m, logs = self.post(h).chunk(2, dim=1)
        return m * mask, torch.tanh(logs) * mask  # bounded scales keep the inverse stable

    def forward(self, z: torch.Tensor, g: torch.Tensor, mask: torch.Tensor):
        """z -> (y, log|det|): the density direction (data -> noise)."""
        za, zb = z[:, : self.half], z[:, self.half :]
        m, logs = self._params(za, g, mask)
        yb = (zb * torch.exp(logs) + m) * mask
        y = torch.cat([za, yb], 1).flip(1)
        return y, logs.sum(dim=(1, 2))

    def inverse(self, y: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = y.flip(1)
        ya, yb = y[:, : self.half], y[:, self.half :]
        m, logs = self._params(ya, g, mask)
        zb = (yb - m) * torch.exp(-logs) * mask
        return torch.cat([ya, zb], 1)


class FlowPrior(nn.Module):
    """p(z | condition): a stack of affine couplings over a standard normal (VITS-style)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            CouplingLayer(
                config.latent,
                config.cond,
                config.flow_hidden,
                config.flow_kernel,
                config.flow_depth,
            )
            for _ in range(config.flow_layers)
        )

    def log_prob(self, z: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(z | g) summed over channels and valid frames: [B]."""
        logdet = torch.zeros(z.shape[0], device=z.device)
        for layer in self.layers:
            z, ld = layer(z, g, mask)
            logdet = logdet + ld
        normal = (-0.5 * (z**2 + LOG_2PI) * mask).sum(dim=(1, 2))
        return normal + logdet

    def sample(self, eps: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = eps * mask
        for layer in reversed(self.layers):
            z = layer.inverse(z, g, mask)
        return z


class MotionVAE(nn.Module):
    """Pitch-aware conditional VAE over normalised motion [B, T, 204] with a flow prior."""

    def __init__(self, feature_dim: int, config: VAEConfig):
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        c, h = config.cond, config.hidden
        self.condition = ConditionEncoder(feature_dim, config)
        self.enc_in = nn.Conv1d(LM_DIM + c, h, 1)
        self.encoder = ResStack(h, config.kernel, config.enc_layers, config.dropout)
        self.enc_out = nn.Conv1d(h, 2 * config.latent, 1)
        self.dec_in = nn.Conv1d(config.latent + c, h, 1)
        self.decoder = ResStack(h, config.kernel, config.dec_layers, config.dropout)
        self.dec_out = nn.Conv1d(h, LM_DIM, 1)
        self.prior = FlowPrior(config)

    @property
    def pitch_encoder(self) -> PitchEncoder | None:
        return self.condition.pitch

    def pad(self, t: int) -> int:
        """Frames to append so the length is a multiple of the latent downsampling."""
        return (-t) % self.config.downsample

    def _prep(self, features, bins, mask):
        pad = self.pad(features.shape[1])
        if pad:
            features = F.pad(features, (0, 0, 0, pad))
            bins = F.pad(bins, (0, pad))
            mask = F.pad(mask, (0, pad))
        return features, bins, mask[:, None, :], pad

    def decode(self, z: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        zu = z.repeat_interleave(self.config.downsample, dim=2) * mask
        h = self.dec_in(torch.cat([zu, g], 1)) * mask
        return self.dec_out(self.decoder(h, mask)) * mask

    def forward(self, features, bins, delta, mask):
        """Training pass. Returns (predicted delta [B, T, 204], KL per valid latent frame)."""
        t = features.shape[1]
        features, bins, m, pad = self._prep(features, bins, mask)
        x = F.pad(delta, (0, 0, 0, pad)).transpose(1, 2) if pad else delta.transpose(1, 2)
        g = self.condition(features, bins, m)
        ds = self.config.downsample
        h = self.encoder(self.enc_in(torch.cat([x * m, g], 1)) * m, m)
        mz = _pool_mask(m, ds)
        mu, logs = self.enc_out(_pool(h, ds)).chunk(2, dim=1)
        logs = logs.clamp(-7.0, 2.0)
        eps = torch.randn_like(mu)
        z = (mu + eps * torch.exp(logs)) * mz
        log_q = (-0.5 * (eps**2 + LOG_2PI) - logs) * mz
        log_p = self.prior.log_prob(z, _pool(g, ds), mz)
        frames = mz.sum().clamp_min(1.0)
        kl = (log_q.sum() - log_p.sum()) / frames
        out = self.decode(z, g, m)
        return out[:, :, :t].transpose(1, 2), kl

    @torch.no_grad()
    def infer(self, features, bins, mask, eps: torch.Tensor) -> torch.Tensor:
        """Sample: z from the flow prior given noise `eps` [B, latent, ceil(T/ds)]."""
        t = features.shape[1]
        features, bins, m, _ = self._prep(features, bins, mask)
        g = self.condition(features, bins, m)
        ds = self.config.downsample
        mz = _pool_mask(m, ds)
        z = self.prior.sample(eps, _pool(g, ds), mz)
        return self.decode(z, g, m)[:, :, :t].transpose(1, 2)


class SyncExpert(nn.Module):
    """Audio window [B, W, D] and mouth window [B, W, 60] -> unit embeddings [B, E] each."""

    def __init__(self, feature_dim: int, config: SyncConfig):
        super().__init__()
        self.config = config
        c = config.audio_channels
        convs: list[nn.Module] = []
        cin = feature_dim
        for _ in range(config.layers):
            convs += [nn.Conv1d(cin, c, 3, padding=1), ChannelNorm(c), nn.GELU()]
            cin = c
        self.audio = nn.Sequential(*convs)
        self.audio_out = nn.Linear(c * config.window, config.embed)
        layers: list[nn.Module] = []
        cin = MOUTH_DIM * config.window
        for _ in range(config.layers):
            layers += [nn.Linear(cin, config.mouth_hidden), nn.GELU()]
            cin = config.mouth_hidden
        layers.append(nn.Linear(cin, config.embed))
        self.mouth = nn.Sequential(*layers)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def embed_audio(self, features: torch.Tensor) -> torch.Tensor:
        h = self.audio(features.transpose(1, 2)).flatten(1)
        return F.normalize(self.audio_out(h), dim=-1)

    def embed_mouth(self, mouth: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mouth(mouth.flatten(1)), dim=-1)

    def similarity(self, features: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of aligned pairs: [B] in [-1, 1]."""
        return (self.embed_audio(features) * self.embed_mouth(mouth)).sum(-1)


def mouth_of(delta: torch.Tensor) -> torch.Tensor:
    """Normalised motion [..., 204] -> the 20 mouth points [..., 60]."""
    return delta.reshape(*delta.shape[:-1], 68, 3)[..., 48:68, :].reshape(*delta.shape[:-1], 60)


class Postnet(nn.Module):
    """Residual refinement of predicted motion [B, T, 204] (+ pitch encoding) -> [B, T, 204].

    With `use_pitch` the pitch encoding comes from the frozen VAE's pitch encoder when the VAE
    has one (paper Fig. 2b) and from the postnet's own encoder otherwise.
    """

    def __init__(self, config: PostnetConfig, pitch_channels: int, own_pitch: PitchEncoder | None):
        super().__init__()
        self.config = config
        self.own_pitch = own_pitch
        extra = pitch_channels if config.use_pitch else 0
        self.inp = nn.Conv1d(LM_DIM + extra, config.hidden, 1)
        self.stack = ResStack(config.hidden, config.kernel, config.layers)
        self.out = nn.Conv1d(config.hidden, LM_DIM, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, delta: torch.Tensor, pitch: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        m = mask[:, None, :]
        x = delta.transpose(1, 2) * m
        if self.config.use_pitch:
            if pitch is None:
                raise ValueError("this postnet needs the pitch encoding")
            x = torch.cat([x, pitch], 1)
        h = self.stack(self.inp(x) * m, m)
        return delta + (self.out(h) * m).transpose(1, 2)


class FrameDiscriminator(nn.Module):
    """Per-frame MLP critic over 204 landmark values (LeakyReLU, dropout)."""

    def __init__(self, config: PostnetConfig):
        super().__init__()
        layers: list[nn.Module] = []
        cin = LM_DIM
        for _ in range(config.disc_layers - 1):
            layers += [
                nn.Linear(cin, config.disc_hidden),
                nn.LeakyReLU(0.2),
                nn.Dropout(config.disc_dropout),
            ]
            cin = config.disc_hidden
        layers.append(nn.Linear(cin, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames).squeeze(-1)
