"""How a synthetic person looks: seeded colours and hair style, procedural textures, backdrop.

`sample_appearance(rng)` draws an `Appearance`; `Textures` turns its seed into the noise
tables the shader samples (3-D noise in rest-space head coordinates, so the skin texture
sticks to the face; a 2-D strand table for hair and irises); `background_plate` paints the
static backdrop. Colours are sRGB in [0, 1] and are albedos: the shader multiplies them by
the lighting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

Colour = tuple[float, float, float]

# Skin tones light to dark; a speaker's tone is a random point along this line.
SKIN_TONES = np.array(
    [
        [0.96, 0.80, 0.69],
        [0.90, 0.71, 0.59],
        [0.80, 0.59, 0.45],
        [0.67, 0.47, 0.33],
        [0.50, 0.34, 0.23],
        [0.34, 0.22, 0.15],
    ]
)
HAIR_COLOURS = np.array(
    [
        [0.07, 0.06, 0.06],  # black
        [0.19, 0.12, 0.08],  # dark brown
        [0.35, 0.23, 0.13],  # brown
        [0.52, 0.24, 0.11],  # auburn
        [0.76, 0.60, 0.36],  # blond
        [0.60, 0.58, 0.56],  # grey
    ]
)
HAIR_WEIGHTS = np.array([0.30, 0.25, 0.18, 0.08, 0.12, 0.07])
IRIS_COLOURS = np.array(
    [
        [0.33, 0.19, 0.09],  # brown
        [0.18, 0.10, 0.06],  # dark brown
        [0.45, 0.36, 0.16],  # hazel
        [0.30, 0.43, 0.25],  # green
        [0.30, 0.46, 0.64],  # blue
        [0.46, 0.51, 0.56],  # grey
    ]
)
SCLERA: Colour = (0.93, 0.90, 0.86)
MOUTH: Colour = (0.20, 0.05, 0.06)  # the dark mouth cavity
TONGUE: Colour = (0.58, 0.25, 0.26)
TEETH: Colour = (0.92, 0.89, 0.80)
LASHES: Colour = (0.07, 0.05, 0.05)

# Rest-space box the 3-D noise tables cover (canonical units): head, ears, upper neck.
NOISE_LO = np.array([-1.4, -2.3, -1.4])
NOISE_HI = np.array([1.4, 1.6, 1.4])


@dataclass(frozen=True)
class Appearance:
    """One synthetic person's looks; everything random about the picture derives from it."""

    seed: int  # textures and background pattern
    skin: Colour
    neck: Colour  # slightly different from the face, as in most real footage
    lip: Colour
    hair: Colour
    brow: Colour
    iris: Colour
    hair_thickness: float  # hair volume over the scalp, canonical units (0.4-2 cm)
    hairline: float  # front hairline height as a unit-sphere y (higher = more forehead)
    hair_side: float  # hairline above the ears, unit-sphere y
    hair_back: float  # nape hairline, unit-sphere y (lower = longer at the back)
    background: tuple[Colour, Colour]  # the backdrop's two colours

    def to_json(self) -> dict:
        """A JSON-ready dict (floats rounded) for manifests."""

        def rnd(v):
            return [rnd(x) for x in v] if isinstance(v, list | tuple) else round(float(v), 4)

        return {k: v if k == "seed" else rnd(v) for k, v in asdict(self).items()}


def _colour(c: np.ndarray) -> Colour:
    r, g, b = np.clip(c, 0.0, 1.0)
    return (float(r), float(g), float(b))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw a person's looks (uses a fixed number of draws from `rng`)."""
    seed = int(rng.integers(2**31 - 1))
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = int(min(tone, len(SKIN_TONES) - 2))
    skin = SKIN_TONES[lo] + (tone - lo) * (SKIN_TONES[lo + 1] - SKIN_TONES[lo])
    skin = skin * rng.uniform(0.96, 1.04, 3)
    neck = skin * rng.uniform(0.90, 0.97) * [1.0, 0.98, 0.98]
    # Lips: the skin with green and blue pulled down (redder) and a little darker.
    lip = skin * [1.0, 0.66, 0.70] * rng.uniform(0.82, 0.95) + [0.05, 0.0, 0.01]
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_WEIGHTS)] * rng.uniform(0.85, 1.15)
    brow = hair * 0.7 if hair.mean() > 0.3 else hair
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))] * rng.uniform(0.85, 1.15)
    hue = rng.uniform(0, 1)
    base = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)])
    back1 = 0.55 + 0.12 * base * rng.uniform(0.3, 1.0) + rng.uniform(-0.2, 0.15)
    back2 = back1 * rng.uniform(0.6, 0.85) + 0.05 * np.roll(base, 1)
    return Appearance(
        seed=seed,
        skin=_colour(skin),
        neck=_colour(neck),
        lip=_colour(lip),
        hair=_colour(hair),
        brow=_colour(brow),
        iris=_colour(iris),
        hair_thickness=float(rng.uniform(0.04, 0.15)),
        hairline=float(rng.uniform(0.66, 0.8)),
        hair_side=float(rng.uniform(0.26, 0.38)),
        hair_back=float(rng.uniform(-0.55, -0.3)),
        background=(_colour(back1), _colour(back2)),
    )


