"""Reading uploaded video in the sandbox: 25 fps by nearest timestamps from constant and
variable frame rates, rotation metadata honoured, frames streamed to a file, and the bad
inputs answered with their codes."""

from __future__ import annotations

import io
import itertools
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from talkingface.errors import TalkingFaceError
from talkingface.face.video import probe, read_frames

W, H = 96, 64


def _frame(i: int) -> np.ndarray:
    """Frame i: a flat grey level of 8 * (i % 30) + 8 with a white block in the top-left."""
    rgb = np.full((H, W, 3), 8 * (i % 30) + 8, np.uint8)
    rgb[:16, :24] = 255
    return rgb


def _level(rgb: np.ndarray) -> int:
    """Which i % 30 a decoded frame shows (from its grey level away from the block)."""
    grey = float(np.median(rgb[rgb.shape[0] // 2 :, rgb.shape[1] // 2 :]))
    return round((grey - 8) / 8)


def _mp4(pts_ms: list[int], rotation: int = 0, audio: bool = False) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.options = {"crf": "10", "g": "1"}
        if rotation:
            stream.set_display_rotation(rotation)
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def _nearest(pts_ms: list[int], count: int) -> list[int]:
    t = np.asarray(pts_ms) / 1000
    return [int(np.argmin(np.abs(t - (t[0] + k / 25)) + 1e-9 * np.arange(len(t))))
            for k in range(count)]  # fmt: skip


@pytest.mark.parametrize("fps", [30, 25, 50])
def test_constant_frame_rates_come_out_at_25(tmp_path, fps):
    pts = [round(1000 * i / fps) for i in range(2 * fps)]  # 2 seconds
    data = _mp4(pts)
    stats: dict = {}
    frames = read_frames(data, tmp_path / "frames.raw", stats=stats)
    assert frames.shape == (50, H, W, 3)
    nearest = _nearest(pts, 50)
    assert [_level(f) for f in frames] == [i % 30 for i in nearest]
    # What the resampling did: source frames never used, output frames repeating the last.
    assert stats["source_frames"] == len(pts)
    assert stats["source_frames_skipped"] == len(pts) - len(set(nearest))
    assert stats["frames_repeated"] == sum(a == b for a, b in itertools.pairwise(nearest))
    assert stats["packets_undecodable"] == 0
    info = probe(data)
    assert (info["width"], info["height"], info["has_audio"]) == (W, H, False)


def test_a_variable_frame_rate_is_resampled_by_timestamps(tmp_path):
    rng = np.random.default_rng(0)
    pts = np.cumsum(np.r_[0, rng.integers(15, 70, 59)]).tolist()  # 15-70 ms apart
    frames = read_frames(_mp4(pts), tmp_path / "frames.raw")
    expected = _nearest(pts, len(frames))
    assert abs(len(frames) - (pts[-1] / 1000) * 25) <= 2
    assert [_level(f) for f in frames] == [i % 30 for i in expected]


def test_rotation_metadata_is_honoured(tmp_path):
    frames = read_frames(_mp4([0, 40, 80, 120], rotation=90), tmp_path / "frames.raw")
    assert frames.shape[1:3] == (W, H)  # upright: the sides swapped
    # Rotated 90 degrees counter-clockwise: the top-left block is now bottom-left.
    assert frames[0][-16:, :16].mean() > 240 and frames[0][:16, :16].mean() < 200


def test_size_caps_the_long_side(tmp_path):
    frames = read_frames(_mp4([0, 40, 80]), tmp_path / "frames.raw", size=48)
    assert frames.shape[1:3] == (32, 48)


def audio_only_mp4(seconds: float) -> bytes:
    """An audio file named .mp4: AAC silence, no video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        samples = np.zeros((1, int(seconds * 16000)), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    return buffer.getvalue()


def _code(data: bytes, tmp_path, **kwargs) -> str:
    with pytest.raises(TalkingFaceError) as caught:
        read_frames(data, tmp_path / "bad.raw", **kwargs)
    return caught.value.code


def test_bad_inputs_get_their_codes(tmp_path):
    assert _code(b"not a video at all" * 50, tmp_path) == "VIDEO_CORRUPT"
    good = _mp4([40 * i for i in range(50)])
    assert _code(good[: len(good) // 3], tmp_path) == "VIDEO_CORRUPT"  # cut off mid-file
    assert _code(good, tmp_path, max_seconds=1.0) == "VIDEO_TOO_LONG"
    audio = audio_only_mp4(1.0)
    assert _code(audio, tmp_path) == "VIDEO_NO_VIDEO_STREAM"
    with pytest.raises(TalkingFaceError) as caught:
        probe(audio)
    assert caught.value.code == "VIDEO_NO_VIDEO_STREAM"


def test_streamed_frames_are_the_stored_ones(tmp_path):
    from talkingface.face.video import iter_frames

    pts = [round(1000 * i / 30) for i in range(60)]  # 2 s at 30 fps
    data = _mp4(pts, rotation=90)
    stored: dict = {}
    frames = read_frames(data, tmp_path / "frames.raw", stats=stored)
    streamed: dict = {}
    got = list(iter_frames(data, stats=streamed))
    assert len(got) == len(frames) == 50
    assert all(np.array_equal(a, b) for a, b in zip(got, frames, strict=True))
    assert streamed == stored and streamed["source_frames_skipped"] == 10


def test_a_stream_stopped_early_stops_its_decoder(tmp_path):
    from talkingface.face.video import iter_frames

    data = _mp4([round(1000 * i / 25) for i in range(250)])  # 10 s
    started = time.monotonic()
    stream = iter_frames(data)
    first = [next(stream) for _ in range(3)]
    stream.close()  # the decoder, blocked on a full pipe, gets a broken pipe and ends
    assert len(first) == 3 and time.monotonic() - started < 10
    assert not [t for t in threading.enumerate() if t.name == "video-decode"]
    with pytest.raises(TalkingFaceError) as caught:
        list(iter_frames(b"\x00\x00\x00\x18ftypmp42" + bytes(4000)))
    assert caught.value.code == "VIDEO_CORRUPT"
