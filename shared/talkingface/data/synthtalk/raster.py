"""A vectorised, watertight triangle rasteriser in PyTorch (CPU or GPU), with a z-buffer.

Every triangle finds, row by row over its clipped bounding box, the exact span of pixel
centres inside it (edge functions are affine along a row); the spans of all triangles are
enumerated as one flat batch and a z-buffer keeps the nearest sample per pixel, so the work
is proportional to the covered pixels, not to the bounding boxes. Vertex positions are
snapped to a 1/`SUBPIXEL` pixel grid and the edge functions are evaluated in exact int64
arithmetic with a top-left-style tie rule, so triangles sharing an edge cover every pixel
centre along it exactly once: no cracks, no double counting (the guarantee of hardware
rasterisers).

Screen conventions match `camera.project`: x right, y down, origin at the top-left corner of
the image, pixel (i, j) centred at (i + 0.5, j + 0.5). A triangle is front-facing when its
vertices run counter-clockwise as seen on the screen (OpenGL's default); meshes with outward
normals and counter-clockwise faces (right-handed) satisfy this under `camera` poses.
Gathers use `index_select` on row-major tables: on the CPU it is several times faster than
advanced indexing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUBPIXEL = 16  # vertex snapping grid per pixel; even so that pixel centres are integers
_TRI_BITS = 22  # low bits of the packed z-buffer key hold the triangle index
_DEPTH_LEVELS = 2 ** (62 - _TRI_BITS)
_EMPTY = torch.iinfo(torch.int64).max
_FAR = torch.iinfo(torch.int64).max // 4  # "no bound" for a span end
_EDGES = ((1, 2), (2, 0), (0, 1))  # edge k is opposite vertex k: its function is weight k


@dataclass
class Fragments:
    """Per-pixel rasterisation result."""

    tri_id: torch.Tensor  # [H, W] int64, index into faces, -1 where no triangle
    bary: torch.Tensor  # [H, W, 3] float32, perspective-correct barycentrics (0 where empty)
    depth: torch.Tensor  # [H, W] float32, camera-space z (inf where empty)


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return table.index_select(0, index)


def _edge_coefficients(qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
    """[F, 9] integer (A, B, C) per edge with E(p) = A px + B py + C at pixel p's centre.

    E is the edge function of the snapped vertices at the snapped pixel centre (S px + S/2,
    S py + S/2); it is >= 0 inside. A sample exactly on an edge (E = 0) belongs to this
    triangle only when the edge direction lies in a fixed half-open half-plane of
    directions (dy > 0, or dy = 0 and dx < 0); the neighbour walks the shared edge the
    other way and so does not take it. Lowering C by 1 turns `E >= 0` into `E > 0` there.
    """
    s, half = SUBPIXEL, SUBPIXEL // 2
    out = []
    for a, b in _EDGES:
        dx, dy = qx[:, b] - qx[:, a], qy[:, b] - qy[:, a]
        include = (dy > 0) | ((dy == 0) & (dx < 0))
        c = dx * (half - qy[:, a]) - dy * (half - qx[:, a]) - (~include).long()
        out += [-dy * s, dx * s, c]
    return torch.stack(out, 1)


def _spans(coef: torch.Tensor, x0, x1, y0, bh):
    """(triangle, px, py) of every pixel centre inside a triangle, found row by row.

    On a row y each edge function E = A x + (B y + C) is affine in x, so `E >= 0` bounds x
    from below (A > 0), above (A < 0) or not at all (A = 0: then it holds on the whole row
    or nowhere); exact integer floor division turns the bounds into the row's first and
    last pixel, and only the pixels between them are enumerated.
    """
    device = coef.device
    row_tri = torch.repeat_interleave(torch.arange(len(bh), device=device), bh)
    starts = torch.cumsum(bh, 0) - bh
    py = _rows(y0, row_tri) + torch.arange(len(row_tri), device=device) - _rows(starts, row_tri)
    c = _rows(coef, row_tri).view(-1, 3, 3)  # [rows, edge, (A, B, C)]
    a, value = c[..., 0], c[..., 1] * py[:, None] + c[..., 2]
    # Floor division in float64 is exact here (|value| << 2^52) and much faster than int64.
    quotient = torch.floor(value.double() / a.abs().clamp(min=1).double()).long()
    blocked = torch.where(value < 0, _FAR, -_FAR)  # for A = 0: the row is all in or all out
    lower = torch.where(a > 0, -quotient, torch.where(a == 0, blocked, -_FAR))
    upper = torch.where(a < 0, quotient, torch.full_like(quotient, _FAR))
    left = torch.maximum(lower.max(1).values, _rows(x0, row_tri))
    right = torch.minimum(upper.min(1).values, _rows(x1, row_tri))
    count = (right - left + 1).clamp(min=0)
    sample_row = torch.repeat_interleave(torch.arange(len(count), device=device), count)
    starts = torch.cumsum(count, 0) - count
    px = (
        _rows(left, sample_row)
        + torch.arange(len(sample_row), device=device)
        - _rows(starts, sample_row)
    )
    return _rows(row_tri, sample_row), px, _rows(py, sample_row)


def _area(qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of triangles [F, 3] in snapped units (float64)."""
    return (
        (qx[:, 1] - qx[:, 0]) * (qy[:, 2] - qy[:, 0])
        - (qy[:, 1] - qy[:, 0]) * (qx[:, 2] - qx[:, 0])
    ).double()


