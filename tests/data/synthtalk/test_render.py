"""SynthTalk person rendering: camera conventions, a watertight rasteriser, and a rendered head
whose pixels show the right features where the landmarks say they are."""

import numpy as np
import pytest
import torch

from talkingface import lm3d as L
from talkingface.data.synthtalk import camera, face, head
from talkingface.data.synthtalk.appearance import SCLERA
from talkingface.data.synthtalk.raster import rasterize
from talkingface.data.synthtalk.video import PersonRenderer, sample_appearance
from tests.data.synthtalk.colours import fits, window

SIZE = 256
CONTROLS = {name: i for i, name in enumerate(face.ARTICULATION_CONTROLS)}


def _raster(xy, z, faces, size=16, cull=True):
    return rasterize(
        torch.tensor(xy, dtype=torch.float32),
        torch.tensor(z, dtype=torch.float32),
        torch.tensor(faces),
        size,
        size,
        cull_backfaces=cull,
    )


# --- camera ----------------------------------------------------------------------------------


def test_origin_projects_to_principal_point():
    K = camera.intrinsics(SIZE)
    R, t = camera.head_pose()
    assert np.allclose(camera.project(np.zeros(3), R, t, K), [SIZE / 2, SIZE / 2])
    assert np.allclose(t, [0, 0, camera.DISTANCE])
    # Any rotation: the centre of rotation stays on the optical axis.
    R2, _ = camera.head_pose(yaw=0.3, pitch=-0.2, roll=0.05)
    assert np.allclose(camera.project(np.zeros(3), R2, t, K), K[:2, 2])


def test_axes_and_angles():
    K = camera.intrinsics(SIZE)
    R, t = camera.head_pose()
    assert np.allclose(R, camera.FACING) and np.isclose(np.linalg.det(R), 1)
    x, up = camera.project(np.array([[1.0, 0, 0], [0, 1.0, 0]]), R, t, K)
    assert x[0] > SIZE / 2 and up[1] < SIZE / 2  # +x right, +y up on screen
    # +z (the face) points at the camera: the nose tip is nearer than the head centre.
    assert camera.to_camera(np.array([0, 0, 1.0]), R, t)[2] < camera.DISTANCE
    yawed = camera.project(np.array([0, 0, 1.15]), *camera.head_pose(yaw=0.3), K)
    nodded = camera.project(np.array([0, 0, 1.15]), *camera.head_pose(pitch=0.3), K)
    assert yawed[0] > SIZE / 2 + 5 and nodded[1] > SIZE / 2 + 5  # nose right / down


def test_head_fills_most_of_the_frame():
    K = camera.intrinsics(SIZE)
    top, chin = camera.project(np.array([[0, 1.2, 0], [0, -1.05, 0.8]]), *camera.head_pose(), K)
    assert 0.6 < (chin[1] - top[1]) / SIZE < 0.8


def test_random_head_motion_is_smooth_bounded_and_seeded():
    R, t, euler = camera.random_head_motion(np.random.default_rng(3), 2000, fps=25)
    again = camera.random_head_motion(np.random.default_rng(3), 2000, fps=25)
    assert all(np.array_equal(a, b) for a, b in zip((R, t, euler), again, strict=True))
    peak = np.degrees(np.abs(euler).max(0))
    assert 8 < peak[0] <= 15.01 and 8 < peak[1] <= 15.01 and peak[2] <= 4.01
    assert np.degrees(np.abs(np.diff(euler, axis=0)).max()) < 1.5  # per frame at 25 fps
    assert np.allclose(R, camera.euler_to_matrix(*euler.T), atol=1e-6)
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert np.abs(t[:, :2]).max() < 0.15 and np.abs(t[:, 2] - camera.DISTANCE).max() < 0.35


# --- rasteriser ------------------------------------------------------------------------------

