"""A real photograph made into a talking video with known head poses, ingested twice: as
`avatar ingest` reads it, and with the exact pose track. Training both (`train avatar`) and
scoring them (`eval avatar`) says what the ingest's pose error costs on real skin and hair
(docs/ingest.md, "The pose error that follows the mouth").

Usage: python scripts/puppet_avatar.py --mouth SYNTHTALK_AVATAR_DIR --out DIR [--motion-seed 1]

The puppet (tests/face/puppet.py): scikit-image's astronaut portrait, its mouth opened as the
SynthTalk person's in `--mouth` opens it, with that person's voice, the whole picture turned
±12°, zoomed ±8 % and shifted ±12 px along a smooth random track. Writes DIR/puppet.mp4,
DIR/truth.npz (each frame's similarity, still photo -> frame), DIR/ingested (the ingest as
shipped) and DIR/exact (the same ingest with each frame's pose replaced by the exact one, and
not refined from tracked patches after: the
photo never turns out of its plane, so the exact track is the ingest's own head pose on the
still photo, carried by the known motion; the same head frame, and a crop, which follows the poses,
within about a third of a pixel).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

ROOT = Path(__file__).resolve().parents[1]


def make_puppet(mouth: Path, out: Path, motion_seed: int) -> np.ndarray:
    """DIR/puppet.mp4 and DIR/truth.npz; returns the similarities [T, 2, 3]."""
    from talkingface.data.synthtalk.fileformat import read_avatar
    from talkingface.media import write_mp4

    sys.path.insert(0, str(ROOT))
    from tests.face.puppet import mouth_openings, puppet_video, still_photo

    photo, points = still_photo()
    truth = read_avatar(mouth)
    openings = mouth_openings(truth["lm3d"], points)
    video = puppet_video(photo, points, openings, motion_seed)
    write_mp4(out / "puppet.mp4", video.frames, 25, truth["audio"], 16000, crf=18)
    np.savez(out / "truth.npz", similarity=video.similarity, degrees=video.degrees,
             openings=openings)  # fmt: skip
    return video.similarity


def keep_poses(frames, count, head, lm2d, k, r, t, mesh, progress=None):
    """A `face.patches.refine_poses` stand-in that leaves the poses as they are."""
    return np.asarray(r, np.float64), np.asarray(t, np.float64), {
        "used": False, "why": "exact poses (scripts/puppet_avatar.py)"}  # fmt: skip


def exact_track(similarity: np.ndarray):
    """A `smooth_poses` stand-in that returns the exact similarities (s, R, t) in the mesh's
    frame: each frame's pose is carried back to the still photo through the known motion
    (lifted to 3-D: a turn about the camera's axis, a scale, a shift), the median (the mean
    rotation) taken, and carried forward again."""

    def smooth(scale, rot, shift, sigma):
        sim = similarity[: len(rot)]
        zoom = np.sqrt(np.linalg.det(sim[:, :, :2]))
        turn = np.zeros((len(sim), 3, 3))
        turn[:, :2, :2] = sim[:, :, :2] / zoom[:, None, None]
        turn[:, 2, 2] = 1.0
        moved = np.zeros((len(sim), 3))
        moved[:, :2] = sim[:, :, 2]
        still_rot = Rotation.from_matrix(np.swapaxes(turn, 1, 2) @ rot).mean().as_matrix()
        still_scale = np.median(scale / zoom)
        still_shift = np.median(np.einsum("tji,tj->ti", turn, shift - moved) / zoom[:, None], 0)
        return (zoom * still_scale, turn @ still_rot,
                zoom[:, None] * np.einsum("tij,j->ti", turn, still_shift) + moved)  # fmt: skip

    return smooth


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mouth", type=Path, required=True, help="SynthTalk avatar directory")
    parser.add_argument("--out", type=Path, required=True, help="new output directory")
    parser.add_argument("--motion-seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--min-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)

    import talkingface.face.geometry as geometry
    from talkingface.face import patches
    from talkingface.face.ingest import ingest

    args.out.mkdir(parents=True, exist_ok=False)
    similarity = make_puppet(args.mouth, args.out, args.motion_seed)
    video = args.out / "puppet.mp4"
    kwargs = {"size": args.size, "fov_deg": 18.0, "min_seconds": args.min_seconds}
    ingest(video, args.out / "ingested", **kwargs)
    # This process only: the exact track, and no refinement from tracked patches after it.
    shipped = geometry.smooth_poses, patches.refine_poses
    geometry.smooth_poses = exact_track(similarity)
    patches.refine_poses = keep_poses
    try:
        ingest(video, args.out / "exact", **kwargs)
    finally:
        geometry.smooth_poses, patches.refine_poses = shipped
    result = {"video": str(video), "ingested": str(args.out / "ingested"),
              "exact": str(args.out / "exact")}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
