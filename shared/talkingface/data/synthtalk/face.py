"""The SynthTalk parametric face: 68 landmarks = mean shape + identity basis + articulation.

    landmarks = MEAN_SHAPE + IDENTITY_BASIS · identity + ARTICULATION_BASIS · articulation

all in the canonical head frame of `talkingface.lm3d` (1 unit = 10 cm). Identity coefficients
are drawn per synthetic speaker from N(0, 1) (each basis vector is scaled so one unit is one
standard deviation of that trait in adults); articulation coefficients are per frame, driven
by speech (`articulation.py`). Both bases are linear, so a face is a fixed affine function of
its coefficients.
"""

from __future__ import annotations

import numpy as np

from talkingface import lm3d as L


def _mean_shape() -> np.ndarray:
    p = np.zeros((68, 3))
    # Jaw 0-16: a U from the viewer's left temple-line down round the chin (8) and back up.
    phi = np.linspace(-1.0, 1.0, 17) * np.deg2rad(88)
    p[L.JAW, 0] = 0.70 * np.sin(phi) * (1.0 - 0.12 * np.cos(phi) ** 8)
    p[L.JAW, 1] = 0.12 - 1.17 * np.cos(phi) ** 1.3
    p[L.JAW, 2] = 0.22 + 0.58 * np.cos(phi) ** 0.8
    # Brows 17-21 (viewer's left) and 22-26: gentle arches.
    s = np.linspace(0.0, 1.0, 5)
    p[L.RIGHT_BROW, 0] = -0.62 + 0.50 * s
    p[L.RIGHT_BROW, 1] = 0.44 + 0.08 * np.sin(np.pi * (0.25 + 0.6 * s))
    p[L.RIGHT_BROW, 2] = 0.80 + 0.16 * s
    p[L.LEFT_BROW] = p[L.RIGHT_BROW][::-1] * [-1, 1, 1]
    # Nose bridge 27-30 down to the tip; nose bottom 31-35 across the nostrils.
    p[L.NOSE_BRIDGE] = np.c_[np.zeros(4), np.linspace(0.30, -0.03, 4), np.linspace(0.96, 1.17, 4)]
    p[L.NOSE_BOTTOM] = np.c_[
        np.linspace(-0.17, 0.17, 5),
        [-0.10, -0.12, -0.135, -0.12, -0.10],
        [0.98, 1.02, 1.05, 1.02, 0.98],
    ]
    # Eyes: 36 outer, 37-38 upper lid, 39 inner, 40-41 lower lid (viewer's left eye).
    ex = np.array([-0.55, -0.46, -0.27, -0.17, -0.27, -0.46])
    ey = 0.24 + np.array([0.0, 0.055, 0.055, 0.0, -0.045, -0.045])
    ez = np.array([0.78, 0.86, 0.87, 0.84, 0.86, 0.85])
    p[L.RIGHT_EYE] = np.c_[ex, ey, ez]
    # Mirror: 42 inner, 43-44 upper, 45 outer, 46-47 lower.
    p[L.LEFT_EYE] = p[L.RIGHT_EYE][[3, 2, 1, 0, 5, 4]] * [-1, 1, 1]
    # Outer lips 48-59 clockwise from the viewer's-left corner; inner lips 60-67.
    ox = np.array([-0.25, -0.16, -0.06, 0.0, 0.06, 0.16, 0.25, 0.17, 0.08, 0.0, -0.08, -0.17])
    oy = -0.42 + np.array(
        [0.0, 0.06, 0.085, 0.07, 0.085, 0.06, 0.0, -0.07, -0.10, -0.105, -0.10, -0.07]
    )
    oz = (
        0.97
        - 0.08 * (np.abs(ox) / 0.25) ** 2
        + np.array([0, 0, 0, 0, 0, 0, 0, -0.01, -0.01, -0.01, -0.01, -0.01])
    )
    p[L.OUTER_LIPS] = np.c_[ox, oy, oz]
    ix = np.array([-0.20, -0.08, 0.0, 0.08, 0.20, 0.08, 0.0, -0.08])
    iy = np.full(8, -0.425)  # lips closed at rest: upper and lower inner lips meet
    iz = 0.95 - 0.08 * (np.abs(ix) / 0.25) ** 2
    p[L.INNER_LIPS] = np.c_[ix, iy, iz]
    return p