# Counter-clockwise on screen (y down): these are front-facing.
SQUARE = np.array([[2.0, 2.0], [2.0, 12.0], [12.0, 12.0], [12.0, 2.0]])
HALVES = np.array([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.37, 0.21)])
def test_shared_edge_has_no_cracks_and_no_double_cover(offset):
    # With no offset the diagonal passes exactly through pixel centres (i + .5, i + .5).
    xy = SQUARE + offset
    both = _raster(xy, np.full(4, 5.0), HALVES)
    one = _raster(xy, np.full(4, 5.0), HALVES[:1])
    two = _raster(xy, np.full(4, 5.0), HALVES[1:])
    a, b = one.tri_id >= 0, two.tri_id >= 0
    assert not (a & b).any()  # no pixel centre claimed by both triangles
    assert torch.equal(a | b, both.tri_id >= 0)
    c = torch.arange(16) + 0.5
    cx, cy = c[None, :], c[:, None]
    lo, hi = xy.min(0), xy.max(0)
    strictly_inside = (cx > lo[0]) & (cx < hi[0]) & (cy > lo[1]) & (cy < hi[1])
    assert ((both.tri_id >= 0) >= strictly_inside).all()  # no cracks inside the square
    assert (both.tri_id >= 0).sum() <= (
        (cx >= lo[0]) & (cx <= hi[0]) & (cy >= lo[1]) & (cy <= hi[1])
    ).sum()


def test_fan_around_a_pixel_centre_covers_it_once():
    centre = np.array([8.5, 8.5])
    angles = np.linspace(0, 2 * np.pi, 9)[:-1]
    ring = centre + 5 * np.stack([np.cos(angles), -np.sin(angles)], 1)  # CCW on screen
    xy = np.vstack([centre, ring])
    faces = np.array([[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)])
    counts = torch.zeros(16, 16, dtype=torch.int64)
    for f in faces:
        counts += (_raster(xy, np.full(9, 4.0), f[None]).tri_id >= 0).long()
    assert counts.max() == 1 and counts[8, 8] == 1
    whole = _raster(xy, np.full(9, 4.0), faces)
    assert torch.equal(whole.tri_id >= 0, counts == 1)


def test_closed_mesh_is_watertight():
    # The head's UV-sphere tessellation, projected: every pixel centre inside the projected
    # polygonal outline is covered (by a front face), none outside.
    alpha, phi = np.linspace(0, np.pi, 25)[1:-1], np.linspace(-np.pi, np.pi, 40, endpoint=False)
    a, p = np.meshgrid(alpha, phi, indexing="ij")
    u = np.stack([np.sin(a) * np.sin(p), np.cos(a), np.sin(a) * np.cos(p)], -1)
    verts, faces = head._lathe(u)
    K = camera.intrinsics(64)
    R, t = camera.head_pose(yaw=0.4, pitch=0.3)
    xy = camera.project(verts * 9.0, R, t, K)  # a big sphere: ~2-10 px triangles
    z = camera.to_camera(verts * 9.0, R, t)[:, 2]
    frag = _raster(xy, z, faces, size=64)
    covered = (frag.tri_id >= 0).numpy()
    centre = camera.project(np.zeros(3), R, t, K)
    c = np.arange(64) + 0.5
    r = np.hypot(c[None, :] - centre[0], c[:, None] - centre[1])
    radius = np.linalg.norm(xy - centre, axis=1).max()
    assert covered[r < radius * np.cos(np.pi / 40) - 0.5].all()  # inside the inscribed outline
    assert not covered[r > radius + 0.5].any()
    near = camera.to_camera(verts * 9.0, R, t)[:, 2].min()
    assert (frag.depth[torch.from_numpy(covered)] >= near - 1e-3).all()


def test_nearer_triangle_wins_and_backfaces_are_culled():
    xy = np.array([[1.0, 1.0], [1.0, 15.0], [15.0, 15.0], [3.0, 3.0], [3.0, 14.0], [14.0, 14.0]])
    z = np.array([8.0, 8.0, 8.0, 3.0, 3.0, 3.0])
    for faces, near in (([[0, 1, 2], [3, 4, 5]], 1), ([[3, 4, 5], [0, 1, 2]], 0)):
        frag = _raster(xy, z, np.array(faces))
        assert frag.tri_id[10, 6] == near and frag.tri_id[14, 2] == 1 - near
        assert np.isclose(frag.depth[10, 6].item(), 3.0, atol=1e-4)
    assert (_raster(xy, z, np.array([[0, 2, 1]])).tri_id < 0).all()
    assert (_raster(xy, z, np.array([[0, 2, 1]]), cull=False).tri_id >= 0).any()


