"""Audio and video files: 16-bit WAV in and out, and H.264 + AAC mp4 muxing with PyAV.

Everything runs in-process (PyAV bundles FFmpeg's libx264 and AAC encoders); nothing shells
out to the ffmpeg binary.
"""

from __future__ import annotations

import wave
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AAC_FRAME = 1024  # samples per AAC frame


def write_wav(path: Path | str, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio in [-1, 1] as 16-bit PCM WAV."""
    pcm = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    pcm = np.round(pcm * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV (mono or the mean of its channels) as float32 in [-1, 1]."""
    with wave.open(str(path), "rb") as handle:
        if handle.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported here")
        channels, rate = handle.getnchannels(), handle.getframerate()
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    audio = pcm.reshape(-1, channels).mean(axis=1) / 32767.0
    return audio.astype(np.float32), rate


def write_mp4(
    path: Path | str,
    frames: Iterable[np.ndarray],
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 20,
) -> int:
    """Encode RGB uint8 frames [H, W, 3] as H.264 (yuv420p) with optional mono AAC audio.

    Frame sizes must be even (yuv420p). Returns the number of video frames written.
    """
    count = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        video = None
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if video is None:
                height, width = frame.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"frame size {width}x{height} must be even for H.264")
                video = container.add_stream("libx264", rate=fps)
                video.width, video.height = width, height
                video.pix_fmt = "yuv420p"
                video.options = {"crf": str(crf), "preset": "veryfast"}
            image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            image.pts = count
            image.time_base = Fraction(1, fps)
            container.mux(video.encode(image))
            count += 1
        if video is not None:
            container.mux(video.encode())
        if sound is not None:
            _encode_audio(container, sound, np.asarray(audio, np.float32), sample_rate)
    return count


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    samples = np.clip(audio, -1.0, 1.0).astype(np.float32)
    for start in range(0, len(samples), AAC_FRAME):
        piece = samples[start : start + AAC_FRAME]
        frame = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def probe(path: Path | str) -> dict[str, dict[str, float | str | int]]:
    """Codec, duration (s) and size of each stream in a media file, by stream type."""
    info: dict[str, dict[str, float | str | int]] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            duration = (
                float(stream.duration * stream.time_base) if stream.duration is not None else 0.0
            )
            entry: dict[str, float | str | int] = {
                "codec": stream.codec_context.name,
                "duration": duration,
            }
            if stream.type == "video":
                entry.update(
                    width=stream.codec_context.width,
                    height=stream.codec_context.height,
                    frames=stream.frames,
                )
            elif stream.type == "audio":
                entry.update(sample_rate=stream.codec_context.sample_rate)
            info.setdefault(stream.type, entry)
    return info


def draw_points(
    image: np.ndarray, points: np.ndarray, color: tuple[int, int, int], radius: int = 1
) -> np.ndarray:
    """A copy of `image` with a filled square of side 2·radius+1 at each (x, y) point."""
    out = image.copy()
    height, width = out.shape[:2]
    for x, y in np.round(np.asarray(points)).astype(int):
        x0, x1 = max(x - radius, 0), min(x + radius + 1, width)
        y0, y1 = max(y - radius, 0), min(y + radius + 1, height)
        if x0 < x1 and y0 < y1:
            out[y0:y1, x0:x1] = color
    return out