MEAN_SHAPE = _mean_shape().astype(np.float32)

# --- identity: named traits, one unit = one standard deviation -----------------------------

IDENTITY_TRAITS = (
    "face_width",  # whole face wider/narrower (x), 4%
    "face_length",  # lower face longer (chin lower), 4%
    "jaw_width",  # jaw and chin broader at the bottom
    "eye_spacing",  # eyes further apart
    "eye_size",  # eye openings taller and wider
    "brow_height",  # brows higher above the eyes
    "nose_length",  # nose tip lower and further out
    "nose_width",  # nostrils wider
    "mouth_width",  # lip corners further apart
    "lip_thickness",  # outer lips further from the inner lips
    "mouth_height",  # mouth higher or lower on the face
    "face_depth",  # central features protrude more
)


def _identity_basis() -> np.ndarray:
    m = MEAN_SHAPE.astype(np.float64)
    b = np.zeros((len(IDENTITY_TRAITS), 68, 3))
    t = {name: i for i, name in enumerate(IDENTITY_TRAITS)}
    b[t["face_width"], :, 0] = 0.04 * m[:, 0]
    lower = np.clip(-m[:, 1] / 1.05, 0, 1)  # 0 at eye level, 1 at the chin
    b[t["face_length"], :, 1] = -0.045 * lower
    b[t["jaw_width"], L.JAW, 0] = 0.05 * m[L.JAW, 0] * lower[L.JAW]
    eyes = np.r_[L.RIGHT_EYE, L.LEFT_EYE]
    b[t["eye_spacing"], eyes, 0] = 0.025 * np.sign(m[eyes, 0])
    centre_r, centre_l = m[L.RIGHT_EYE].mean(0), m[L.LEFT_EYE].mean(0)
    b[t["eye_size"], L.RIGHT_EYE] = 0.10 * (m[L.RIGHT_EYE] - centre_r) * [1, 1, 0]
    b[t["eye_size"], L.LEFT_EYE] = 0.10 * (m[L.LEFT_EYE] - centre_l) * [1, 1, 0]
    brows = np.r_[L.RIGHT_BROW, L.LEFT_BROW]
    b[t["brow_height"], brows, 1] = 0.025
    nose = np.r_[L.NOSE_BRIDGE, L.NOSE_BOTTOM]
    along = np.clip((0.30 - m[nose, 1]) / 0.45, 0, 1)
    b[t["nose_length"], nose, 1] = -0.03 * along
    b[t["nose_length"], nose, 2] = 0.03 * along
    b[t["nose_width"], L.NOSE_BOTTOM, 0] = 0.12 * m[L.NOSE_BOTTOM, 0]
    b[t["mouth_width"], L.MOUTH, 0] = 0.08 * m[L.MOUTH, 0]
    lip_centre = m[L.INNER_LIPS].mean(0)
    b[t["lip_thickness"], L.OUTER_LIPS, 1] = 0.15 * (m[L.OUTER_LIPS, 1] - lip_centre[1])
    b[t["mouth_height"], L.MOUTH, 1] = 0.025
    centre = np.exp(-(m[:, 0] ** 2) / 0.15)
    b[t["face_depth"], :, 2] = 0.03 * centre * (m[:, 2] > 0.7)
    return b


IDENTITY_BASIS = _identity_basis().astype(np.float32)

# --- articulation: per-frame controls --------------------------------------------------------

