"""The broker's clients of the four stage services, over the fleet's Ray Serve gRPC proxy.

Every stage is a Ray Serve application behind one gRPC proxy (TALKINGFACE_STAGES_ADDRESS);
a call picks its application with the `application` metadata. Each method here is one stage
call: it sends its tensors inline when they fit one message and as object-store references
otherwise, reads the streamed answer back into arrays, and turns a failed RPC into the
TalkingFaceError the stage sent (`errors.error_from_rpc`), so the worker can tell an input
error (fail the job) from a transient one (retry it).

With TALKINGFACE_STAGE_SECRET set, every call also carries the job's signed capability
(`with_capability(job_issuer(...))`, metadata `x-talkingface-capability`; see
talkingface.serving.capability): the stages refuse calls without one.

Calls are plain blocking gRPC calls with a deadline (TALKINGFACE_STAGE_TIMEOUT_SECONDS), safe
to make from several threads at once; `render_segment` hands back its call object first so a
caller can cancel a render that is no longer wanted.

What a client may read: a stage's own TalkingFaceError keeps its message. A bare status from
Ray Serve or gRPC (a replica that died, a connection refused) carries internal text (actor
ids, pids, node addresses, OOM advice): it is logged here and replaced by a plain message.
A replica that died while serving the call becomes UNAVAILABLE marked `stage_crash=<app>`;
the worker retries it once and fails the job with JOB_INPUT_CRASHED if it happens again.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, error_from_rpc, own_error_from_rpc
from talkingface.serving.capability import METADATA_KEY, job_capability, upload_prefix
from talkingface.serving.payloads import store_tensors
from talkingface.serving.server import grpc_message_options
from talkingface.storage import ObjectStore, StoreError
from talkingface.tensors import MAX_INLINE_BYTES, TensorAssembler, to_tensor
from talkingface.v1 import (
    audio_features_pb2,
    audio_features_pb2_grpc,
    common_pb2,
    landmark_projection_pb2,
    landmark_projection_pb2_grpc,
    motion_pb2,
    motion_pb2_grpc,
    renderer_pb2,
    renderer_pb2_grpc,
)

log = logging.getLogger(__name__)
APPLICATIONS = ("audio_features", "motion", "landmark_projection", "renderer")
# How Ray reports a replica whose process died under a request (ActorDiedError and kin).
REPLICA_DIED = (
    "actordiederror",
    "actorunavailableerror",
    "rayactorerror",
    "actor died",
    "actor is dead",
    "worker process has died",
    "worker exit type",
    "workercrashederror",
    "outofmemoryerror",
)
# Inline tensors stay well under the 4 MiB message rule, leaving room for the envelope.
INLINE_LIMIT = min(MAX_INLINE_BYTES, 3 * 1024 * 1024)


@dataclass(frozen=True)
class Features:
    features: np.ndarray  # float32 [T, D]
    f0_bins: np.ndarray  # int32 [T]
    summary: audio_features_pb2.FeaturesSummary


@dataclass(frozen=True)
class Projection:
    lm3d: np.ndarray  # float32 [T, 68, 3]
    summary: landmark_projection_pb2.ProjectionSummary


class StageClients:
    """Stubs of the four stages on one channel to the Serve gRPC proxy."""

    def __init__(self, address: str, timeout_s: float, max_message_mb: int = 8) -> None:
        self.address = address
        self.timeout_s = float(timeout_s)
        self._channel = grpc.insecure_channel(address, options=grpc_message_options(max_message_mb))
        self.features = audio_features_pb2_grpc.AudioFeaturesStub(self._channel)
        self.motion = motion_pb2_grpc.MotionStub(self._channel)
        self.projection = landmark_projection_pb2_grpc.LandmarkProjectionStub(self._channel)
        self.renderer = renderer_pb2_grpc.RendererStub(self._channel)
        self._capability: Callable[[], str] | None = None

    def with_capability(self, issue: Callable[[], str] | None) -> StageClients:
        """These stubs (same channel) sending `issue()`, a fresh signed capability, with every
        call (`x-talkingface-capability`); None sends none (an open stage plane)."""
        clients = copy.copy(self)
        clients._capability = issue
        return clients

    def _metadata(self, application: str) -> tuple[tuple[str, str], ...]:
        metadata: tuple[tuple[str, str], ...] = (("application", application),)
        if self._capability is not None:
            metadata += ((METADATA_KEY, self._capability()),)
        return metadata

    @classmethod
    def from_settings(cls, settings: Settings) -> StageClients:
        return cls(
            settings.stages_address, settings.stage_timeout_seconds, settings.grpc_max_message_mb
        )

    def close(self) -> None:
        self._channel.close()

    # --- the stages ------------------------------------------------------------------------

    def extract_features(self, audio_key: str) -> Features:
        """Features and pitch bins of the audio stored at `audio_key`."""
        request = audio_features_pb2.ExtractFeaturesRequest(
            audio=audio_features_pb2.AudioInput(ref=common_pb2.ObjectRef(key=audio_key))
        )
        summary, arrays = self._tensors(
            "audio_features", lambda md: self.features.Extract(request, timeout=self.timeout_s,
                                                               metadata=md)
        )  # fmt: skip
        return Features(_need(arrays, "features"), _need(arrays, "f0_bins"), summary)

    def generate_motion(
        self,
        features: np.ndarray,
        f0_bins: np.ndarray,
        avatar: common_pb2.AvatarRef,
        *,
        seed: int,
        temperature: float,
        store: ObjectStore,
        scratch: Scratch,
    ) -> np.ndarray:
        """lm3d float32 [T, 68, 3] for the features, with the avatar's postnet and face."""
        request = motion_pb2.GenerateMotionRequest(
            features=scratch.payload(store, "features", features),
            f0_bins=scratch.payload(store, "f0_bins", np.asarray(f0_bins, np.int32)),
            avatar=avatar,
            temperature=float(temperature),
            seed=int(seed),
        )
        _, arrays = self._tensors(
            "motion", lambda md: self.motion.Generate(request, timeout=self.timeout_s, metadata=md)
        )
        return _need(arrays, "lm3d")

    def project(
        self,
        lm3d: np.ndarray,
        avatar: common_pb2.AvatarRef,
        *,
        k: int | None,
        alpha: float | None,
        store: ObjectStore,
        scratch: Scratch,
    ) -> Projection:
        """The lm3d pulled toward the avatar's own landmarks (k and alpha: None = default)."""
        request = landmark_projection_pb2.ProjectRequest(
            avatar=avatar, lm3d=scratch.payload(store, "lm3d_motion", lm3d)
        )
        if k is not None:
            request.k = int(k)
        if alpha is not None:
            request.alpha = float(alpha)
        summary, arrays = self._tensors(
            "landmark_projection",
            lambda md: self.projection.Project(request, timeout=self.timeout_s, metadata=md),
        )
        return Projection(_need(arrays, "lm3d"), summary)

    def render_segment(
        self, request: renderer_pb2.RenderRequest
    ) -> tuple[Any, Callable[[], common_pb2.ObjectRef]]:
        """Start rendering one frame range into an H.264 segment in the store.

        Returns (call, wait): `call.cancel()` stops the render; `wait()` blocks until the
        segment is stored and returns its ObjectRef.
        """
        request.output = common_pb2.OUTPUT_MODE_STORE
        call = self.renderer.Render(
            request, timeout=self.timeout_s, metadata=self._metadata("renderer")
        )

        def wait() -> common_pb2.ObjectRef:
            segment = None
            try:
                for response in call:
                    if response.WhichOneof("item") == "segment":
                        segment = response.segment
            except grpc.RpcError as exc:
                raise stage_error("renderer", exc) from None
            if segment is None:
                raise TalkingFaceError("INTERNAL", "the renderer answered without a segment")
            return segment

        return call, wait

    # --- helpers ---------------------------------------------------------------------------

    def _tensors(self, application: str, start: Callable) -> tuple[Any, dict[str, np.ndarray]]:
        """(summary, arrays) of a stage's streamed answer: a summary, then tensor chunks."""
        assembler = TensorAssembler()
        summary = None
        try:
            for response in start(self._metadata(application)):
                item = response.WhichOneof("item")
                if item == "summary":
                    summary = response.summary
                elif item == "chunk":
                    assembler.add(response.chunk)
                else:
                    raise TalkingFaceError(
                        "INTERNAL", f"{application} answered with an unexpected {item!r}"
                    )
        except grpc.RpcError as exc:
            raise stage_error(application, exc) from None
        if summary is None or assembler.pending:
            raise TalkingFaceError(
                "UNAVAILABLE", f"the {application} stream ended early (replica restarted?)"
            )
        return summary, assembler.arrays


