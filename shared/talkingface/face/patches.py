"""Head poses from tracked patches of skin on the face mesh's depth (docs/ingest.md, step 6).

The face mesh's rigid fit (`face.pose`) reads each frame on its own, through a model of an
average face: on a drawn face its rotation is off by 1.7-1.8 degrees (median), as noise from
frame to frame and as a bias that follows the turn. The skin of the forehead, the nose and
the cheeks moves with the skull exactly, so:

1. `select`: in each of `REFERENCES` reference frames (the video cut into that many
   stretches, in each the frame nearest the mean head rotation), up to `MAX_POINTS` corners
   (Shi-Tomasi: the smaller eigenvalue of the 9 x 9 structure tensor, at least
   `MIN_TEXTURE` of the largest), `SPACING` px apart, inside the head mask eroded by `MARGIN`
   px and inside the face mesh's outline, away from what moves on its own: the mouth and jaw
   (the hull of the lips and the lower jaw line), the eyes (blinks) and the brows.
2. `mesh_depth`: each point's depth, where the person's own mesh shape (the one the poses
   were fitted to) lies under the reference frame's pose, linear across the triangles of its
   projection. Hair and ears lie outside the mesh and have no depth: they are not used (with
   a depth from the nearest mesh point they made the poses worse).
3. `track`: each patch is found in every frame by Gauss-Newton on the zero-mean, unit-norm
   patch difference (a local gain and bias: the head turns under fixed lights), started where
   the current poses put its point and sampled through the local affine map they predict.
   Always against the reference patch, so nothing drifts; a patch whose normalised correlation
   falls under `MIN_CORRELATION` is not used in that frame.
4. `solve`: every frame's pose (R, t for the pinhole K) and each point's depth along its ray
   in the reference frame, together, by Gauss-Newton with Levenberg-Marquardt damping on the
   pixel error, Huber weights per observation (a patch that slides weighs little). The poses
   are eliminated frame by frame (Schur complement), so each step solves a system as large as
   the points. Each depth is held to the mesh's by a weak prior (`DEPTH_PRIOR`): the pixels
   of one fixed set of points leave the overall scale free and, where the points lie nearly
   in one plane (a photograph, or a face that hardly turns), a small turn out of that plane
   and the depths trade off; the prior decides those and nothing else. The points are defined
   on the reference frame's rays of the given poses, so the result keeps their head frame.
   Each reference frame's mesh pose is off in its own way, and every patch of that frame
   (its ray, its depth prior) inherits that error: with one reference frame the poses of a
   video moved by up to 0.4 px of pose consistency when the reference moved by a frame or
   two (SynthTalk seed 13). Patches from two frames far apart in time share the solve and
   average those errors.
5. Steps 3-4 `ROUNDS` times, each round's tracking predicted from the last round's poses,
   every `HOLD_OUT`-th patch tracked but left out of the solve. Frames where fewer than
   `MIN_FRAME_POINTS` patches were found take their pose from their neighbours in time.
   The poses are then smoothed along time by their own information (`smooth`): the patches
   of a face's front pin down a turn and a sideways shift far better than a nod against a
   vertical shift, so each frame's pose is held to its solution as firmly as its patches
   hold it, and every pose's acceleration is penalised (`STIFFNESS`) in the pixels of the
   patch points. A loose direction follows its neighbours; a firm one keeps its motion.
6. The judge: each held-out patch's best fixed point under the mesh's poses, and under the
   new ones; the poses whose points miss their tracks by less (median px) are kept. When the
   new ones win, a last solve with every patch, from there.

Not at all (the mesh's poses kept, `report["why"]` says why): under `MIN_FRAMES` frames or a
face under `MIN_INTEROCULAR_PX` in the crop (on 8 s of SynthTalk the patches' poses were
worse than the mesh's: 1.02 against 0.78 degrees at 256 px, 2.51 at 128), fewer than
`MIN_POINTS` textured patches on the mesh, or the judge prefers the mesh.

On SynthTalk (seeds 11, 12, 13, 60 s at 256 px; docs/ingest.md, "Poses from tracked patches
on the mesh's depth" and "Smoothing the patches' poses by their information") the rotation
error falls from 1.7-1.8 to 0.6-0.8 degrees and the pose consistency from about 2 px to
0.6-1.0 px.

Lucas and Kanade, "An iterative image registration technique with an application to stereo
vision", IJCAI 1981; Shi and Tomasi, "Good features to track", CVPR 1994; Triggs et al.,
"Bundle adjustment - a modern synthesis", 1999.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from talkingface.face.evaluate import fixed_points, project

HALF = 4  # patch half-side: 9 x 9 pixels
MAX_POINTS = 60  # the strongest corners of each reference frame (120 in all, as with one)
REFERENCES = 2  # reference frames, one per stretch of the video (docs/ingest.md)
SPACING = 5  # px between chosen points
MIN_TEXTURE = 0.005  # of the strongest corner's score on the mesh
MARGIN = 6  # px inside the head mask's outline (the background does not move with the head)
MIN_CORRELATION = 0.8
TRACK_STEPS = 8  # Gauss-Newton steps at most; fewer once nearly every patch has settled:
CONVERGED_PX = 0.01  # a patch whose last step was under this (px, per axis) has settled
UNCONVERGED_SHARE = 0.01  # stop when fewer than this share of a chunk's patches move on
ROUNDS = 3
SOLVE_STEPS = 20
SOLVE_CHUNK = 1000  # frames whose Jacobians are held at once
DEPTH_PRIOR = 1e2  # px^2 per (camera unit of depth)^2: weak, see 4. above
HUBER_PX = 1.0
CHUNK_PIXELS = 6_000_000  # frames tracked at once: this many pixels
MIN_POINTS = 12  # fewer usable points: the mesh poses are kept
MIN_FRAMES = 500  # 20 s: fewer frames leave the patches' depths and the turns they imply loose
MIN_INTEROCULAR_PX = 50  # a smaller face in the crop: too few pixels of skin to track
HOLD_OUT = 4  # every 4th patch judges the poses (module docstring, 6)
MIN_FRAME_POINTS = 6  # fewer found in a frame: its pose comes from its neighbours
STIFFNESS = 1e4  # `smooth`: the weight of a pose's acceleration against its patches
FILL_WEIGHT = 0.1  # a frame with too few patches: held this much (in points) to its fill
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
    inside the `head` mask [H, W] (eroded by `MARGIN`) and away from the parts of the face that
    move on their own (iBUG-68 `lm2d` [68, 2] of the same frame)."""
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


