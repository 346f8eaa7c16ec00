"""The landmark contract `lm3d` (BRIEF §4), defined once for the whole fleet.

An lm3d sequence is float32 `[T, 68, 3]` at 25 fps, iBUG-68 order, in the canonical head frame
(head pose removed):

- Origin: the centre of the head (the point the head rotates about), roughly midway between
  the ears at eye-socket height minus a little.
- Axes (right-handed): +x toward the viewer's right when the face looks at the camera (the
  subject's left), +y up, +z out of the face toward the viewer.
- Unit: 1 = 10 cm. A neutral adult face is about 1.4 units wide at the jaw; the nose tip sits
  near z = +1.15; the eyes near y = +0.25, z = +0.85; the chin near y = -1.05.

Head pose maps canonical points to camera space as `p_cam = R @ p + t` (see
`talkingface.data.synthtalk.camera`), so `lm3d` never contains pose.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 68
FPS = 25
UNIT_METRES = 0.1  # 1 canonical unit = 10 cm

JAW = np.arange(0, 17)
RIGHT_BROW = np.arange(17, 22)  # the subject's right: the viewer's left (x < 0)
LEFT_BROW = np.arange(22, 27)
NOSE_BRIDGE = np.arange(27, 31)
NOSE_BOTTOM = np.arange(31, 36)
RIGHT_EYE = np.arange(36, 42)  # 36 outer corner, 37-38 upper lid, 39 inner corner, 40-41 lower
LEFT_EYE = np.arange(42, 48)  # 42 inner corner, 43-44 upper lid, 45 outer corner, 46-47 lower
OUTER_LIPS = np.arange(48, 60)  # 48 right corner, 51 upper middle, 54 left corner, 57 lower
INNER_LIPS = np.arange(60, 68)  # 60 right corner, 61-63 upper, 64 left corner, 65-67 lower
MOUTH = np.arange(48, 68)

# Pairs facing each other across the mouth and eye openings (upper index, lower index).
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
RIGHT_LID_PAIRS = ((37, 41), (38, 40))
LEFT_LID_PAIRS = ((43, 47), (44, 46))


def mouth_opening(lm3d: np.ndarray) -> np.ndarray:
    """Mean vertical gap between the inner lips, canonical units; shape [...]."""
    lm = np.asarray(lm3d)
    gaps = [lm[..., up, 1] - lm[..., low, 1] for up, low in INNER_LIP_PAIRS]
    return np.mean(gaps, axis=0)


def eye_opening(lm3d: np.ndarray) -> np.ndarray:
    """Mean lid gap of both eyes, canonical units; shape [...]."""
    lm = np.asarray(lm3d)
    gaps = [lm[..., up, 1] - lm[..., low, 1] for up, low in (*RIGHT_LID_PAIRS, *LEFT_LID_PAIRS)]
    return np.mean(gaps, axis=0)


def check_lm3d(array: np.ndarray) -> np.ndarray:
    """Validate an lm3d sequence; returns it as float32 [T, 68, 3]."""
    a = np.asarray(array)
    if a.ndim != 3 or a.shape[1:] != (NUM_LANDMARKS, 3):
        raise ValueError(f"lm3d must have shape [T, 68, 3], got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError("lm3d contains NaN or infinite values")
    return a.astype(np.float32, copy=False)
