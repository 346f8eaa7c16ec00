"""Sandbox tasks for the decoder's layout fuzz (tests/audio/test_decode_layouts.py).

Encoding an 8-channel planar frame walks the same PyAV plane-count bug that crashed the
decoder, so test files are made in the sandbox too: a crash of the generator then costs one
case, not the test run. Each channel k carries its own sine, so the channel mean is known.
"""

from __future__ import annotations

import io
import wave
from fractions import Fraction

import numpy as np

SECONDS = 0.25


def signal(channels: int, rate: int, seconds: float = SECONDS) -> np.ndarray:
    """[samples, channels] float32: channel k a 200 + 37 k Hz sine, amplitude 0.4 / (1 + k % 3)."""
    t = np.arange(round(seconds * rate)) / rate
    freqs = 200.0 + 37.0 * np.arange(channels)
    amps = 0.4 / (1.0 + np.arange(channels) % 3)
    return (amps * np.sin(2 * np.pi * t[:, None] * freqs)).astype(np.float32)


def expected_mono(channels: int, seconds: float = SECONDS, rate: int = 16000) -> np.ndarray:
    """The channel mean at 16 kHz (the sines are band-limited far below 8 kHz)."""
    return signal(channels, rate, seconds).mean(axis=1)


def plain_wav(channels: int, rate: int, seconds: float = SECONDS) -> bytes:
    """16-bit PCM written by Python's wave module: a plain header without a channel mask."""
    pcm = np.round(signal(channels, rate, seconds) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()


def encode_task(_data: bytes, params: dict) -> tuple[dict, bytes]:
    """Encode `signal` as params container/codec/sample_format/layout/rate with PyAV."""
    import av

    layout = av.AudioLayout(params["layout"])
    channels = len(layout.channels)
    rate = int(params["rate"])
    samples = signal(channels, rate)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=params["container"]) as container:
        stream = container.add_stream(params["codec"], rate=rate)
        stream.codec_context.layout = layout
        stream.codec_context.format = params["sample_format"]
        if params["codec"] in ("vorbis", "opus"):
            stream.codec_context.options = {"strict": "experimental"}
        step = 1024
        for start in range(0, len(samples), step):
            block = np.ascontiguousarray(samples[start : start + step])
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return {"channels": channels}, buffer.getvalue()