def job_issuer(
    settings: Settings,
    *,
    tenant: str,
    job_id: str,
    audio_key: str = "",
    avatar_id: str = "",
    writes: tuple[str, ...] = (),
) -> Callable[[], str] | None:
    """What signs a job's stage capability (a fresh one per call), or None without
    TALKINGFACE_STAGE_SECRET. The job may read its upload's folder, its scratch space and its
    avatar's bundle, and write its scratch space and `writes` (talkingface.serving.capability)."""
    secret = settings.stage_secret
    if not secret:
        return None
    scratch = Scratch(job_id).job_prefix + "/"  # every attempt's
    reads = [scratch]
    if audio_key:
        reads.append(upload_prefix(audio_key))
    if avatar_id:
        reads.append(f"avatars/{avatar_id}/")
    ttl = max(settings.stage_capability_seconds, settings.stage_timeout_seconds)

    def issue() -> str:
        return job_capability(
            secret,
            tenant=tenant,
            job_id=job_id,
            reads=reads,
            writes=[scratch, *writes],
            avatar=avatar_id,
            ttl_s=ttl,
        )

    return issue


def stage_error(application: str, exc: grpc.RpcError) -> TalkingFaceError:
    """The stage's own error; otherwise a plain one (see the module docstring).

    Ray Serve answers NOT_FOUND for an application that is not deployed yet (or any more):
    that is the fleet's state, not the request's, so it is UNAVAILABLE (retried) too.
    """
    own = own_error_from_rpc(exc)
    if own is not None:
        return own
    error = error_from_rpc(exc)
    status = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    log.warning("stage %s failed: %s %s", application, getattr(status, "name", status), details)
    if error.code == "NOT_FOUND" and "application" in details.lower():
        return TalkingFaceError("UNAVAILABLE", f"the {application} stage is not deployed")
    if any(marker in details.lower() for marker in REPLICA_DIED):
        return TalkingFaceError(
            "UNAVAILABLE",
            f"the {application} stage stopped while working on this request",
            stage_crash=application,
        )
    name = getattr(status, "name", "UNKNOWN")
    return TalkingFaceError(error.code, f"the {application} stage failed ({name})")


