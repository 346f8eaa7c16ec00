"""`avatar ingest` from pixels alone: a SynthTalk avatar encoded to mp4 (H.264 + AAC) is
ingested and compared with its ground truth, trained on for a few steps, and every bad
input answers its code quickly with nothing left behind."""

from __future__ import annotations

import argparse
import io
import json
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from skimage import data

from talkingface.data.synthtalk.avatar import build_avatar
from talkingface.data.synthtalk.fileformat import read_avatar
from talkingface.errors import TalkingFaceError
from talkingface.face.ibug68 import interocular
from talkingface.face.ingest import ingest
from talkingface.face.pose import rotation_angle_degrees
from talkingface.lm3d import mouth_opening
from talkingface.media import write_mp4
from talkingface.render.regions import eye_ratio
from tests.face.test_video import audio_only_mp4

pytestmark = pytest.mark.slow
SECONDS = 8.0


@pytest.fixture(scope="module")
def synthtalk(tmp_path_factory):
    """(ground-truth avatar dir, its mp4): 8 s of a SynthTalk person at 256 x 256."""
    root = tmp_path_factory.mktemp("ingest")
    build_avatar(root / "truth", seconds=SECONDS, seed=3, size=256, progress=False)
    truth = read_avatar(root / "truth")
    write_mp4(root / "talk.mp4", truth["frames"], 25, truth["audio"], 16000, crf=18)
    return root / "truth", root / "talk.mp4"


@pytest.fixture(scope="module")
def ingested(synthtalk, tmp_path_factory):
    _, video = synthtalk
    out = tmp_path_factory.mktemp("ingested") / "avatar"
    report = ingest(video, out, size=128, fov_deg=18.0, min_seconds=5.0)
    return out, report


def test_synthtalk_from_pixels_matches_its_ground_truth(synthtalk, ingested):
    truth = read_avatar(synthtalk[0])
    out, report = ingested
    got = read_avatar(out)
    frames = len(truth["frames"])
    assert got["frames"].shape == (frames, 128, 128, 3) and got["masks"].shape == (frames, 128, 128)
    assert report["frames"]["face_found"] == frames  # the face in every frame
    # Landmarks, in the source's pixels through the recorded crop (the jaw apart).
    crop = report["crop"]
    lm2d = got["lm2d"] * crop["side"] / crop["size"] + [crop["x0"], crop["y0"]]
    err = np.linalg.norm(lm2d - truth["lm2d"], axis=-1) / interocular(truth["lm2d"])[:, None]
    assert np.median(err[:, 48:68]) <= 0.08  # mouth
    assert np.median(err[:, 17:68]) <= 0.08  # brows, nose, eyes, mouth
    # The lips open and close with the truth's, in the canonical lm3d, their gap read from
    # the pixels (face.lips; r 0.975 when written, 0.954 with the mesh's own inner lips).
    assert report["inner_lips"]["applied"], report["inner_lips"]
    # Too short a video (8 s) for the poses from the skin: the mesh's are kept (`face.patches`).
    assert not report["pose_tracking"]["used"], report["pose_tracking"]
    r = np.corrcoef(mouth_opening(got["lm3d"]), mouth_opening(truth["lm3d"]))[0, 1]
    assert r >= 0.96, r
    # The eyes close as deep as the truth's, their upper lids read from the pixels
    # (face.eyes): the slope of the eye-opening ratio on the truth's 1.04 when written, 0.61
    # with the mesh's own lids (r 0.84 both ways on these 8 s).
    assert report["eyelids"]["applied"], report["eyelids"]
    eyes_got, eyes_true = (eye_ratio(np.asarray(x["lm3d"], np.float64)) for x in (got, truth))
    assert 0.8 < np.polyfit(eyes_true, eyes_got, 1)[0] < 1.3
    assert np.corrcoef(eyes_got, eyes_true)[0, 1] >= 0.75
    # Head rotation relative to the first frame.
    rel = np.einsum("ij,tkj->tik", got["R"][0], got["R"])
    rel_truth = np.einsum("ij,tkj->tik", truth["R"][0], truth["R"])
    assert np.median(rotation_angle_degrees(rel, rel_truth)) <= 4.0
    # The canonical frame and units of the contract: a face about 1.4 units wide.
    width = np.ptp(got["lm3d"][:, :17, 0], axis=1).mean()
    assert 1.0 < width < 1.8 and abs(got["lm3d"][:, 30, 0].mean()) < 0.1
    report_file = json.loads((out / "ingest.json").read_text())
    jitter = report_file["landmark_jitter_iod"]
    # Ten views of each crop are steadier than one, and the smoothing steadier still.
    assert jitter["smoothed"] < jitter["raw"] < 0.8 * jitter["one_view"], jitter
    assert np.load(out / "torso_masks.npy").shape == (frames, 128, 128)


