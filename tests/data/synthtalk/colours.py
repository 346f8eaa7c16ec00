"""Colour checks shared by the rendering tests: does a pixel show a given base colour?"""

import numpy as np


def window(rgb: np.ndarray, point, radius: int = 1) -> np.ndarray:
    """The pixels around (x, y) as float rows [N, 3]."""
    x, y = int(point[0]), int(point[1])
    patch = rgb[y - radius : y + radius + 1, x - radius : x + radius + 1]
    return patch.reshape(-1, 3).astype(np.float64)


def fits(pixels: np.ndarray, base) -> np.ndarray:
    """Per pixel: is it the base colour under some plausible brightness (shading)? The best
    scale s is fitted; the colour must be close to s * base in direction and s in range."""
    base = np.asarray(base) * 255
    s = pixels @ base / (base @ base)
    residual = np.linalg.norm(pixels - s[:, None] * base, axis=1)
    return (residual < 0.09 * np.linalg.norm(pixels, axis=1) + 4) & (s > 0.3) & (s < 1.6)
