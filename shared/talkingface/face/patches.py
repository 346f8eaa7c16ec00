"""Head poses refined from tracked patches of skin and hair (docs/ingest.md, step 5b).

The face mesh's rigid fit (`face.pose`) reads each frame on its own, through a model of an
average face; its pose error is frame-to-frame noise and a bias that follows expression. The
pixels of the skin, brows' surroundings, nose and hair move with the skull exactly. So:

1. `select`: in one reference frame (the one nearest the mean head rotation), up to
   `MAX_POINTS` corners (Shi-Tomasi: the smaller eigenvalue of the 9 x 9 structure tensor,
   at least `MIN_TEXTURE` of the largest), `SPACING` px apart, inside the head mask eroded by
   `MARGIN` px, away from what moves on its own: the mouth and jaw (the hull of the lips and
   the lower jaw line), the eyes (blinks) and the brows.
2. `track`: each patch is found in every frame by Gauss-Newton on the zero-mean, unit-norm
   patch difference (a local gain and bias: the head turns under fixed lights), started from
   a prediction and sampled through that prediction's local affine map. First the 2-D affine
   map of the brow, eye and nose landmarks predicts; then the bundle's own 3-D points do.
   Always against the reference patch, so nothing drifts; a patch whose normalised
   correlation falls under `MIN_CORRELATION` is not used in that frame.
3. `bundle`: every point's fixed 3-D position in the head frame and every frame's pose
   (R, t for the pinhole K) by alternating least squares on the pixel error (triangulation;
   Gauss-Newton per frame), with Huber weights per observation: a patch that slides (a
   collar, a moving brow) weighs little. (Leaving whole points out where their median error
   was high left the bundle worse conditioned on SynthTalk: 1.6 -> 2.7 px.) Each frame's
   rotation is held lightly to the mesh's (`PRIOR`: a hundredth of the stiffness the patches
   give a turn in the image plane): where the patches lie nearly in one plane, a turn out of
   it and the points' depth trade off and the pixels can hardly tell them apart.
4. The result is carried into the mesh poses' head frame (their mean turn, depth and head
   origin: the bundle's own frame is free up to a similarity), so the canonical landmarks,
   which the mesh's expression gives, keep their frame.

Lucas and Kanade, "An iterative image registration technique with an application to stereo
vision", IJCAI 1981; Shi and Tomasi, "Good features to track", CVPR 1994; Triggs et al.,
"Bundle adjustment - a modern synthesis", 1999.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

HALF = 4  # patch half-side: 9 x 9 pixels
MAX_POINTS = 400
SPACING = 5  # px between chosen points
MIN_TEXTURE = 0.02  # of the strongest corner's score
MARGIN = 6  # px inside the head mask's outline (the background does not move with the head)
MIN_CORRELATION = 0.8
TRACK_STEPS = 8
BUNDLE_ROUNDS = 6
HUBER_PX = 1.0
PRIOR = 0.01  # the mesh's rotation, against the patches' in-plane stiffness (docstring)
CHUNK_PIXELS = 6_000_000  # frames tracked at once: this many pixels
MIN_POINTS = 12  # fewer usable points: the mesh poses are kept
BLUR = 0.6  # px, before tracking: less of the encoder's noise


def gray(frames: np.ndarray) -> np.ndarray:
    """[..., H, W, 3] uint8 -> [..., H, W] float32 luma, lightly blurred."""
    g = np.asarray(frames, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return ndimage.gaussian_filter(g, BLUR, axes=(-2, -1))


def _hull_mask(shape: tuple[int, int], points: np.ndarray, grow: int) -> np.ndarray:
    from matplotlib.path import Path as Polygon
    from scipy.spatial import ConvexHull

    h, w = shape
    hull = points[ConvexHull(points).vertices]
    yy, xx = np.mgrid[0:h, 0:w]
    inside = Polygon(hull).contains_points(np.stack([xx.ravel(), yy.ravel()], 1) + 0.5)
    inside = inside.reshape(h, w)
    return ndimage.binary_dilation(inside, iterations=grow) if grow else inside


def select(image: np.ndarray, head: np.ndarray, lm2d: np.ndarray) -> np.ndarray:
    """Points [N, 2] (pixel-corner coordinates) worth tracking in `image` [H, W] (`gray`),
    inside the `head` mask [H, W] and away from the parts of the face that move on their own
    (iBUG-68 `lm2d` [68, 2] of the same frame)."""
    h, w = image.shape
    allowed = ndimage.binary_erosion(head, iterations=MARGIN)
    lower = np.concatenate([lm2d[3:14], lm2d[48:68], lm2d[[31, 35]]])
    allowed &= ~_hull_mask((h, w), lower, 4)
    for eye in (lm2d[36:42], lm2d[42:48]):
        allowed &= ~_hull_mask((h, w), eye, 4)
    for brow in (lm2d[17:22], lm2d[22:27]):
        band = np.concatenate([brow + np.array([0.0, dy]) for dy in (-4, 0, 4)])
        allowed &= ~_hull_mask((h, w), band, 2)
    gy, gx = np.gradient(image)
    side = 2 * HALF + 1
    sxx, syy, sxy = (ndimage.uniform_filter(a, side) for a in (gx * gx, gy * gy, gx * gy))
    score = (sxx + syy) / 2 - np.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    score = np.where(allowed, score, 0.0)
    taken = np.zeros((h, w), bool)
    chosen = []
    floor = score.max() * MIN_TEXTURE
    for flat in np.argsort(score.ravel())[::-1]:
        if score.flat[flat] <= floor or len(chosen) >= MAX_POINTS:
            break
        y, x = divmod(int(flat), w)
        if taken[y, x]:
            continue
        chosen.append((x + 0.5, y + 0.5))
        taken[max(0, y - SPACING) : y + SPACING + 1, max(0, x - SPACING) : x + SPACING + 1] = True
    return np.array(chosen, np.float64).reshape(-1, 2)


def _sample(images, points):
    """Bilinear samples of `images` [T, C, H, W] at `points` [T, ..., 2] (pixel-corner
    coordinates) -> [T, C, ...]."""
    import torch.nn.functional as F

    t, _, h, w = images.shape
    grid = points.reshape(t, -1, 1, 2) / points.new_tensor([w / 2, h / 2]) - 1
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # fmt: skip
    return out.reshape(t, images.shape[1], *points.shape[1:-1])


def _unit(patch):
    patch = patch - patch.mean(-1, keepdim=True)
    return patch / (patch.norm(dim=-1, keepdim=True) + 1e-6)


def track(frames: Callable[[int, int], np.ndarray], count: int, reference: np.ndarray,
          points: np.ndarray, predicted: np.ndarray, local: np.ndarray):  # fmt: skip
    """Where each reference patch around `points` [N, 2] lies in each of `count` frames.

    frames(lo, hi) -> `gray` images [hi - lo, H, W]; `reference` [H, W]; `predicted`
    [T, N, 2] and `local` [T, N, 2, 2] (the reference -> frame affine map around each point).
    Returns positions [T, N, 2] and normalised correlations [T, N].
    """
    import torch

    offsets = torch.stack(torch.meshgrid(torch.arange(-HALF, HALF + 1.0),
                                         torch.arange(-HALF, HALF + 1.0), indexing="xy"),
                          -1).reshape(-1, 2).double()  # fmt: skip
    ref = torch.from_numpy(np.asarray(reference, np.float32))[None, None]
    at = torch.from_numpy(points)[None, :, None, :] + offsets
    template = _unit(_sample(ref, at.float())[:, 0].double())  # [1, N, P]
    h, w = reference.shape
    chunk = max(1, CHUNK_PIXELS // (h * w))
    found = np.zeros_like(predicted)
    score = np.zeros(predicted.shape[:2])
    for lo in range(0, count, chunk):
        hi = min(count, lo + chunk)
        image = frames(lo, hi).astype(np.float32)
        gy, gx = np.gradient(image, axis=(1, 2))
        stack = torch.from_numpy(np.stack([image, gx, gy], axis=1))
        warp = torch.einsum("tnij,pj->tnpi", torch.from_numpy(local[lo:hi]), offsets)
        centre = torch.from_numpy(predicted[lo:hi]).clone()
        for _ in range(TRACK_STEPS):
            values = _sample(stack, (centre[:, :, None] + warp).float()).double()
            patch, gx_, gy_ = values[:, 0], values[:, 1], values[:, 2]
            spread = patch.std(-1, keepdim=True) + 1e-6
            residual = (patch - patch.mean(-1, keepdim=True)) / spread
            residual = residual - template * np.sqrt(patch.shape[-1] - 1)
            jx = (gx_ - gx_.mean(-1, keepdim=True)) / spread
            jy = (gy_ - gy_.mean(-1, keepdim=True)) / spread
            a11, a12, a22 = (jx * jx).sum(-1), (jx * jy).sum(-1), (jy * jy).sum(-1)
            b1, b2 = -(jx * residual).sum(-1), -(jy * residual).sum(-1)
            det = a11 * a22 - a12 * a12 + 1e-6
            step = torch.stack([(a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det], -1)
            centre = centre + step.clamp(-1.5, 1.5)
        final = _sample(stack[:, :1], (centre[:, :, None] + warp).float())[:, 0].double()
        found[lo:hi] = centre.numpy()
        score[lo:hi] = (_unit(final) * template).sum(-1).numpy()
    return found, score


def project(k: np.ndarray, r: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixels [T, N, 2] of `points` [N, 3] under poses r [T, 3, 3], t [T, 3] and K `k`."""
    cam = np.einsum("tij,nj->tni", r, points) + t[:, None]
    pixels = np.einsum("ij,tnj->tni", k, cam)
    return pixels[..., :2] / pixels[..., 2:3]


