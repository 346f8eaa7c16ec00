"""An independent lip-sync judge (docs/judge.md).

`talkingface.motion`'s sync expert is also the motion model's sync loss, so it cannot referee
that model fairly (predictions outscore the ground truth). The judge has its own
architecture (conv audio encoder, MLP mouth encoder, MLP pair scorer), its own objective
(offset classification over -K..K frames), its own input (identity-robust mouth geometry
from lm3d alone, no mean face) and its own training corpus (another SynthTalk seed: disjoint
speakers, checked by `check_disjoint`); it is frozen and versioned by its weights' digest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562): `judge.model` imports torch, and the CLI's parser imports
# `judge.commands` for every command, `serve broker` and `job get` included.
_WHERE = {
    "OFFSETS": "config", "PRESETS": "config", "JudgeConfig": "config", "preset": "config",
    "FEATURE_NAMES": "geometry", "mouth_features": "geometry",
    "Judge": "model", "shift_pair": "model",
    "check_disjoint": "provenance", "corpus_identity": "provenance",
}  # fmt: skip

if TYPE_CHECKING:
    from talkingface.judge.config import OFFSETS, PRESETS, JudgeConfig, preset
    from talkingface.judge.geometry import FEATURE_NAMES, mouth_features
    from talkingface.judge.model import Judge, shift_pair
    from talkingface.judge.provenance import check_disjoint, corpus_identity


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


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
