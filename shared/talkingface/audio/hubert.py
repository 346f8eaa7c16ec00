"""HuBERT front end: transformers HubertModel last hidden state at 25 fps, loaded offline.

The model comes only from a local checkpoint directory (`save_pretrained` layout:
config.json + model.safetensors or pytorch_model.bin); loading uses local_files_only=True
with HF_HUB_OFFLINE=1 set, so it never touches the network. A missing or unloadable
directory is TalkingFaceError("INVALID_REQUEST").

Input normalisation follows the checkpoint's preprocessor_config.json `do_normalize` when
present, else transformers' convention (normalise when feat_extract_norm == "layer", as
hubert-large does): zero mean, unit variance over the whole utterance, computed once so
that windowed and single-pass runs see the same input.

Timing: with the conv stack's total stride S (320) and receptive field R (400), 50 Hz
frame j covers samples [j S, j S + R), centre j S + R/2. 25 fps frame i (centre
(i + 0.5) * 640) is linearly interpolated between the two 50 Hz frames around its centre,
position ((i + 0.5) * 640 - R/2) / S = 2 i + 0.375, clamped to the ends.

Long audio runs in windows of `window_seconds` starting every window - overlap seconds
(starts on multiples of S, the last window ending at the audio's end), so memory per
window is constant; in each overlap the two windows' 50 Hz outputs are cross-faded
linearly. Audio shorter than one window runs in a single pass.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from talkingface.audio.decode import SAMPLE_RATE
from talkingface.errors import TalkingFaceError

HOP = 640  # samples per 25 fps frame


def _invalid(message: str) -> TalkingFaceError:
    return TalkingFaceError("INVALID_REQUEST", message)


def _load(checkpoint_dir: Path):  # -> transformers.HubertModel
    if not checkpoint_dir.is_dir():
        raise _invalid(f"HuBERT checkpoint directory {checkpoint_dir} does not exist")
    if not (checkpoint_dir / "config.json").is_file():
        raise _invalid(f"HuBERT checkpoint {checkpoint_dir} has no config.json")
    # Set before transformers/huggingface_hub read it, and kept: this process never
    # downloads models at run time.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import HubertModel

    try:
        model = HubertModel.from_pretrained(str(checkpoint_dir), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError variously
        raise _invalid(f"cannot load HuBERT checkpoint {checkpoint_dir}: {exc}") from None
    return model


def _do_normalize(checkpoint_dir: Path, feat_extract_norm: str) -> bool:
    config = checkpoint_dir / "preprocessor_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text()).get("do_normalize", True))
        except (OSError, ValueError):
            raise _invalid(f"unreadable {config}") from None
    return feat_extract_norm == "layer"


class HubertFrontEnd:
    """HuBERT hidden states at 25 fps from a local checkpoint (see the module docstring)."""

    name = "hubert"

    def __init__(
        self,
        checkpoint_dir: str | Path,
        device: str = "cpu",
        window_seconds: float = 20.0,
        overlap_seconds: float = 1.0,
    ) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        model = _load(checkpoint_dir)
        normalize = _do_normalize(checkpoint_dir, model.config.feat_extract_norm)
        self._configure(model, normalize, device, window_seconds, overlap_seconds)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        device: str = "cpu",
        window_seconds: float = 20.0,
        overlap_seconds: float = 1.0,
    ) -> HubertFrontEnd:
        """Wrap an in-memory HubertModel (benchmarks; no checkpoint on disk)."""
        front_end = cls.__new__(cls)
        normalize = model.config.feat_extract_norm == "layer"
        front_end._configure(model, normalize, device, window_seconds, overlap_seconds)
        return front_end

    def _configure(
        self,
        model: torch.nn.Module,
        normalize: bool,
        device: str,
        window_seconds: float,
        overlap_seconds: float,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        config = self.model.config
        self.dim = int(config.hidden_size)
        self.stride = math.prod(config.conv_stride)
        # Receptive field of the conv stack: each layer widens it by (k-1) x input stride.
        field, jump = 1, 1
        for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
            field += (kernel - 1) * jump
            jump *= stride
        self.field = field
        self.normalize = normalize
        if overlap_seconds < 0 or window_seconds <= 2 * overlap_seconds:
            raise _invalid("HuBERT window must be longer than twice the overlap")
        self.window = max(
            self.field, int(window_seconds * SAMPLE_RATE) // self.stride * self.stride
        )
        self.overlap = int(overlap_seconds * SAMPLE_RATE) // self.stride * self.stride

    def _frames50(self, audio: np.ndarray) -> int:
        return (audio.shape[0] - self.field) // self.stride + 1

    @torch.no_grad()
    def _run(self, audio: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None].to(self.device)
        return self.model(x).last_hidden_state[0].float().cpu().numpy()

    def hidden50(self, audio16k: np.ndarray) -> np.ndarray:
        """The 50 Hz last hidden state [L, dim], windowed as the module docstring says."""
        audio = np.asarray(audio16k, np.float32).reshape(-1)
        if audio.shape[0] < self.field:
            audio = np.concatenate([audio, np.zeros(self.field - audio.shape[0], np.float32)])
        if self.normalize:
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        if audio.shape[0] <= self.window:
            return self._run(audio)
        total = self._frames50(audio)
        out = np.zeros((total, self.dim), np.float64)
        weight = np.zeros(total, np.float64)
        hop = self.window - self.overlap
        starts = list(range(0, audio.shape[0] - self.window, hop))
        last = (audio.shape[0] - self.window) // self.stride * self.stride
        starts.append(last)
        ramp = max(1, self.overlap // self.stride)
        for k, start in enumerate(starts):
            end = audio.shape[0] if k == len(starts) - 1 else start + self.window
            hidden = self._run(audio[start:end])
            first = start // self.stride
            count = min(hidden.shape[0], total - first)
            # Linear ramps at inner window edges: consecutive windows cross-fade over
            # the overlap, and the padding-affected ends of each window weigh little.
            w = np.ones(count)
            j = np.arange(count)
            if k > 0:
                w = np.minimum(w, (j + 1) / (ramp + 1))
            if k < len(starts) - 1:
                w = np.minimum(w, (count - j) / (ramp + 1))
            out[first : first + count] += w[:, None] * hidden[:count]
            weight[first : first + count] += w
        return (out / np.maximum(weight, 1e-12)[:, None]).astype(np.float32)

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        """[T, dim] float32, T = frame_count(len(audio16k)), 25 fps as documented above."""
        n = int(np.asarray(audio16k).reshape(-1).shape[0])
        frames = (n + HOP // 2) // HOP
        if frames == 0:
            return np.zeros((0, self.dim), np.float32)
        hidden = self.hidden50(audio16k)
        pos = ((np.arange(frames) + 0.5) * HOP - self.field / 2) / self.stride
        pos = np.clip(pos, 0.0, hidden.shape[0] - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, hidden.shape[0] - 1)
        frac = (pos - lo)[:, None].astype(np.float32)
        return ((1 - frac) * hidden[lo] + frac * hidden[hi]).astype(np.float32)
