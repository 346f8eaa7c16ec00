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
4. `bundle.solve`: every frame's pose (R, t for the pinhole K) and each point's depth along its ray
   in the reference frame, together, by Gauss-Newton with Levenberg-Marquardt damping on the
   pixel error, Huber weights per observation (a patch that slides weighs little). The poses
   are eliminated frame by frame (Schur complement), so each step solves a system as large as
   the points. Each depth is held to the mesh's by a weak prior (`bundle.DEPTH_PRIOR`): the pixels
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
   The poses are then smoothed along time by their own information (`bundle.smooth`): the patches
   of a face's front pin down a turn and a sideways shift far better than a nod against a
   vertical shift, so each frame's pose is held to its solution as firmly as its patches
   hold it, and every pose's acceleration is penalised (`bundle.STIFFNESS`) in the pixels of the
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

from talkingface.face.bundle import (
    HUBER_PX,
    SOLVE_CHUNK,
    STIFFNESS,
    Rays,
    pose_information,
    smooth,
    solve,
)
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
CHUNK_PIXELS = 6_000_000  # frames tracked at once: this many pixels
MIN_POINTS = 12  # fewer usable points: the mesh poses are kept
MIN_FRAMES = 500  # 20 s: fewer frames leave the patches' depths and the turns they imply loose
MIN_INTEROCULAR_PX = 50  # a smaller face in the crop: too few pixels of skin to track
HOLD_OUT = 4  # every 4th patch judges the poses (module docstring, 6)
MIN_FRAME_POINTS = 6  # fewer found in a frame: its pose comes from its neighbours
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
    template32 = (template * np.sqrt(len(offsets) - 1)).float()  # unit std, as the residual's
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
            # single precision: the patches are 81 samples of 8-bit pixels
            values = _sample(stack, (centre[:, :, None] + warp).float())
            values = values - values.mean(-1, keepdim=True)  # zero-mean: the patch, gx, gy
            patch, jx, jy = values[:, 0], values[:, 1], values[:, 2]
            spread = (patch * patch).sum(-1, keepdim=True).div_(patch.shape[-1] - 1).sqrt_()
            scale = 1.0 / (spread + 1e-6)
            residual = patch * scale - template32
            jx, jy = jx * scale, jy * scale
            a11, a12, a22 = (jx * jx).sum(-1), (jx * jy).sum(-1), (jy * jy).sum(-1)
            b1, b2 = -(jx * residual).sum(-1), -(jy * residual).sum(-1)
            det = a11 * a22 - a12 * a12 + 1e-6
            step = torch.stack([(a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det], -1)
            centre = centre + step.double().clamp(-1.5, 1.5)
            if float((step.abs() > CONVERGED_PX).any(-1).double().mean()) < UNCONVERGED_SHARE:
                break  # the rest would move by less than CONVERGED_PX
        final = _sample(stack[:, :1], (centre[:, :, None] + warp).float())[:, 0].double()
        found[lo:hi] = centre.numpy()
        score[lo:hi] = (_unit(final) * template).sum(-1).numpy()
    return found, score


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


def held_out_error(k, r, t, tracks, usable) -> float:
    """Median px by which `tracks` [T, N, 2] (where `usable` [T, N]) miss their best fixed
    points under the poses (r, t), fitted with Huber weights."""
    points = fixed_points(k, r, t, tracks, usable, huber_px=HUBER_PX)
    errors = np.linalg.norm(project(k, r, t, points) - tracks, axis=-1)
    return float(np.median(errors[usable > 0]))
