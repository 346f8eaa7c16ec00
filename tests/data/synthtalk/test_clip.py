"""`synth clip`: the avatar's person, new sentences in a new voice, the avatar's pose track."""

import json
import shutil

import numpy as np
import pytest

from talkingface.cli import main
from talkingface.data.synthtalk import camera
from talkingface.data.synthtalk import fileformat as ff
from talkingface.data.synthtalk.avatar import build_avatar, read_script
from talkingface.data.synthtalk.clip import avatar_person, build_clip
from talkingface.data.synthtalk.corpus import HELDOUT_LANGUAGE, stream_rng
from talkingface.data.synthtalk.speech import Voice
from talkingface.data.synthtalk.video import PersonRenderer
from talkingface.media import read_wav

SIZE = 32
AVATAR_SECONDS = 1.0  # 25 recorded poses: shorter than the clip, so the track turns back
CLIP_SECONDS = 1.5
CLIP_SEED = 3


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatar")
    build_avatar(root, AVATAR_SECONDS, seed=5, size=SIZE, progress=False)
    return root, ff.read_avatar(root)


@pytest.fixture(scope="module")
def clip(avatar, tmp_path_factory):
    root = tmp_path_factory.mktemp("clip") / "clip"
    returned = build_clip(avatar[0], root, CLIP_SEED, seconds=CLIP_SECONDS, progress=False)
    return root, ff.read_clip(root), returned


def test_format(clip):
    root, data, returned = clip
    manifest = data["manifest"]
    frames = manifest["frames"]
    assert manifest["format"] == ff.CLIP and manifest["version"] == ff.FORMAT_VERSION
    assert manifest["fps"] == 25 and manifest["sample_rate"] == ff.SAMPLE_RATE
    assert manifest["size"] == SIZE and manifest["seed"] == CLIP_SEED
    audio, rate = read_wav(root / "audio.wav")
    assert rate == ff.SAMPLE_RATE and audio.ndim == 1
    assert abs(len(audio) / rate - CLIP_SECONDS) < 1e-3
    assert manifest["duration_seconds"] == pytest.approx(len(audio) / rate, abs=1e-4)
    assert abs(frames - len(audio) / rate * 25) <= 1
    assert data["frames"].shape == (frames, SIZE, SIZE, 3) and data["frames"].dtype == np.uint8
    assert data["masks"].shape == (frames, SIZE, SIZE) and data["masks"].any()
    assert data["lm3d"].shape == (frames, 68, 3) and data["lm3d"].dtype == np.float32
    assert data["lm2d"].shape == (frames, 68, 2)
    assert data["pose_indices"].shape == (frames,)
    assert data["R"].shape == (frames, 3, 3) and data["t"].shape == (frames, 3)
    # The speech moves the mouth: the ground truth is not a still face.
    assert np.ptp(data["lm3d"][:, 62, 1] - data["lm3d"][:, 66, 1]) > 0.01
    assert {k: v for k, v in returned.items() if k != "seconds_to_build"} == manifest
    assert returned["seconds_to_build"] > 0


def test_the_clip_shows_the_avatars_person(avatar, clip):
    _, a = avatar
    _, c, _ = clip
    assert c["manifest"]["avatar"]["seed"] == a["manifest"]["seed"]
    assert c["manifest"]["avatar"]["speaker_id"] == a["manifest"]["speaker"]["id"]
    np.testing.assert_array_equal(c["neutral_lm3d"], a["neutral_lm3d"])
    speaker, appearance = avatar_person(a["manifest"])
    renderer = PersonRenderer(speaker.neutral_landmarks(), appearance, size=SIZE)
    # The recreated person reproduces the avatar's own frame exactly ...
    np.testing.assert_array_equal(
        renderer.render(a["lm3d"][0], a["R"][0], a["t"][0], a["torso_R"][0], a["torso_t"][0]).rgb,
        a["frames"][0],
    )
    np.testing.assert_array_equal(renderer.background, a["background"])
    # ... and the clip's frames are that person saying the clip's landmarks.
    for i in (0, len(c["frames"]) - 1):
        pose = (c["R"][i], c["t"][i], c["torso_R"][i], c["torso_t"][i])
        frame = renderer.render(c["lm3d"][i], *pose)
        np.testing.assert_array_equal(frame.rgb, c["frames"][i])
        np.testing.assert_array_equal(frame.head, c["masks"][i])
        np.testing.assert_array_equal(frame.torso, c["torso_masks"][i])
    # The clip's torso replays the avatar's torso track with its head poses.
    np.testing.assert_array_equal(c["torso_R"], a["torso_R"][c["pose_indices"]])
    # Outside the person the clip shows the avatar's background plate.
    outside = ~(c["masks"][0] | c["torso_masks"][0])
    np.testing.assert_array_equal(c["frames"][0][outside], a["background"][outside])


