"""An independent lip-sync judge (docs/judge.md).

`talkingface.motion`'s sync expert is also the motion model's sync loss, so it cannot referee
that model fairly (predictions outscore the ground truth). The judge has its own
architecture (conv audio encoder, MLP mouth encoder, MLP pair scorer), its own objective
(offset classification over -K..K frames), its own input (identity-robust mouth geometry
from lm3d alone, no mean face) and its own training corpus (another SynthTalk seed: disjoint
speakers, checked by `check_disjoint`); it is frozen and versioned by its weights' digest.
"""

from __future__ import annotations

from talkingface.judge.config import OFFSETS, PRESETS, JudgeConfig, preset
from talkingface.judge.geometry import FEATURE_NAMES, mouth_features
from talkingface.judge.model import Judge, shift_pair
from talkingface.judge.provenance import check_disjoint, corpus_identity

__all__ = [
    "FEATURE_NAMES",
    "OFFSETS",
    "PRESETS",
    "Judge",
    "JudgeConfig",
    "check_disjoint",
    "corpus_identity",
    "mouth_features",
    "preset",
    "shift_pair",
]
