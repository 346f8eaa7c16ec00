"""Decode any audio FFmpeg reads (from bytes, with PyAV) to float32 16 kHz mono.

Every failure is a TalkingFaceError with an AUDIO_* code; no other exception type escapes
`decode_audio`. The bytes are untrusted, so by default they are decoded in a sandboxed child
process (`talkingface.sandbox`): a codec that crashes, hangs or allocates without end costs
that one request an AUDIO_CORRUPT error, never the calling process. See
docs/audio_features.md for the accepted inputs, the error codes and the limits.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import av
import numpy as np

from talkingface.errors import TalkingFaceError
from talkingface.sandbox import Limits, SandboxError, TaskError, run_task

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# Bounds on FFmpeg's format probing so that random bytes cannot make it read for long.
_OPEN_OPTIONS = {"probesize": "1000000", "analyzeduration": "2000000"}
# A stream whose packets mostly fail to decode is corrupt; a few bad packets (a damaged
# frame in an mp3, a truncated last packet) are skipped as the ffmpeg tool would.
_MAX_BAD_PACKETS = 32
_MAX_BAD_FRACTION = 0.25
DECODE_TASK = "talkingface.audio.decode:decode_task"


def _corrupt(message: str) -> TalkingFaceError:
    return TalkingFaceError("AUDIO_CORRUPT", message)


class _Collector:
    """Resamples decoded frames to 16 kHz, averages channels, and enforces the length cap."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.chunks: list[np.ndarray] = []
        self.total = 0
        self._resampler: av.AudioResampler | None = None
        self.channels = 1
        self.source: dict | None = None  # the first frame's format, layout, channels, rate
        self._key: tuple[str, str, int, int] | None = None

    def _new_resampler(self, frame: av.AudioFrame) -> av.AudioResampler:
        # Keep the input's channels and average them ourselves: an exact mean of the
        # channels, whatever downmix matrix FFmpeg would pick for the layout. The output is
        # packed ("flt", one plane): PyAV counts the planes of a frame by walking FFmpeg's
        # plane pointers to the first NULL, which for exactly 8 planes reads past the array
        # and crashed the process on an 8-channel file.
        channels = len(frame.layout.channels)
        if channels == 0:
            raise _corrupt("audio frame without channels")
        self.channels = channels
        return av.AudioResampler(format="flt", layout=frame.layout, rate=SAMPLE_RATE)

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
            if self.source is None:
                self.source = dict(zip(("sample_format", "layout", "channels", "sample_rate"),
                                       key, strict=True))  # fmt: skip
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
            if out.format.name != "flt" or len(out.layout.channels) != self.channels:
                raise _corrupt("the resampler answered in an unexpected layout")
            # Packed: plane 0 holds [samples, channels] float32 (plane 1 is NULL, so PyAV's
            # walk stops there).
            packed = np.frombuffer(memoryview(out.planes[0]), dtype=np.float32)
            packed = packed[: out.samples * self.channels].reshape(out.samples, self.channels)
            mono = packed.mean(axis=1, dtype=np.float32) if self.channels > 1 else packed[:, 0]
            if not np.all(np.isfinite(mono)):
                raise TalkingFaceError("AUDIO_NON_FINITE", "audio contains NaN or Inf samples")
            self.chunks.append(np.ascontiguousarray(mono, dtype=np.float32))
            self.total += mono.shape[0]
            if self.total > self.max_samples:
                raise self._too_long()

    def _too_long(self) -> TalkingFaceError:
        limit = self.max_samples / SAMPLE_RATE
        return TalkingFaceError("AUDIO_TOO_LONG", f"audio is longer than the limit of {limit:g} s")


def _decode_stream(
    container: av.container.InputContainer, max_samples: int, info: dict
) -> np.ndarray:
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
    info.update(collector.source or {}, codec=codec.name)
    return np.concatenate(collector.chunks)