def mesh_depth(k: np.ndarray, r: np.ndarray, t: np.ndarray, mesh: np.ndarray,
               points: np.ndarray) -> np.ndarray:  # fmt: skip
    """The camera depth [N] of the surface of `mesh` [M, 3] (head-frame points) under the pose
    (r [3, 3], t [3]) at the pixels `points` [N, 2]: linear across the triangles of the mesh's
    projection; NaN outside it."""
    from scipy.interpolate import LinearNDInterpolator

    cam = np.asarray(mesh, np.float64) @ r.T + t
    pixels = cam @ k.T
    return LinearNDInterpolator(pixels[:, :2] / pixels[:, 2:], cam[:, 2])(points)


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


def track(frames: Callable[[int, int], np.ndarray], count: int, references: np.ndarray,
          owner: np.ndarray, points: np.ndarray, predicted: np.ndarray,
          local: np.ndarray):  # fmt: skip
    """Where each reference patch around `points` [N, 2] lies in each of `count` frames.

    frames(lo, hi) -> `gray` images [hi - lo, H, W]; `references` [J, H, W], point n's patch
    taken from references[owner[n]]; `predicted` [T, N, 2] and `local` [T, N, 2, 2] (the
    reference -> frame affine map around each point). Returns positions [T, N, 2] and
    normalised correlations [T, N].
    """
    import torch

    offsets = torch.stack(torch.meshgrid(torch.arange(-HALF, HALF + 1.0),
                                         torch.arange(-HALF, HALF + 1.0), indexing="xy"),
                          -1).reshape(-1, 2).double()  # fmt: skip
    template = torch.zeros(1, len(points), len(offsets), dtype=torch.float64)
    for j, reference in enumerate(np.asarray(references, np.float32)):
        mine = torch.from_numpy(np.flatnonzero(owner == j))
        if not len(mine):  # a reference frame with no texture on its head
            continue
        at = torch.from_numpy(points)[None, mine, None, :] + offsets
        ref = torch.from_numpy(reference)[None, None]
        template[:, mine] = _unit(_sample(ref, at.float())[:, 0].double())  # [1, n, P]
    h, w = references.shape[-2:]
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
            if float((step.abs() > CONVERGED_PX).any(-1).double().mean()) < UNCONVERGED_SHARE:
                break  # the rest would move by less than CONVERGED_PX
        final = _sample(stack[:, :1], (centre[:, :, None] + warp).float())[:, 0].double()
        found[lo:hi] = centre.numpy()
        score[lo:hi] = (_unit(final) * template).sum(-1).numpy()
    return found, score


