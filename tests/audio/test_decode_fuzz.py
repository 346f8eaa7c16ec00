"""Fuzz decode_audio: random and mutated files either decode to finite 16 kHz float32 or
raise TalkingFaceError with an AUDIO_* code; never another exception, never a hang."""

from __future__ import annotations

import io
import time
import wave

import numpy as np
import pytest

from talkingface.audio import decode_audio
from talkingface.errors import TalkingFaceError
from tests.audio._media import available, encode, float_wav

AUDIO_CODES = {
    "AUDIO_EMPTY",
    "AUDIO_CORRUPT",
    "AUDIO_UNSUPPORTED_CODEC",
    "AUDIO_TOO_LONG",
    "AUDIO_NON_FINITE",
}


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    t = np.arange(16000) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * rng.standard_normal(16000) * 0.1)
    audio = audio.astype(np.float32)
    names = ("wav16k", "flac", "mp3", "ogg_opus", "m4a_aac", "webm_vp8_opus")
    seeds = {name: encode(name, audio) for name in names if available(name)}
    seeds["wav_float"] = float_wav(audio)
    return seeds


def _mutate(data: bytes, rng: np.random.Generator, others: list[bytes]) -> bytes:
    buf = bytearray(data)
    kind = int(rng.integers(5))
    if kind == 0:  # bit flips
        for _ in range(int(rng.integers(1, 50))):
            i = int(rng.integers(len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncation
        buf = buf[: int(rng.integers(1, len(buf)))]
    elif kind == 2:  # splice a chunk of another file in
        other = others[int(rng.integers(len(others)))]
        a, b = sorted(rng.integers(0, len(other), 2).tolist())
        at = int(rng.integers(len(buf)))
        buf = buf[:at] + other[a:b] + buf[at:]
    elif kind == 3:  # zeroed header
        buf[: int(rng.integers(4, 256))] = bytes(min(len(buf), 256))[: int(rng.integers(4, 256))]
    else:  # random bytes overwrite a run
        at, n = int(rng.integers(len(buf))), int(rng.integers(1, 4096))
        buf[at : at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(buf)


def _check(data: bytes) -> str:
    try:
        audio = decode_audio(data, max_seconds=30.0)
    except TalkingFaceError as err:
        assert err.code in AUDIO_CODES, err
        return err.code
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) > 0 and np.all(np.isfinite(audio))
    return "ok"


@pytest.mark.timeout(120)
def test_fuzz_decode_audio():
    rng = np.random.default_rng(20240601)
    seeds = _seeds()
    others = list(seeds.values())
    outcomes: dict[str, int] = {}
    cases = [rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
             for _ in range(150)]  # fmt: skip
    for data in others:
        cases += [_mutate(data, rng, others) for _ in range(80)]
    start = time.monotonic()
    for data in cases:
        code = _check(data)
        outcomes[code] = outcomes.get(code, 0) + 1
    assert len(cases) >= 500
    assert time.monotonic() - start < 100
    assert outcomes.get("AUDIO_CORRUPT", 0) > 0 and outcomes.get("ok", 0) > 0


@pytest.mark.timeout(60)
def test_header_claiming_one_hertz_is_bounded():
    # 1 s of 16 kHz samples labelled as 1 Hz would resample to 16000 s: refused up front.
    data = bytearray(float_wav(np.zeros(16000)))
    data[24:28] = (1).to_bytes(4, "little")
    with pytest.raises(TalkingFaceError) as err:
        decode_audio(bytes(data), max_seconds=900.0)
    assert err.value.code == "AUDIO_TOO_LONG"


@pytest.mark.timeout(60)
def test_ten_minute_file_over_limit_fails_fast():
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(bytes(2 * 16000 * 600))
    start = time.monotonic()
    with pytest.raises(TalkingFaceError) as err:
        decode_audio(buffer.getvalue(), max_seconds=60.0)
    assert err.value.code == "AUDIO_TOO_LONG"
    assert time.monotonic() - start < 5.0
