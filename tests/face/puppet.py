"""Photo-puppet videos: a real photograph with known motion, for checking `avatar ingest`.

`puppet_video(photo, openings, seed)` makes frames of the photo whose mouth opens by the given
amounts (pixels, one per frame) while the whole picture moves rigidly along a smooth random
track (rotation, scale, shift), and returns the frames with the truth: each frame's
similarity transform and the mouth opening.

The mouth: every pixel below the lips' meeting line moves down by the opening times a weight
that is 1 at the lower lip and chin and fades to 0 at the mouth corners' sides, above the
lips and below the jaw (a smooth displacement field, resampled backwards, so skin, stubble
and light stay the photo's own); the gap between the upper lip and the lowered lower lip is
painted as the mouth's dark inside. The face's parts come from the face mesh on the still
photo (the mouth corners 61/291, the lips' meeting points 13/14, the chin 152).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]  # mouth corner to corner
LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]


@dataclass
class PuppetVideo:
    frames: np.ndarray  # uint8 [T, S, S, 3]
    similarity: np.ndarray  # [T, 2, 3]: still photo pixel -> frame pixel (pixel centres)
    degrees: np.ndarray  # [T] in-plane rotation of the picture
    openings: np.ndarray  # [T] mouth opening applied, pixels of the still photo


def still_photo() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's astronaut portrait [512, 512, 3] and its face mesh [468, 3]: the mesh on
    the detection's crop, then twice more on the crop around its own points."""
    from skimage import data

    from talkingface.face.detect import FaceDetector
    from talkingface.face.mesh import FaceMesh, Roi

    photo = data.astronaut()
    (face,) = FaceDetector().detect(photo)
    mesh = FaceMesh()
    result = mesh.run(photo, Roi.from_detection(face))
    for _ in range(2):
        result = mesh.run(photo, Roi.from_landmarks(result.points))
    return photo, result.points


def mouth_openings(lm3d: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A SynthTalk person's mouth opening (`lm3d` [T, 68, 3]) in pixels of the still photo
    whose mesh is `points` (about 1.1 canonical units from eye to eye)."""
    from talkingface.face.ibug68 import interocular, to_ibug68
    from talkingface.lm3d import mouth_opening

    iod = float(interocular(to_ibug68(points)))
    return np.clip(mouth_opening(lm3d), 0, None) / 1.1 * iod


def _track(rng: np.random.Generator, count: int, amplitude: float) -> np.ndarray:
    """A smooth random track in [-amplitude, amplitude]: a sum of three slow sines."""
    t = np.arange(count) / 25.0
    freqs = rng.uniform(0.05, 0.4, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    weights = rng.dirichlet(np.ones(3))
    return amplitude * sum(w * np.sin(2 * np.pi * f * t + p)
                           for w, f, p in zip(weights, freqs, phases, strict=True))  # fmt: skip


def mouth_field(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Weight [H, W] of the downward motion of each pixel of the still photo per pixel of
    opening (module docstring); `points` the photo's 468-point mesh."""
    h, w = shape
    left, right = points[61, :2], points[291, :2]
    meet = (points[13, :2] + points[14, :2]) / 2
    chin = points[152, :2]
    width = np.linalg.norm(right - left)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    below = np.clip((ys - meet[1]) / 3.0, 0.0, 1.0)  # 0 above the lips' meeting line
    across = np.exp(-((((xs - meet[0]) / (0.55 * width)) ** 2) ** 1.5))
    under_jaw = np.clip(1.0 - (ys - chin[1]) / (0.35 * width), 0.0, 1.0)
    return ndimage.gaussian_filter(below * across * under_jaw, 1.5)


def open_mouth(photo: np.ndarray, points: np.ndarray, field: np.ndarray, opening: float):
    """The still photo with the mouth opened by `opening` pixels."""
    h, w = photo.shape[:2]
    rows, cols = np.flatnonzero(field.max(axis=1) > 1e-3), np.flatnonzero(field.max(axis=0) > 1e-3)
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # where anything moves
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    source_y = ys - opening * field[y0:y1, x0:x1]  # backwards: where each pixel comes from
    out = photo.astype(np.float64)
    for c in range(3):
        out[y0:y1, x0:x1, c] = ndimage.map_coordinates(out[..., c], [source_y, xs], order=1,
                                                       mode="nearest")  # fmt: skip
    if opening > 0.5:
        upper = [tuple(points[i, :2]) for i in UPPER_INNER]
        lower = []
        for i in reversed(LOWER_INNER):
            x, y = points[i, :2]
            lower.append((x, y + opening * field[int(np.rint(y)), int(np.rint(x))]))
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).polygon(upper + lower, fill=255)
        inside = ndimage.gaussian_filter(np.asarray(mask, np.float64) / 255.0, 0.8)[..., None]
        out = out * (1 - inside) + inside * np.array([70.0, 25.0, 30.0])
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _similarity(degrees: float, scale: float, shift, centre) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    t = np.asarray(centre) + np.asarray(shift) - rot @ np.asarray(centre)
    return np.concatenate([rot, t[:, None]], axis=1)


def _warp(rgb: np.ndarray, m: np.ndarray, size: int, corner) -> np.ndarray:
    """rgb under the similarity m (pixel centres), the output's (0, 0) at `corner` of the
    moved picture, size x size."""
    full = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(full)
    # output pixel centre (u, v) + corner -> moved coords -> source coords; PIL maps corners.
    a, b, c = inv[0]
    d, e, f = inv[1]
    c = c + a * corner[0] + b * corner[1] - 0.5 * (a + b) + 0.5
    f = f + d * corner[0] + e * corner[1] - 0.5 * (d + e) + 0.5
    out = Image.fromarray(rgb).transform((size, size), Image.AFFINE, (a, b, c, d, e, f),
                                         resample=Image.BILINEAR)  # fmt: skip
    return np.asarray(out)


def puppet_video(photo: np.ndarray, points: np.ndarray, openings: np.ndarray, seed: int,
                 size: int = 288, degrees: float = 12.0, shift: float = 12.0,
                 scale: float = 0.08, drop: float = 50.0) -> PuppetVideo:  # fmt: skip
    """Frames size x size around the face of `photo` (module docstring); `points` its mesh."""
    rng = np.random.default_rng(seed)
    count = len(openings)
    angle = _track(rng, count, degrees)
    zoom = 1.0 + _track(rng, count, scale)
    dx, dy = _track(rng, count, shift), _track(rng, count, shift)
    centre = points[:, :2].mean(axis=0)
    corner = (
        centre + np.array([0.0, drop]) - size / 2
    )  # the face above the middle: shoulders in view
    field = mouth_field(points, photo.shape[:2])
    frames = np.empty((count, size, size, 3), np.uint8)
    sims = np.empty((count, 2, 3))
    for i in range(count):
        m = _similarity(angle[i], zoom[i], (dx[i], dy[i]), centre)
        frames[i] = _warp(open_mouth(photo, points, field, float(openings[i])), m, size, corner)
        sims[i] = m
        sims[i, :, 2] -= corner  # into the frame's pixels
    return PuppetVideo(frames, sims, angle, np.asarray(openings, np.float64))
