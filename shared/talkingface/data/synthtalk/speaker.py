"""Synthetic SynthTalk speakers: a face identity plus a speaking style, and their landmarks.

A speaker is drawn from a numpy Generator with these distributions (part of the corpus
format's documentation: every speaker record stores the drawn values):

- ``identity``: 12 coefficients, one per `face.IDENTITY_TRAITS` entry, each i.i.d.
  N(0, 1) clipped to [-2.5, 2.5] (one unit = one adult standard deviation of that trait).
- ``articulation_gain``: exp(N(0, 0.15²) clipped to ±0.3), median 1.0; multiplies the five
  mouth controls (jaw_open, lip_spread, lip_round, lip_close, upper_lip_raise), never the
  eye or brow controls. Because it scales jaw_open and lip_close together, a closed
  bilabial stays closed.
- ``asymmetry``: N(0, 0.08²). The mouth's articulation displacement (x and y, not z) of a
  landmark at neutral x-position x is scaled by 1 + asymmetry · clip(x / 0.25, -1, 1):
  with asymmetry > 0 the subject's left corner (+x) moves more than the right one. Facing
  inner-lip points share x, so the inner-lip gap scales uniformly and closures survive.
- ``blink_rate``: blinks per minute, uniform on [10, 25] (used by `articulation.py`).
- ``brow_activity``: uniform on [0.3, 1.0]; the probability that a pitch accent raises the
  brows (used by `articulation.py`).

Draw order (for reproducibility): identity (12 normals), gain, asymmetry, blink_rate,
brow_activity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkingface import lm3d as L
from talkingface.data.synthtalk import face

IDENTITY_CLIP = 2.5
GAIN_SIGMA = 0.15
ASYMMETRY_SIGMA = 0.08
BLINK_RATE_RANGE = (10.0, 25.0)
BROW_ACTIVITY_RANGE = (0.3, 1.0)
MOUTH_HALF_WIDTH = 0.25  # neutral mouth-corner |x| in canonical units (face.MEAN_SHAPE)

MOUTH_CONTROLS = ("jaw_open", "lip_spread", "lip_round", "lip_close", "upper_lip_raise")
_MOUTH_COLUMNS = np.array([face.ARTICULATION_CONTROLS.index(c) for c in MOUTH_CONTROLS])
_BLINK_COLUMNS = np.array(
    [face.ARTICULATION_CONTROLS.index(c) for c in ("blink_right", "blink_left")]
)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: who they look like and how they move."""

    speaker_id: str
    identity: np.ndarray  # [12] float32, face.IDENTITY_TRAITS order
    articulation_gain: float
    asymmetry: float
    blink_rate: float  # blinks per minute
    brow_activity: float  # probability a pitch accent raises the brows

    def neutral_landmarks(self) -> np.ndarray:
        """The speaker's resting face (all articulation zero), [68, 3] float32."""
        return face.landmarks(self.identity, np.zeros(len(face.ARTICULATION_CONTROLS)))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record of the drawn values."""
        return {
            "speaker_id": self.speaker_id,
            "identity": [float(v) for v in self.identity],
            "articulation_gain": self.articulation_gain,
            "asymmetry": self.asymmetry,
            "blink_rate": self.blink_rate,
            "brow_activity": self.brow_activity,
        }


def sample_speaker(rng: np.random.Generator, speaker_id: str) -> Speaker:
    """Draw a speaker from the distributions in the module docstring."""
    identity = np.clip(
        rng.standard_normal(len(face.IDENTITY_TRAITS)), -IDENTITY_CLIP, IDENTITY_CLIP
    )
    # Clipped at about ±2 SD: beyond that the jaw opens further than people do in speech.
    gain = float(np.exp(np.clip(rng.normal(0.0, GAIN_SIGMA), -0.3, 0.3)))
    asymmetry = float(rng.normal(0.0, ASYMMETRY_SIGMA))
    blink_rate = float(rng.uniform(*BLINK_RATE_RANGE))
    brow_activity = float(rng.uniform(*BROW_ACTIVITY_RANGE))
    return Speaker(
        speaker_id=speaker_id,
        identity=identity.astype(np.float32),
        articulation_gain=gain,
        asymmetry=asymmetry,
        blink_rate=blink_rate,
        brow_activity=brow_activity,
    )


def _asymmetry_scale(asymmetry: float) -> np.ndarray:
    """Per-landmark, per-axis factor on the articulation displacement, [68, 3]."""
    scale = np.ones((L.NUM_LANDMARKS, 3), np.float32)
    x = face.MEAN_SHAPE[L.MOUTH, 0]
    scale[L.MOUTH, :2] = (1.0 + asymmetry * np.clip(x / MOUTH_HALF_WIDTH, -1.0, 1.0))[:, None]
    return scale


def speaker_landmarks(speaker: Speaker, articulation: np.ndarray) -> np.ndarray:
    """Landmarks of `speaker` for per-frame controls [T, 8] -> [T, 68, 3] float32.

    Applies the speaker's gain to the mouth controls, then face.landmarks, then the
    left/right asymmetry to the mouth's displacement from the speaker's neutral face.
    """
    art = np.array(articulation, np.float32, copy=True)
    if art.ndim != 2 or art.shape[1] != len(face.ARTICULATION_CONTROLS):
        raise ValueError(f"articulation must be [T, 8], got {list(art.shape)}")
    art[:, _MOUTH_COLUMNS] *= speaker.articulation_gain
    # The blink basis closes the mean face's lid gap; scale it to this speaker's eyes so a
    # full blink closes them whatever their size.
    art[:, _BLINK_COLUMNS] *= float(
        L.eye_opening(speaker.neutral_landmarks()) / L.eye_opening(face.MEAN_SHAPE)
    )
    lm = face.landmarks(speaker.identity, art)
    if speaker.asymmetry != 0.0:
        neutral = speaker.neutral_landmarks()
        lm = neutral + (lm - neutral) * _asymmetry_scale(speaker.asymmetry)
    return lm.astype(np.float32, copy=False)
