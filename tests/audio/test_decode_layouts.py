"""The decoder over every channel layout PyAV offers for 1-16 channels, sample rates from
8 to 192 kHz and every sample format our encoders produce, in WAV, FLAC, Ogg and mp4.

Each case is encoded in the sandbox (the encoder walks the same PyAV plane bug the decoder
did) and decoded through the sandboxed decode task. A case either decodes to the channel mean
of the known signal or fails with a clean AUDIO_* code; no case may crash, hang or raise
anything else. An 8-channel 96 kHz 16-bit WAV written by Python's wave module once made the
decoder segfault (issue 14); the plain-header WAVs below cover every channel count of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from talkingface.audio.decode import DECODE_TASK, decode_audio
from talkingface.sandbox import Limits, SandboxError, run_task
from tests.audio._layouts import SECONDS, expected_mono, plain_wav

ENCODE_TASK = "tests.audio._layouts:encode_task"
LIMITS = Limits(memory_mb=1024, cpu_seconds=20, timeout_seconds=60)
RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
# FFmpeg's default layout for n channels ("Nc"), n channels in no known order, and named ones.
LAYOUTS = (
    [f"{n}c" for n in range(1, 17)]
    + [f"{n} channels" for n in range(1, 17)]
    + ["stereo", "2.1", "3.0", "quad", "5.0", "5.1(side)", "6.1", "7.1(wide)", "hexagonal",
       "octagonal", "hexadecagonal", "downmix"]
)  # fmt: skip
# container, codec, sample format handed to the encoder, rates it takes, lossless
CODECS = [
    ("wav", "pcm_u8", "u8", RATES, True),
    ("wav", "pcm_s16le", "s16", RATES, True),
    ("wav", "pcm_s24le", "s32", RATES, True),
    ("wav", "pcm_s32le", "s32", RATES, True),
    ("wav", "pcm_s64le", "s64", RATES, True),
    ("wav", "pcm_f32le", "flt", RATES, True),
    ("wav", "pcm_f64le", "dbl", RATES, True),
    ("wav", "pcm_alaw", "s16", RATES, False),
    ("flac", "flac", "s16", RATES, True),
    ("flac", "flac", "s32", RATES, True),
    ("ogg", "flac", "s16", RATES, True),
    ("ogg", "opus", "flt", (8000, 16000, 48000), False),
    # FFmpeg's experimental vorbis encoder drops the last block at 8 kHz (ffmpeg's decoder
    # agrees with ours on those files), so vorbis starts at 11.025 kHz.
    ("ogg", "vorbis", "fltp", RATES[1:], False),
    ("mp4", "aac", "fltp", RATES[:9], False),
    ("mp4", "alac", "s16p", RATES, True),
    ("mp4", "alac", "s32p", RATES, True),
    ("mp4", "mp3", "fltp", RATES[:7], False),
]
AUDIO_CODES = {"AUDIO_EMPTY", "AUDIO_CORRUPT", "AUDIO_UNSUPPORTED_CODEC", "AUDIO_TOO_LONG"}


def _cases() -> list[dict]:
    """Every layout and every rate with every codec (the other axis rotating)."""
    cases = []
    for i, (container, codec, fmt, rates, _) in enumerate(CODECS):
        base = {"container": container, "codec": codec, "sample_format": fmt}
        for j, layout in enumerate(LAYOUTS):
            cases.append({**base, "layout": layout, "rate": rates[(i + j) % len(rates)]})
        for j, rate in enumerate(rates):
            cases.append({**base, "layout": LAYOUTS[(3 * i + j) % 16], "rate": rate})
    return cases


def _decode(data: bytes) -> tuple[str, dict, np.ndarray | None]:
    """("ok", source info, audio) or (AUDIO_* code, {}, None); anything else fails the test."""
    try:
        meta, body = run_task(DECODE_TASK, data, {"max_seconds": 30.0, "hint": ""}, LIMITS)
    except SandboxError as exc:
        assert exc.reason == "task_error" and exc.code in AUDIO_CODES, exc
        return exc.code, {}, None
    return "ok", meta["source"], np.frombuffer(body, np.float32)


def _similarity(audio: np.ndarray, channels: int) -> float:
    """Correlation with the channel mean of the known signal, at the best lag within 5 ms."""
    want = expected_mono(channels)
    n = min(len(audio), len(want)) - 160
    best = -1.0
    for lag in range(-80, 81):
        a = audio[80 + lag : 80 + lag + n]
        b = want[80 : 80 + n]
        if len(a) == len(b) and np.std(a) > 0:
            best = max(best, float(np.corrcoef(a, b)[0, 1]))
    return best


@pytest.mark.timeout(600)
def test_every_layout_rate_format_and_container():
    outcomes: dict[str, int] = {}
    formats, channel_counts, rates, containers = set(), set(), set(), set()
    weak = []
    unencodable = 0
    for case in _cases():
        try:
            meta, data = run_task(ENCODE_TASK, b"", case, LIMITS)
        except SandboxError as exc:  # the encoder refuses this combination: nothing to decode
            assert exc.reason in ("exception", "task_error"), (case, exc)
            unencodable += 1
            continue
        outcome, source, audio = _decode(data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if audio is None:
            continue
        assert np.all(np.isfinite(audio)), case
        lossless = next(c[4] for c in CODECS if c[1] == case["codec"])
        score = _similarity(audio, meta["channels"])
        # Lossy: AAC low-passes the LFE channel of 5.1/7.1 layouts, whose sine is above it.
        if abs(len(audio) / 16000 - SECONDS) > 0.06 or score < (0.98 if lossless else 0.7):
            weak.append((case, len(audio), round(score, 3)))
        formats.add(source["sample_format"])
        channel_counts.add(source["channels"])
        rates.add(source["sample_rate"])
        containers.add(case["container"])
    assert not weak, (len(weak), weak)
    assert outcomes["ok"] >= 500, outcomes
    assert {"u8", "s16", "s32", "s64", "flt", "dbl", "s16p", "s32p", "fltp"} <= formats
    assert set(range(1, 17)) <= channel_counts
    assert set(RATES) <= rates
    assert containers == {"wav", "flac", "ogg", "mp4"}
    print(f"layout fuzz: {outcomes}, {unencodable} combinations the encoders refuse")


@pytest.mark.parametrize("channels", range(1, 17))
def test_plain_header_wav_of_every_channel_count(channels):
    # The reported file: 16-bit PCM, Python's wave module, no channel mask; 8 channels at
    # 96 kHz crashed the process. Through the public entry point, at several rates each.
    for rate in (RATES[channels % len(RATES)], 96000):
        audio = decode_audio(plain_wav(channels, rate), limits=LIMITS)
        assert abs(len(audio) / 16000 - SECONDS) < 0.01
        assert _similarity(audio, channels) > 0.99, (channels, rate)
