"""The LandmarkProjection gRPC servicer: predicted lm3d -> lm3d pulled toward the avatar's
own training landmarks (talkingface.landmarks.projection), with per-frame distances and
bad-case flags.

Hosted by the standalone server (`talkingface serve landmark_projection`) and by Ray Serve
(`app()`), the same class either way. The lm3d sequence arrives as a TensorPayload (inline
Tensor, or ObjectRef to a .npy file in the store); the result goes back as a TensorChunk
stream (lm3d, dist_before, dist_after, bad) or, with OUTPUT_MODE_STORE, as .npy objects in
the store. The first response is always the ProjectionSummary.

An avatar's index is loaded from its bundle (`avatars/<id>/<version>/projection/`) on first
use and kept in a least-recently-used cache bounded in bytes
(TALKINGFACE_PROJECTION_CACHE_MB). A request without a version uses the avatar's latest,
resolved on every request, so a new publish applies at once. No model loads at start-up:
the service is ready as soon as it binds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np

from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, abort
from talkingface.landmarks.projection import DEFAULT_ALPHA, DEFAULT_K, ProjectionIndex
from talkingface.lm3d import FPS
from talkingface.serving.cache import ByteLRU
from talkingface.serving.capability import StageGuard
from talkingface.serving.payloads import read_lm3d, store_tensors
from talkingface.storage import ObjectStore
from talkingface.storage.factory import LazyStore
from talkingface.tensors import to_chunks
from talkingface.v1 import common_pb2
from talkingface.v1 import landmark_projection_pb2 as pb

log = logging.getLogger(__name__)
STORE_PREFIX = "projection"
MIB = 1024 * 1024
MAX_K = 256  # more neighbours than this is a mistake, not a setting


class LandmarkProjectionServicer:
    """talkingface.v1.LandmarkProjection (methods named as the RPCs)."""

    def __init__(self, settings: Settings | None = None, lazy: bool = False) -> None:
        # `lazy` is accepted for symmetry with the other stages: nothing loads at start-up.
        self.settings = settings or Settings.from_env()
        self._store = LazyStore(self.settings)
        self.guard = StageGuard.from_settings(self.settings, "landmark_projection", STORE_PREFIX)
        self.indexes = ByteLRU(
            self.settings.projection_cache_mb * MIB, lambda index: index.nbytes, name="projection"
        )

    def warm_up(self) -> None:
        log.info("landmark projection ready", extra={"cache_mb": self.settings.projection_cache_mb})

    @property
    def store(self) -> ObjectStore:
        return self._store.get()

    # --- RPCs ----------------------------------------------------------------------------

    def Project(self, request: pb.ProjectRequest, context) -> Iterator:
        try:
            self.guard.check(context, request)
            yield from self._project(request)
        except TalkingFaceError as error:
            abort(context, error)

    # --- helpers -------------------------------------------------------------------------

    def _project(self, request: pb.ProjectRequest) -> Iterator[pb.ProjectResponse]:
        k, alpha = _options(request)
        lm3d = self._lm3d(request.lm3d)
        index, version = self._index(request.avatar)
        result = index.project(lm3d, k=k, alpha=alpha)
        yield pb.ProjectResponse(
            summary=pb.ProjectionSummary(
                frames=int(result.lm3d.shape[0]),
                k=result.k,
                alpha=result.alpha,
                bad_case_rate=result.bad_case_rate,
                bad_case_threshold=result.threshold,
                bad_case_rate_before=result.bad_case_rate_before,
                avatar_version=version,
            )
        )
        arrays = {
            "lm3d": np.ascontiguousarray(result.lm3d, np.float32),
            "dist_before": result.dist_before.astype(np.float32),
            "dist_after": result.dist_after.astype(np.float32),
            "bad": result.bad.astype(bool),
        }
        if request.output == common_pb2.OUTPUT_MODE_STORE:
            yield pb.ProjectResponse(stored=store_tensors(self.store, STORE_PREFIX, arrays))
            return
        for name, array in arrays.items():
            for chunk in to_chunks(name, array):
                yield pb.ProjectResponse(chunk=chunk)

    def _lm3d(self, payload: common_pb2.TensorPayload) -> np.ndarray:
        return read_lm3d(payload, self.store, self.settings.audio_max_seconds, FPS)

    def _index(self, avatar: common_pb2.AvatarRef) -> tuple[ProjectionIndex, str]:
        from talkingface.bundle import resolve_version
        from talkingface.landmarks.bundle import load_projection

        if not avatar.avatar_id:
            raise TalkingFaceError(
                "INVALID_REQUEST", "the request names no avatar (avatar.avatar_id)"
            )
        version = resolve_version(self.store, avatar.avatar_id, avatar.version)
        key = (avatar.avatar_id, version)
        index = self.indexes.get(
            key, lambda: load_projection(self.store, avatar.avatar_id, version)[0]
        )
        return index, version


def _options(request: pb.ProjectRequest) -> tuple[int, float]:
    """(k, alpha) of a request: absent fields take the defaults; bad values are
    PROJECTION_INVALID_OPTIONS."""
    k = request.k if request.HasField("k") else DEFAULT_K
    if k <= 0 or k > MAX_K:
        raise TalkingFaceError(
            "PROJECTION_INVALID_OPTIONS", f"k must be in 1..{MAX_K} (default {DEFAULT_K}), got {k}"
        )
    alpha = request.alpha if request.HasField("alpha") else DEFAULT_ALPHA
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise TalkingFaceError(
            "PROJECTION_INVALID_OPTIONS",
            f"alpha must be in [0, 1] (default {DEFAULT_ALPHA}), got {alpha}",
        )
    return int(k), float(alpha)


def app(settings: Settings | dict | None = None):
    """The Ray Serve application for this stage."""
    from talkingface.serving.ray_app import app_settings, build_app

    settings = app_settings(settings)  # Ray Serve passes the serve config's args dict
    return build_app(LandmarkProjectionServicer, pb, "LandmarkProjection", settings)


def standalone(settings: Settings):
    """A ServiceServer hosting this stage."""
    from talkingface.serving.server import ServiceServer, binding_for
    from talkingface.v1 import landmark_projection_pb2_grpc

    servicer = LandmarkProjectionServicer(settings, lazy=True)
    binding = binding_for(
        servicer,
        landmark_projection_pb2_grpc.add_LandmarkProjectionServicer_to_server,
        pb,
        "LandmarkProjection",
    )
    return ServiceServer("landmark_projection", [binding], settings, warmup=servicer.warm_up)
