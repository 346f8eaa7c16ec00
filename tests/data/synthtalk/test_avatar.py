"""`synth avatar` end to end: format, geometry, pixels that match the landmarks, blinks."""

import numpy as np
import pytest

from talkingface import lm3d as L
from talkingface.data.synthtalk import camera
from talkingface.data.synthtalk import fileformat as ff
from talkingface.data.synthtalk.appearance import SCLERA
from talkingface.data.synthtalk.avatar import build_avatar
from talkingface.data.synthtalk.clip import avatar_person
from talkingface.data.synthtalk.preview import avatar_preview
from talkingface.data.synthtalk.video import PersonRenderer
from talkingface.media import probe
from tests.data.synthtalk.colours import fits, window

SIZE = 160
SECONDS = 8.0


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatar")
    build_avatar(root, SECONDS, seed=5, size=SIZE, progress=False)
    return root, ff.read_avatar(root)


def test_format(avatar):
    _, data = avatar
    manifest = data["manifest"]
    frames = manifest["frames"]
    assert manifest["format"] == ff.AVATAR and manifest["version"] == ff.FORMAT_VERSION
    assert frames == round(SECONDS * 25)
    assert data["frames"].shape == (frames, SIZE, SIZE, 3) and data["frames"].dtype == np.uint8
    assert data["masks"].shape == (frames, SIZE, SIZE) and data["masks"].dtype == np.bool_
    assert data["lm3d"].shape == (frames, 68, 3) and data["lm2d"].shape == (frames, 68, 2)
    assert data["R"].shape == (frames, 3, 3) and data["t"].shape == (frames, 3)
    assert abs(len(data["audio"]) / ff.SAMPLE_RATE - frames / 25) < 1e-3
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train == [0, frames * 10 // 11] and val == [frames * 10 // 11, frames]
    # Head motion of the documented size actually happens in this clip.
    assert np.abs(data["euler_deg"][:, :2]).max() > 3


def test_projected_landmarks_match_the_poses(avatar):
    _, data = avatar
    projected = camera.project(data["lm3d"], data["R"], data["t"], data["K"])
    np.testing.assert_allclose(projected, data["lm2d"], atol=1e-3)
    assert (data["lm2d"] > 0).all() and (data["lm2d"] < SIZE).all()


def test_background_is_static_outside_the_mask(avatar):
    _, data = avatar
    for i in (0, len(data["frames"]) // 2, len(data["frames"]) - 1):
        outside = ~(data["masks"][i] | data["torso_masks"][i])
        assert outside.mean() > 0.3
        np.testing.assert_array_equal(data["frames"][i][outside], data["background"][outside])


def _lip_band(lm: np.ndarray) -> np.ndarray:
    pairs = [(50, 61), (51, 62), (52, 63), (56, 65), (57, 66), (58, 67)]
    return np.array([(lm[o] + lm[i]) / 2 for o, i in pairs])


def test_landmarks_fall_on_the_drawn_lips_and_eyes(avatar):
    _, data = avatar
    app = data["manifest"]["appearance"]
    frames = data["frames"]
    open_eyes = np.flatnonzero(data["blink"] < 0.05)
    lip_hits, eye_hits, sclera_hits = [], [], []
    for i in open_eyes[:: max(1, len(open_eyes) // 40)]:
        lm, R, t, K = data["lm3d"][i], data["R"][i], data["t"][i], data["K"]
        rgb = np.asarray(frames[i])
        for point in camera.project(_lip_band(lm), R, t, K):
            lip_hits.append(fits(window(rgb, point, 0), app["lip"]).mean())
        for eye, inner in ((L.RIGHT_EYE, 3), (L.LEFT_EYE, 0)):
            centre = camera.project(lm[eye].mean(0), R, t, K)
            eye_hits.append(1.0 - fits(window(rgb, centre, 0), app["skin"]).mean())
            white = 0.45 * lm[eye].mean(0) + 0.55 * lm[eye][inner]
            sclera_hits.append(fits(window(rgb, camera.project(white, R, t, K), 0), SCLERA).mean())
    assert len(lip_hits) >= 100
    assert np.mean(lip_hits) > 0.8, np.mean(lip_hits)
    assert np.mean(eye_hits) > 0.9, np.mean(eye_hits)
    assert np.mean(sclera_hits) > 0.6, np.mean(sclera_hits)


def test_blinks_close_the_lids_in_landmarks_and_pixels(avatar):
    _, data = avatar
    app = data["manifest"]["appearance"]
    blinks = np.flatnonzero(data["blink"] > 0.9)  # blink depth is U(0.92, 1)
    assert len(blinks) >= 1, "seed 5 blinks within 8 s"
    assert (L.eye_opening(data["lm3d"][blinks]) < 0.01).all()
    assert (L.eye_opening(data["lm3d"][data["blink"] < 0.05]) > 0.05).all()
    for i in blinks:
        lm, R, t, K = data["lm3d"][i], data["R"][i], data["t"][i], data["K"]
        for eye in (L.RIGHT_EYE, L.LEFT_EYE):
            centre = camera.project(lm[eye].mean(0), R, t, K)
            assert fits(window(np.asarray(data["frames"][i]), centre, 1), app["skin"]).mean() >= 0.5


def test_mouth_interior_shows_when_the_mouth_opens(avatar):
    _, data = avatar
    app = data["manifest"]["appearance"]
    gap = L.mouth_opening(data["lm3d"])
    # Past ~1.5 cm the teeth no longer cover the centre of the opening.
    wide = np.flatnonzero(gap > 0.15)
    assert len(wide) >= 5
    skin_brightness = np.mean(app["skin"]) * 255
    dark = []
    for i in wide:
        lm, R, t, K = data["lm3d"][i], data["R"][i], data["t"][i], data["K"]
        centre = camera.project(lm[L.INNER_LIPS].mean(0), R, t, K)
        dark.append(
            window(np.asarray(data["frames"][i]), centre, 0).mean() < 0.35 * skin_brightness
        )
    assert np.mean(dark) > 0.8


def test_same_seed_same_avatar(tmp_path):
    for name in ("a", "b"):
        build_avatar(tmp_path / name, 1.0, seed=9, size=64, progress=False)
    a, b = ff.read_avatar(tmp_path / "a"), ff.read_avatar(tmp_path / "b")
    np.testing.assert_array_equal(a["lm3d"], b["lm3d"])
    np.testing.assert_array_equal(np.asarray(a["frames"]), np.asarray(b["frames"]))
    np.testing.assert_array_equal(a["audio"], b["audio"])


def test_preview_has_h264_video_and_audio_of_the_right_length(avatar, tmp_path):
    root, data = avatar
    info = probe(avatar_preview(root, tmp_path / "preview.mp4"))
    assert info["video"]["codec"] == "h264" and info["audio"]["codec"] == "aac"
    assert info["video"]["frames"] == data["manifest"]["frames"]
    assert abs(info["video"]["duration"] - SECONDS) < 0.05
    assert abs(info["audio"]["duration"] - SECONDS) < 0.1


def test_torso_masks_are_disjoint_from_the_head_and_cover_the_rest_of_the_person(avatar):
    _, data = avatar
    heads, torsos = np.asarray(data["masks"]), np.asarray(data["torso_masks"])
    assert torsos.shape == heads.shape and torsos.dtype == np.bool_
    assert not (heads & torsos).any()
    assert 0.03 < torsos.mean() < 0.3 and torsos.any((1, 2)).all()  # every frame shows one
    # The torso touches the bottom edge (the shoulders leave the frame) and the head does not.
    assert torsos[:, -1].any(1).all() and not heads[:, -1].any()


def test_the_torso_moves_on_its_own(avatar):
    """The recorded torso is not rigid with the head: its pose is not the head's pose times a
    fixed transform, and re-rendering a frame with the torso rigid with the head (the old
    SynthTalk) draws other torso pixels than the recorded ones."""
    _, data = avatar
    R, tR = data["R"].astype(np.float64), data["torso_R"].astype(np.float64)
    relative = np.einsum("tij,tkj->tik", tR, R)  # torso rotation in the head's frame
    angle = np.degrees(np.arccos(np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angle.max() - angle.min() > 3  # the torso turns relative to the head by degrees
    speaker, appearance = avatar_person(data["manifest"])
    renderer = PersonRenderer(speaker.neutral_landmarks(), appearance, size=SIZE)
    worst = int(np.argmax(angle))
    pose = (data["R"][worst], data["t"][worst])
    torso_pose = (data["torso_R"][worst], data["torso_t"][worst])
    own = renderer.render(data["lm3d"][worst], *pose, *torso_pose)
    np.testing.assert_array_equal(own.torso, data["torso_masks"][worst])
    np.testing.assert_array_equal(own.rgb, data["frames"][worst])
    rigid = renderer.render(data["lm3d"][worst], *pose)
    changed = (rigid.torso != own.torso).sum() / own.torso.sum()
    assert changed > 0.05, changed
    # The head itself is drawn the same either way, bar the seam pixels the neck covers.
    assert (rigid.head != own.head).mean() < 0.01


def test_same_seed_same_torso_motion():
    euler = np.zeros((50, 3))
    shift = np.zeros((50, 3))
    a = camera.torso_motion(np.random.default_rng(3), euler, shift)
    b = camera.torso_motion(np.random.default_rng(3), euler, shift)
    c = camera.torso_motion(np.random.default_rng(4), euler, shift)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert np.abs(a[2] - c[2]).max() > 1e-3  # its own sway, even with a still head
