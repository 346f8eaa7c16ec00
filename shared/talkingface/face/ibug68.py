"""The iBUG-68 points as a fixed subset of the 468-point MediaPipe face mesh.

Source of facts (docs/ingest.md, "iBUG-68 from the mesh"): the contours that MediaPipe
publishes for its mesh in `mediapipe/python/solutions/face_mesh_connections.py` (in the same
Apache-2.0 wheel as the models): FACEMESH_FACE_OVAL, _RIGHT_EYEBROW, _LEFT_EYEBROW,
_RIGHT_EYE, _LEFT_EYE, _NOSE and _LIPS. "Right" is the subject's right (image left in a
frontal view), as in iBUG. Every index below lies on the contour of its iBUG group, at the
position the iBUG-300W annotation defines: corners at the contour's ends, the chin (8) and the
lip and nose midlines on the mesh's symmetry line, and the remaining points at about even
spacing along the contour between them. Left-side indices are the mirror images of the
right-side ones in the mesh's own symmetry (e.g. 33 <-> 263, 61 <-> 291, 150 <-> 379).

The jaw contour of a mesh lies on the visible cheek outline of a 3-D face, while annotators
of iBUG-68 follow the jaw line; compare the jaw apart from the inner points.
"""

from __future__ import annotations

import numpy as np

JAW = [127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356]
RIGHT_BROW = [70, 63, 105, 66, 107]  # outer -> inner (upper brow contour)
LEFT_BROW = [336, 296, 334, 293, 300]  # inner -> outer
NOSE_BRIDGE = [168, 197, 5, 4]  # nasion -> tip, on the midline
NOSE_BASE = [98, 97, 2, 326, 327]  # right ala -> subnasale -> left ala
RIGHT_EYE = [33, 160, 158, 133, 153, 144]  # outer corner, upper lid, inner corner, lower lid
LEFT_EYE = [362, 385, 387, 263, 373, 380]  # inner corner, upper lid, outer corner, lower lid
OUTER_LIPS = [61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181]
INNER_LIPS = [78, 82, 13, 312, 308, 317, 14, 87]

IBUG68 = np.array(
    JAW + RIGHT_BROW + LEFT_BROW + NOSE_BRIDGE + NOSE_BASE + RIGHT_EYE + LEFT_EYE + OUTER_LIPS
    + INNER_LIPS
)  # fmt: skip
assert IBUG68.shape == (68,) and len(set(IBUG68.tolist())) == 68

# iBUG-68 index ranges by region (for reporting errors region by region).
REGIONS: dict[str, slice] = {
    "jaw": slice(0, 17),
    "brows": slice(17, 27),
    "nose": slice(27, 36),
    "eyes": slice(36, 48),
    "mouth": slice(48, 68),
}


def to_ibug68(mesh_points: np.ndarray) -> np.ndarray:
    """[..., 468, C] mesh points -> [..., 68, C] in iBUG-68 order."""
    mesh_points = np.asarray(mesh_points)
    if mesh_points.shape[-2] < 468:
        raise ValueError(f"expected 468 mesh points, got {mesh_points.shape[-2]}")
    return mesh_points[..., IBUG68, :]


def interocular(points68: np.ndarray) -> np.ndarray:
    """Distance between the outer eye corners (36, 45), the NME normaliser; [...]."""
    points68 = np.asarray(points68)
    return np.linalg.norm(points68[..., 36, :2] - points68[..., 45, :2], axis=-1)
