"""WAV round trip and in-process H.264 + AAC muxing."""

import numpy as np
import pytest

from talkingface.media import draw_points, probe, read_wav, write_mp4, write_wav


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
