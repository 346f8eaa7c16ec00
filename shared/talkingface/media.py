"""Audio and video files: 16-bit WAV in and out, H.264 + AAC mp4 muxing with PyAV, and
stitching of mp4 segments (frame ranges rendered in parallel) into one mp4 with the audio.

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


def write_wav(path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio in [-1, 1] as 16-bit PCM WAV to a path or a binary file."""
    pcm = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    pcm = np.round(pcm * 32767.0).astype("<i2")
    with wave.open(path if hasattr(path, "write") else str(path), "wb") as handle:
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
                video = _add_h264_stream(container, fps, width, height, crf)
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


def _add_h264_stream(container, fps: int, width: int, height: int, crf: int):
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height = width, height
    video.pix_fmt = "yuv420p"
    video.options = {"crf": str(crf), "preset": "veryfast"}
    return video


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    # Clipped frame by frame: no full-length copies of a long soundtrack.
    for start in range(0, len(audio), AAC_FRAME):
        piece = np.clip(audio[start : start + AAC_FRAME], -1.0, 1.0).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def concat_mp4(
    out: Path | str,
    segments: Iterable[Path | str],
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 20,
) -> dict[str, int | bool]:
    """Stitch mp4 segments, in order, into one mp4 at `out`, with optional mono AAC `audio`.

    Frame i of the output is shown at i/fps. The job broker renders a long sequence as frame
    ranges [start, end) on several renderer replicas, each written with `write_mp4`, and joins
    them here.

    Fast path (remux): the compressed H.264 packets are copied without decoding, their pts and
    dts shifted by the duration of the frames before the segment. That is valid because each
    segment is a self-contained, closed H.264 stream: it starts with an IDR frame, so no frame
    references a picture of another segment, and all segments share one SPS/PPS (the mp4
    extradata), so one avcC header describes every packet. It is taken when every segment's
    video has the first segment's codec, size, pixel format and extradata, plays at `fps`, and
    begins with a keyframe. Otherwise, if the sizes agree, all segments are decoded and
    re-encoded with libx264 at `crf` (as `write_mp4` does), streaming frame by frame.

    At most one segment is open at a time, and packets and frames are streamed, so memory does
    not grow with the length of the video. The file is written next to `out` and renamed into
    place when complete, so `out` never holds a partial video (and may be one of the segments).

    Returns {"frames": video frames written, "remuxed": whether the fast path was used,
    "segments": number of segments}. Raises ValueError for no segments, a segment that is not
    a readable mp4 with a video stream, or frame sizes that differ.
    """
    paths = [Path(segment) for segment in segments]
    if not paths:
        raise ValueError("concat_mp4 needs at least one segment")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if audio is not None:
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono [samples], got shape {audio.shape}")
    infos = [_segment_video_info(path) for path in paths]
    first, _ = infos[0]
    for path, (info, _) in zip(paths, infos, strict=True):
        if (info["width"], info["height"]) != (first["width"], first["height"]):
            raise ValueError(
                f"{path}: frame size {info['width']}x{info['height']} differs from "
                f"{first['width']}x{first['height']} of the first segment {paths[0]}"
            )
    remux = first["rate"] == fps and all(info == first and key for info, key in infos)

    target = Path(out)
    partial = target.with_name(target.name + ".partial")
    try:
        with av.open(str(partial), mode="w", format="mp4") as container:
            if remux:
                with _open_segment(paths[0]) as source:
                    video = container.add_stream_from_template(source.streams.video[0])
            else:
                video = _add_h264_stream(container, fps, first["width"], first["height"], crf)
            sound = None
            if audio is not None:
                sound = container.add_stream("aac", rate=sample_rate, layout="mono")
            container.start_encoding()  # fixes the muxer's stream time bases
            if remux:
                frames = _remux_segments(container, video, paths, fps)
            else:
                frames = _reencode_segments(container, video, paths, fps)
            if sound is not None:
                _encode_audio(container, sound, audio, sample_rate)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"frames": frames, "remuxed": remux, "segments": len(paths)}


def _open_segment(path: Path):
    # The mp4 demuxer is forced: probing would take e.g. a text file for a "tty" video.
    try:
        return av.open(str(path), format="mp4")
    except (av.FFmpegError, OSError) as error:
        raise ValueError(f"{path}: not a readable mp4 segment ({error})") from error


def _segment_video_info(path: Path) -> tuple[dict[str, object], bool]:
    """What must agree between segments for their packets to be remuxed into one stream, and
    whether the segment's first packet is a keyframe (or it has none)."""
    with _open_segment(path) as source:
        if not source.streams.video:
            raise ValueError(f"{path}: segment has no video stream")
        stream = source.streams.video[0]
        context = stream.codec_context
        try:
            packet = next((p for p in source.demux(stream) if p.size), None)
        except av.FFmpegError as error:
            raise ValueError(f"{path}: cannot read the segment's video ({error})") from error
        return {
            "codec": context.name,
            "width": context.width,
            "height": context.height,
            "pix_fmt": context.pix_fmt,
            "extradata": bytes(context.extradata or b""),
            "rate": stream.average_rate,
        }, packet is None or packet.is_keyframe


def _remux_segments(container, video, paths: list[Path], fps: int) -> int:
    """Copy every segment's packets into `video`, shifted by the frames before the segment."""
    time_base = video.time_base
    frames = 0
    last_dts = None
    for path in paths:
        with _open_segment(path) as source:
            stream = source.streams.video[0]
            source_base = stream.time_base
            # Presentation starts at start_time; with B-frames the first dts lies before it.
            start = stream.start_time or 0
            offset = Fraction(frames, fps)
            try:
                for packet in source.demux(stream):
                    if not packet.size:  # the empty packet demux yields at the end
                        continue
                    if packet.pts is None or packet.dts is None:
                        raise ValueError(f"{path}: video packet without pts/dts")
                    pts = round((offset + (packet.pts - start) * source_base) / time_base)
                    dts = round((offset + (packet.dts - start) * source_base) / time_base)
                    if last_dts is not None and dts <= last_dts:
                        dts = last_dts + 1  # mp4 needs strictly increasing dts
                    duration = packet.duration
                    packet.stream = video
                    packet.time_base = time_base
                    packet.pts, packet.dts = pts, dts
                    if duration is not None:
                        packet.duration = round(duration * source_base / time_base)
                    container.mux(packet)
                    last_dts = dts
                    frames += 1
            except av.FFmpegError as error:
                raise ValueError(f"{path}: cannot remux the segment ({error})") from error
    return frames


def _reencode_segments(container, video, paths: list[Path], fps: int) -> int:
    """Decode every segment and encode its frames, one at a time, into `video`."""
    frames = 0
    for path in paths:
        with _open_segment(path) as source:
            stream = source.streams.video[0]
            try:
                for frame in source.decode(stream):
                    if frame.format.name != "yuv420p":
                        frame = frame.reformat(format="yuv420p")
                    frame.pict_type = 0  # NONE: the source's I/P/B would force x264's choices
                    frame.pts = frames
                    frame.time_base = Fraction(1, fps)
                    container.mux(video.encode(frame))
                    frames += 1
            except av.FFmpegError as error:
                raise ValueError(f"{path}: cannot decode the segment ({error})") from error
    container.mux(video.encode())
    return frames


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
