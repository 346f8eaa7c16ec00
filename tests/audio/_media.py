"""Test helpers: encode audio in memory with PyAV into the containers decode_audio reads."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

# name -> (container format, audio codec, encoder sample rate, channels, video codec or None)
FORMATS: dict[str, tuple[str, str, int, int, str | None]] = {
    "wav16k": ("wav", "pcm_s16le", 16000, 1, None),
    "wav44k_stereo": ("wav", "pcm_s16le", 44100, 2, None),
    "wav_float": ("wav", "pcm_f32le", 16000, 1, None),
    "flac": ("flac", "flac", 22050, 1, None),
    "mp3": ("mp3", "libmp3lame", 44100, 2, None),
    "ogg_opus": ("ogg", "libopus", 48000, 1, None),
    "m4a_aac": ("ipod", "aac", 44100, 2, None),
    "mp4_h264_aac": ("mp4", "aac", 48000, 2, "libx264"),
    "webm_vp9_opus": ("webm", "libopus", 48000, 2, "libvpx-vp9"),
    "webm_vp8_opus": ("webm", "libopus", 48000, 1, "libvpx"),
}


def available(name: str) -> bool:
    _, codec, _, _, video = FORMATS[name]
    return codec in av.codecs_available and (video is None or video in av.codecs_available)


def _resample(audio: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """16 kHz mono -> [channels, n] at `rate` with FFmpeg's resampler (same for all formats)."""
    frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt",
                                       layout="mono")  # fmt: skip
    frame.sample_rate = 16000
    frame.pts = 0
    frame.time_base = Fraction(1, 16000)
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    out = [f.to_ndarray() for f in resampler.resample(frame) + resampler.resample(None)]
    mono = np.concatenate(out, axis=1)[0]
    return np.repeat(mono[None, :], channels, axis=0)


def encode(name: str, audio16k: np.ndarray) -> bytes:
    """`audio16k` (float32 mono 16 kHz) encoded as FORMATS[name], returned as bytes."""
    fmt, codec, rate, channels, video_codec = FORMATS[name]
    layout = "mono" if channels == 1 else "stereo"
    samples = _resample(np.asarray(audio16k, np.float32), rate, channels)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        video = None
        if video_codec is not None:
            video = container.add_stream(video_codec, rate=25)
            video.width, video.height = 64, 48
            video.pix_fmt = "yuv420p"
        stream = container.add_stream(codec, rate=rate, layout=layout)
        enc_format = stream.codec_context.codec.audio_formats[0].name
        size = stream.codec_context.frame_size or 1024
        resampler = av.AudioResampler(format=enc_format, layout=layout, rate=rate)
        if video is not None:
            nframes = int(np.ceil(samples.shape[1] / rate * 25))
            for i in range(nframes):
                image = np.full((48, 64, 3), (i * 7) % 255, np.uint8)
                vf = av.VideoFrame.from_ndarray(image, format="rgb24")
                vf.pts = i
                vf.time_base = Fraction(1, 25)
                container.mux(video.encode(vf))
            container.mux(video.encode())
        for start in range(0, samples.shape[1], size):
            piece = np.ascontiguousarray(samples[:, start : start + size])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for converted in resampler.resample(frame):
                container.mux(stream.encode(converted))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def float_wav(audio: np.ndarray, rate: int = 16000) -> bytes:
    """A 32-bit float WAV written by hand (so NaN/Inf survive unchanged)."""
    data = np.asarray(audio, "<f4").tobytes()
    header = b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVE"
    fmt = (b"fmt " + (16).to_bytes(4, "little") + (3).to_bytes(2, "little")
           + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
           + (rate * 4).to_bytes(4, "little") + (4).to_bytes(2, "little")
           + (32).to_bytes(2, "little"))  # fmt: skip
    return header + fmt + b"data" + len(data).to_bytes(4, "little") + data


def mp4_audio_correlation(path, original: np.ndarray, lag: int = 2048) -> float:
    """Pearson r between the decoded audio stream of an mp4 and the `original` samples it
    should carry, at the best alignment within `lag` samples (AAC's priming delay)."""
    with av.open(str(path)) as container:
        decoded = np.concatenate(
            [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        ).astype(np.float64)
    original = np.asarray(original, np.float64)
    n = min(len(decoded), len(original)) - lag
    spectrum = np.fft.rfft(decoded[: n + lag], 2 * (n + lag))
    reference = np.fft.rfft(original[: n + lag], 2 * (n + lag))
    cross = np.fft.irfft(spectrum * np.conj(reference))[:lag]
    d = int(np.argmax(cross))
    return float(np.corrcoef(decoded[d : d + n], original[:n])[0, 1])
