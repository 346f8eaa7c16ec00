"""The 468-point face mesh (MediaPipe's face_landmark model) on a rotated square crop.

A region of interest (`Roi`: centre, side, rotation) comes from a detection (the line from
the right eye to the left eye sets the rotation; the box, enlarged 1.5 ×, the side) or from
the previous frame's mesh (the line between the outer eye corners, 33 -> 263, and the mesh's
bounding box, enlarged 1.5 ×), as MediaPipe's face-mesh graph does. The crop is resampled to
192 × 192 (bilinear, RGB in [0, 1]); the model answers 468 points (x, y in crop pixels, z in
the same scale, relative depth) and a face-presence logit. Points are mapped back into the
image through the crop's affine transform; z is scaled by the same factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from talkingface.face.detect import Detection
from talkingface.face.models import TFLiteModel

INPUT = 192
SCALE = 1.5
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
MIN_PRESENCE = 0.5


@dataclass(frozen=True)
class Roi:
    """A rotated square in image pixels: centre (x, y), side, rotation in radians (the angle
    that turns the crop's x axis onto the image's eye line)."""

    cx: float
    cy: float
    side: float
    angle: float

    @classmethod
    def from_detection(cls, face: Detection) -> Roi:
        right, left = face.keypoints[0], face.keypoints[1]
        angle = float(np.arctan2(left[1] - right[1], left[0] - right[0]))
        (x0, y0, x1, y1) = face.box
        return cls._around((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0), angle)

    @classmethod
    def from_landmarks(cls, points: np.ndarray) -> Roi:
        right, left = points[RIGHT_EYE_OUTER, :2], points[LEFT_EYE_OUTER, :2]
        angle = float(np.arctan2(left[1] - right[1], left[0] - right[0]))
        # The bounding box in the face's own (de-rotated) frame, as MediaPipe's rect does.
        c, s = np.cos(-angle), np.sin(-angle)
        centre = points[:, :2].mean(0)
        local = (points[:, :2] - centre) @ np.array([[c, s], [-s, c]])
        lo, hi = local.min(0), local.max(0)
        mid = centre + ((lo + hi) / 2) @ np.array([[c, -s], [s, c]])
        return cls._around(float(mid[0]), float(mid[1]), float(max(hi - lo)), angle)

    @classmethod
    def _around(cls, cx: float, cy: float, size: float, angle: float) -> Roi:
        return cls(cx, cy, size * SCALE, angle)

    def matrix(self, n: int = INPUT) -> np.ndarray:
        """[2, 3] affine map from crop pixel centres (u, v) in [0, n) to image pixels."""
        step = self.side / n
        c, s = np.cos(self.angle) * step, np.sin(self.angle) * step
        offset = (n - 1) / 2
        tx = self.cx - (c * offset - s * offset)
        ty = self.cy - (s * offset + c * offset)
        return np.array([[c, -s, tx], [s, c, ty]])


def crop(rgb: np.ndarray, roi: Roi, n: int = INPUT) -> np.ndarray:
    """The roi resampled to n × n (bilinear; outside the image is black)."""
    m = roi.matrix(n)
    # PIL's AFFINE maps output pixel corners; shift by half a pixel both ways.
    a, b, c, d, e, f = m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2]
    c = c - 0.5 * (a + b) + 0.5
    f = f - 0.5 * (d + e) + 0.5
    image = Image.fromarray(np.ascontiguousarray(rgb))
    out = image.transform((n, n), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
    return np.asarray(out)


@dataclass
class Mesh:
    """468 points in image pixels ([468, 3]: x, y, relative depth in pixels), the crop's
    face-presence probability and the roi it was read in."""

    points: np.ndarray
    presence: float
    roi: Roi


class FaceMesh:
    """`run(rgb, roi)` -> Mesh. Not thread-safe (one LiteRT interpreter)."""

    def __init__(self, cache_dir=None) -> None:
        self.model = TFLiteModel("face_landmark", cache_dir)

    def run(self, rgb: np.ndarray, roi: Roi) -> Mesh:
        patch = crop(rgb, roi)
        raw, logit = self.model.run(patch.astype(np.float32)[None] / 255.0)
        local = raw.reshape(468, 3).astype(np.float64)
        m = roi.matrix(INPUT)
        xy = local[:, :2] @ m[:, :2].T + m[:, 2]
        z = local[:, 2] * roi.side / INPUT
        presence = float(1.0 / (1.0 + np.exp(-np.clip(float(logit.reshape(-1)[0]), -100, 100))))
        points = np.concatenate([xy, z[:, None]], axis=1).astype(np.float32)
        return Mesh(points, presence, roi)