def _jacobian(fn, x: np.ndarray, size: int, step: float = 1e-5) -> np.ndarray:
    base = fn(x)
    return base, np.stack([(fn(x + step * e) - base) / step for e in np.eye(size)], -1)


def triangulate(k, r, t, tracks, weights) -> np.ndarray:
    """The fixed points [N, 3] that best explain `tracks` [T, N, 2] under the poses, each
    observation weighted by `weights` [T, N]: linear, then Gauss-Newton."""
    cams = np.einsum("ij,tjk->tik", k, np.concatenate([r, t[:, :, None]], axis=2))
    rows = np.concatenate([tracks[..., 0:1] * cams[:, None, 2] - cams[:, None, 0],
                           tracks[..., 1:2] * cams[:, None, 2] - cams[:, None, 1]])  # fmt: skip
    rows = rows * np.concatenate([weights, weights])[..., None]
    h = np.linalg.svd(rows.transpose(1, 0, 2), full_matrices=False)[2][:, -1]
    points = h[:, :3] / h[:, 3:]
    for _ in range(6):
        base, jac = _jacobian(lambda p: project(k, r, t, p), points, 3)
        lhs = np.einsum("tn,tnak,tnal->nkl", weights, jac, jac) + 1e-9 * np.eye(3)
        rhs = np.einsum("tn,tnak,tna->nk", weights, jac, base - tracks)
        points = points - np.linalg.solve(lhs, rhs[..., None])[..., 0]
    return points