def decode_in_process(
    data: bytes, max_seconds: float = 900.0, filename_hint: str = "", info: dict | None = None
) -> np.ndarray:
    """Decode in this process: only for bytes that are trusted, or inside the sandbox.

    `filename_hint` (e.g. "speech.mp3") only helps FFmpeg guess the container when the bytes
    alone are ambiguous (raw ADTS/mp3 streams); it is never opened. Decoding stops as soon
    as more than `max_seconds` of audio has come out (AUDIO_TOO_LONG). `info`, when given,
    receives the source's codec, sample format, layout, channels and sample rate.
    """
    if not data:
        raise TalkingFaceError("AUDIO_EMPTY", "no audio data")
    info = {} if info is None else info
    max_samples = int(max_seconds * SAMPLE_RATE)
    buffer = io.BytesIO(bytes(data))
    buffer.name = Path(filename_hint).name if filename_hint else "audio"
    try:
        container = av.open(buffer, mode="r", options=_OPEN_OPTIONS, metadata_errors="ignore")
    except Exception as exc:  # av.error.* mostly; PyAV can raise plain errors on odd input
        raise _corrupt(f"not a readable media file ({type(exc).__name__})") from None
    try:
        with container:
            return _decode_stream(container, max_samples, info)
    except TalkingFaceError:
        raise
    except av.error.FFmpegError as exc:
        raise _corrupt(f"audio could not be decoded ({type(exc).__name__})") from None
    except MemoryError:
        raise _corrupt("audio could not be decoded (out of memory)") from None
    except Exception as exc:
        raise _corrupt(f"audio could not be decoded ({type(exc).__name__})") from None


def decode_task(data: bytes, params: dict) -> tuple[dict, bytes]:
    """The sandbox task (`talkingface.sandbox`): bytes in, float32 16 kHz mono bytes out."""
    info: dict = {}
    try:
        audio = decode_in_process(data, float(params["max_seconds"]), params.get("hint", ""), info)
    except TalkingFaceError as exc:
        raise TaskError(exc.code, exc.message) from None
    return {"samples": int(audio.shape[0]), "source": info}, audio.tobytes()


def decode_audio(
    data: bytes,
    max_seconds: float = 900.0,
    filename_hint: str = "",
    *,
    limits: Limits | None = None,
    task: str = DECODE_TASK,
) -> np.ndarray:
    """Decode an audio (or video) file held in memory to float32 mono at 16 kHz, in a
    sandboxed child process (see the module docstring and `decode_in_process`).

    `limits` bound the child (default: the TALKINGFACE_SANDBOX_* settings). `task` names the
    sandbox task that decodes ("module:function"); the default is `decode_task`.
    """
    if not data:
        raise TalkingFaceError("AUDIO_EMPTY", "no audio data")
    limits = limits or Limits.from_settings()
    params = {"max_seconds": float(max_seconds), "hint": Path(filename_hint).name}
    try:
        meta, body = run_task(task, bytes(data), params, limits)
    except SandboxError as exc:
        raise _sandbox_error(exc, limits) from None
    audio = np.frombuffer(body, dtype=np.float32).copy()
    if audio.shape[0] != int(meta.get("samples", -1)):
        raise TalkingFaceError("INTERNAL", "the decoder's answer was cut short")
    return audio


def warm_up(limits: Limits | None = None, task: str = DECODE_TASK) -> None:
    """Start this process's sandbox server and load the decoder there (0.1 s of silence), so
    that the first real request does not pay for it."""
    from talkingface.media import write_wav

    buffer = io.BytesIO()
    write_wav(buffer, np.zeros(SAMPLE_RATE // 10, np.float32), SAMPLE_RATE)
    decode_audio(buffer.getvalue(), 1.0, limits=limits, task=task)


def _sandbox_error(exc: SandboxError, limits: Limits) -> TalkingFaceError:
    if exc.reason == "task_error":
        try:
            return TalkingFaceError(exc.code, exc.message)
        except ValueError:  # not one of our codes: the task is ours, so this is a bug
            return TalkingFaceError("INTERNAL", f"the decoder answered {exc.code!r}")
    if exc.reason == "unavailable":
        log.error("audio decoding sandbox unavailable: %s", exc.message)
        return TalkingFaceError("UNAVAILABLE", "the audio decoder could not be started")
    log.warning("audio decoder stopped on an input: %s (%s)", exc.reason, exc.message)
    return _corrupt(exc.describe(limits))


def decode_audio_file(path: str | Path, max_seconds: float = 900.0) -> np.ndarray:
    """`decode_audio` on a file's contents; an unreadable path is INVALID_REQUEST."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TalkingFaceError("INVALID_REQUEST", f"cannot read {path}: {exc.strerror}") from None
    return decode_audio(data, max_seconds=max_seconds, filename_hint=path.name)
