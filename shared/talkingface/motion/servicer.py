"""The Motion gRPC servicer: audio features + pitch bins -> an lm3d landmark sequence.

Hosted by the standalone server (`talkingface serve motion`) and by Ray Serve (`app()`), the
same class either way. Inputs arrive as TensorPayloads (inline Tensors, or ObjectRefs to
.npy files in the store); the result, lm3d float32 [T, 68, 3] at 25 fps, goes back as a
TensorChunk stream or, with OUTPUT_MODE_STORE, as a .npy object in the store. The first
response is always the MotionSummary.

The motion model (TALKINGFACE_MOTION_CHECKPOINT) loads once, in warm-up. A named avatar's
postnet (and with it that avatar's mean face) is loaded from its bundle on first use and kept
in a least-recently-used cache bounded in bytes (TALKINGFACE_MOTION_POSTNET_CACHE_MB). The
model call is serialised by a lock: one generation at a time per process, whatever the number
of RPC threads; inputs are checked and decoded outside it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from talkingface.audio.pitch import F0_BINS
from talkingface.config import ConfigError, Settings, env_name
from talkingface.errors import TalkingFaceError, abort
from talkingface.lm3d import FPS
from talkingface.serving.cache import ByteLRU
from talkingface.serving.capability import StageGuard
from talkingface.serving.payloads import read_payload, store_tensors
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.factory import LazyStore
from talkingface.tensors import to_chunks
from talkingface.v1 import common_pb2
from talkingface.v1 import motion_pb2 as pb

if TYPE_CHECKING:
    from talkingface.motion.infer import MotionModel, PostnetModel

log = logging.getLogger(__name__)
STORE_PREFIX = "motion"
MIB = 1024 * 1024
NPY_HEADER_SLACK = 64 * 1024  # a .npy header is at most a few hundred bytes


def require_checkpoint(settings: Settings) -> str:
    """The configured motion checkpoint, or a ConfigError that says how to get one."""
    if not settings.motion_checkpoint:
        raise ConfigError(
            "the motion service cannot start:\n  "
            f"{env_name('motion_checkpoint')} is required: the motion model directory "
            "(CKPT_DIR/motion, written by `talkingface train motion --data CORPUS --out "
            "CKPT_DIR`) or `store:PREFIX` for one kept in the object store"
        )
    return settings.motion_checkpoint


def load_motion_model(settings: Settings, store: ObjectStore | None = None) -> MotionModel:
    """The motion model of TALKINGFACE_MOTION_CHECKPOINT (a directory or `store:PREFIX`)."""
    from talkingface.motion.infer import MotionModel
    from talkingface.storage.fetch import local_checkpoint

    source = require_checkpoint(settings)
    name = env_name("motion_checkpoint")
    try:
        directory = local_checkpoint(source, settings, store)
        return MotionModel.load(directory, device=settings.device)
    except (OSError, ValueError, KeyError, StoreError) as exc:
        raise ConfigError(f"{name}={source!r} is not a usable motion model: {exc}") from exc


class AvatarFace:
    """An avatar whose bundle has no postnet: only its mean face (of the projection index's
    training frames), around which the generic model's motion is placed."""

    def __init__(self, mean_face: np.ndarray) -> None:
        self.mean_face = np.asarray(mean_face, np.float32).reshape(-1, 3)


def postnet_nbytes(postnet: PostnetModel | AvatarFace) -> int:
    """Memory held by a loaded postnet: its weights and buffers plus its statistics."""
    if isinstance(postnet, AvatarFace):
        return int(postnet.mean_face.nbytes)
    weights = sum(t.numel() * t.element_size() for t in postnet.net.state_dict().values())
    stats = sum(np.asarray(a).nbytes for a in postnet.stats.arrays().values())
    return int(weights + stats)


