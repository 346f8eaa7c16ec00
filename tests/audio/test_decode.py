"""decode_audio: every container/codec we accept decodes to 16 kHz mono of the right length
and gives the same features as the source; malformed input fails with the right code."""

from __future__ import annotations

import io
import wave
from fractions import Fraction

import av
import numpy as np
import pytest

from talkingface.audio import SAMPLE_RATE, decode_audio, decode_audio_file, extract
from talkingface.data.synthtalk.speech import random_voice, synthesize
from talkingface.errors import TalkingFaceError
from tests.audio._media import FORMATS, available, encode, float_wav

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
# Cross-format tolerances (docs/audio_features.md): duration error, log-mel mean absolute
# difference (both floored at the reference's max - 60 dB), f0 median, voicing agreement.
LOSSLESS = {"wav16k", "wav44k_stereo", "wav_float", "flac"}
AAC = {"m4a_aac", "mp4_h264_aac"}
MAX_DURATION_ERROR_S = {"lossless": 0.001, "aac": 0.025, "other": 0.005}
MAX_LOGMEL_MAD_DB = {"lossless": 0.3, "lossy": 1.5}
MAX_F0_MEDIAN_REL = 0.03
MIN_VOICING_AGREEMENT = 0.95


@pytest.fixture(scope="module", params=["male", "female"])
def utterance(request):
    seed = {"male": 3, "female": 4}[request.param]
    return synthesize(TEXT, random_voice(np.random.default_rng(seed), "en-us", request.param))


@pytest.fixture(scope="module")
def reference(utterance):
    return extract(utterance.audio)


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_decodes_to_same_audio_and_features(name, utterance, reference):
    if not available(name):
        pytest.skip(f"{name}: encoder not in PyAV's FFmpeg")
    data = encode(name, utterance.audio)
    audio = decode_audio(data)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.all(np.isfinite(audio))
    kind = "lossless" if name in LOSSLESS else "aac" if name in AAC else "other"
    assert abs(len(audio) - len(utterance.audio)) / SAMPLE_RATE <= MAX_DURATION_ERROR_S[kind]
    got = extract(audio)
    assert abs(got.frames() - reference.frames()) <= 1
    frames = min(got.frames(), reference.frames())
    floor = reference.features.max() - 60.0
    diff = np.abs(
        np.maximum(got.features[:frames], floor) - np.maximum(reference.features[:frames], floor)
    )
    assert diff.mean() < MAX_LOGMEL_MAD_DB["lossless" if name in LOSSLESS else "lossy"]
    ratio = np.median(got.f0[got.voiced]) / np.median(reference.f0[reference.voiced])
    assert abs(ratio - 1.0) < MAX_F0_MEDIAN_REL
    assert np.mean(got.voiced[:frames] == reference.voiced[:frames]) >= MIN_VOICING_AGREEMENT


def test_no_time_shift_through_lossy_codecs(utterance):
    # Encoder priming (mp3, AAC, Opus pre-skip) must be trimmed: the decoded signal lines up
    # with the source to within 1 sample.
    x = utterance.audio
    for name in ("mp3", "ogg_opus", "m4a_aac"):
        y = decode_audio(encode(name, x))
        n = min(len(x), len(y), 2 * SAMPLE_RATE)
        lags = np.arange(-400, 401)
        score = [np.dot(y[max(0, k) : n + min(0, k)], x[max(0, -k) : n - max(0, k)]) for k in lags]
        assert abs(int(lags[int(np.argmax(score))])) <= 1, name


def test_stereo_is_channel_mean():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(pcm.tobytes())
    audio = decode_audio(buffer.getvalue())
    np.testing.assert_allclose(audio, left / 2, atol=1e-3)


def test_decode_audio_file(tmp_path, utterance):
    path = tmp_path / "speech.flac"
    path.write_bytes(encode("flac", utterance.audio))
    assert abs(len(decode_audio_file(path)) - len(utterance.audio)) <= 2  # 22.05 kHz rounding
    with pytest.raises(TalkingFaceError) as err:
        decode_audio_file(tmp_path / "missing.wav")
    assert err.value.code == "INVALID_REQUEST"


def _code(data: bytes, **kwargs) -> str:
    with pytest.raises(TalkingFaceError) as err:
        decode_audio(data, **kwargs)
    return err.value.code


def test_error_codes():
    assert _code(b"") == "AUDIO_EMPTY"
    assert _code(b"this is not audio at all " * 20) == "AUDIO_CORRUPT"
    assert _code(float_wav(np.zeros(0))) == "AUDIO_EMPTY"
    assert _code(float_wav(np.array([0.1, np.nan] * 800))) == "AUDIO_NON_FINITE"
    assert _code(float_wav(np.array([0.1, -np.inf] * 800))) == "AUDIO_NON_FINITE"
    unknown = bytearray(float_wav(np.zeros(1000)))
    unknown[20:22] = (0x9999).to_bytes(2, "little")  # WAVE format tag nobody decodes
    assert _code(bytes(unknown)) == "AUDIO_UNSUPPORTED_CODEC"


def test_video_without_audio_is_unsupported():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert _code(buffer.getvalue()) == "AUDIO_UNSUPPORTED_CODEC"