ARTICULATION_CONTROLS = (
    "jaw_open",  # 1 = jaw rotated ~20 degrees open (a wide "a")
    "lip_spread",  # 1 = corners pulled ~12% wider ("ee")
    "lip_round",  # 1 = corners drawn in and lips pushed forward ("oo")
    "lip_close",  # raises the lower lip by what jaw_open=1 lowers it: closure needs
    # lip_close = jaw_open (+ upper-lip raise); articulation.py converts a closure fraction
    "upper_lip_raise",  # 1 = upper lip lifted off the teeth ("f v" reverse, "s" teeth show)
    "blink_right",  # 1 = the viewer's-left eye closed
    "blink_left",  # 1 = the viewer's-right eye closed
    "brow_raise",  # 1 = both brows up ~6 mm
)
JAW_HINGE = np.array([0.0, 0.10, 0.05])  # the temporomandibular axis runs along x here
JAW_OPEN_RADIANS = np.deg2rad(20.0)


def _articulation_basis() -> np.ndarray:
    m = MEAN_SHAPE.astype(np.float64)
    c = {name: i for i, name in enumerate(ARTICULATION_CONTROLS)}
    b = np.zeros((len(ARTICULATION_CONTROLS), 68, 3))
    # Jaw: lower lip, lower inner lip and lower jaw rotate about the hinge (linearised).
    lower_lip = np.array([54, 55, 56, 57, 58, 59, 48, 64, 65, 66, 67, 60])
    weight = np.zeros(68)
    weight[L.JAW] = np.clip((0.10 - m[L.JAW, 1]) / 0.6, 0, 1)
    weight[lower_lip] = 1.0
    weight[[48, 54, 60, 64]] = 0.5  # the corners split the difference
    rel = m - JAW_HINGE
    b[c["jaw_open"], :, 1] = -rel[:, 2] * JAW_OPEN_RADIANS * weight
    b[c["jaw_open"], :, 2] = rel[:, 1] * JAW_OPEN_RADIANS * weight
    # Spread: corners out and slightly back, the rest of the lips follow by x position.
    lips = L.MOUTH
    b[c["lip_spread"], lips, 0] = 0.12 * m[lips, 0]
    b[c["lip_spread"], lips, 2] = -0.02 * (np.abs(m[lips, 0]) / 0.25)
    # Round: corners in, lips forward, the mouth a little taller.
    b[c["lip_round"], lips, 0] = -0.28 * m[lips, 0]
    b[c["lip_round"], lips, 2] = 0.06 * (1 - np.abs(m[lips, 0]) / 0.3)
    centre_y = m[L.INNER_LIPS, 1].mean()
    b[c["lip_round"], L.OUTER_LIPS, 1] = 0.25 * (m[L.OUTER_LIPS, 1] - centre_y)
    # Close: the lower lip rises back against the jaw's pull (cancels jaw_open at the lips).
    b[c["lip_close"], lower_lip] = -b[c["jaw_open"], lower_lip]
    b[c["lip_close"], [48, 54, 60, 64]] = -b[c["jaw_open"], [48, 54, 60, 64]]
    # Upper lip raise: the upper lip (outer and inner) lifts.
    upper = np.array([49, 50, 51, 52, 53, 61, 62, 63])
    b[c["upper_lip_raise"], upper, 1] = 0.035
    # Blinks: the upper lids come down to the lower lids' height, the lower lids rise a little.
    for name, pairs in (("blink_right", L.RIGHT_LID_PAIRS), ("blink_left", L.LEFT_LID_PAIRS)):
        for upper_i, lower_i in pairs:
            gap = m[upper_i, 1] - m[lower_i, 1]
            b[c[name], upper_i, 1] = -0.8 * gap
            b[c[name], lower_i, 1] = 0.2 * gap
    brows = np.r_[L.RIGHT_BROW, L.LEFT_BROW]
    b[c["brow_raise"], brows, 1] = 0.06
    return b


ARTICULATION_BASIS = _articulation_basis().astype(np.float32)


def landmarks(identity: np.ndarray, articulation: np.ndarray) -> np.ndarray:
    """Landmarks for identity [I] (or [..., I]) and articulation [..., A] -> [..., 68, 3]."""
    identity = np.asarray(identity, np.float32)
    articulation = np.asarray(articulation, np.float32)
    neutral = MEAN_SHAPE + np.tensordot(identity, IDENTITY_BASIS, axes=(-1, 0))
    motion = np.tensordot(articulation, ARTICULATION_BASIS, axes=(-1, 0))
    return (neutral + motion).astype(np.float32)