class MotionServicer:
    """talkingface.v1.Motion (methods named as the RPCs)."""

    def __init__(self, settings: Settings | None = None, lazy: bool = False) -> None:
        """With lazy=True the model loads in warm_up() (the standalone server calls it after
        binding its port, while health reports NOT_SERVING). A missing
        TALKINGFACE_MOTION_CHECKPOINT fails here either way (ConfigError)."""
        self.settings = settings or Settings.from_env()
        require_checkpoint(self.settings)
        self._store = LazyStore(self.settings)
        self._model_lock = threading.Lock()
        self.model: MotionModel | None = None
        self.postnets = ByteLRU(
            self.settings.motion_postnet_cache_mb * MIB, postnet_nbytes, name="postnet"
        )
        self.max_frames = math.ceil(self.settings.audio_max_seconds * FPS)
        self.guard = StageGuard.from_settings(self.settings, "motion", STORE_PREFIX)
        if not lazy:
            self.warm_up()

    def warm_up(self) -> None:
        self.model = load_motion_model(self.settings)
        log.info(
            "motion ready",
            extra={
                "model_version": self.model.version,
                "feature_dim": self.model.feature_dim,
                "front_end": self.model.front_end,
                "device": str(self.model.device),
            },
        )

    @property
    def store(self) -> ObjectStore:
        return self._store.get()

    # --- RPCs ----------------------------------------------------------------------------

    def Generate(self, request: pb.GenerateMotionRequest, context) -> Iterator:
        try:
            self.guard.check(context, request)
            yield from self._generate(request)
        except TalkingFaceError as error:
            abort(context, error)

    # --- helpers -------------------------------------------------------------------------

    def _generate(self, request: pb.GenerateMotionRequest) -> Iterator[pb.GenerateMotionResponse]:
        model = self.model
        if model is None:
            raise TalkingFaceError("UNAVAILABLE", "the motion model is still loading")
        features, bins = self._inputs(request, model)
        temperature = float(request.temperature)
        if not math.isfinite(temperature):
            raise TalkingFaceError("INVALID_REQUEST", "temperature must be a finite number")
        avatar = self._avatar_postnet(request, model)
        postnet = avatar if not isinstance(avatar, AvatarFace) else None
        face = avatar.mean_face if isinstance(avatar, AvatarFace) else None
        lm3d = self._run(model, features, bins, int(request.seed), temperature, postnet, face)
        yield pb.GenerateMotionResponse(
            summary=pb.MotionSummary(
                frames=int(lm3d.shape[0]),
                fps=FPS,
                postnet_applied=postnet is not None,
                model_version=model.version,
            )
        )
        if request.output == common_pb2.OUTPUT_MODE_STORE:
            yield pb.GenerateMotionResponse(
                stored=store_tensors(self.store, STORE_PREFIX, {"lm3d": lm3d})
            )
            return
        for chunk in to_chunks("lm3d", lm3d):
            yield pb.GenerateMotionResponse(chunk=chunk)

    def _run(self, model, features, bins, seed, temperature, postnet, face=None) -> np.ndarray:
        import torch

        try:
            with self._model_lock, torch.inference_mode():
                lm3d = model.generate(
                    features,
                    bins,
                    seed=seed,
                    temperature=temperature or None,
                    postnet=postnet,
                    mean_face=face,
                )
        except ValueError as exc:  # inputs are checked first; this is the model's last word
            raise TalkingFaceError("INVALID_REQUEST", str(exc)) from None
        if not np.isfinite(lm3d).all():
            raise TalkingFaceError("INTERNAL", "the motion model produced non-finite landmarks")
        return np.ascontiguousarray(lm3d, dtype=np.float32)

    def _inputs(self, request: pb.GenerateMotionRequest, model: MotionModel):
        dim = model.feature_dim
        expected = f"[T, {dim}] float32 {model.front_end} features at 25 fps"
        features = self._payload(request.features, "features", self.max_frames * dim * 8)
        if features.ndim != 2:
            raise TalkingFaceError(
                "INVALID_REQUEST",
                f"features must be {expected}, got shape {list(features.shape)}",
            )
        if features.dtype.kind != "f":
            raise TalkingFaceError(
                "INVALID_REQUEST", f"features must be {expected}, got dtype {features.dtype}"
            )
        if features.shape[1] != dim:
            raise TalkingFaceError(
                "INVALID_REQUEST",
                f"features are {features.shape[1]}-wide but this motion model (version "
                f"{model.version}) expects {expected}; extract them with the same front end",
            )
        frames = features.shape[0]
        if frames == 0:
            raise TalkingFaceError("INVALID_REQUEST", "features have no frames")
        self._check_length(frames)
        features = features.astype(np.float32, copy=False)
        if not np.isfinite(features).all():
            raise TalkingFaceError("INVALID_REQUEST", "features contain NaN or infinite values")
        bins = self._payload(request.f0_bins, "f0_bins", self.max_frames * 8)
        if bins.ndim != 1 or bins.dtype.kind not in "iu":
            raise TalkingFaceError(
                "INVALID_REQUEST",
                f"f0_bins must be int32 [T], got {bins.dtype} {list(bins.shape)}",
            )
        if bins.shape[0] != frames:
            raise TalkingFaceError(
                "INVALID_REQUEST",
                f"f0_bins has {bins.shape[0]} frames but features have {frames}; "
                "both come from the same extraction",
            )
        if bins.size and (bins.min() < 0 or bins.max() >= F0_BINS):
            raise TalkingFaceError(
                "INVALID_REQUEST",
                f"f0_bins must lie in 0..{F0_BINS - 1} (0 = unvoiced), "
                f"got {int(bins.min())}..{int(bins.max())}",
            )
        return features, bins.astype(np.int64)

    def _check_length(self, frames: int) -> None:
        if frames > self.max_frames:
            raise TalkingFaceError(
                "AUDIO_TOO_LONG",
                f"{frames} frames ({frames / FPS:.0f} s) is over the "
                f"{self.settings.audio_max_seconds:g} s limit "
                f"({env_name('audio_max_seconds')})",
            )

    def _payload(self, payload: common_pb2.TensorPayload, name: str, max_bytes: int) -> np.ndarray:
        return read_payload(payload, name, max_bytes, self.store)

    def _avatar_postnet(self, request: pb.GenerateMotionRequest, model: MotionModel):
        from talkingface.bundle import resolve_version
        from talkingface.motion.bundle import load_postnet

        avatar_id, version = request.avatar.avatar_id, request.avatar.version
        if not avatar_id:
            if version:
                raise TalkingFaceError("INVALID_REQUEST", "an avatar version without an avatar id")
            return None
        if not version:  # latest: resolved on every request, so a new publish applies at once
            version = resolve_version(self.store, avatar_id, "")

        def load() -> PostnetModel | AvatarFace:
            from talkingface.landmarks.bundle import load_projection

            try:
                postnet, _ = load_postnet(
                    self.store, avatar_id, version, self.settings.cache_dir, model.device
                )
                return postnet
            except TalkingFaceError as exc:
                if exc.code != "AVATAR_NOT_READY":
                    raise
                try:  # no postnet: the avatar's own face, from its projection index
                    index, _ = load_projection(self.store, avatar_id, version)
                except TalkingFaceError:
                    raise exc from None
                return AvatarFace(index.frames.mean(axis=0))

        postnet = self.postnets.get((avatar_id, version), load)
        if isinstance(postnet, AvatarFace):
            return postnet
        try:
            model.check_postnet(postnet)
        except ValueError as exc:
            raise TalkingFaceError(
                "AVATAR_NOT_READY", f"avatar {avatar_id!r} version {version}: {exc}"
            ) from None
        return postnet


def app(settings: Settings | dict | None = None):
    """The Ray Serve application for this stage (fails at once without a motion checkpoint)."""
    from talkingface.serving.ray_app import app_settings, build_app

    settings = app_settings(settings)  # Ray Serve passes the serve config's args dict
    if settings is not None:
        require_checkpoint(settings)
    return build_app(MotionServicer, pb, "Motion", settings)


def standalone(settings: Settings):
    """A ServiceServer hosting this stage; the model loads during warm-up."""
    from talkingface.serving.server import ServiceServer, binding_for
    from talkingface.v1 import motion_pb2_grpc

    servicer = MotionServicer(settings, lazy=True)
    binding = binding_for(servicer, motion_pb2_grpc.add_MotionServicer_to_server, pb, "Motion")
    return ServiceServer("motion", [binding], settings, warmup=servicer.warm_up)