def _rotations(v: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(v).as_matrix()


def resect(k, r, t, points, tracks, weights, prior, steps: int = 6):
    """Each frame's pose refined so `points` [N, 3] project onto its `tracks` (Gauss-Newton
    on a turn about the camera's centre and a shift), its rotation held lightly to `prior`
    [T, 3, 3] (module docstring, 3)."""
    from scipy.spatial.transform import Rotation

    spread = tracks - np.einsum("tn,tna->ta", weights, tracks)[:, None] / np.maximum(
        weights.sum(axis=1), 1e-9)[:, None, None]  # fmt: skip
    stiffness = PRIOR * np.einsum("tn,tna->t", weights, spread**2)  # px^2 per radian^2
    for _ in range(steps):
        base = project(k, r, t, points)
        cols = [(project(k, _rotations(np.tile(1e-5 * e, (len(r), 1))) @ r, t, points) - base)
                / 1e-5 for e in np.eye(3)]  # fmt: skip
        cols += [(project(k, r, t + 1e-5 * e, points) - base) / 1e-5 for e in np.eye(3)]
        jac = np.stack(cols, -1)
        lhs = np.einsum("tn,tnak,tnal->tkl", weights, jac, jac) + 1e-6 * np.eye(6)
        rhs = np.einsum("tn,tnak,tna->tk", weights, jac, base - tracks)
        lhs[:, :3, :3] += stiffness[:, None, None] * np.eye(3)
        rhs[:, :3] += stiffness[:, None] * Rotation.from_matrix(
            r @ np.swapaxes(prior, 1, 2)).as_rotvec()  # fmt: skip
        step = -np.linalg.solve(lhs, rhs[..., None])[..., 0]
        r, t = _rotations(step[:, :3]) @ r, t + step[:, 3:]
    return r, t


def bundle(k, r, t, tracks, usable, prior):
    """(R, t, points, used [T, N] weights, errors [T, N] px) from the poses (r, t), the
    `tracks` and where they are `usable` [T, N] (module docstring, 3)."""
    base = usable.astype(np.float64)
    weights = base.copy()
    for _ in range(BUNDLE_ROUNDS):
        points = triangulate(k, r, t, tracks, weights)
        r, t = resect(k, r, t, points, tracks, weights, prior)
        errors = np.linalg.norm(project(k, r, t, points) - tracks, axis=-1)
        weights = base * np.minimum(1.0, HUBER_PX / np.maximum(errors, 1e-9))
    return r, t, points, weights, errors


def refine_poses(frames: Callable[[int, int], np.ndarray], count: int, head: np.ndarray,
                 lm2d: np.ndarray, k: np.ndarray, r: np.ndarray, t: np.ndarray,
                 progress: Callable[[float], None] = lambda f: None):  # fmt: skip
    """The poses (R [T, 3, 3], t [T, 3]) refined from tracked patches, and a report.

    frames(lo, hi) -> RGB uint8 crops [hi - lo, H, W, 3]; `head` the head masks [T, H, W];
    lm2d [T, 68, 2] in the crop's pixels; k, r, t the mesh poses. When too few patches can be
    tracked (a face without texture), the mesh poses come back and the report says so.
    """
    from scipy.spatial.transform import Rotation

    k, r0, t0 = (np.asarray(a, np.float64) for a in (k, r, t))
    mean = Rotation.from_matrix(r0).mean()
    ref = int(np.argmin((Rotation.from_matrix(r0) * mean.inv()).magnitude()))
    reference = gray(frames(ref, ref + 1))[0]
    points = select(reference, np.asarray(head[ref]), np.asarray(lm2d[ref], np.float64))
    report = {"reference_frame": ref, "points": len(points)}
    if len(points) < MIN_POINTS:
        return r0, t0, {**report, "used": False, "why": "too little texture to track"}

    def images(lo: int, hi: int) -> np.ndarray:
        return gray(frames(lo, hi))

    # First prediction: the 2-D affine map of the brows, eyes and nose.
    rigid = np.asarray(lm2d[:, 17:48], np.float64)
    design = np.concatenate([rigid[ref], np.ones((31, 1))], axis=1)
    fit = np.linalg.lstsq(design, rigid.transpose(1, 0, 2).reshape(31, -1), rcond=None)[0]
    fit = fit.reshape(3, count, 2).transpose(1, 0, 2)  # [T, 3, 2]
    linear = np.swapaxes(fit[:, :2], 1, 2)
    predicted = np.einsum("tij,nj->tni", linear, points) + fit[:, None, 2]
    local = np.broadcast_to(linear[:, None], (count, len(points), 2, 2)).copy()
    r, t = r0, t0
    for step in range(3):
        found, score = track(images, count, reference, points, predicted, local)
        progress((step + 0.5) / 3)
        usable = score > MIN_CORRELATION
        r, t, world, weights, errors = bundle(k, r, t, found, usable, r0)
        progress((step + 1) / 3)
        predicted = project(k, r, t, world)
        # The local map: one reference pixel sideways and down, at the point's depth.
        cam = np.einsum("ij,nj->ni", r[ref], world) + t[ref]
        for axis in range(2):
            moved = cam.copy()
            moved[:, axis] += cam[:, 2] / k[axis, axis]
            back = np.einsum("ji,nj->ni", r[ref], moved - t[ref])
            local[..., axis] = project(k, r, t, back) - predicted
    kept = weights.sum(axis=0) > 0
    if kept.sum() < MIN_POINTS:
        return r0, t0, {**report, "used": False, "why": "too few patches stayed on the head"}
    # Into the mesh poses' head frame: the mean turn between the two tracks, the mean depth's
    # scale, then the origin that sits where the mesh poses put it (least squares).
    turn = Rotation.from_matrix(np.einsum("tji,tjk->tik", r, r0)).mean().as_matrix()
    r = r @ turn
    t = t * float(np.median(t0[:, 2] / t[:, 2]))
    origin = np.linalg.lstsq(r.reshape(-1, 3), (t0 - t).reshape(-1), rcond=None)[0]
    t = t + r @ origin
    used = weights > 0
    report.update(
        used=True,
        points_kept=int(kept.sum()),
        observations_used=float(used.mean()),
        error_px_median=float(np.median(errors[used])),
        turn_from_mesh_deg_median=float(np.median(
            (Rotation.from_matrix(r) * Rotation.from_matrix(r0).inv()).magnitude()) * 180 / np.pi),
    )  # fmt: skip
    return r, t, report