def _skew(v: np.ndarray) -> np.ndarray:
    zero = np.zeros(v.shape[:-1])
    return np.stack([np.stack([zero, -v[..., 2], v[..., 1]], -1),
                     np.stack([v[..., 2], zero, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], zero], -1)], -2)  # fmt: skip


def _pixels(k: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Pixels [..., 2] of camera-frame points `cam` [..., 3] through the pinhole `k`."""
    return np.stack([k[0, 0] * cam[..., 0] / cam[..., 2] + k[0, 2],
                     k[1, 1] * cam[..., 1] / cam[..., 2] + k[1, 2]], -1)  # fmt: skip


def _pose_jacobian(k: np.ndarray, cam: np.ndarray, t: np.ndarray):
    """For camera-frame points `cam` [T, N, 3] of frames whose shifts are `t` [T, 3]: the
    pixels' derivatives by the camera-frame point [T, N, 2, 3], and by the pose [T, N, 2, 6]
    (a turn w, R <- exp([w]x) R, then a shift)."""
    x, y, depth = cam[..., 0], cam[..., 1], cam[..., 2]
    zero = np.zeros_like(depth)
    jp = np.stack([np.stack([k[0, 0] / depth, zero, -k[0, 0] * x / depth**2], -1),
                   np.stack([zero, k[1, 1] / depth, -k[1, 1] * y / depth**2], -1)],
                  -2)  # fmt: skip
    # A turn moves a point by w x (R p) = -[R p]x w, with R p = cam - t; a shift by itself.
    return jp, np.concatenate([jp @ -_skew(cam - t[:, None]), jp], -1)


class Rays:
    """Points on the rays of reference cameras (r_ref, t_ref: one pose [3, 3], [3] for every
    point, or each point's own [N, 3, 3], [N, 3]): point n is the head-frame point at camera
    depth z[n] along `rays[n]` (the ray's direction with unit depth)."""

    def __init__(self, k, r_ref, t_ref, pixels):
        n = len(pixels)
        self.r_ref = np.broadcast_to(np.asarray(r_ref, np.float64), (n, 3, 3))
        self.t_ref = np.broadcast_to(np.asarray(t_ref, np.float64), (n, 3))
        self.rays = np.linalg.solve(k, np.c_[pixels, np.ones(n)].T).T

    def points(self, z: np.ndarray) -> np.ndarray:
        return np.einsum("nj,nji->ni", self.rays * z[:, None] - self.t_ref, self.r_ref)

    def subset(self, which: np.ndarray) -> Rays:
        part = Rays.__new__(Rays)
        part.r_ref, part.t_ref = self.r_ref[which], self.t_ref[which]
        part.rays = self.rays[which]
        return part


def solve(k, r, t, rays: Rays, z, z_prior, found, usable, steps: int = SOLVE_STEPS):
    """Poses (r [T, 3, 3], t [T, 3]) and depths z [N] that best explain the tracks `found`
    [T, N, 2] where `usable` [T, N] (module docstring, 4). Returns r, t, z and the errors
    [T, N] in px. The Jacobians are formed `SOLVE_CHUNK` frames at a time; what is kept of
    them is [T, 6, N]."""
    from scipy.spatial.transform import Rotation

    along = np.einsum("nj,nji->ni", rays.rays, rays.r_ref)  # each point's motion with depth
    prior = np.full(len(z), DEPTH_PRIOR)
    chunks = [slice(lo, lo + SOLVE_CHUNK) for lo in range(0, len(r), SOLVE_CHUNK)]

    def residual(r, t, z):
        cam = np.einsum("tij,nj->tni", r, rays.points(z)) + t[:, None]
        return cam, _pixels(k, cam) - found

    def cost(res, z):
        e = np.linalg.norm(res, axis=-1)
        rho = np.where(e <= HUBER_PX, 0.5 * e**2, HUBER_PX * e - 0.5 * HUBER_PX**2)
        return float((usable * rho).sum() + 0.5 * (prior * (z - z_prior) ** 2).sum())

    def jacobians(c, cam, r, t, w):
        """The weighted blocks of the normal equations of the frames `c`."""
        jp, j_pose = _pose_jacobian(k, cam[c], t[c])
        # A depth moves its point along the point's ray turned with the head.
        j_depth = np.einsum("tnak,tkj,nj->tna", jp, r[c], along)  # [T, N, 2]
        wc = w[c]
        return (np.einsum("tn,tnak,tnal->tkl", wc, j_pose, j_pose),
                np.einsum("tn,tnak,tna->tkn", wc, j_pose, j_depth),
                np.einsum("tn,tna,tna->n", wc, j_depth, j_depth),
                np.einsum("tn,tnak,tna->tk", wc, j_pose, res[c]),
                np.einsum("tn,tna,tna->n", wc, j_depth, res[c]))  # fmt: skip

    damping = 1e-3
    cam, res = residual(r, t, z)
    current = cost(res, z)
    for _ in range(steps):
        e = np.linalg.norm(res, axis=-1)
        w = usable * np.minimum(1.0, HUBER_PX / np.maximum(e, 1e-9))  # Huber, as IRLS
        hpp, hpz = np.zeros((len(r), 6, 6)), np.zeros((len(r), 6, len(z)))
        gp = np.zeros((len(r), 6))
        hzz, gz = prior.copy(), prior * (z - z_prior)
        for c in chunks:
            hpp[c], hpz[c], h, gp[c], g = jacobians(c, cam, r, t, w)
            hzz, gz = hzz + h, gz + g
        while True:
            diagonal = np.einsum("tkk->tk", hpp)[:, :, None] * np.eye(6)
            inverse = np.linalg.inv(hpp + damping * diagonal + 1e-9 * np.eye(6))
            schur, rhs = np.diag(hzz * (1 + damping)), gz.copy()
            for c in chunks:  # the poses eliminated: H_zz - H_zp H_pp^-1 H_pz
                a = inverse[c] @ hpz[c]  # [T, 6, N]; the products below as one GEMM each
                schur -= hpz[c].reshape(-1, len(z)).T @ a.reshape(-1, len(z))
                rhs -= a.reshape(-1, len(z)).T @ gp[c].reshape(-1)
            dz = -np.linalg.solve(schur, rhs)
            dp = -np.einsum("tkl,tl->tk", inverse, gp + np.einsum("tkn,n->tk", hpz, dz))
            r_new = Rotation.from_rotvec(dp[:, :3]).as_matrix() @ r
            t_new, z_new = t + dp[:, 3:], z + dz
            cam_new, res_new = residual(r_new, t_new, z_new)
            new = cost(res_new, z_new)
            if new <= current or damping > 1e6:
                break
            damping *= 10
        if new > current:
            break
        converged = current - new < 1e-6 * current
        r, t, z, cam, res, current = r_new, t_new, z_new, cam_new, res_new, new
        damping = max(damping / 3, 1e-7)
        if converged:
            break
    return r, t, z, np.linalg.norm(res, axis=-1)


def _prediction(k, r, t, world, r_ref, t_ref):
    """Where the points `world` [N, 3] lie under the poses (r [T, 3, 3], t [T, 3]) [T, N, 2],
    and the local affine maps [T, N, 2, 2] from each point's reference frame's pixels (its
    pose r_ref [N, 3, 3], t_ref [N, 3]) to theirs: one reference pixel sideways and down, at
    the point's depth."""
    predicted = project(k, r, t, world)
    cam = np.einsum("nij,nj->ni", r_ref, world) + t_ref
    local = np.zeros((len(r), len(world), 2, 2))
    for axis in range(2):
        moved = cam.copy()
        moved[:, axis] += cam[:, 2] / k[axis, axis]
        back = np.einsum("nj,nji->ni", moved - t_ref, r_ref)
        local[..., axis] = project(k, r, t, back) - predicted
    return predicted, local


def _fill(r: np.ndarray, t: np.ndarray, good: np.ndarray):
    """The poses of the frames not `good` [T] interpolated from the good ones in time."""
    from scipy.spatial.transform import Rotation, Slerp

    index = np.flatnonzero(good)
    at = np.clip(np.arange(len(r)), index[0], index[-1])
    r = Slerp(index, Rotation.from_matrix(r[index]))(at).as_matrix()
    t = np.stack([np.interp(at, index, t[index, j]) for j in range(3)], axis=1)
    return r, t


def refine_poses(frames: Callable[[int, int], np.ndarray], count: int, head: np.ndarray,
                 lm2d: np.ndarray, k: np.ndarray, r: np.ndarray, t: np.ndarray,
                 mesh: np.ndarray, progress: Callable[[float], None] = lambda f: None):  # fmt: skip
    """The poses (R [T, 3, 3], t [T, 3]) from tracked patches, and a report.

    frames(lo, hi) -> RGB uint8 crops [hi - lo, H, W, 3]; `head` the head masks [T, H, W];
    lm2d [T, 68, 2] in the crop's pixels; k, r, t the mesh poses; `mesh` [M, 3] the person's
    rigid shape in the head frame of those poses. When too few patches can be tracked (a
    face without texture), the mesh poses come back and the report says so.
    """
    from scipy.spatial.transform import Rotation

    from talkingface.face.ibug68 import interocular

    k, r0, t0 = (np.asarray(a, np.float64) for a in (k, r, t))
    if count < MIN_FRAMES:
        return r0, t0, {"used": False, "why": f"fewer than {MIN_FRAMES} frames"}
    iod = float(np.median(interocular(np.asarray(lm2d[:: max(1, count // 100)], np.float64))))
    if iod < MIN_INTEROCULAR_PX:
        return r0, t0, {"used": False, "why": f"the face is {iod:.0f} px from eye to eye in "
                        f"the crop, under {MIN_INTEROCULAR_PX}"}  # fmt: skip
    # The reference frames: in each of REFERENCES stretches of the video, the frame nearest
    # the mean head turn; each gives its own patches, on its own mesh pose's rays.
    mean = Rotation.from_matrix(r0).mean()
    off = (Rotation.from_matrix(r0) * mean.inv()).magnitude()
    bounds = np.linspace(0, count, REFERENCES + 1).astype(int)
    refs = np.array([lo + int(np.argmin(off[lo:hi])) for lo, hi in itertools.pairwise(bounds)])
    references = gray(np.concatenate([frames(i, i + 1) for i in refs]))
    mesh = np.asarray(mesh, np.float64)
    parts, owners, depths = [], [], []
    for j, ref in enumerate(refs):
        # Only on the mesh (under the reference frame's pose): elsewhere there is no depth.
        outline = project(k, r0[ref : ref + 1], t0[ref : ref + 1], mesh)[0]
        on_mesh = _hull_mask(references[j].shape, outline, 0)
        chosen = select(references[j], np.asarray(head[ref]) & on_mesh,
                        np.asarray(lm2d[ref], np.float64))  # fmt: skip
        z = mesh_depth(k, r0[ref], t0[ref], mesh, chosen) if len(chosen) else np.zeros(0)
        parts.append(chosen[np.isfinite(z)])
        depths.append(z[np.isfinite(z)])
        owners.append(np.full(len(parts[-1]), j))
    points, z_mesh, owner = (np.concatenate(a) for a in (parts, depths, owners))
    report: dict = {"reference_frames": refs.tolist(), "points": len(points)}
    if len(points) < MIN_POINTS:
        return r0, t0, {**report, "used": False, "why": "too little texture to track"}

    # Every HOLD_OUT-th patch is tracked but left out of the solve, to judge the poses by.
    held = np.arange(len(points)) % HOLD_OUT == HOLD_OUT - 1
    rays = Rays(k, r0[refs[owner]], t0[refs[owner]], points)
    r, t, z = r0, t0, z_mesh.copy()
    for step in range(ROUNDS):
        world = rays.points(z)
        found, score = np.zeros((count, len(world), 2)), np.zeros((count, len(world)))
        for lo in range(0, count, SOLVE_CHUNK):
            hi = min(count, lo + SOLVE_CHUNK)
            predicted, local = _prediction(k, r[lo:hi], t[lo:hi], world, r[refs[owner]],
                                           t[refs[owner]])  # fmt: skip
            crops = lambda a, b, lo=lo: gray(frames(lo + a, lo + b))  # noqa: E731
            found[lo:hi], score[lo:hi] = track(crops, hi - lo, references, owner, points,
                                               predicted, local)  # fmt: skip
        progress((step + 0.7) / ROUNDS)
        usable = (score > MIN_CORRELATION).astype(np.float64)
        r, t, z[~held], errors = solve(k, r, t, rays.subset(~held), z[~held], z_mesh[~held],
                                       found[:, ~held], usable[:, ~held])  # fmt: skip
        progress((step + 1) / ROUNDS)
    # Which poses explain the held-out patches better, each patch's point fitted to them?
    final = _finish(k, rays.subset(~held), (r, t, z[~held], errors), found[:, ~held],
                    usable[:, ~held])  # fmt: skip
    if final is None:
        return r0, t0, {**report, "used": False, "why": "too few patches stayed on the head"}
    judged = {
        "mesh": held_out_error(k, r0, t0, found[:, held], usable[:, held]),
        "patches": held_out_error(k, *final, found[:, held], usable[:, held]),
    }
    report["held_out_px"] = judged
    if not judged["patches"] < judged["mesh"]:
        why = "the mesh's poses explain the held-out patches better"
        return r0, t0, {**report, "used": False, "why": why}
    # Then every patch, from there.
    r, t, z, errors = solve(k, r, t, rays, z, z_mesh, found, usable)
    used = (usable > 0) & (errors < 3 * HUBER_PX)
    r, t = _finish(k, rays, (r, t, z, errors), found, usable) or final
    report.update(
        used=True,
        points_kept=int(used.any(axis=0).sum()),
        observations_used=float(used.mean()),
        frames_interpolated=int((used.sum(axis=1) < MIN_FRAME_POINTS).sum()),
        error_px_median=float(np.median(errors[usable > 0])),
        depth_change_median=float(np.median(np.abs(z - z_mesh) / z_mesh)),
        turn_from_mesh_deg_median=float(np.median(
            (Rotation.from_matrix(r) * Rotation.from_matrix(r0).inv()).magnitude()) * 180 / np.pi),
    )  # fmt: skip
    return r, t, report


def _finish(k, rays: Rays, solved, found, usable):
    """The solved poses (`solve`'s r, t, z, errors) smoothed along time by their own
    information (`smooth`), the frames where too few patches were found held only weakly
    to their neighbours' poses; None when too few patches stayed on the head."""
    r, t, z, errors = solved
    used = (usable > 0) & (errors < 3 * HUBER_PX)
    good = used.sum(axis=1) >= MIN_FRAME_POINTS
    if used.any(axis=0).sum() < MIN_POINTS * (HOLD_OUT - 1) // HOLD_OUT or not good.any():
        return None
    r, t = _fill(r, t, good)
    information, metric = pose_information(k, r, t, rays, z, found, usable)
    information[~good] = FILL_WEIGHT * metric
    return smooth(r, t, information, metric, STIFFNESS)


def pose_information(k, r, t, rays: Rays, z, found, usable):
    """Each frame's Gauss-Newton information about its pose [T, 6, 6] (a turn, then a
    shift, as `solve` moves them) from its tracks `found` [T, N, 2] where `usable`, with
    `solve`'s Huber weights; and the mean information of one point's track in one frame
    [6, 6], the pixel measure `smooth` puts on a pose's change."""
    world = rays.points(z)
    information = np.zeros((len(r), 6, 6))
    metric = np.zeros((6, 6))
    for lo in range(0, len(r), SOLVE_CHUNK):
        c = slice(lo, lo + SOLVE_CHUNK)
        cam = np.einsum("tij,nj->tni", r[c], world) + t[c, None]
        error = np.linalg.norm(_pixels(k, cam) - found[c], axis=-1)
        w = usable[c] * np.minimum(1.0, HUBER_PX / np.maximum(error, 1e-9))
        j_pose = _pose_jacobian(k, cam, t[c])[1]
        information[c] = np.einsum("tn,tnak,tnal->tkl", w, j_pose, j_pose)
        metric += np.einsum("tnak,tnal->kl", j_pose, j_pose)
    return information, metric / (len(r) * len(world))


def smooth(r, t, information, metric, stiffness: float):
    """Poses (r [T, 3, 3], t [T, 3]) smoothed along time, each frame held by its own
    `information` [T, 6, 6] (`pose_information`) and every pose's second difference in time
    penalised by `stiffness` in the pixel measure `metric` [6, 6]: one sparse linear solve
    over all frames (the rotations as turns about their mean). A direction of the pose the
    frame's patches pin down stays as they put it, up to a low-pass at about 1.2 Hz for
    the default stiffness and 80 patches; one they hardly see (a nod against a vertical
    shift, for a face's front) follows its neighbours. Unlike a Gaussian of fixed width,
    this smooths each frame and each direction as much as its own data leave loose."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve
    from scipy.spatial.transform import Rotation

    count = len(r)
    if count < 3:
        return r, t
    mean = Rotation.from_matrix(r).mean()
    pose = np.c_[(Rotation.from_matrix(r) * mean.inv()).as_rotvec(), t].ravel()
    held = sparse.block_diag(list(information), format="csr")
    ones = np.ones(count - 2)
    second = sparse.diags([ones, -2 * ones, ones], [0, 1, 2], shape=(count - 2, count))
    lhs = held + stiffness * sparse.kron(second.T @ second, sparse.csr_matrix(metric))
    pose = spsolve((lhs + 1e-9 * sparse.eye(6 * count)).tocsc(), held @ pose).reshape(count, 6)
    return (Rotation.from_rotvec(pose[:, :3]) * mean).as_matrix(), pose[:, 3:]


def held_out_error(k, r, t, tracks, usable) -> float:
    """Median px by which `tracks` [T, N, 2] (where `usable` [T, N]) miss their best fixed
    points under the poses (r, t), fitted with Huber weights."""
    points = fixed_points(k, r, t, tracks, usable, huber_px=HUBER_PX)
    errors = np.linalg.norm(project(k, r, t, points) - tracks, axis=-1)
    return float(np.median(errors[usable > 0]))
