"""The 468-point face mesh (MediaPipe's face_landmark model) on a rotated square crop.

A region of interest (`Roi`: centre, side, rotation) comes from a detection (the line from
the right eye to the left eye sets the rotation; the box, enlarged 1.5 ×, the side) or from
the previous frame's mesh (the line between the outer eye corners, 33 -> 263, and the mesh's
bounding box, enlarged 1.5 ×), as MediaPipe's face-mesh graph does. The crop is resampled to
192 × 192 (bilinear, RGB in [0, 1]); the model answers 468 points (x, y in crop pixels, z in
the same scale, relative depth) and a face-presence logit. Points are mapped back into the
image through the crop's affine transform; z is scaled by the same factor.

Views: the model's answer moves a little with where the crop falls and leans a little to one
side of the face. `FaceMesh` reads each crop in `VIEWS` (by default the crop, shifted by
`VIEW_SHIFT` crop pixels left, right, up and down, and each of those five mirrored) and
averages the points, mapped back into the image; a mirrored view's points are renumbered by
`MIRROR`. On SynthTalk's three 60 s test avatars the ingest's ten-view reading lifts the
lip-opening correlation with the truth from 0.946/0.952/0.921 to 0.953/0.957/0.938 and lowers
the median head-rotation error (after the best constant rotation) from 2.27/2.25/2.24 to
1.88/1.66/1.94 degrees (docs/ingest.md, "Ten views of each crop").
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
VIEW_SHIFT = 4  # crop pixels (about 2 % of the crop's side)
# (dx, dy, mirrored) of each view; one view, (0, 0, False), is MediaPipe's own reading.
VIEWS = tuple((dx, dy, mirrored) for mirrored in (False, True)
              for dx, dy in ((0, 0), (VIEW_SHIFT, 0), (-VIEW_SHIFT, 0), (0, VIEW_SHIFT),
                             (0, -VIEW_SHIFT)))  # fmt: skip
SINGLE_VIEW = ((0, 0, False),)

# MIRROR[i]: the mesh point that is point i's mirror image across the face's midline. Derived
# from the mesh's own geometry: the mean rigid shape of four faces (three SynthTalk people and
# scikit-image's astronaut photo) mirrored left-right and matched point to point by an optimal
# assignment. Checks (tests/face/test_face.py): an involution; the 28 midline points (0, 1,
# 2, 4, ..., 200) map to themselves; the pairs MediaPipe's published contours imply (33 <->
# 263, 61 <-> 291, 150 <-> 379, ...); 1316 of the 1322 edges of its FACEMESH_TESSELATION map
# to edges (the other 6 are quad diagonals drawn differently on the two sides); and the mesh
# of a mirrored photo, renumbered, is the photo's mesh mirrored.
MIRROR = np.array([
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
    18, 19, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265,
    266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283,
    284, 285, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300, 301,
    302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319,
    320, 321, 322, 323, 94, 324, 325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336,
    337, 338, 339, 340, 341, 342, 343, 344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354,
    355, 356, 357, 358, 359, 360, 361, 362, 363, 364, 365, 366, 367, 368, 369, 370, 371, 372,
    373, 374, 375, 376, 377, 378, 379, 151, 152, 380, 381, 382, 383, 384, 385, 386, 387, 388,
    389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397, 398, 399, 175, 400, 401, 402, 403,
    404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 195, 419, 197,
    420, 199, 200, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434, 435,
    436, 437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447, 448, 449, 450, 451, 452, 453,
    454, 455, 456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 466, 467, 3, 7, 20, 21,
    22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39,
    40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
    58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75,
    76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93,
    95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112,
    113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130,
    131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148,
    149, 150, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170,
    171, 172, 173, 174, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189,
    190, 191, 192, 193, 194, 196, 198, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211,
    212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229,
    230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 247,
])  # fmt: skip


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
    """`run(rgb, roi)` -> Mesh, the mean over `views` ((dx, dy, mirrored) in crop pixels;
    the first must be the crop itself, whose presence score is the mesh's). Not thread-safe
    (one LiteRT interpreter)."""

    def __init__(self, cache_dir=None, views=VIEWS) -> None:
        self.model = TFLiteModel("face_landmark", cache_dir)
        self.views = tuple(views)
        if not self.views or self.views[0] != (0, 0, False):
            raise ValueError("the first view must be the crop itself, (0, 0, False)")
        self.margin = max(max(abs(dx), abs(dy)) for dx, dy, _ in self.views)

    def run(self, rgb: np.ndarray, roi: Roi) -> Mesh:
        # One resampling for every view: the crop with a margin, at the same pixel size.
        n = INPUT + 2 * self.margin
        outer = Roi(roi.cx, roi.cy, roi.side * n / INPUT, roi.angle)
        patch = crop(rgb, outer, n).astype(np.float32) / 255.0
        local = np.zeros((468, 3))
        presence = 0.0
        for k, (dx, dy, mirrored) in enumerate(self.views):
            x0, y0 = self.margin + dx, self.margin + dy
            view = patch[y0 : y0 + INPUT, x0 : x0 + INPUT]
            raw, logit = self.model.run(view[:, ::-1] if mirrored else view)
            points = raw.reshape(468, 3).astype(np.float64)
            if mirrored:
                points[:, 0] = INPUT - 1 - points[:, 0]
                points = points[MIRROR]
            local += points + np.array([x0, y0, 0.0])
            if k == 0:
                presence = 1.0 / (1.0 + np.exp(-np.clip(float(logit.reshape(-1)[0]), -100, 100)))
        local /= len(self.views)
        m = outer.matrix(n)
        xy = local[:, :2] @ m[:, :2].T + m[:, 2]
        z = local[:, 2] * roi.side / INPUT
        points = np.concatenate([xy, z[:, None]], axis=1).astype(np.float32)
        return Mesh(points, float(presence), roi)
