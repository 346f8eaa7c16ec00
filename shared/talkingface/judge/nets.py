"""The judge's network: audio window and mouth window -> a pair score (not a cosine).

Deliberately unlike the sync expert (`talkingface.motion.nets.SyncExpert`: unit embeddings
compared by cosine, trained with InfoNCE against other windows):

- audio encoder: a 1-D conv stack over the audio window, flattened (the order of frames
  inside the window matters for timing) and projected to an embedding;
- mouth encoder: an MLP over the mouth-geometry window and its frame-to-frame velocities;
- pair score: an MLP over [a, m, a * m] -> one unnormalised logit. Trained as a classifier
  over time offsets (`talkingface.judge.train`), the logits of one audio window against its
  2K + 1 shifted mouth windows form a softmax over offsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from talkingface.judge.config import JudgeConfig


class AudioEncoder(nn.Module):
    def __init__(self, feature_dim: int, config: JudgeConfig):
        super().__init__()
        c = config.audio_channels
        convs = [nn.Conv1d(feature_dim, c, 3, padding=1)]
        convs += [nn.Conv1d(c, c, 3, padding=1) for _ in range(config.audio_layers - 1)]
        self.convs = nn.ModuleList(convs)
        self.drop = nn.Dropout(config.dropout)
        self.proj = nn.Linear(c * config.audio_window, config.embed)
        self.norm = nn.LayerNorm(config.embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, W, D] -> [N, E]."""
        h = self.drop(x).transpose(1, 2)
        for conv in self.convs:
            h = F.gelu(conv(h))
        return self.norm(self.proj(h.flatten(1)))


class MouthEncoder(nn.Module):
    def __init__(self, mouth_dim: int, config: JudgeConfig):
        super().__init__()
        w, h = config.mouth_window, config.mouth_hidden
        self.net = nn.Sequential(
            nn.Linear(mouth_dim * (2 * w - 1), h),
            nn.GELU(),
            nn.Linear(h, h),
            nn.GELU(),
            nn.Linear(h, config.embed),
        )
        self.norm = nn.LayerNorm(config.embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, W, F] -> [N, E]."""
        velocity = x[:, 1:] - x[:, :-1]
        return self.norm(self.net(torch.cat([x.flatten(1), velocity.flatten(1)], dim=1)))


class JudgeNet(nn.Module):
    def __init__(self, feature_dim: int, mouth_dim: int, config: JudgeConfig):
        super().__init__()
        self.config = config
        self.audio = AudioEncoder(feature_dim, config)
        self.mouth = MouthEncoder(mouth_dim, config)
        e, h = config.embed, config.score_hidden
        self.score = nn.Sequential(
            nn.Linear(3 * e, h),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(h, h),
            nn.GELU(),
            nn.Linear(h, 1),
        )

    def pair(self, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Embeddings [..., E] x [..., E] (broadcast) -> logits [...]."""
        a, m = torch.broadcast_tensors(a, m)
        return self.score(torch.cat([a, m, a * m], dim=-1)).squeeze(-1)

    def forward(self, audio: torch.Tensor, mouths: torch.Tensor) -> torch.Tensor:
        """Audio windows [B, Wa, D] and candidate mouth windows [B, C, Wm, F] -> [B, C]."""
        b, c = mouths.shape[:2]
        a = self.audio(audio)
        m = self.mouth(mouths.flatten(0, 1)).view(b, c, -1)
        return self.pair(a[:, None, :], m)