def _unit_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit std (wraps around)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((field - field.mean()) / field.std()).astype(np.float32)


class Textures:
    """Noise tables for one appearance, sampled with trilinear / bilinear lookups (numpy:
    the shader works on a few thousand pixels at a time, where numpy's low per-call cost
    beats torch on the CPU)."""

    def __init__(self, appearance: Appearance):
        rng = np.random.default_rng(appearance.seed)
        shape = (72, 104, 72)  # z, y, x voxels: ~0.04 units, ~3 px at 256²
        # Channels: large blotches, medium mottling, fine grain.
        volume = np.stack([_unit_noise(rng, shape, s) for s in (6.0, 2.0, 0.7)], -1)
        self._volume = volume.reshape(-1, 3)
        self._shape = np.array(shape[::-1])  # x, y, z sizes
        # Strands: fine across (azimuth), long along the polar angle.
        strands = np.stack([_unit_noise(rng, (96, 512), (6.0, 0.8)) for _ in range(2)], -1)
        # Both channels as one complex64 per texel: a 1-D gather fetches the pair at once.
        self._strands = np.ascontiguousarray(strands).view(np.complex64).reshape(-1)
        self._strand_shape = strands.shape[:2]
        self._lo = NOISE_LO.astype(np.float32)
        self._scale = (self._shape / (NOISE_HI - NOISE_LO)).astype(np.float32)

    def noise3d(self, points: np.ndarray) -> np.ndarray:
        """Rest-space points [P, 3] -> noise [P, 3] (blotch, mottle, grain), ~unit std.

        The renderer samples it once per mesh vertex and interpolates; it is exact per
        point for callers that need it."""
        g = np.clip((points - self._lo) * self._scale - 0.5, 0, self._shape - 1.001)
        i = g.astype(np.int64)
        f = (g - i).astype(np.float32)
        nx, ny = self._shape[0], self._shape[1]
        out = np.zeros((len(points), 3), np.float32)
        for dz in (0, 1):
            wz = f[:, 2] if dz else 1 - f[:, 2]
            for dy in (0, 1):
                wzy = wz * (f[:, 1] if dy else 1 - f[:, 1])
                base = ((i[:, 2] + dz) * ny + i[:, 1] + dy) * nx + i[:, 0]
                out += (wzy * (1 - f[:, 0]))[:, None] * self._volume[base]
                out += (wzy * f[:, 0])[:, None] * self._volume[base + 1]
        return out

    def noise2d(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Strand noise [P, 2] at u (across strands, wraps) and v (along them), ~[-1, 1]."""
        rows, cols = self._strand_shape
        x = (u * 0.5 + 0.5) * cols
        y = np.clip((v * 0.5 + 0.5) * rows, 0, rows - 1.001)
        x0, y0 = np.floor(x).astype(np.int64), y.astype(np.int64)
        fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
        x0, x1 = x0 % cols, (x0 + 1) % cols
        t, row0, row1 = self._strands, y0 * cols, (y0 + 1) * cols
        top = t[row0 + x0] * (1 - fx) + t[row0 + x1] * fx
        bottom = t[row1 + x0] * (1 - fx) + t[row1 + x1] * fx
        out = top * (1 - fy) + bottom * fy
        return out.view(np.float32).reshape(-1, 2)


def background_plate(appearance: Appearance, height: int, width: int) -> np.ndarray:
    """The static backdrop [H, W, 3] uint8: a lit wall with soft blotches and fine grain."""
    rng = np.random.default_rng(appearance.seed + 1)
    c1, c2 = np.array(appearance.background[0]), np.array(appearance.background[1])
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    # A soft light pool behind the head, falling off to the corners, plus a floor-ward shade.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = 0.5 + 0.5 * np.cos(angle) * (xx - 0.5) * 2 + 0.2 * np.sin(angle) * (yy - 0.5)
    pool = np.exp(-((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - 0.35) ** 2) / 0.18)
    blotch = ndimage.zoom(rng.standard_normal((6, 6)), (height / 6, width / 6), order=3)
    blotch = blotch[:height, :width]
    mix = np.clip(0.6 * ramp + 0.25 * blotch * 0.3 + 0.3 * pool, 0, 1)[..., None]
    img = c2 + (c1 - c2) * mix
    grain = ndimage.gaussian_filter(rng.standard_normal((height, width)), 0.8)[..., None]
    img = img * (1 + 0.03 * grain) * (0.85 + 0.15 * pool[..., None])
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
