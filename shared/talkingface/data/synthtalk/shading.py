"""Per-pixel colour of the synthetic head: skin, hair, brows, eyes, lips, mouth, lighting.

Facial features are painted by where a pixel's *current* canonical position falls in the x-y
plane relative to the landmark polygons (front of the face only), so they follow the
landmarks exactly: inside the inner-lip curve (60-67) is the mouth cavity with upper teeth
(fixed to the skull), lower teeth (following the chin) and tongue; between it and the
outer-lip curve (48-59) is lip; inside an eye curve (36-41, 42-47) is sclera with an iris and
pupil, so a closed lid (collapsed curve) shows skin with a lash line; near the brow polylines
is brow. The curves are closed Catmull-Rom splines through the landmarks. Skin and hair
textures use the *rest-space* position (the neutral face), so they stick to the skin.

Lighting is fixed in camera space, which is also world space here (the camera never moves):
a key light from the viewer's upper left, a weak fill from the right, ambient, and
Blinn-Phong specular per material; the head turning under it changes its shading the way a
real head turns under studio lights.

The shader runs in numpy (float32): it makes many small passes over a few thousand pixels,
where numpy's per-call cost is a fraction of torch's on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkingface import lm3d as L
from talkingface.data.synthtalk import appearance as A
from talkingface.data.synthtalk.head import EAR, HEAD, NECK, SHOULDER_TOP, hair_line

KEY_LIGHT = np.array([-0.45, -0.55, -0.70])  # camera space (x right, y down, z away)
FILL_LIGHT = np.array([0.65, -0.05, -0.76])
KEY_LIGHT, FILL_LIGHT = (np.float32(v / np.linalg.norm(v)) for v in (KEY_LIGHT, FILL_LIGHT))
AMBIENT, KEY, FILL = 0.36, 0.62, 0.14
SPLINE_STEPS = 4  # curve points per landmark edge


@dataclass
class Pixels:
    """Interpolated surface attributes of the covered pixels (P of them), float32."""

    part: np.ndarray  # [P] HEAD / NECK / EAR
    rest: np.ndarray  # [P, 3] rest-space (neutral face) position
    noise: np.ndarray  # [P, 3] skin noise (blotch, mottle, grain) carried by the vertices
    direction: np.ndarray  # [P, 3] unit direction (skull sphere, neck, ear-local)
    canon: np.ndarray  # [P, 3] current canonical position
    normal: np.ndarray  # [P, 3] camera-space unit normal
    position: np.ndarray  # [P, 3] camera-space position


SHIRT_NECKLINE = SHOULDER_TOP - 0.1  # canonical y of the shirt's neckline at the sides


def _f32(colour) -> np.ndarray:
    return np.asarray(colour, np.float32)


def _smooth(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    s = np.clip((x - lo) / (hi - lo), 0, 1)
    return s * s * (3 - 2 * s)


def _ramp(x: np.ndarray, soft: float) -> np.ndarray:
    """0 -> 1 across x = 0 over a width `soft` (anti-aliased edge of a signed distance)."""
    return np.clip(0.5 + x / soft, 0, 1)


def _mix(base: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    return base + (colour - base) * alpha[:, None]


def _spline_basis(steps: int) -> np.ndarray:
    s = np.arange(steps) / steps
    return 0.5 * np.stack(
        [-(s**3) + 2 * s**2 - s, 3 * s**3 - 5 * s**2 + 2, -3 * s**3 + 4 * s**2 + s, s**3 - s**2],
        1,
    )


_BASIS = _spline_basis(SPLINE_STEPS).astype(np.float32)


def _spline(poly: np.ndarray) -> np.ndarray:
    """Closed Catmull-Rom curve through the polygon's points, SPLINE_STEPS points per edge;
    a polygon whose two sides coincide (closed lids or lips) stays collapsed."""
    quad = np.stack([np.roll(poly, k, 0) for k in (1, 0, -1, -2)], 1)  # [K, 4, 2]
    return np.einsum("sj,kjd->ksd", _BASIS, quad).reshape(-1, 2)


def _polyline(p: np.ndarray, line: np.ndarray, closed: bool):
    """Distance [P] from points [P, 2] to a polyline [K, 2] and the position along it in
    [0, 1] (by segment) of the nearest point."""
    a = line if closed else line[:-1]
    b = np.roll(line, -1, 0) if closed else line[1:]
    abx, aby = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    apx, apy = p[:, :1] - a[:, 0], p[:, 1:] - a[:, 1]  # [P, K]
    s = np.clip((apx * abx + apy * aby) / np.maximum(abx * abx + aby * aby, 1e-12), 0, 1)
    dx, dy = apx - s * abx, apy - s * aby
    d2 = dx * dx + dy * dy
    k = d2.argmin(1)
    rows = np.arange(len(p))
    return np.sqrt(d2[rows, k]), (k + s[rows, k]) / len(a)


def _inside(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd test of points [P, 2] against a closed polygon [K, 2] (empty if degenerate)."""
    a, b = poly, np.roll(poly, -1, 0)
    py = p[:, 1:]
    crosses = (a[:, 1] > py) != (b[:, 1] > py)
    dy = b[:, 1] - a[:, 1]
    dy = np.where(np.abs(dy) < 1e-12, 1e-12, dy)
    x_at = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / dy
    return (np.count_nonzero(crosses & (p[:, :1] < x_at), axis=1) % 2) == 1


