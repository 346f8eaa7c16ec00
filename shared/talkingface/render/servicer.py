"""The Renderer gRPC servicer: avatar + lm3d sequence + frame range -> video frames.

Hosted by the standalone server (`talkingface serve renderer`) and by Ray Serve (`app()`),
the same class either way. The whole lm3d sequence arrives as a TensorPayload (inline Tensor,
or ObjectRef to a .npy file in the store) with the range [start_frame, end_frame) to render;
the first response is always the RenderSummary, then one Frame per output frame, in order
(raw RGB8, PNG or JPEG), or, with OUTPUT_MODE_STORE, one ObjectRef to an H.264 mp4 segment
(no audio, 25 fps) written to the store.

Rendering goes in batches of TALKINGFACE_RENDERER_BATCH_FRAMES frames per forward pass and
each frame is sent as soon as its batch is done: memory holds one batch, whatever the length
of the range. Batches sit on fixed boundaries of the absolute frame index (frames
[kB, (k+1)B) of the sequence, B the batch size) and an edge batch is rendered whole, so
every frame is computed in exactly the same batch whichever ranges a sequence is cut into:
ranges rendered separately and concatenated are byte-identical to one render of the whole
(matrix products are not bitwise stable across batch shapes). With track poses that costs up
to B - 1 extra frames at each end of a range; ranges cut at multiples of B cost nothing.
Explicit poses exist only inside the range, so those batches are clipped to it instead.

The pose of absolute frame i is the avatar's recorded track replayed from frame `pose_start`
(0 by default; ping-pong by default, or loop) whatever the range, or the client's own
`pose_indices`. An avatar's
renderer is loaded from its bundle (`avatars/<id>/<version>/renderer/`, fetched into the cache
directory) on first use and kept in a least-recently-used cache bounded in bytes
(TALKINGFACE_RENDERER_CACHE_MB); a request without a version uses the latest, resolved on
every request. Model calls are serialised by a lock, one batch at a time per process, so
concurrent streams interleave batch by batch; decoding, encoding and sending run outside it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, abort
from talkingface.lm3d import FPS
from talkingface.render.checkpoint import pose_indices
from talkingface.render.condition import smooth_landmarks
from talkingface.render.renderer import Renderer
from talkingface.render.requests import (  # noqa: F401 (MAX_RESOLUTION: the stage's limit)
    ENCODINGS,
    MAX_RESOLUTION,
    check_pose_options,
    frame_range,
    pose_plan,
    resolution,
    segment_prefix,
)
from talkingface.serving.cache import ByteLRU
from talkingface.serving.capability import StageGuard
from talkingface.serving.payloads import read_lm3d
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.storage.factory import LazyStore
from talkingface.v1 import common_pb2
from talkingface.v1 import renderer_pb2 as pb

log = logging.getLogger(__name__)
STORE_PREFIX = "render"
MIB = 1024 * 1024
JPEG_QSCALE = 3  # FFmpeg's -q:v for mjpeg: 2 (best) .. 31; 3 is about JPEG quality 90
MP4 = "video/mp4"


def resolve_device(setting: str) -> torch.device:
    """TALKINGFACE_DEVICE as a torch device: `auto` is CUDA when torch sees a GPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass
