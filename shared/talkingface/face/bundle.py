"""The geometry of `face.patches` (docs/ingest.md, step 6): every frame's head pose and every
tracked patch's depth along its reference ray solved together (`solve`), and the solved
poses smoothed along time by their own information (`smooth`).

`solve`: Gauss-Newton with Levenberg-Marquardt damping on the pixel error, Huber weights per
observation, the poses eliminated frame by frame (Schur complement), so each step solves a
system as large as the points; each depth held weakly to the mesh's (`DEPTH_PRIOR`: the
pixels of one fixed set of points leave the overall scale free and, where the points lie
nearly in one plane, a small turn out of that plane and the depths trade off).

`smooth`: each frame's pose held to its solution by its Gauss-Newton information
(`pose_information`), every pose's second difference in time penalised (`STIFFNESS`) in the
patch points' pixels: a direction the patches leave loose (a nod against a vertical shift,
for a face's front) follows its neighbours, a firm one keeps its motion.

Triggs et al., "Bundle adjustment - a modern synthesis", 1999.
"""

from __future__ import annotations

import numpy as np

SOLVE_STEPS = 20
SOLVE_CHUNK = 1000  # frames whose Jacobians are held at once
DEPTH_PRIOR = 1e2  # px^2 per (camera unit of depth)^2: weak (module docstring)
HUBER_PX = 1.0
STIFFNESS = 1e4  # `smooth`: the weight of a pose's acceleration against its patches


def huber_weights(usable: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Each observation's weight [...]: `usable` times Huber's weight of its pixel `error`."""
    return usable * np.minimum(1.0, HUBER_PX / np.maximum(error, 1e-9))


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
    # Each row j of jp: j^T (-[q]x) = (q x j)^T.
    turn = np.cross((cam - t[:, None])[..., None, :], jp)
    return jp, np.concatenate([turn, jp], -1)


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
        cam = rays.points(z) @ r.transpose(0, 2, 1) + t[:, None]
        return cam, _pixels(k, cam) - found

    def cost(res, z):
        e = np.linalg.norm(res, axis=-1)
        rho = np.where(e <= HUBER_PX, 0.5 * e**2, HUBER_PX * e - 0.5 * HUBER_PX**2)
        return float((usable * rho).sum() + 0.5 * (prior * (z - z_prior) ** 2).sum())

    def jacobians(c, cam, r, t, w):
        """The weighted blocks of the normal equations of the frames `c`."""
        jp, j_pose = _pose_jacobian(k, cam[c], t[c])
        # A depth moves its point along the point's ray turned with the head.
        j_depth = (jp @ (along @ r[c].transpose(0, 2, 1))[..., None])[..., 0]  # [T, N, 2]
        wc = w[c]
        weighted = j_pose * wc[..., None, None]  # [T, N, 2, 6]
        flat, flat_w = (a.reshape(len(a), -1, 6) for a in (j_pose, weighted))
        return (flat_w.transpose(0, 2, 1) @ flat,
                (weighted * j_depth[..., None]).sum(axis=2).transpose(0, 2, 1),
                (wc * (j_depth**2).sum(axis=-1)).sum(axis=0),
                (flat_w.transpose(0, 2, 1) @ res[c].reshape(len(flat), -1, 1))[..., 0],
                (wc * (j_depth * res[c]).sum(axis=-1)).sum(axis=0))  # fmt: skip

    damping = 1e-3
    cam, res = residual(r, t, z)
    current = cost(res, z)
    for _ in range(steps):
        e = np.linalg.norm(res, axis=-1)
        w = huber_weights(usable, e)  # as IRLS
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
            dp = -np.einsum("tkl,tl->tk", inverse, gp + hpz @ dz)
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
        cam = world @ r[c].transpose(0, 2, 1) + t[c, None]
        error = np.linalg.norm(_pixels(k, cam) - found[c], axis=-1)
        w = huber_weights(usable[c], error)
        j_pose = _pose_jacobian(k, cam, t[c])[1].reshape(len(cam), -1, 6)  # [T, 2N, 6]
        information[c] = (j_pose * np.repeat(w, 2, axis=1)[..., None]).transpose(0, 2, 1) @ j_pose
        flat = j_pose.reshape(-1, 6)
        metric += flat.T @ flat
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
