"""Frames of a synthetic person: landmarks + head pose -> an RGB image, mask and 2-D landmarks.

`PersonRenderer` holds one speaker's fixed 3-D head (`head.build_head`), textures and
background; each frame deforms the mesh by the landmarks (one matmul), poses it with
`p_cam = R @ p + t` (`camera`), rasterises it (`raster`), shades the covered pixels
(`shading`) and composites them over the static background plate. The mesh is the same 3-D
object in every frame (only the pose and the landmark-driven face change), so a NeRF
conditioned on landmarks can learn it. Mesh, pose and rasterisation run in PyTorch (CPU by
default, `device` otherwise); the shader runs in numpy. About 20 frames/s at 256² and 40 at
128² on one core of a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from talkingface.data.synthtalk.appearance import (
    Appearance,
    Textures,
    background_plate,
    sample_appearance,
)
from talkingface.data.synthtalk.camera import DISTANCE, intrinsics, project
from talkingface.data.synthtalk.head import NECK, build_head
from talkingface.data.synthtalk.raster import rasterize
from talkingface.data.synthtalk.shading import Pixels, shade
from talkingface.threads import torch_threads as _torch_threads

__all__ = ["Appearance", "PersonRenderer", "RenderedFrame", "render_video", "sample_appearance"]


@dataclass
class RenderedFrame:
    """One rendered frame."""

    rgb: np.ndarray  # [H, W, 3] uint8, the head composited over the background
    mask: np.ndarray  # [H, W] bool, head + hair + neck + ear pixels
    lm2d: np.ndarray  # [68, 2] float32 projected landmarks (x, y) in pixels
    torso: np.ndarray | None = None  # [H, W] bool, the neck and shoulder pixels of `mask`

    @property
    def head(self) -> np.ndarray:
        """[H, W] bool: the head pixels (skull, hair, face, ears): `mask` less the torso."""
        return self.mask if self.torso is None else self.mask & ~self.torso


class PersonRenderer:
    """Renders one synthetic person (a speaker's neutral face + an appearance).

    `threads` is the number of torch intra-op threads used while rendering (None leaves the
    process setting alone). It defaults to 1: a frame is a few hundred operations on ~30k
    elements each, which a second thread barely speeds up, while a thread pool that has
    to wait for a core held by another process (a data-loader, a test run) stalls every
    one of them, measured here at up to ten times slower.
    """

    def __init__(
        self,
        neutral_landmarks: np.ndarray,
        appearance: Appearance,
        size: int = 256,
        device: str = "cpu",
        threads: int | None = 1,
    ):
        self.size = int(size)
        self.device = torch.device(device)
        self.appearance = appearance
        self.threads = threads
        self.K = intrinsics(self.size)
        self.background = background_plate(appearance, self.size, self.size)
        self.textures = Textures(appearance)
        self._neutral = np.asarray(neutral_landmarks, np.float32)
        self._pixel_size = DISTANCE / float(self.K[0, 0])  # canonical units per pixel
        with _torch_threads(threads):
            self.mesh = build_head(neutral_landmarks, appearance, self.device)
        self._corners = self.mesh.faces.reshape(-1)
        # Static per-vertex attributes interpolated for every pixel: rest position, unit
        # direction and skin noise (sampled once per vertex in rest space).
        noise = torch.from_numpy(self.textures.noise3d(self.mesh.rest.cpu().numpy()))
        self._static = torch.cat([self.mesh.rest, self.mesh.direction, noise.to(self.device)], 1)
        self._principal = torch.tensor(self.K[:2, 2], device=self.device)

    @torch.no_grad()
    def render(
        self,
        landmarks: np.ndarray,
        R: np.ndarray,
        t: np.ndarray,
        torso_R: np.ndarray | None = None,
        torso_t: np.ndarray | None = None,
    ) -> RenderedFrame:
        """Render landmarks [68, 3] (canonical) under head pose R [3, 3], t [3]; the neck and
        shoulders under the torso pose `torso_R`, `torso_t` (`camera.torso_motion`; the
        neck bends between the two), or rigid with the head when it is not given."""
        landmarks = np.asarray(landmarks, np.float32)
        with _torch_threads(self.threads):
            pix, pixels, mask = self._rasterize(landmarks, R, t, torso_R, torso_t)
        colour = shade(
            pixels, landmarks, self._neutral, self.appearance, self.textures, self._pixel_size
        )
        image = self.background.reshape(-1, 3).copy()
        image[pix] = (colour * 255 + 0.5).astype(np.uint8)
        torso = np.zeros(self.size * self.size, bool)
        torso[pix] = pixels.part == NECK
        return RenderedFrame(
            rgb=image.reshape(self.size, self.size, 3),
            mask=mask,
            lm2d=project(landmarks, R, t, self.K),
            torso=torso.reshape(self.size, self.size),
        )

    def _rasterize(self, landmarks, R, t, torso_R=None, torso_t=None):
        """Pose and rasterise the mesh; interpolate the surface attributes of covered pixels.
        Returns (flat pixel indices [P], Pixels, mask [H, W])."""
        mesh, size, device = self.mesh, self.size, self.device
        canon = mesh.vertices(torch.from_numpy(landmarks).to(device))
        R = torch.as_tensor(np.asarray(R, np.float32), device=device)
        t = torch.as_tensor(np.asarray(t, np.float32), device=device)
        cam = canon @ R.T + t
        if torso_R is not None:
            tR = torch.as_tensor(np.asarray(torso_R, np.float32), device=device)
            tt = torch.as_tensor(np.asarray(torso_t, np.float32), device=device)
            cam = torch.lerp(cam, canon @ tR.T + tt, mesh.torso_weight[:, None])
        xy = cam[:, :2] / cam[:, 2:] * float(self.K[0, 0]) + self._principal
        frag = rasterize(xy, cam[:, 2], mesh.faces, size, size)

        # Area-weighted vertex normals of the posed mesh (camera space).
        tri = cam.index_select(0, self._corners).view(-1, 3, 3)
        face_n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals = torch.zeros_like(cam).index_add_(0, self._corners, face_n.repeat_interleave(3, 0))

        tri_id = frag.tri_id.view(-1)
        pix = torch.nonzero(tri_id >= 0).squeeze(1)
        faces = tri_id.index_select(0, pix)
        corners = mesh.faces.index_select(0, faces)  # [P, 3]
        bary = frag.bary.view(-1, 3).index_select(0, pix)
        attrs = torch.cat([self._static, canon, normals, cam], 1)
        values = sum(attrs.index_select(0, corners[:, k]) * bary[:, k : k + 1] for k in range(3))
        values = values.cpu().numpy()
        direction, normal = values[:, 3:6], values[:, 12:15]
        pixels = Pixels(
            part=mesh.part.index_select(0, faces).cpu().numpy(),
            rest=values[:, 0:3],
            noise=values[:, 6:9],
            direction=direction / np.linalg.norm(direction, axis=1, keepdims=True),
            canon=values[:, 9:12],
            normal=normal / np.linalg.norm(normal, axis=1, keepdims=True),
            position=values[:, 15:18],
        )
        return pix.cpu().numpy(), pixels, (frag.tri_id >= 0).cpu().numpy()

    def render_batch(
        self, landmarks: np.ndarray, R: np.ndarray, t: np.ndarray, torso_R=None, torso_t=None
    ) -> list[RenderedFrame]:
        """Render B frames: landmarks [B, 68, 3], R [B, 3, 3], t [B, 3], torso poses [B, 3, 3],
        [B, 3] or None (a convenience loop: batching does not pay on the CPU, where the
        per-frame work is already vectorised)."""
        n = len(landmarks)
        tR = [None] * n if torso_R is None else torso_R
        tt = [None] * n if torso_t is None else torso_t
        return [
            self.render(lm, r, tr, a, b)
            for lm, r, tr, a, b in zip(landmarks, R, t, tR, tt, strict=True)
        ]


def render_video(
    out: Path,
    renderer: PersonRenderer,
    landmarks: np.ndarray,
    rotations: np.ndarray,
    translations: np.ndarray,
    desc: str,
    progress: bool = True,
    torso_R: np.ndarray | None = None,
    torso_t: np.ndarray | None = None,
) -> np.ndarray:
    """Render every frame into `out/frames.npy`, `out/masks.npy` (head pixels: skull, hair,
    face, ears) and `out/torso_masks.npy` (neck and shoulder pixels; the file and format of
    `avatar ingest`), memory-mapped and written as they come, so memory does not grow with
    the video. The torso takes the poses `torso_R` [T, 3, 3], `torso_t` [T, 3] when given,
    else it is rigid with the head. Returns the 2-D landmarks [T, 68, 2]."""
    from tqdm import tqdm

    frames, size = len(landmarks), renderer.size
    video = np.lib.format.open_memmap(
        out / "frames.npy", mode="w+", dtype=np.uint8, shape=(frames, size, size, 3)
    )
    masks = np.lib.format.open_memmap(
        out / "masks.npy", mode="w+", dtype=np.bool_, shape=(frames, size, size)
    )
    torsos = np.lib.format.open_memmap(
        out / "torso_masks.npy", mode="w+", dtype=np.bool_, shape=(frames, size, size)
    )
    lm2d = np.zeros((frames, 68, 2), np.float32)
    for i in tqdm(range(frames), desc=desc, unit="frame", disable=not progress):
        pose = (None, None) if torso_R is None else (torso_R[i], torso_t[i])
        frame = renderer.render(landmarks[i], rotations[i], translations[i], *pose)
        video[i], masks[i], torsos[i], lm2d[i] = frame.rgb, frame.head, frame.torso, frame.lm2d
    video.flush()
    masks.flush()
    torsos.flush()
    del video, masks, torsos
    return lm2d