def test_barycentrics_reconstruct_the_pixel_centre():
    xy = np.array([[1.3, 2.2], [3.1, 14.6], [14.7, 9.4]])
    frag = _raster(xy, np.full(3, 2.0), np.array([[0, 1, 2]]))
    ys, xs = torch.nonzero(frag.tri_id >= 0, as_tuple=True)
    points = frag.bary[ys, xs] @ torch.tensor(xy, dtype=torch.float32)
    assert torch.allclose(points, torch.stack([xs, ys], 1).float() + 0.5, atol=1e-4)


# --- the rendered person ---------------------------------------------------------------------


def _controls(**values) -> np.ndarray:
    a = np.zeros(len(CONTROLS), np.float32)
    for name, v in values.items():
        a[CONTROLS[name]] = v
    return a


@pytest.fixture(scope="module")
def person():
    appearance = sample_appearance(np.random.default_rng(11))
    identity = np.zeros(len(face.IDENTITY_TRAITS))
    renderer = PersonRenderer(face.landmarks(identity, _controls()), appearance, size=SIZE)
    return renderer, identity


def _render(person, pose=(0.0, 0.0, 0.0), **controls):
    renderer, identity = person
    lm = face.landmarks(identity, _controls(**controls))
    R, t = camera.head_pose(*pose)
    return renderer.render(lm, R, t), lm, R, t


def _window(frame, point, radius=1) -> np.ndarray:
    return window(frame.rgb, point, radius)


def _brightness(pixels: np.ndarray) -> np.ndarray:
    return pixels.mean(1)


def _lip_band_points(lm: np.ndarray) -> np.ndarray:
    """Canonical points halfway between each outer-lip landmark and the inner lip facing it:
    the middle of the red lip, upper and lower."""
    pairs = [(50, 61), (51, 62), (52, 63), (56, 65), (57, 66), (58, 67)]
    return np.array([(lm[o] + lm[i]) / 2 for o, i in pairs])


POSES = [(0.0, 0.0, 0.0), (np.radians(15), 0.0, 0.0), (np.radians(-15), np.radians(8), 0.05)]


def test_distinct_palette(person):
    app = person[0].appearance
    lip, skin = np.asarray(app.lip), np.asarray(app.skin)
    assert not fits(lip[None] * 255, skin)[0]  # the colour tests below can tell them apart


@pytest.mark.parametrize("pose", POSES)
def test_mouth_open_is_dark_inside_and_lips_around(person, pose):
    app = person[0].appearance
    skin_brightness = np.mean(app.skin) * 255
    frame, lm, R, t = _render(person, pose, jaw_open=1.0)
    K = person[0].K
    assert L.mouth_opening(lm) > 0.25
    centre = camera.project(lm[L.INNER_LIPS].mean(0), R, t, K)
    inside = _window(frame, centre)
    assert (_brightness(inside) < 0.3 * skin_brightness).all()  # the dark mouth cavity
    for point in camera.project(_lip_band_points(lm), R, t, K):
        assert fits(_window(frame, point), app.lip).mean() >= 0.6


@pytest.mark.parametrize("pose", POSES)
def test_closed_lips_are_lip_coloured(person, pose):
    app = person[0].appearance
    skin_brightness = np.mean(app.skin) * 255
    frame, lm, R, t = _render(person, pose)
    K = person[0].K
    centre = camera.project(lm[L.INNER_LIPS].mean(0), R, t, K)
    around = _window(frame, centre, radius=2)
    assert np.median(_brightness(around)) > 0.3 * skin_brightness  # not a dark cavity
    assert fits(around, app.lip).mean() >= 0.6
    for point in camera.project(_lip_band_points(lm), R, t, K):
        assert fits(_window(frame, point), app.lip).mean() >= 0.6
        assert not fits(_window(frame, point), app.skin).mean() > 0.5