class LoadedAvatar:
    """A renderer ready to serve: the model, its recorded pose track and background plate."""

    renderer: Renderer
    R: np.ndarray  # float32 [N, 3, 3]
    t: np.ndarray  # float32 [N, 3]
    background: np.ndarray  # float32 [size, size, 3] in [0, 1]
    version: str

    @property
    def size(self) -> int:
        """The frames' side: the NeRF's size times the super-resolution factor."""
        return self.renderer.config.output_size

    @property
    def track_length(self) -> int:
        return int(self.R.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held: the field's, the occupancy grid's and the super-resolution
        network's parameters and buffers, the intrinsics, and the track arrays."""
        modules = (self.renderer.field, self.renderer.occupancy, self.renderer.sr)
        tensors = [v for m in modules if m is not None for v in m.state_dict().values()]
        tensors.append(self.renderer.K)
        weights = sum(v.numel() * v.element_size() for v in tensors)
        return int(weights + self.R.nbytes + self.t.nbytes + self.background.nbytes)


@dataclass(frozen=True)
class RenderPlan:
    """What one request renders: frames [start, end) of `lm3d` at `size`, with `poses`
    (explicit track indices per output frame) or the track replayed in `mode`."""

    lm3d: np.ndarray
    start: int
    end: int
    size: int
    mode: str  # "loop", "pingpong" or "explicit"
    poses: np.ndarray | None
    pose_start: int = 0  # track modes: where in the track the replay starts


class RendererServicer:
    """talkingface.v1.Renderer (methods named as the RPCs)."""

    def __init__(self, settings: Settings | None = None, lazy: bool = False) -> None:
        # `lazy` is accepted for symmetry with the other stages: nothing loads at start-up.
        self.settings = settings or Settings.from_env()
        self._store = LazyStore(self.settings)
        self.guard = StageGuard.from_settings(self.settings, "renderer", STORE_PREFIX)
        self._model_lock = threading.Lock()
        self.device = resolve_device(self.settings.device)
        self.batch_frames = max(1, self.settings.renderer_batch_frames)
        self.renderers = ByteLRU(
            self.settings.renderer_cache_mb * MIB, lambda avatar: avatar.nbytes, name="renderer"
        )

    def warm_up(self) -> None:
        log.info(
            "renderer ready",
            extra={
                "device": str(self.device),
                "batch_frames": self.batch_frames,
                "cache_mb": self.settings.renderer_cache_mb,
            },
        )

    @property
    def store(self) -> ObjectStore:
        return self._store.get()

    # --- RPCs ----------------------------------------------------------------------------

    def Render(self, request: pb.RenderRequest, context) -> Iterator:
        try:
            self.guard.check(context, request)
            yield from self._render(request)
        except TalkingFaceError as error:
            abort(context, error)

    # --- helpers -------------------------------------------------------------------------

    def _render(self, request: pb.RenderRequest) -> Iterator[pb.RenderResponse]:
        if not request.avatar.avatar_id:
            raise TalkingFaceError(
                "INVALID_REQUEST", "the request names no avatar (avatar.avatar_id)"
            )
        size = resolution(request.resolution)
        encoding = ENCODINGS.get(request.encoding)
        if encoding is None:
            raise TalkingFaceError("INVALID_REQUEST", f"unknown frame encoding {request.encoding}")
        check_pose_options(request)
        lm3d = self._lm3d(request.lm3d)
        start, end = frame_range(request.start_frame, request.end_frame, len(lm3d))
        avatar = self._avatar(request.avatar)
        size = size or avatar.size
        store = request.output == common_pb2.OUTPUT_MODE_STORE
        prefix = segment_prefix(request.segment_prefix, store)
        if store and size % 2:
            raise TalkingFaceError(
                "INVALID_REQUEST",
                f"an H.264 segment needs an even frame size, got resolution {size}",
            )
        mode, poses, pose_start = pose_plan(request, end - start, avatar.track_length)
        plan = RenderPlan(lm3d, start, end, size, mode, poses, pose_start)
        renderer = avatar.renderer
        yield pb.RenderResponse(
            summary=pb.RenderSummary(
                frames=end - start,
                width=size,
                height=size,
                fps=float(FPS),
                backend=renderer.field.backend,
                device=str(renderer.device),
            )
        )
        frames = self._frames(avatar, plan)
        if store:
            yield pb.RenderResponse(segment=self._segment(frames, start, end, prefix))
            return
        encoder = FrameEncoder(encoding, size)
        for index, frame in frames:
            yield pb.RenderResponse(
                frame=pb.Frame(
                    index=index,
                    width=size,
                    height=size,
                    encoding=encoding,
                    data=encoder.encode(frame),
                )
            )

    def _frames(self, avatar: LoadedAvatar, plan: RenderPlan) -> Iterator[tuple[int, np.ndarray]]:
        """(absolute index, uint8 [size, size, 3]) of every frame of the plan, in order, one
        batch (one forward pass) at a time; the module docstring says where batches start."""
        b = self.batch_frames
        # The whole sequence, smoothed before it is cut into batches (render.condition).
        lm3d = smooth_landmarks(plan.lm3d, avatar.renderer.config.lm_smooth)
        # Frames a batch may hold: the whole sequence when every frame's pose is known.
        lo_limit, hi_limit = (
            (plan.start, plan.end) if plan.poses is not None else (0, len(plan.lm3d))
        )
        for k in range(plan.start // b, (plan.end - 1) // b + 1):
            lo, hi = max(k * b, lo_limit), min((k + 1) * b, hi_limit)
            if plan.poses is not None:
                track = plan.poses[lo - plan.start : hi - plan.start]
            else:
                track = pose_indices(hi - lo, avatar.track_length, plan.mode,
                                     start=lo + plan.pose_start)  # fmt: skip
            pixels = self._run(avatar, lm3d[lo:hi], track, plan.size)
            for i in range(max(lo, plan.start), min(hi, plan.end)):
                yield i, pixels[i - lo]

    def _run(
        self, avatar: LoadedAvatar, lm3d: np.ndarray, track: np.ndarray, size: int
    ) -> np.ndarray:
        """One forward pass: uint8 frames [B, size, size, 3]."""
        with self._model_lock, torch.inference_mode():
            frames, _ = avatar.renderer.render(
                lm3d, avatar.R[track], avatar.t[track], avatar.background
            )
            frames = resize(frames, size)
            pixels = (frames * 255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        return pixels

    def _segment(
        self, frames: Iterator[tuple[int, np.ndarray]], start: int, end: int, prefix: str = ""
    ) -> common_pb2.ObjectRef:
        """Encode the frames into one mp4 as they come and put it in the store (under
        `prefix`, or `render/<uuid>/`)."""
        from talkingface.media import write_mp4

        name = f"segment_{start}_{end}.mp4"
        if prefix:
            key = f"{prefix}/{uuid.uuid4().hex[:12]}-{name}"
        else:
            key = f"{STORE_PREFIX}/{uuid.uuid4().hex}/{name}"
        with tempfile.TemporaryDirectory(prefix="talkingface-render-") as tmp:
            path = Path(tmp) / "segment.mp4"
            written = write_mp4(path, (frame for _, frame in frames), FPS)
            if written != end - start:
                raise TalkingFaceError(
                    "INTERNAL", f"encoded {written} frames of a {end - start}-frame range"
                )
            try:
                with path.open("rb") as handle:
                    info = self.store.put(key, handle, content_type=MP4)
            except StoreError as exc:
                raise as_talkingface_error(exc) from None
        return common_pb2.ObjectRef(
            key=info.key, size=info.size, sha256=info.sha256 or "", content_type=MP4
        )

    def _lm3d(self, payload: common_pb2.TensorPayload) -> np.ndarray:
        return read_lm3d(payload, self.store, self.settings.audio_max_seconds, FPS)

    def _avatar(self, avatar: common_pb2.AvatarRef) -> LoadedAvatar:
        from talkingface.bundle import resolve_version

        # Latest: resolved on every request, so a new publish applies at once.
        version = resolve_version(self.store, avatar.avatar_id, avatar.version)
        return self.renderers.get(
            (avatar.avatar_id, version), lambda: self._load(avatar.avatar_id, version)
        )

    def _load(self, avatar_id: str, version: str) -> LoadedAvatar:
        from talkingface.render.bundle import load_renderer_bundle
        from talkingface.serving.metrics import RENDER_BACKEND_INFO

        renderer, track, version = load_renderer_bundle(
            self.store, avatar_id, version, self.settings.cache_dir, self.device
        )
        loaded = LoadedAvatar(
            renderer,
            np.ascontiguousarray(track["R"], np.float32),
            np.ascontiguousarray(track["t"], np.float32),
            np.ascontiguousarray(track["background"], np.float32),
            version,
        )
        backend, device = renderer.field.backend, str(renderer.device)
        RENDER_BACKEND_INFO.labels(backend, device).set(1)
        log.info(
            "renderer loaded",
            extra={
                "avatar_id": avatar_id,
                "avatar_version": version,
                "backend": backend,
                "device": device,
                "size": loaded.size,
                "track_frames": loaded.track_length,
                "bytes": loaded.nbytes,
            },
        )
        return loaded


class FrameEncoder:
    """Frames as the bytes of one encoding: raw RGB8, PNG (lossless) or JPEG, with PyAV's
    in-process FFmpeg encoders (no extra dependency)."""

    def __init__(self, encoding: int, size: int) -> None:
        self.encoding = encoding
        self._codec = None
        if encoding == pb.FRAME_ENCODING_RGB8:
            return
        import av

        jpeg = encoding == pb.FRAME_ENCODING_JPEG
        codec = av.CodecContext.create("mjpeg" if jpeg else "png", "w")
        codec.width = codec.height = size
        codec.pix_fmt = "yuvj420p" if jpeg else "rgb24"
        codec.time_base = Fraction(1, FPS)
        if jpeg:  # a fixed quantiser: the default rate control would starve large frames
            codec.qmin = codec.qmax = JPEG_QSCALE
        self._codec = codec

    def encode(self, frame: np.ndarray) -> bytes:
        if self._codec is None:
            return np.ascontiguousarray(frame, np.uint8).tobytes()
        import av

        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, np.uint8), format="rgb24")
        if self._codec.pix_fmt != "rgb24":
            image = image.reformat(format=self._codec.pix_fmt)
        return b"".join(bytes(packet) for packet in self._codec.encode(image))


def resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames [B, H, W, 3] scaled to [B, size, size, 3]: area averaging when shrinking,
    bilinear when growing."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    x = frames.permute(0, 3, 1, 2)
    if size < frames.shape[1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    else:
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False
        )
    return x.permute(0, 2, 3, 1)


def app(settings: Settings | dict | None = None):
    """The Ray Serve application for this stage."""
    from talkingface.serving.ray_app import app_settings, build_app

    settings = app_settings(settings)  # Ray Serve passes the serve config's args dict
    return build_app(RendererServicer, pb, "Renderer", settings)


def standalone(settings: Settings):
    """A ServiceServer hosting this stage."""
    from talkingface.serving.server import ServiceServer, binding_for
    from talkingface.v1 import renderer_pb2_grpc

    servicer = RendererServicer(settings, lazy=True)
    binding = binding_for(
        servicer, renderer_pb2_grpc.add_RendererServicer_to_server, pb, "Renderer"
    )
    return ServiceServer("renderer", [binding], settings, warmup=servicer.warm_up)