def _coverage(p: np.ndarray, poly: np.ndarray, soft: float):
    """Soft polygon mask in [0, 1] (a ramp `soft` wide across the boundary) and the distance
    to the boundary. The mask fades out as the polygon gets thinner than `soft`, so a
    collapsed polygon (closed lids or lips) covers nothing, not a half-covered line."""
    dist, _ = _polyline(p, poly, closed=True)
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    perimeter = np.sqrt(((poly - np.roll(poly, -1, 0)) ** 2).sum(1)).sum()
    thickness = 2 * area / max(perimeter, 1e-9)
    cover = _ramp(np.where(_inside(p, poly), dist, -dist), soft)
    return cover * min(thickness / soft, 1.0), dist


class _Canvas:
    """Front-of-face pixels being painted: colour, specular weight and diffuse factor."""

    def __init__(self, xy, colour, spec, lit, soft, tex):
        self.xy, self.colour, self.spec, self.lit = xy, colour, spec, lit
        self.soft, self.tex = soft, tex

    def region(self, pts: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices and positions of the pixels in the points' bounding box plus a margin:
        each feature is evaluated only near itself."""
        lo, hi = pts.min(0) - margin, pts.max(0) + margin
        xy = self.xy
        idx = np.flatnonzero(
            (xy[:, 0] >= lo[0]) & (xy[:, 0] <= hi[0]) & (xy[:, 1] >= lo[1]) & (xy[:, 1] <= hi[1])
        )
        return idx, xy[idx]

    def paint(self, idx, colour, alpha) -> None:
        self.colour[idx] = _mix(self.colour[idx], colour, alpha)


def _brow(cv: _Canvas, line: np.ndarray, colour: np.ndarray, inner_last: bool) -> None:
    """A brow along its polyline, thicker toward the nose, hairs as strand noise."""
    idx, xy = cv.region(line, 0.06)
    dist, along = _polyline(xy, line, closed=False)
    inner = along if inner_last else 1 - along  # 0 outer end, 1 inner end
    hairs = np.clip(cv.tex.noise2d(xy[:, 0] * 3, xy[:, 1] * 3)[:, 1], -1, 1)
    alpha = _ramp(0.016 + 0.016 * inner - dist, cv.soft) * (0.85 + 0.15 * hairs)
    cv.paint(idx, colour * (0.9 + 0.1 * hairs[:, None]), alpha)


def _eye(cv: _Canvas, pts: np.ndarray, iris_colour, outer_first: bool) -> None:
    """Sclera, iris with radial striations and pupil inside the lids; lashes on the upper
    lid (also where the lids meet when closed); a faint crease above it."""
    outline = _spline(pts)
    idx, xy = cv.region(outline, 0.07)
    corners = pts[[0, 3]]
    width = abs(corners[1, 0] - corners[0, 0])
    centre = corners.mean(0) + np.float32([0.0, 0.008])  # irises sit a touch high
    open_, _ = _coverage(xy, outline, cv.soft)
    rel = (xy - centre) / width
    r = np.sqrt(rel[:, 0] ** 2 + rel[:, 1] ** 2)
    shadow = 1 - 0.35 * _smooth(xy[:, 1], centre[1] - 0.01, centre[1] + 0.05)
    corner_dark = 1 - 0.3 * _smooth(np.abs(rel[:, 0]), 0.2, 0.5)
    eye = _f32(A.SCLERA) * (shadow * corner_dark)[:, None]
    streaks = cv.tex.noise2d(np.arctan2(rel[:, 1], rel[:, 0]) / np.pi, r)[:, 0]
    iris = _f32(iris_colour) * ((0.8 + 0.2 * streaks) * (1.15 - 0.8 * r))[:, None]
    eye = _mix(eye, iris, _ramp((0.19 - r) * width, cv.soft))
    eye = _mix(eye, _f32(A.LASHES), _ramp((0.075 - r) * width, cv.soft))
    cv.paint(idx, eye, open_)
    cv.spec[idx] += 0.5 * open_
    dist, along = _polyline(xy, outline[: 3 * SPLINE_STEPS + 1], closed=False)
    outer = along if outer_first else 1 - along  # 0 at the outer corner
    cv.paint(idx, _f32(A.LASHES), 0.85 * _ramp(0.014 - 0.008 * outer - dist, cv.soft))
    crease = np.exp(-(((dist - 0.045) / 0.012) ** 2)) * (xy[:, 1] > centre[1])
    cv.colour[idx] *= (1 - 0.12 * crease)[:, None]


def _nostrils(cv: _Canvas, lm: np.ndarray) -> None:
    """Soft dark ellipses just above the nose-bottom landmarks."""
    for a, b in ((31, 32), (34, 35)):
        c = (lm[a, :2] + lm[b, :2]) / 2 + np.float32([0.0, 0.012])
        idx, xy = cv.region(c[None], 0.06)
        e = ((xy[:, 0] - c[0]) / 0.038) ** 2 + ((xy[:, 1] - c[1]) / 0.017) ** 2
        cv.colour[idx] *= (1 - 0.6 * np.exp(-2.5 * e))[:, None]


def _mouth(cv: _Canvas, lm: np.ndarray, neutral: np.ndarray, lip_colour) -> None:
    """Lips between the outer and inner lip curves; inside the inner one the dark cavity
    with the upper teeth (fixed to the skull), lower teeth (moving with the chin), tongue."""
    outer, inner = _spline(lm[L.OUTER_LIPS, :2]), _spline(lm[L.INNER_LIPS, :2])
    idx, xy = cv.region(outer, 0.03)
    soft = cv.soft
    lip_a, _ = _coverage(xy, outer, soft)
    lower = xy[:, 1] < lm[L.INNER_LIPS, 1].mean()
    lines = cv.tex.noise2d(xy[:, 0] * 6, xy[:, 1] * 0.5)[:, 0]
    cv.paint(idx, _f32(lip_colour) * (0.95 + 0.07 * lower + 0.04 * lines)[:, None], lip_a)
    cv.spec[idx] += 0.15 * lip_a

    pts = lm[L.INNER_LIPS, :2]
    mouth_a, edge = _coverage(xy, inner, soft)
    half = abs(pts[4, 0] - pts[0, 0]) / 2 + 1e-6
    dx = (xy[:, 0] - pts[[0, 4], 0].mean()) / half  # -1 .. 1 between the inner corners
    line0 = neutral[L.INNER_LIPS, 1].mean()
    jaw_drop = lm[8, 1] - neutral[8, 1]
    cavity = _f32(A.MOUTH) * (1 - 0.4 * dx**2)[:, None]
    low_y, up_y = pts[5:8, 1].mean(), pts[1:4, 1].mean()
    tongue = _smooth(low_y + 0.25 * (up_y - low_y) - xy[:, 1], 0, 0.02)
    cavity = _mix(cavity, 0.7 * _f32(A.TONGUE), 0.8 * tongue)
    arch = 0.15 * dx**2  # the dental arch curves away at the sides
    upper_edge = line0 - 0.07 + arch
    lower_edge = line0 - 0.085 + jaw_drop - arch
    seams = np.abs(np.cos(dx * half / 0.045 * np.pi)) ** 0.3  # dark gaps between teeth
    teeth = _f32(A.TEETH) * (seams * (1 - 0.5 * np.abs(dx) ** 3))[:, None]
    teeth_a = _ramp(xy[:, 1] - upper_edge, soft) + 0.9 * _ramp(lower_edge - xy[:, 1], soft)
    teeth_a = np.clip(teeth_a, 0, 1) * (1 - _smooth(np.abs(dx), 0.75, 1.0))
    cv.paint(idx, _mix(cavity, teeth, teeth_a), mouth_a)
    cv.lit[idx] *= 1 - 0.6 * mouth_a * (1 - teeth_a)
    cv.spec[idx] = cv.spec[idx] * (1 - mouth_a) + 0.2 * mouth_a * teeth_a
    # The shadowed line where the lips meet (or the rim of the open mouth).
    cv.colour[idx] *= (1 - 0.45 * np.exp(-((edge / soft) ** 2)) * lip_a)[:, None]


def _face(cv: _Canvas, lm: np.ndarray, neutral: np.ndarray, app: A.Appearance) -> None:
    """Paint brows, eyes, nostrils, lips and mouth onto front-of-face pixels, in place."""
    brow = _f32(app.brow)
    _brow(cv, lm[L.RIGHT_BROW, :2], brow, inner_last=True)
    _brow(cv, lm[L.LEFT_BROW, :2], brow, inner_last=False)
    _eye(cv, lm[L.RIGHT_EYE, :2], app.iris, outer_first=True)
    _eye(cv, lm[L.LEFT_EYE, :2], app.iris, outer_first=False)
    _nostrils(cv, lm)
    _mouth(cv, lm, neutral, app.lip)


def shade(
    px: Pixels,
    landmarks: np.ndarray,
    neutral: np.ndarray,
    app: A.Appearance,
    tex: A.Textures,
    pixel_size: float,
) -> np.ndarray:
    """Colours [P, 3] float32 in [0, 1] of the covered pixels, for the current and neutral
    landmarks [68, 3]; `pixel_size` is one pixel in canonical units at the head (it sets
    the width of the anti-aliased feature edges)."""
    n = len(px.part)
    rest, d = px.rest, px.direction
    noise = px.noise
    colour = np.where((px.part == NECK)[:, None], _f32(app.neck), _f32(app.skin))
    colour *= (1 + 0.04 * noise[:, :1] + 0.03 * noise[:, 1:2]) + 0.015 * noise[:, 2:3]
    # The jaw shades the top of the neck (light from above); the neck is rigid in the head
    # frame, so this darkening is too.
    neck = px.part == NECK
    colour[neck] *= (1 - 0.35 * _smooth(rest[neck, 1], -1.45, -0.95))[:, None]
    # A shirt below a round neckline (lower in front), its colour derived from the neck's so
    # that no random draw is added to the appearance.
    phi = np.arctan2(d[neck, 0], d[neck, 2])
    neckline = SHIRT_NECKLINE - 0.12 * np.cos(phi) ** 2 * (np.abs(phi) < np.pi / 2)
    shirt = _smooth(neckline - rest[neck, 1], 0.0, 0.03)[:, None]
    colour[neck] = colour[neck] * (1 - shirt) + shirt * (0.85 - 0.6 * _f32(app.neck))
    # A little redness on the cheeks; darker in the ear's bowl.
    cheeks = np.exp(
        -(((np.abs(rest[:, 0]) - 0.42) / 0.18) ** 2 + ((rest[:, 1] + 0.15) / 0.22) ** 2)
    )
    colour *= 1 - 0.06 * cheeks[:, None] * np.array([0.0, 1.0, 0.8], np.float32)
    colour[(px.part == EAR) & (np.abs(d[:, 0]) > 0.55)] *= 0.8
    spec = np.full(n, 0.10, np.float32)
    lit = np.ones(n, np.float32)

    head = px.part == HEAD
    # Hair: only scalp pixels near or above the lowest hairline need the strand lookups.
    lowest = min(app.hairline, app.hair_side, app.hair_back) - 0.05
    scalp = np.flatnonzero(head & (d[:, 1] > lowest))
    ds = d[scalp]
    phi, uy = np.arctan2(ds[:, 0], ds[:, 2]), ds[:, 1]
    strands = tex.noise2d(phi / np.float32(np.pi), uy)
    line = hair_line(phi, app.hairline, app.hair_side, app.hair_back) + 0.015 * strands[:, 1]
    hair_a = _smooth(uy - line, 0.0, 0.02).astype(np.float32)
    hair = _f32(app.hair) * (0.75 + 0.22 * np.clip(strands[:, :1], -1.5, 1.5))
    colour[scalp] = _mix(colour[scalp], hair, hair_a)
    spec[scalp] = spec[scalp] * (1 - hair_a) + 0.12 * hair_a
    covered = np.zeros(n, bool)
    covered[scalp[hair_a >= 1]] = True

    idx = np.flatnonzero(head & (rest[:, 2] > 0.35) & ~covered)
    cv = _Canvas(px.canon[idx, :2], colour[idx], spec[idx], lit[idx], 1.2 * pixel_size, tex)
    _face(cv, landmarks, neutral, app)
    colour[idx], spec[idx], lit[idx] = cv.colour, cv.spec, cv.lit

    # Dot products written out: BLAS calls would start threads for these tiny products.
    nx, ny, nz = px.normal.T
    key = nx * KEY_LIGHT[0] + ny * KEY_LIGHT[1] + nz * KEY_LIGHT[2]
    fill = nx * FILL_LIGHT[0] + ny * FILL_LIGHT[1] + nz * FILL_LIGHT[2]
    diffuse = KEY * np.maximum(key, 0) + FILL * np.maximum(fill, 0)
    # Blinn-Phong: the half vector between the light and the direction to the camera.
    hx, hy, hz = KEY_LIGHT[:, None] - px.position.T / np.linalg.norm(px.position, axis=1)
    highlight = np.maximum((nx * hx + ny * hy + nz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz), 0)
    highlight = highlight**24
    light = AMBIENT + diffuse * lit
    return np.clip(colour * light[:, None] + (spec * highlight * lit)[:, None], 0, 1)