class Scratch:
    """Object-store keys one attempt of a job writes for its stages (tensors too big to send
    inline, rendered segments), all under `work/<job_id>/<attempt>/` (or `work/<job_id>/`
    without an attempt), removed together by `clear`. Attempts never share a prefix, so an
    attempt that lost its lease and still cleans up cannot delete what its successor uses."""

    def __init__(self, job_id: str, attempt: str = "") -> None:
        self.job_prefix = f"work/{job_id}"
        self.prefix = f"{self.job_prefix}/{attempt}" if attempt else self.job_prefix

    def payload(self, store: ObjectStore, name: str, array: np.ndarray) -> common_pb2.TensorPayload:
        """`array` inline when it fits a message, else as a .npy reference in the store."""
        array = np.ascontiguousarray(array)
        if array.nbytes <= INLINE_LIMIT:
            return common_pb2.TensorPayload(inline=to_tensor(array))
        stored = store_tensors(store, self.prefix, {name: array})
        return common_pb2.TensorPayload(ref=stored.tensors[name])

    def clear(self, store: ObjectStore) -> None:
        # Best effort: the janitor removes what is left (broker.janitor).
        with contextlib.suppress(StoreError):
            store.delete_prefix(self.prefix)


def _need(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in arrays:
        raise TalkingFaceError("INTERNAL", f"the stage answered without its {name!r} tensor")
    return arrays[name]