@pytest.mark.parametrize("pose", POSES)
def test_eyes_open_show_the_eye_and_closed_show_the_lid(person, pose):
    app = person[0].appearance
    skin_brightness = np.mean(app.skin) * 255
    K = person[0].K
    opened, lm, R, t = _render(person, pose)
    closed, lm_closed, _, _ = _render(person, pose, blink_left=1.0, blink_right=1.0)
    assert L.eye_opening(lm_closed) < 0.01 < L.eye_opening(lm)
    for eye in (L.RIGHT_EYE, L.LEFT_EYE):
        centre = camera.project(lm[eye].mean(0), R, t, K)
        pupil = _window(opened, centre)
        assert _brightness(pupil).mean() < 0.5 * skin_brightness  # iris and pupil, not skin
        assert fits(pupil, app.skin).mean() < 0.5
        # Between the iris and the inner corner: the white of the eye.
        inner = lm[eye][3] if eye[0] == L.RIGHT_EYE[0] else lm[eye][0]
        white = _window(opened, camera.project(0.45 * lm[eye].mean(0) + 0.55 * inner, R, t, K))
        assert fits(white, SCLERA).mean() >= 0.5 and fits(white, app.skin).mean() < 0.5
        lid = _window(closed, camera.project(lm_closed[eye].mean(0), R, t, K), radius=2)
        assert fits(lid, app.skin).mean() >= 0.6  # the closed lid is skin (with lashes)


@pytest.mark.parametrize("pose", POSES)
def test_mask_covers_landmarks_and_background_is_untouched(person, pose):
    renderer = person[0]
    frame, lm, R, t = _render(person, pose, jaw_open=0.5)
    assert frame.rgb.shape == (SIZE, SIZE, 3) and frame.rgb.dtype == np.uint8
    assert frame.mask.dtype == bool and frame.lm2d.shape == (68, 2)
    assert np.allclose(frame.lm2d, camera.project(lm, R, t, renderer.K))
    cols, rows = frame.lm2d.astype(int).T
    # Jaw-line landmarks sit on the silhouette when the head turns: allow one pixel there.
    near = np.zeros_like(frame.mask)
    near[1:-1, 1:-1] = np.lib.stride_tricks.sliding_window_view(frame.mask, (3, 3)).any((2, 3))
    assert near[rows, cols].all()
    assert (
        frame.mask[rows, cols].all() if pose == POSES[0] else frame.mask[rows, cols].mean() > 0.95
    )
    assert np.array_equal(frame.rgb[~frame.mask], renderer.background[~frame.mask])
    assert 0.2 < frame.mask.mean() < 0.6


def test_yaw_changes_the_picture(person):
    front = _render(person)[0]
    left = _render(person, (np.radians(15), 0.0, 0.0))[0]
    right = _render(person, (np.radians(-15), 0.0, 0.0))[0]
    for other in (left, right):
        assert np.abs(front.rgb.astype(int) - other.rgb).mean() > 3
        assert (front.mask != other.mask).mean() > 0.005


def test_identities_and_appearances_differ(person):
    renderer, identity = person
    R, t = camera.head_pose()
    other_identity = np.random.default_rng(5).standard_normal(len(face.IDENTITY_TRAITS)) * 1.5
    a = renderer.render(face.landmarks(identity, _controls()), R, t)
    b = renderer.render(face.landmarks(other_identity, _controls()), R, t)
    assert np.abs(a.rgb.astype(int) - b.rgb).mean() > 1
    assert (a.mask != b.mask).any()
    stranger = PersonRenderer(
        face.landmarks(other_identity, _controls()),
        sample_appearance(np.random.default_rng(12)),
        size=SIZE,
    )
    c = stranger.render(face.landmarks(other_identity, _controls()), R, t)
    assert np.abs(b.rgb.astype(int) - c.rgb).mean() > 10


def test_deterministic_and_same_object_across_frames(person):
    renderer = person[0]
    a = _render(person, POSES[1], jaw_open=0.3)[0]
    b = _render(person, POSES[1], jaw_open=0.3)[0]
    assert np.array_equal(a.rgb, b.rgb)
    # Articulation moves only the face: the back of the head and the neck stay put.
    lm0 = renderer.mesh.vertices(torch.from_numpy(face.landmarks(person[1], _controls())))
    lm1 = renderer.mesh.vertices(
        torch.from_numpy(face.landmarks(person[1], _controls(jaw_open=1.0, blink_left=1.0)))
    )
    moved = (lm1 - lm0).norm(dim=1)
    back = renderer.mesh.rest[:, 2] < -0.3
    assert moved[back].max() < 0.01 and moved.max() > 0.2  # < 1 mm at the back


def test_other_sizes_render(person):
    renderer = PersonRenderer(person[0]._neutral, person[0].appearance, size=96)
    frame = renderer.render(person[0]._neutral, *camera.head_pose())
    assert frame.rgb.shape == (96, 96, 3) and 0.2 < frame.mask.mean() < 0.6
    assert np.allclose(renderer.K[:2, 2], 48)