def _with_poses(ingested_dir, tmp_path, rotations, translations, k):
    """A copy of the ingested directory with other poses (R, t, K in its crop's pixels)."""
    import shutil

    out = tmp_path / "posed"
    shutil.copytree(ingested_dir, out)
    np.savez_compressed(out / "poses.npz", R=rotations.astype(np.float32),
                        t=translations.astype(np.float32), K=k.astype(np.float32))  # fmt: skip
    return out


def test_eval_ingest_measures_the_ingest_against_its_truth(synthtalk, ingested, tmp_path,
                                                            capsys):  # fmt: skip
    from scipy.spatial.transform import Rotation

    from talkingface.cli import main
    from talkingface.face.evaluate import evaluate_ingest

    truth_dir, _ = synthtalk
    out, report = ingested
    got = evaluate_ingest(out, truth_dir)
    assert got["frames"]["face_found"] == got["frames"]["kept"] == report["frames"]["kept"]
    assert got["nme_iod"]["mouth"] <= 0.08 and got["lip_opening_r"] >= 0.9, got
    assert got["eye_opening"]["r"] >= 0.75 and 0.8 < got["eye_opening"]["slope"] < 1.3, got
    assert got["rotation_error_deg"]["after_constant_rotation"] <= 4.0, got
    assert 0.0 < got["pose_consistency_px"]["train"] < 4.0, got  # crop pixels at 128 x 128
    # The head mask ends at the jaw, as the truth's does: the neck goes with the torso (IoU
    # 0.977, 0.26 % of the frame missed, 0.39 % extra when written; a cut near the collar
    # gave an IoU of 0.77 on a 60 s avatar).
    assert got["head_mask"]["iou"] >= 0.95 and got["head_mask"]["missed"] <= 0.006, got

    # The truth's own poses, seen through the crop and in a head frame turned by a constant
    # rotation and shifted: no error of any kind. Then each frame turned 2 degrees about a
    # random axis: errors of about that size, and the fixed points no longer fit.
    truth = read_avatar(truth_dir)
    crop = report["crop"]
    scale = crop["size"] / crop["side"]
    to_crop = np.array([[scale, 0, -crop["x0"] * scale], [0, scale, -crop["y0"] * scale],
                        [0, 0, 1]])  # fmt: skip
    k = to_crop @ truth["K"]
    q = Rotation.from_euler("xyz", [5, -10, 3], degrees=True).as_matrix()
    shift = np.array([0.1, -0.2, 0.3])  # the new head origin, in the truth's head frame
    lo = report["frames"]["dropped_why"]["no_face_at_start"]
    kept = slice(lo, lo + report["frames"]["kept"])
    rotations = truth["R"][kept].astype(np.float64)
    r = np.einsum("tij,jk->tik", rotations, q)
    t = truth["t"][kept] + np.einsum("tij,j->ti", rotations, shift)
    exact = evaluate_ingest(_with_poses(out, tmp_path / "exact", r, t, k), truth_dir)
    assert max(exact["rotation_error_deg"].values()) < 0.01, exact
    assert max(exact["pose_consistency_px"].values()) < 0.01, exact
    axes = np.random.default_rng(1).normal(size=(len(r), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    turns = Rotation.from_rotvec(np.deg2rad(2.0) * axes)
    noisy = evaluate_ingest(_with_poses(out, tmp_path / "noisy", turns.as_matrix() @ r, t, k),
                            truth_dir)  # fmt: skip
    assert 1.5 < noisy["rotation_error_deg"]["after_constant_rotation"] < 2.5, noisy
    assert noisy["pose_consistency_px"]["val"] > 0.5, noisy

    assert main(["eval", "ingest", "--data", str(out), "--truth", str(truth_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == got
    assert main(["eval", "ingest", "--data", str(out)]) == 2
    assert "--truth" in capsys.readouterr().err
    assert main(["eval", "ingest", "--data", str(truth_dir), "--truth", str(truth_dir)]) == 2
    assert "no ingest.json" in capsys.readouterr().err


def test_the_ingested_directory_trains(ingested, tmp_path):
    from talkingface.config import Settings
    from talkingface.render.commands import train_avatar
    from talkingface.render.data import load_avatar

    out, _ = ingested
    video = load_avatar(out, 64)
    assert video.frames.shape[1:] == (64, 64, 3) and video.masks.any()
    args = argparse.Namespace(data=out, out=tmp_path / "bundle", preset="tiny", steps=3, seed=1,
                              quiet=True, ckpt=None, publish=None)  # fmt: skip
    train_avatar(args, Settings.from_env({}), "cpu")
    assert (tmp_path / "bundle" / "renderer" / "model.safetensors").is_file()


def _mp4(frames, audio_seconds: float | None, fps: int = 25) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        h, w = frames[0].shape[:2]
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        sound = None
        if audio_seconds:
            sound = container.add_stream("aac", rate=16000, layout="mono")
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            t = np.arange(int(audio_seconds * 16000)) / 16000
            tone = (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            for packet in list(sound.encode(frame)) + list(sound.encode(None)):
                container.mux(packet)
    return buffer.getvalue()


def _code(tmp_path, payload: bytes, name: str = "in.mp4", **kwargs) -> str:
    path = tmp_path / name
    path.write_bytes(payload)
    out = tmp_path / f"out-{name}"
    started = time.monotonic()
    with pytest.raises(TalkingFaceError) as caught:
        ingest(path, out, size=64, **{"min_seconds": 2.0, **kwargs})
    assert time.monotonic() - started < 10.0, name  # answered within 10 s
    assert not out.exists()  # nothing left behind
    return caught.value.code


def _turned_away(truth, yaw_deg: float, frames: int = 75) -> list[np.ndarray]:
    """The ground truth's mouth motion on another SynthTalk person, head turned `yaw_deg`."""
    from talkingface.data.synthtalk.camera import head_pose
    from talkingface.data.synthtalk.speaker import sample_speaker
    from talkingface.data.synthtalk.video import PersonRenderer, sample_appearance

    rng = np.random.default_rng(0)
    speaker = sample_speaker(rng, "turned")
    renderer = PersonRenderer(speaker.neutral_landmarks(), sample_appearance(rng), size=256)
    out = []
    for i in range(frames):
        R, t = head_pose(yaw=np.deg2rad(yaw_deg + 3 * np.sin(i / 7)))
        out.append(renderer.render(truth["lm3d"][i], R, t).rgb)
    return out


def test_bad_inputs_answer_their_codes(synthtalk, tmp_path):
    from PIL import Image

    photo = np.ascontiguousarray(data.astronaut()[:384, 64:448])  # one face, 66 px eye to eye
    small = np.asarray(Image.fromarray(data.astronaut()).resize((160, 160)))  # 21 px
    still = [photo] * 75  # 3 s of a frozen frame
    head = data.astronaut()[40:240, 130:330]
    pair = np.ascontiguousarray(np.concatenate([head, head[:, ::-1]], axis=1))
    noise = [np.random.default_rng(i).integers(0, 256, (128, 128, 3), np.uint8) for i in range(75)]
    png = io.BytesIO()
    Image.fromarray(photo).save(png, format="PNG")
    cases = {
        "VIDEO_CORRUPT": (b"\x00\x00\x00\x18ftypmp42" + bytes(4000), {}),
        "VIDEO_NO_VIDEO_STREAM": (png.getvalue(), {}),
        "VIDEO_NO_AUDIO": (_mp4(still, None), {}),
        "VIDEO_TOO_SHORT": (_mp4(still[:25], 1.0), {}),
        "VIDEO_TOO_LONG": (_mp4(still, 3.0), {"max_seconds": 2.0}),
        "VIDEO_NO_FACE": (_mp4(noise, 3.0), {}),
        "VIDEO_MULTIPLE_FACES": (_mp4([pair] * 75, 3.0), {}),
        "VIDEO_FACE_TOO_SMALL": (_mp4([small] * 75, 3.0), {}),
        "VIDEO_FROZEN": (_mp4(still, 3.0), {}),
        "VIDEO_EXTREME_POSE": (_mp4(_turned_away(read_avatar(synthtalk[0]), 55.0), 3.0), {}),
    }
    got = {code: _code(tmp_path, payload, f"{code}.mp4", **kwargs)
           for code, (payload, kwargs) in cases.items()}  # fmt: skip
    assert got == {code: code for code in cases}
    audio_only = audio_only_mp4(3.0)
    assert _code(tmp_path, audio_only, "audio.mp4") == "VIDEO_NO_VIDEO_STREAM"


def test_the_ingest_command(synthtalk, tmp_path, capsys, monkeypatch):
    from talkingface.cli import main

    monkeypatch.setenv("TALKINGFACE_VIDEO_MIN_SECONDS", "5")
    out = tmp_path / "cli-avatar"
    argv = ["avatar", "ingest", "--video", str(synthtalk[1]), "--out", str(out), "--size", "64"]
    assert main([*argv, "--json", "--preview"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["out"] == str(out) and report["frames"]["in"] == int(SECONDS * 25)
    from talkingface.media import probe

    info = probe(out / report["preview"])  # three 64-pixel panels side by side, with sound
    assert (info["video"]["width"], info["video"]["height"]) == (192, 64)
    assert info["audio"]["codec"] == "aac"
    assert main(argv) == 2  # the directory is not empty now
    assert "INVALID_REQUEST" in capsys.readouterr().err


def test_frames_without_a_face_at_the_ends_are_cut_with_their_sound(synthtalk, tmp_path):
    truth = read_avatar(synthtalk[0])
    grey = np.full((25, *truth["frames"].shape[1:]), 128, np.uint8)  # 1 s before, 0.4 s after
    frames = np.concatenate([grey, np.asarray(truth["frames"]), grey[:10]])
    audio = np.concatenate(
        [np.zeros(16000, np.float32), truth["audio"], np.zeros(6400, np.float32)]
    )
    write_mp4(tmp_path / "padded.mp4", frames, 25, audio, 16000, crf=18)
    report = ingest(tmp_path / "padded.mp4", tmp_path / "avatar", size=64, fov_deg=18.0,
                    min_seconds=5.0)  # fmt: skip
    count = len(truth["frames"])
    assert report["frames"]["in"] == count + 35
    assert report["frames"]["dropped_why"] == {"no_face_at_start": 25, "no_face_at_end": 10}
    assert report["frames"]["kept"] == count and report["frames"]["dropped"] == 35
    assert report["frames"]["decoder"]["source_frames_skipped"] == 0
    got = read_avatar(tmp_path / "avatar")
    assert len(got["frames"]) == count
    # The sound kept is the person's, not the silence before them.
    assert abs(len(got["audio"]) - count * 640) <= 640
    n, m = count * 600, 20000  # where the kept sound best matches the person's own
    best = max(range(-m, m + 1, 40), key=lambda lag: abs(np.dot(
        got["audio"][m : n - m], truth["audio"][m + lag : n - m + lag])))  # fmt: skip
    assert abs(best) <= 1600, best  # within 0.1 s (codec delay), not the 1 s of silence


@pytest.fixture(scope="module")
def astronaut_mesh():
    from tests.face.puppet import still_photo

    return still_photo()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_real_photo_moved_and_talking_is_tracked_as_it_was_moved(
    synthtalk, astronaut_mesh, tmp_path, seed, monkeypatch
):
    """A photo puppet: the astronaut's mouth opens as a SynthTalk person's does while the
    picture turns (±12°), zooms (±8 %) and shifts (±12 px) along a smooth random track. Its
    poses are read from the skin although the video is short and small (`face.patches`
    would keep the mesh's on 8 s at 128 px): real skin is what that step is for."""
    from talkingface.face import patches
    from talkingface.face.ibug68 import to_ibug68
    from tests.face.puppet import mouth_openings, puppet_video

    monkeypatch.setattr(patches, "MIN_FRAMES", 100)
    monkeypatch.setattr(patches, "MIN_INTEROCULAR_PX", 20)

    photo, points = astronaut_mesh
    truth = read_avatar(synthtalk[0])
    openings = mouth_openings(truth["lm3d"], points)
    video = puppet_video(photo, points, openings, seed)
    write_mp4(tmp_path / "puppet.mp4", video.frames, 25, truth["audio"], 16000, crf=18)
    report = ingest(tmp_path / "puppet.mp4", tmp_path / "avatar", size=128, min_seconds=5.0)
    got = read_avatar(tmp_path / "avatar")
    assert report["frames"]["face_found"] == report["frames"]["in"] == len(openings)
    # Equivariance: the brows, eyes and nose where the known motion takes the still photo's.
    crop = report["crop"]
    lm2d = got["lm2d"] * crop["side"] / crop["size"] + [crop["x0"], crop["y0"]]
    still = to_ibug68(points)[:, :2]
    expected = (
        np.einsum("tij,nj->tni", video.similarity[:, :, :2], still)
        + video.similarity[:, None, :, 2]
    )
    error = np.linalg.norm(lm2d - expected, axis=-1)[:, 17:48] / interocular(expected)[:, None]
    assert np.median(error) <= 0.02, np.median(error)
    # The in-plane rotation, from the recovered head poses: the head's x axis in the image.
    angle = np.rad2deg(np.arctan2(got["R"][:, 1, 0], got["R"][:, 0, 0]))
    turned = (angle - angle[0]) - (video.degrees - video.degrees[0])
    assert np.median(np.abs(turned)) <= 1.0, np.median(np.abs(turned))
    # The photo never turns out of its plane: with the known in-plane turn taken back, the
    # head holds nearly still. The mesh's poses held to a p90 of 0.47-0.59 degrees; the
    # poses from the skin read 1.20 / 1.58 / 1.82 (before face.patches' judge was added): a
    # flat picture's pixels hardly show a small turn out of its plane, and the face mesh's
    # relief, which the patches' depths start from, is not the picture's (docs/ingest.md,
    # "Poses from tracked patches on the mesh's depth").
    known = Rotation.from_euler("z", video.degrees[:, None] - video.degrees[0], degrees=True)
    still = np.swapaxes(known.as_matrix(), 1, 2) @ np.asarray(got["R"], np.float64)
    wobble = rotation_angle_degrees(still, Rotation.from_matrix(still).mean().as_matrix()[None])
    assert np.percentile(wobble, 90) <= 2.5, np.percentile(wobble, 90)
    assert report["pose_expression_removed"]["rotation_deg"] > 0.3
    assert report["pose_tracking"]["used"], report["pose_tracking"]
    assert report["pose_tracking"]["error_px_median"] < 0.5, report["pose_tracking"]
    # The mouth opens when the puppet's does.
    r = np.corrcoef(mouth_opening(got["lm3d"]), openings)[0, 1]
    assert r >= 0.9, r


def test_the_puppet_avatar_script_writes_an_exact_pose_track(synthtalk, tmp_path):
    """scripts/puppet_avatar.py: the exact track's head turns in the picture's plane exactly
    as the picture was turned and holds still out of it; the ingest's own track does not."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "puppet_avatar.py"
    spec = importlib.util.spec_from_file_location("puppet_avatar", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main(["--mouth", str(synthtalk[0]), "--out", str(tmp_path / "p"),
                       "--size", "128", "--min-seconds", "5"])  # fmt: skip
    degrees = np.load(tmp_path / "p" / "truth.npz")["degrees"]
    known = Rotation.from_euler("z", degrees[:, None] - degrees[0], degrees=True).as_matrix()

    def wobble(directory):
        rot = np.swapaxes(known, 1, 2) @ np.asarray(read_avatar(directory)["R"], np.float64)
        mean = Rotation.from_matrix(rot).mean().as_matrix()[None]
        return rotation_angle_degrees(rot, mean)

    exact, ingested = wobble(out["exact"]), wobble(out["ingested"])
    assert exact.max() < 0.05, exact.max()
    assert np.median(ingested) > 5 * np.median(exact), (np.median(ingested), np.median(exact))
