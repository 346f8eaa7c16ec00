"""Decode any audio FFmpeg reads (from bytes, in-process with PyAV) to float32 16 kHz mono.

Every failure is a TalkingFaceError with an AUDIO_* code; no other exception type escapes
`decode_audio`. See docs/audio_features.md for the accepted inputs and the error codes.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from talkingface.errors import TalkingFaceError

SAMPLE_RATE = 16000

# Bounds on FFmpeg's format probing so that random bytes cannot make it read for long.
_OPEN_OPTIONS = {"probesize": "1000000", "analyzeduration": "2000000"}
# A stream whose packets mostly fail to decode is corrupt; a few bad packets (a damaged
# frame in an mp3, a truncated last packet) are skipped as the ffmpeg tool would.
_MAX_BAD_PACKETS = 32
_MAX_BAD_FRACTION = 0.25
_MAX_EXACT_CHANNELS = 8  # above this, FFmpeg's own downmix instead of an exact channel mean


def _corrupt(message: str) -> TalkingFaceError:
    return TalkingFaceError("AUDIO_CORRUPT", message)


class _Collector:
    """Resamples decoded frames to 16 kHz, averages channels, and enforces the length cap."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.chunks: list[np.ndarray] = []
        self.total = 0
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int, int] | None = None

    def _new_resampler(self, frame: av.AudioFrame) -> av.AudioResampler:
        # Keep the input's channels and average them ourselves: an exact mean of the
        # channels, whatever downmix matrix FFmpeg would pick for the layout.
        channels = len(frame.layout.channels)
        if channels == 0:
            raise _corrupt("audio frame without channels")
        if channels > _MAX_EXACT_CHANNELS:
            # Planar copies of dozens of channels would cost memory; let FFmpeg downmix.
            return av.AudioResampler(format="fltp", layout="mono", rate=SAMPLE_RATE)
        layout = frame.layout.name if frame.layout.name else f"{channels}c"
        return av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)

    def add(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            if frame.sample_rate <= 0 or frame.samples <= 0:
                return
            # Check the length before resampling: a (corrupt) header claiming a tiny sample
            # rate would otherwise make one frame resample to gigabytes.
            upcoming = frame.samples * SAMPLE_RATE / frame.sample_rate
            if self.total + upcoming > self.max_samples + SAMPLE_RATE:
                raise self._too_long()
            key = (frame.format.name, frame.layout.name, len(frame.layout.channels),
                   frame.sample_rate)  # fmt: skip
            if key != self._key:
                # Chained/mutated streams can change rate or layout mid-way; the resampler
                # is fixed to its first input's setup, so flush it and start another.
                self._flush()
                self._resampler = self._new_resampler(frame)
                self._key = key
            assert self._resampler is not None
            self._take(self._resampler.resample(frame))
        else:
            self._flush()

    def _flush(self) -> None:
        if self._resampler is not None:
            self._take(self._resampler.resample(None))
            self._resampler = None
            self._key = None

    def _take(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:
            planes = out.to_ndarray()  # [channels, samples] float32 (planar)
            mono = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
            if not np.all(np.isfinite(mono)):
                raise TalkingFaceError("AUDIO_NON_FINITE", "audio contains NaN or Inf samples")
            self.chunks.append(np.ascontiguousarray(mono, dtype=np.float32))
            self.total += mono.shape[0]
            if self.total > self.max_samples:
                raise self._too_long()

    def _too_long(self) -> TalkingFaceError:
        limit = self.max_samples / SAMPLE_RATE
        return TalkingFaceError("AUDIO_TOO_LONG", f"audio is longer than the limit of {limit:g} s")


def _decode_stream(container: av.container.InputContainer, max_samples: int) -> np.ndarray:
    streams = [s for s in container.streams if s.type == "audio"]
    if not streams:
        raise TalkingFaceError("AUDIO_UNSUPPORTED_CODEC", "the file has no audio stream")
    stream = streams[0]
    codec = stream.codec_context
    if codec is None or not getattr(codec, "name", None):
        raise TalkingFaceError("AUDIO_UNSUPPORTED_CODEC", "the audio codec cannot be decoded")
    collector = _Collector(max_samples)
    packets = bad = 0
    for packet in container.demux(stream):
        packets += 1
        try:
            frames = packet.decode()
        except (av.error.InvalidDataError, av.error.ValueError, av.error.EOFError):
            bad += 1
            if bad > _MAX_BAD_PACKETS and bad > _MAX_BAD_FRACTION * packets:
                raise _corrupt("too many audio packets failed to decode") from None
            continue
        for frame in frames:
            collector.add(frame)
    collector.add(None)
    if collector.total == 0 and bad:
        raise _corrupt("no audio packet could be decoded")
    if collector.total == 0:
        raise TalkingFaceError("AUDIO_EMPTY", "the audio decodes to zero samples")
    return np.concatenate(collector.chunks)


def decode_audio(data: bytes, max_seconds: float = 900.0, filename_hint: str = "") -> np.ndarray:
    """Decode an audio (or video) file held in memory to float32 mono at 16 kHz.

    `filename_hint` (e.g. "speech.mp3") only helps FFmpeg guess the container when the bytes
    alone are ambiguous (raw ADTS/mp3 streams); it is never opened. Decoding stops as soon
    as more than `max_seconds` of audio has come out (AUDIO_TOO_LONG).
    """
    if not data:
        raise TalkingFaceError("AUDIO_EMPTY", "no audio data")
    max_samples = int(max_seconds * SAMPLE_RATE)
    buffer = io.BytesIO(bytes(data))
    buffer.name = Path(filename_hint).name if filename_hint else "audio"
    try:
        container = av.open(buffer, mode="r", options=_OPEN_OPTIONS, metadata_errors="ignore")
    except Exception as exc:  # av.error.* mostly; PyAV can raise plain errors on odd input
        raise _corrupt(f"not a readable media file ({type(exc).__name__})") from None
    try:
        with container:
            return _decode_stream(container, max_samples)
    except TalkingFaceError:
        raise
    except av.error.FFmpegError as exc:
        raise _corrupt(f"audio could not be decoded ({type(exc).__name__})") from None
    except MemoryError:
        raise _corrupt("audio could not be decoded (out of memory)") from None
    except Exception as exc:
        raise _corrupt(f"audio could not be decoded ({type(exc).__name__})") from None


def decode_audio_file(path: str | Path, max_seconds: float = 900.0) -> np.ndarray:
    """`decode_audio` on a file's contents; an unreadable path is INVALID_REQUEST."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TalkingFaceError("INVALID_REQUEST", f"cannot read {path}: {exc.strerror}") from None
    return decode_audio(data, max_seconds=max_seconds, filename_hint=path.name)
