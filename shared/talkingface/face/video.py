"""Reading an uploaded video: probe, and frames at 25 fps, always in the sandbox.

A user's video is untrusted bytes for a native decoder, so both passes run as sandbox tasks
(`talkingface.sandbox`): a crash, hang or runaway allocation in a codec costs that request
a VIDEO_CORRUPT error, never the worker. Frames never travel back through the sandbox's
pipe: `read_frames` has the child append them to a raw file the caller names (then opened
with memory mapping), so a 3-minute 720p video needs no more memory than a few frames.

Timing: the output has one frame per 1/25 s from the first video frame's timestamp to the
stream's end, each the decoded frame whose timestamp is nearest (variable frame rates and
29.97/30/50/60 fps sources alike, as FFmpeg's `fps` filter does). Rotation metadata (the
display matrix) is applied, so a phone video shot upright comes out upright.

Errors: VIDEO_CORRUPT (not a media file, no decodable video frame, a decoder crash),
VIDEO_NO_VIDEO_STREAM (an audio file or an image sequence named .mp4: no video stream),
VIDEO_TOO_LONG (more than `max_seconds`).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from talkingface.errors import TalkingFaceError
from talkingface.lm3d import FPS
from talkingface.sandbox import Limits, SandboxError, TaskError, run_task

PROBE_TASK = "talkingface.face.video:probe_task"
FRAMES_TASK = "talkingface.face.video:frames_task"
_OPEN_OPTIONS = {"probesize": "5000000", "analyzeduration": "5000000"}
_FRAME_HEADER = struct.Struct("!III")  # height, width, channels of a streamed frame
STATS = ("source_frames", "source_frames_skipped", "frames_repeated", "packets_undecodable")


# --- in the sandbox ------------------------------------------------------------------------------


def _open(data: bytes):
    import av

    try:
        return av.open(io.BytesIO(data), mode="r", options=_OPEN_OPTIONS,
                       metadata_errors="ignore")  # fmt: skip
    except Exception as exc:
        message = f"not a readable media file ({type(exc).__name__})"
        raise TaskError("VIDEO_CORRUPT", message) from None


def _video_stream(container):
    # Cover art (an "attached picture" of an audio file) is a still image, not a video.
    streams = [s for s in container.streams if s.type == "video" and not _attached_pic(s)]
    if not streams:
        raise TaskError("VIDEO_NO_VIDEO_STREAM", "the file has no video stream")
    return streams[0]


def _attached_pic(stream) -> bool:
    import av

    flag = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    return bool(flag is not None and stream.disposition & flag)


def _timed_frames(container, stream, counts: dict | None = None):
    """(seconds, rgb uint8 [H, W, 3]) of each decoded frame, rotation applied; `counts`
    gets "packets_undecodable"."""
    import av

    counts = {} if counts is None else counts
    counts["packets_undecodable"] = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except (av.error.InvalidDataError, av.error.ValueError, av.error.EOFError):
            counts["packets_undecodable"] += 1
            if counts["packets_undecodable"] > 32:
                message = "too many video packets failed to decode"
                raise TaskError("VIDEO_CORRUPT", message) from None
            continue
        for frame in frames:
            if frame.pts is None or frame.time_base is None:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            turns = round((frame.rotation or 0) / 90) % 4
            if turns:
                # FFmpeg's rotation is counter-clockwise in degrees; np.rot90 turns the same way.
                rgb = np.ascontiguousarray(np.rot90(rgb, turns))
            yield float(frame.pts * frame.time_base), rgb


def _end_time(stream, last: float, step: float) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float((stream.start_time or 0) * stream.time_base + stream.duration
                     * stream.time_base)  # fmt: skip
    return last + step


def probe_task(data: bytes, params: dict) -> tuple[dict, bytes]:
    """Stream facts without decoding the frames: size, rate, duration, rotation, audio."""
    with _open(data) as container:
        stream = _video_stream(container)
        rate = stream.average_rate or stream.guessed_rate or Fraction(FPS)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        meta = {
            "codec": stream.codec_context.name,
            "width": int(stream.codec_context.width or 0),
            "height": int(stream.codec_context.height or 0),
            "fps": float(rate),
            "duration": duration,
            "has_audio": any(s.type == "audio" for s in container.streams),
        }
    return meta, b""


def frames_task(data: bytes, params: dict) -> tuple[dict, bytes]:
    """Decode, resample to 25 fps and append each frame's raw RGB bytes to params["out"].

    Also counts what the resampling did: source frames never used (a faster source) and
    output frames that repeat the one before (a slower source, or gaps in the timestamps).
    """
    max_frames = int(params["max_seconds"] * FPS) + 1
    size = params.get("size")
    written, source, used, repeated = 0, 0, 0, 0
    counts: dict = {}
    shape = None
    with _open(data) as container, open(params["out"], "wb") as out:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        step = 1.0 / float(stream.average_rate or FPS)
        start = prev_t = prev = None
        last_emitted = -1  # the source index of the last frame written

        def emit(frame: np.ndarray, index: int) -> None:
            nonlocal written, used, repeated, last_emitted
            if written >= max_frames:
                raise TaskError("VIDEO_TOO_LONG", f"the video is longer than the limit of "
                                f"{params['max_seconds']:g} s")  # fmt: skip
            if params.get("headers"):  # a stream: each frame says its shape
                out.write(_FRAME_HEADER.pack(*frame.shape))
            out.write(np.ascontiguousarray(frame).tobytes())
            written += 1
            if index == last_emitted:
                repeated += 1
            else:
                used += 1
            last_emitted = index

        for t, rgb in _timed_frames(container, stream, counts):
            if size:
                rgb = _resize(rgb, int(size))
            if shape is None:
                shape = rgb.shape
            elif rgb.shape != shape:  # a resolution change mid-stream: keep the first size
                rgb = _fit(rgb, shape)
            source += 1
            if prev is None:
                start, prev_t, prev = t, t, rgb
                continue
            # Every grid time nearer to the previous frame than to this one (ties: earlier).
            middle = (prev_t + t) / 2
            while start + written / FPS <= middle + 1e-9:
                emit(prev, source - 2)
            prev_t, prev = t, rgb
        if prev is None:
            raise TaskError("VIDEO_CORRUPT", "no video frame could be decoded")
        end = _end_time(stream, prev_t, step)
        while start + written / FPS < end - 1e-6 or written == 0:
            emit(prev, source - 1)
    return {"frames": written, "height": int(shape[0]), "width": int(shape[1]),
            "source_frames": source, "start": start, "source_frames_skipped": source - used,
            "frames_repeated": repeated, **counts}, b""  # fmt: skip


def _fit(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.BILINEAR))


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)),
                                                  Image.BILINEAR))  # fmt: skip


# --- the caller's side --------------------------------------------------------------------------


def _error(exc: SandboxError, limits: Limits) -> TalkingFaceError:
    if exc.reason == "task_error":
        return TalkingFaceError(exc.code, exc.message)
    if exc.reason == "unavailable":
        return TalkingFaceError("UNAVAILABLE", "the video decoder could not be started")
    return TalkingFaceError("VIDEO_CORRUPT", exc.describe(limits))


def probe(data: bytes, limits: Limits | None = None) -> dict:
    """Facts about the video stream (see probe_task); VIDEO_* errors."""
    limits = limits or Limits.from_settings()
    try:
        meta, _ = run_task(PROBE_TASK, data, {}, limits)
    except SandboxError as exc:
        raise _error(exc, limits) from None
    return meta


def read_frames(data: bytes, out: Path | str, max_seconds: float = 1800.0,
                size: int | None = None, limits: Limits | None = None,
                stats: dict | None = None) -> np.ndarray:  # fmt: skip
    """The video at 25 fps as a read-only memory map [T, H, W, 3] uint8 of the raw file `out`
    (written by the sandboxed decoder, one frame at a time).

    `size` caps the long side (downscaled, never up). `stats`, when given, is updated with
    the decoder's counts: source_frames, source_frames_skipped (never used by the 25 fps
    resampling), frames_repeated (25 fps frames repeating the one before),
    packets_undecodable. VIDEO_* errors.
    """
    params = {"out": str(out), "max_seconds": float(max_seconds), "size": size}
    limits = limits or Limits.from_settings()
    try:
        meta, _ = run_task(FRAMES_TASK, data, params, limits)
    except SandboxError as exc:
        raise _error(exc, limits) from None
    shape = (meta["frames"], meta["height"], meta["width"], 3)
    if stats is not None:
        stats.update({k: meta[k] for k in STATS})
    return np.memmap(out, dtype=np.uint8, mode="r", shape=shape)


def iter_frames(
    data: bytes,
    max_seconds: float = 1800.0,
    size: int | None = None,
    limits: Limits | None = None,
    stats: dict | None = None,
) -> Iterator[np.ndarray]:
    """The video at 25 fps, one frame [H, W, 3] uint8 at a time, as the sandboxed decoder
    makes them: they pass through a pipe (a FIFO), so no frame is stored, whatever the
    video's length (`read_frames` keeps them all, in a file). `stats` is filled at the end
    (see read_frames). Stopping early (closing the generator) stops the decoder. VIDEO_*
    errors, raised when the decoder's answer comes (after the frames it did make)."""
    limits = limits or Limits.from_settings()
    with tempfile.TemporaryDirectory(prefix="talkingface-frames-") as tmp:
        fifo = os.path.join(tmp, "frames")
        os.mkfifo(fifo, 0o600)
        params = {"out": fifo, "max_seconds": float(max_seconds), "size": size, "headers": True}
        answer: dict = {}

        def decode() -> None:
            try:
                answer["meta"], _ = run_task(FRAMES_TASK, data, params, limits)
            except SandboxError as exc:
                answer["error"] = exc

        worker = threading.Thread(target=decode, name="video-decode", daemon=True)
        worker.start()
        # Non-blocking: the decoder may fail before it opens its end, and must not hang us.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            reader = _FifoReader(fd, worker)
            while True:
                head = reader.read(_FRAME_HEADER.size)
                if head is None:
                    break
                shape = _FRAME_HEADER.unpack(head)
                body = reader.read(int(np.prod(shape)))
                if body is None:
                    break
                yield np.frombuffer(body, np.uint8).reshape(shape)
        finally:
            os.close(fd)  # a decoder still writing gets a broken pipe and stops
            while worker.is_alive():  # one still opening its end: let it open, then break it
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
                worker.join(0.05)
        if "error" in answer:
            raise _error(answer["error"], limits)
        if stats is not None:
            stats.update({k: answer["meta"][k] for k in STATS})


class _FifoReader:
    """Exact-size reads from a non-blocking FIFO whose writer is a sandboxed decoder: waits
    while the writer is alive (or has not opened its end yet), None at its end."""

    def __init__(self, fd: int, writer: threading.Thread) -> None:
        self.fd, self.writer = fd, writer

    def read(self, n: int) -> bytes | None:
        import select

        parts, got = [], 0
        while got < n:
            try:
                chunk = os.read(self.fd, min(n - got, 1 << 20))
            except BlockingIOError:  # the writer is there, nothing written yet
                select.select([self.fd], [], [], 0.5)
                continue
            if chunk:
                parts.append(chunk)
                got += len(chunk)
                continue
            # End of file: no writer yet, or the writer is done.
            if not self.writer.is_alive():
                with contextlib.suppress(BlockingIOError):
                    rest = os.read(self.fd, n - got)
                    if rest:
                        parts.append(rest)
                        got += len(rest)
                        continue
                return None
            time.sleep(0.005)
        return b"".join(parts)
