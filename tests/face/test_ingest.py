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
from skimage import data

from talkingface.data.synthtalk.avatar import build_avatar
from talkingface.data.synthtalk.fileformat import read_avatar
from talkingface.errors import TalkingFaceError
from talkingface.face.ibug68 import interocular
from talkingface.face.ingest import ingest
from talkingface.face.pose import rotation_angle_degrees
from talkingface.lm3d import mouth_opening
from talkingface.media import write_mp4
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
    # The lips open and close with the truth's, in the canonical lm3d.
    r = np.corrcoef(mouth_opening(got["lm3d"]), mouth_opening(truth["lm3d"]))[0, 1]
    assert r >= 0.9, r
    # Head rotation relative to the first frame.
    rel = np.einsum("ij,tkj->tik", got["R"][0], got["R"])
    rel_truth = np.einsum("ij,tkj->tik", truth["R"][0], truth["R"])
    assert np.median(rotation_angle_degrees(rel, rel_truth)) <= 4.0
    # The canonical frame and units of the contract: a face about 1.4 units wide.
    width = np.ptp(got["lm3d"][:, :17, 0], axis=1).mean()
    assert 1.0 < width < 1.8 and abs(got["lm3d"][:, 30, 0].mean()) < 0.1
    report_file = json.loads((out / "ingest.json").read_text())
    assert (
        report_file["landmark_jitter_iod"]["smoothed"] < report_file["landmark_jitter_iod"]["raw"]
    )
    assert np.load(out / "torso_masks.npy").shape == (frames, 128, 128)


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


def test_bad_inputs_answer_their_codes(tmp_path):
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