def rasterize(
    xy: torch.Tensor,
    z: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    cull_backfaces: bool = True,
) -> Fragments:
    """Rasterise triangles: xy [V, 2] pixel coords, z [V] camera depth (> 0), faces [F, 3]."""
    device = xy.device
    q = torch.round(xy.double() * SUBPIXEL).long()
    corners = _rows(q, faces.reshape(-1)).view(-1, 3, 2)
    qx, qy = corners[..., 0], corners[..., 1]  # [F, 3]
    area = _area(qx, qy)
    # Counter-clockwise on a y-down screen has negative area in these coordinates.
    keep = area < 0 if cull_backfaces else area != 0
    tri = torch.nonzero(keep).squeeze(1)
    # Reorder every kept triangle so that its area is positive: one inside test for all.
    swap = _rows(area, tri) < 0
    order = torch.where(swap[:, None], _ORDER_SWAP.to(device), _ORDER_KEEP.to(device))
    verts = _rows(faces, tri).gather(1, order)
    qx, qy = _rows(qx, tri).gather(1, order), _rows(qy, tri).gather(1, order)

    s, half = SUBPIXEL, SUBPIXEL // 2
    # Pixel i is a candidate when its centre S*i + S/2 lies in the triangle's x range.
    x0 = torch.div(qx.min(1).values - half + s - 1, s, rounding_mode="floor").clamp(min=0)
    x1 = torch.div(qx.max(1).values - half, s, rounding_mode="floor").clamp(max=width - 1)
    y0 = torch.div(qy.min(1).values - half + s - 1, s, rounding_mode="floor").clamp(min=0)
    y1 = torch.div(qy.max(1).values - half, s, rounding_mode="floor").clamp(max=height - 1)
    live = torch.nonzero((x1 >= x0) & (y1 >= y0)).squeeze(1)
    tri, verts, qx, qy, swap = (_rows(v, live) for v in (tri, verts, qx, qy, swap))
    x0, x1, y0, y1 = (_rows(v, live) for v in (x0, x1, y0, y1))
    coef = _edge_coefficients(qx, qy)

    sample_tri, px, py = _spans(coef, x0, x1, y0, y1 - y0 + 1)
    # Depth for the z-test: 1/z is affine in screen space (the screen-space barycentric
    # blend of the vertices' 1/z), so each triangle has a plane zinv = P px + Q py + R.
    zinv_t = _rows(1.0 / z.double(), verts.reshape(-1)).view(-1, 3)
    c = coef.double().view(-1, 3, 3)
    plane = c[:, 0] * zinv_t[:, :1] + c[:, 1] * zinv_t[:, 1:2] + c[:, 2] * zinv_t[:, 2:]
    plane = plane / _area(qx, qy)[:, None]
    pl = _rows(plane, sample_tri)
    zinv = pl[:, 0] * px + pl[:, 1] * py + pl[:, 2]
    # Nearer is larger 1/z; quantise (1/z_near - 1/z) so that amin keeps the nearest.
    hi, lo = 1.0 / (float(z.min()) * 0.999), 1.0 / (float(z.max()) * 1.001)
    level = ((hi - zinv) * ((_DEPTH_LEVELS - 1) / (hi - lo))).long()
    key = (level.clamp(0, _DEPTH_LEVELS - 1) << _TRI_BITS) | sample_tri
    zbuf = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)
    zbuf.scatter_reduce_(0, py * width + px, key, reduce="amin")

    pix = torch.nonzero(zbuf != _EMPTY).squeeze(1)
    win = _rows(zbuf, pix) & ((1 << _TRI_BITS) - 1)
    # Barycentrics at the winning pixels in floating point, perspective-corrected with the
    # vertices' 1/z.
    pxf = (pix % width).double() + 0.5
    pyf = torch.div(pix, width, rounding_mode="floor").double() + 0.5
    # The exact (unsnapped) vertices: snapping only decides coverage.
    corner_xy = _rows(xy.double(), _rows(verts, win).reshape(-1)).view(-1, 3, 2)
    vx, vy = corner_xy[..., 0], corner_xy[..., 1]
    w = torch.stack(
        [
            (vx[:, b] - vx[:, a]) * (pyf - vy[:, a]) - (vy[:, b] - vy[:, a]) * (pxf - vx[:, a])
            for a, b in _EDGES
        ],
        1,
    ).clamp(min=0)
    # A pixel centre a hair outside the exact triangle (inside the snapped one) whose
    # clamped weights all vanish falls back to the centroid.
    w = torch.where((w.sum(1) > 0)[:, None], w, torch.ones_like(w))
    area_px = w[:, 0] + w[:, 1] + w[:, 2]
    w = w * _rows(zinv_t, win)
    total = w[:, 0] + w[:, 1] + w[:, 2]  # = area * (1/z at the pixel)
    depth_px = (area_px / total).float()
    bary_px = (w / total[:, None]).float()
    # Report barycentrics in the face's own vertex order (the reorder swapped 1 and 2).
    bary_px = torch.where(_rows(swap, win)[:, None], bary_px[:, [0, 2, 1]], bary_px)

    tri_id = torch.full((height * width,), -1, dtype=torch.int64, device=device)
    tri_id[pix] = _rows(tri, win)
    bary = torch.zeros(height * width, 3, device=device)
    bary[pix] = bary_px
    depth = torch.full((height * width,), float("inf"), device=device)
    depth[pix] = depth_px
    return Fragments(
        tri_id.view(height, width), bary.view(height, width, 3), depth.view(height, width)
    )


_ORDER_KEEP = torch.tensor([0, 1, 2])
_ORDER_SWAP = torch.tensor([0, 2, 1])
