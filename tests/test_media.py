"""WAV round trip, in-process H.264 + AAC muxing, and stitching of rendered mp4 segments."""

from fractions import Fraction
from itertools import pairwise

import av
import numpy as np
import pytest

from talkingface.media import concat_mp4, draw_points, probe, read_wav, write_mp4, write_wav


def test_wav_round_trip(tmp_path):
    audio = (0.5 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300)).astype(np.float32)
    write_wav(tmp_path / "a.wav", audio, 16000)
    again, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and again.shape == audio.shape
    assert np.abs(again - audio).max() < 1.0 / 32767 + 1e-6


def test_mp4_streams_and_durations(tmp_path):
    frames = [np.full((64, 96, 3), i * 4, np.uint8) for i in range(50)]
    audio = (0.3 * np.sin(np.arange(32000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    assert write_mp4(tmp_path / "v.mp4", frames, 25, audio, 16000) == 50
    info = probe(tmp_path / "v.mp4")
    assert info["video"]["codec"] == "h264" and info["video"]["frames"] == 50
    assert (info["video"]["width"], info["video"]["height"]) == (96, 64)
    assert abs(info["video"]["duration"] - 2.0) < 0.05
    assert info["audio"]["codec"] == "aac" and abs(info["audio"]["duration"] - 2.0) < 0.1


def test_odd_frame_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "v.mp4", [np.zeros((63, 64, 3), np.uint8)], 25)


def test_draw_points_clips_at_the_border():
    image = np.zeros((10, 10, 3), np.uint8)
    out = draw_points(image, np.array([[0.2, 0.4], [9.6, 9.9], [50, 50]]), (255, 0, 0))
    assert out[0, 0, 0] == 255 and out[9, 9, 0] == 255 and out[5, 5, 0] == 0
    assert image.max() == 0  # the input is untouched


def _pattern(index: int, size: int = 32) -> np.ndarray:
    """A smooth RGB frame that changes with `index`: a moving luminance wave under a tint
    that cycles, so every frame differs and none is flat (and H.264 keeps it > 30 dB)."""
    y, x = np.mgrid[0:size, 0:size] / size
    phase = index / 17
    wave = 128 + 90 * np.sin(2 * np.pi * (0.5 * x + 0.3 * y + phase))
    turn = 2 * np.pi * phase
    tint = np.array([60 * np.sin(turn), 40 * np.cos(turn), -50 * np.sin(turn)])
    return np.clip(wave[..., None] + tint, 0, 255).round().astype(np.uint8)


def _write_segments(tmp_path, lengths=(8, 4, 5), crfs=(20, 20, 20), size=32):
    """Segments of consecutive frame ranges, as the renderer writes them; returns their paths."""
    paths, start = [], 0
    for number, (length, crf) in enumerate(zip(lengths, crfs, strict=True)):
        path = tmp_path / f"segment{number}.mp4"
        frames = [_pattern(i, size) for i in range(start, start + length)]
        assert write_mp4(path, frames, 25, crf=crf) == length
        paths.append(path)
        start += length
    return paths


def _decoded(path):
    """The decoded video frames of a file as native yuv420p planes, plus their frames."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [frame.to_ndarray() for frame in frames], frames


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


def test_concat_mp4_remuxes_identical_segments_without_touching_pixels(tmp_path):
    segments = _write_segments(tmp_path)
    audio = (0.3 * np.sin(np.arange(17 * 640) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    result = concat_mp4(tmp_path / "out.mp4", segments, 25, audio, 16000)
    assert result == {"frames": 17, "remuxed": True, "segments": 3}

    expected = [plane for segment in segments for plane in _decoded(segment)[0]]
    planes, _ = _decoded(tmp_path / "out.mp4")
    assert len(expected) == len(planes) == 17
    for number, (got, want) in enumerate(zip(planes, expected, strict=True)):
        assert np.array_equal(got, want), f"frame {number} changed"
    # The segments really differ frame to frame, so an order mix-up would show.
    assert all(not np.array_equal(a, b) for a, b in pairwise(expected))

    info = probe(tmp_path / "out.mp4")
    assert info["video"]["frames"] == 17
    assert abs(info["video"]["duration"] - 17 / 25) <= 1 / 25
    assert info["audio"]["codec"] == "aac" and info["audio"]["sample_rate"] == 16000


def test_concat_mp4_timestamps_are_continuous(tmp_path):
    segments = _write_segments(tmp_path)
    assert concat_mp4(tmp_path / "out.mp4", segments, 25)["remuxed"]

    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        tick = int(1 / (25 * stream.time_base))  # time-base units per frame
        packets = [p for p in container.demux(stream) if p.size]
    dts = [p.dts for p in packets]
    pts = [p.pts for p in packets]
    assert all(later > earlier for earlier, later in pairwise(dts))
    assert all(d <= p for d, p in zip(dts, pts, strict=True))
    assert sorted(pts) == [i * tick for i in range(17)]
    assert pts != sorted(pts)  # B-frames: presentation order differs from decode order
    # Each segment starts with a keyframe at its place in the sequence.
    keyframes = [p.pts // tick for p in packets if p.is_keyframe]
    assert {0, 8, 12} <= set(keyframes)

    _, frames = _decoded(tmp_path / "out.mp4")
    assert [frame.pts * frame.time_base for frame in frames] == [Fraction(i, 25) for i in range(17)]
    assert [frame.time for frame in frames] == [float(Fraction(i, 25)) for i in range(17)]


def test_concat_mp4_reencodes_segments_with_other_parameters(tmp_path):
    segments = _write_segments(tmp_path, crfs=(20, 26, 20))
    extradata = []
    for segment in segments:
        with av.open(str(segment)) as container:
            extradata.append(bytes(container.streams.video[0].codec_context.extradata))
    assert extradata[0] == extradata[2] != extradata[1]  # crf is in the PPS (pic_init_qp)

    result = concat_mp4(tmp_path / "out.mp4", segments, 25, np.zeros(17 * 640, np.float32))
    assert result == {"frames": 17, "remuxed": False, "segments": 3}
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 17
    assert [frame.time for frame in frames] == [float(Fraction(i, 25)) for i in range(17)]
    for index, frame in enumerate(frames):
        assert _psnr(frame.to_ndarray(format="rgb24"), _pattern(index)) > 30, index
    assert probe(tmp_path / "out.mp4")["audio"]["codec"] == "aac"


def test_concat_mp4_retimes_segments_at_another_fps(tmp_path):
    segments = _write_segments(tmp_path, lengths=(3, 3), crfs=(20, 20))
    result = concat_mp4(tmp_path / "out.mp4", segments, 10)
    assert result == {"frames": 6, "remuxed": False, "segments": 2}
    _, frames = _decoded(tmp_path / "out.mp4")
    assert [frame.pts * frame.time_base for frame in frames] == [Fraction(i, 10) for i in range(6)]


def test_concat_mp4_refuses_bad_segments(tmp_path):
    small, other = _write_segments(tmp_path, lengths=(2, 2), crfs=(20, 20))
    large = tmp_path / "large.mp4"
    write_mp4(large, [_pattern(i, 64) for i in range(2)], 25)
    text = tmp_path / "notes.txt"  # FFmpeg's probing would take this for a "tty" video
    text.write_text("not a video, just some text\n" * 20)
    sound = tmp_path / "sound.mp4"
    write_mp4(sound, [], 25, np.zeros(4000, np.float32))
    out = tmp_path / "out.mp4"

    with pytest.raises(ValueError, match=r"large\.mp4: frame size 64x64"):
        concat_mp4(out, [small, large, other], 25)
    with pytest.raises(ValueError, match="at least one segment"):
        concat_mp4(out, [], 25)
    for segments in ([text], [small, text]):
        with pytest.raises(ValueError, match=r"notes\.txt: not a readable mp4"):
            concat_mp4(out, segments, 25)
    with pytest.raises(ValueError, match=r"sound\.mp4: segment has no video"):
        concat_mp4(out, [sound], 25)
    with pytest.raises(ValueError, match=r"missing\.mp4: not a readable mp4"):
        concat_mp4(out, [small, tmp_path / "missing.mp4"], 25)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