def test_new_language_voice_and_sentences(avatar, clip):
    _, a = avatar
    _, c, _ = clip
    manifest = c["manifest"]
    assert manifest["language"] == HELDOUT_LANGUAGE != a["manifest"]["language"]
    voice = Voice(**{k: v for k, v in manifest["voice"].items() if k != "voice_id"})
    assert voice.language == HELDOUT_LANGUAGE and voice.voice_id == manifest["voice"]["voice_id"]
    assert manifest["voice"]["voice_id"] != a["manifest"]["voice"]["voice_id"]
    timbre = ("gender", "variant", "rate_wpm", "pitch", "pitch_range")
    assert any(manifest["voice"][k] != a["manifest"]["voice"][k] for k in timbre)
    texts = [s["text"] for s in c["script"]["sentences"]]
    assert texts and texts == manifest["sentences"]
    script = json.loads((avatar[0] / "script.json").read_text())
    avatar_texts = {s["text"] for s in script["sentences"]}
    assert not set(texts) & avatar_texts


def test_a_clashing_sentence_is_drawn_again():
    voice = Voice("it", "female", "f2", 170, 60, 50)
    _, _, first = read_script(2.0, stream_rng(1, 9), voice)
    avoid = {s["text"] for s in first}
    _, _, again = read_script(2.0, stream_rng(1, 9), voice, avoid)
    assert again and not {s["text"] for s in again} & avoid


def test_poses_replay_the_avatars_track_back_and_forth(avatar, clip):
    _, a = avatar
    _, c, _ = clip
    track = len(a["R"])
    frames = c["manifest"]["frames"]
    assert track == 25 and frames > track  # the test needs the track to turn back
    expected = np.r_[0:track, track - 2 : -1 : -1][:frames]
    np.testing.assert_array_equal(c["pose_indices"], expected)
    np.testing.assert_array_equal(c["R"], a["R"][expected])
    np.testing.assert_array_equal(c["t"], a["t"][expected])
    assert c["manifest"]["pose"] == {"mode": "pingpong", "start": 0, "track_frames": track}
    projected = camera.project(c["lm3d"], a["R"][expected], a["t"][expected], a["K"])
    np.testing.assert_allclose(c["lm2d"], projected, atol=1e-3)


def test_same_avatar_and_seed_same_files(avatar, clip, tmp_path):
    root, _, _ = clip
    build_clip(avatar[0], tmp_path / "again", CLIP_SEED, seconds=CLIP_SECONDS, progress=False)
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (root / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    build_clip(avatar[0], tmp_path / "other", CLIP_SEED + 1, seconds=CLIP_SECONDS, progress=False)
    assert (root / "audio.wav").read_bytes() != (tmp_path / "other" / "audio.wav").read_bytes()


def test_a_manifest_that_does_not_recreate_the_person_is_refused(avatar, tmp_path):
    for field, value in (("seed", 6), ("identity", None), ("version", 2)):
        copy = tmp_path / field
        shutil.copytree(avatar[0], copy)
        manifest = json.loads((copy / ff.MANIFEST).read_text())
        if field == "identity":
            manifest["speaker"]["identity"][0] += 0.01
        else:
            manifest[field] = value
        (copy / ff.MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ValueError):
            build_clip(copy, tmp_path / f"out-{field}", 1, seconds=0.5, progress=False)
        assert not (tmp_path / f"out-{field}" / ff.MANIFEST).exists()


def test_an_existing_product_is_not_overwritten(avatar, clip):
    root, _, _ = clip
    before = (root / "audio.wav").read_bytes()
    with pytest.raises(FileExistsError):
        build_clip(avatar[0], root, CLIP_SEED + 1, seconds=0.5, progress=False)
    with pytest.raises(FileExistsError):
        build_clip(avatar[0], avatar[0], CLIP_SEED, seconds=0.5, progress=False)
    assert (root / "audio.wav").read_bytes() == before


def test_cli(avatar, tmp_path, capsys):
    out = tmp_path / "clip"
    argv = ["synth", "clip", "--avatar", str(avatar[0]), "--out", str(out), "--seed", "4"]
    assert main([*argv, "--language", "de", "--seconds", "0.8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["format"] == ff.CLIP and result["out"] == str(out)
    assert result["language"] == "de" and result["seed"] == 4
    assert ff.read_clip(out)["manifest"]["frames"] == result["frames"] == 20
    assert main([*argv, "--quiet"]) == 2  # out already holds a clip
    assert "already holds" in capsys.readouterr().err
    assert main(["synth", "clip", "--avatar", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
