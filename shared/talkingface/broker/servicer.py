"""The public API (talkingface.v1.Broker): uploads, render jobs and avatars, per tenant.

The tenant is the `x-talkingface-tenant` request metadata (`default` when it is absent,
unless TALKINGFACE_BROKER_REQUIRE_TENANT refuses such calls); a tenant never sees another
tenant's uploads, jobs or avatars: they read as not found.

- Upload streams a file into the store at `uploads/<tenant>/<upload_id>/data` (sha256 while
  writing, bounded by TALKINGFACE_UPLOAD_MAX_MB); SubmitRender and CreateAvatar refer to it by
  id. Inline audio of SubmitRender is stored the same way.
- SubmitRender checks everything it can at once (avatar owned and READY, the version to
  render pinned now, options in range, audio present) and creates the job together with its
  work message on the `render` queue in one atomic Redis step; the same idempotency key from
  the same tenant returns the first job. Problems with the audio itself (corrupt, silent, too
  long) surface from the features stage: the job ends FAILED with the AUDIO_* code.
- CreateAvatar registers a new avatar (TRAINING at once) and queues its training job on the
  `train` queue; SynthTalk avatar directories (a tar upload) are accepted now, real video in
  a later release (NOT_AVAILABLE_YET).
- GetJob and WatchJob put a fresh download URL (presigned for MinIO, file:// for the local
  store) into a finished render job's result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import redis
from google.protobuf.timestamp_pb2 import Timestamp

from talkingface.broker.avatars import (
    MAX_DISPLAY_NAME,
    AvatarRecord,
    AvatarRegistry,
    new_avatar_id,
)
from talkingface.broker.jobs import TERMINAL_STATES, Job, JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, abort
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.storage.keys import validate_segment
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import common_pb2, renderer_pb2

log = logging.getLogger(__name__)

TENANT_METADATA = "x-talkingface-tenant"
DEFAULT_TENANT = "default"
RENDER_QUEUE = "render"
TRAIN_QUEUE = "train"
MAX_INLINE_AUDIO = 4 * 1024 * 1024
WATCH_SPAN_S = 2.0
MAX_K = 256
MAX_RESOLUTION = 1024
PRESETS = ("tiny", "cpu", "full")
POSE_MODES = {
    renderer_pb2.POSE_MODE_UNSPECIFIED: "pingpong",
    renderer_pb2.POSE_MODE_PING_PONG: "pingpong",
    renderer_pb2.POSE_MODE_LOOP: "loop",
}
JOB_STATES = {name: pb.JobState.Value(f"JOB_STATE_{name}") for name in
              ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")}  # fmt: skip
JOB_KINDS = {"render": pb.JOB_KIND_RENDER, "train_avatar": pb.JOB_KIND_TRAIN_AVATAR}


def upload_key(tenant: str, upload_id: str) -> str:
    return f"uploads/{tenant}/{upload_id}/data"


class BrokerServicer:
    """talkingface.v1.Broker (methods named as the RPCs)."""

    def __init__(self, settings: Settings, client: redis.Redis, store: ObjectStore) -> None:
        self.settings = settings
        self.jobs = JobStore.from_settings(client, settings)
        self.queues = {
            name: WorkQueue.from_settings(client, name, settings)
            for name in (RENDER_QUEUE, TRAIN_QUEUE)
        }
        for queue in self.queues.values():
            queue.ensure_group()
        self.avatars = AvatarRegistry(client)
        self.store = store

    # --- uploads ---------------------------------------------------------------------------

    def Upload(self, requests: Iterable[pb.UploadRequest], context) -> pb.UploadResponse:
        try:
            tenant = self._tenant(context)
            upload_id = uuid.uuid4().hex
            reader = _UploadReader(iter(requests), self.settings.upload_max_mb * 1024 * 1024)
            header = reader.header()
            key = upload_key(tenant, upload_id)
            try:
                info = self.store.put(key, reader, content_type=_content_type(header))
            except StoreError as exc:
                raise as_talkingface_error(exc) from None
            if reader.error is not None:  # the stream raised inside the store's read
                self._forget(key)
                raise reader.error
            if info.size == 0:
                self._forget(key)
                raise TalkingFaceError("INVALID_REQUEST", "the upload carried no data")
            if header.total_bytes and header.total_bytes != info.size:
                self._forget(key)
                raise TalkingFaceError(
                    "INVALID_REQUEST",
                    f"the header announced {header.total_bytes} bytes, {info.size} arrived",
                )
            log.info("upload stored", extra={"tenant": tenant, "upload_id": upload_id,
                                             "bytes": info.size})  # fmt: skip
            return pb.UploadResponse(upload_id=upload_id, size=info.size, sha256=info.sha256 or "")
        except TalkingFaceError as error:
            abort(context, error)

    # --- render jobs -----------------------------------------------------------------------

    def SubmitRender(self, request: pb.SubmitRenderRequest, context) -> pb.Job:
        try:
            tenant = self._tenant(context)
            options = render_options(request.options)
            source = request.WhichOneof("audio")
            if source == "inline_audio":
                if not request.inline_audio:
                    raise TalkingFaceError("AUDIO_EMPTY", "inline_audio is empty")
                if len(request.inline_audio) > MAX_INLINE_AUDIO:
                    raise TalkingFaceError(
                        "PAYLOAD_TOO_LARGE", "inline audio over 4 MiB: use Upload"
                    )
            elif source == "upload_id":
                audio_key = self._upload(tenant, request.upload_id)
            else:
                raise TalkingFaceError("AUDIO_EMPTY", "the request carries no audio")
            self.avatars.get(tenant, request.avatar_id)  # owned by this tenant?
            version = self._ready_version(request.avatar_id, request.avatar_version)
            stored_inline = ""
            if source == "inline_audio":
                stored_inline = audio_key = upload_key(tenant, uuid.uuid4().hex)
                self._put(stored_inline, request.inline_audio)
            body = {"avatar_id": request.avatar_id, "avatar_version": version,
                    "audio_key": audio_key, "options": options}  # fmt: skip
            job, created = self.jobs.create(
                tenant, "render", body, request.idempotency_key or None,
                avatar_id=request.avatar_id,
                enqueue=(self.queues[RENDER_QUEUE].stream, {"kind": "render"}),
            )  # fmt: skip
            if not created and stored_inline:
                self._forget(stored_inline)  # the first submission's audio is the job's
            log.info("render job %s", "submitted" if created else "reused",
                     extra={"tenant": tenant, "job_id": job.job_id})  # fmt: skip
            return self._job(job)
        except TalkingFaceError as error:
            abort(context, error)

    def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        try:
            return self._job(self.jobs.get(request.job_id, self._tenant(context)))
        except TalkingFaceError as error:
            abort(context, error)

    def WatchJob(self, request: pb.WatchJobRequest, context) -> Iterator[pb.Job]:
        try:
            tenant = self._tenant(context)
            last = None
            # Watch in short spans, so a client that went away frees its thread within one.
            while context.is_active():
                for job in self.jobs.watch(
                    request.job_id, tenant, block_ms=500, timeout_s=WATCH_SPAN_S
                ):
                    seen = (job.updated_at, job.state, job.stage, job.progress, job.attempt)
                    if seen != last:  # each span starts with the job as it is: sent once
                        last = seen
                        yield self._job(job)
                    if job.terminal:
                        return
        except TalkingFaceError as error:
            abort(context, error)

    def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        try:
            return self._job(self.jobs.request_cancel(request.job_id, self._tenant(context)))
        except TalkingFaceError as error:
            abort(context, error)

    def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        try:
            state = None
            if request.state != pb.JOB_STATE_UNSPECIFIED:
                names = {v: k for k, v in JOB_STATES.items()}
                if request.state not in names:
                    raise TalkingFaceError("INVALID_REQUEST", f"unknown state {request.state}")
                state = names[request.state]
            jobs, token = self.jobs.list(
                self._tenant(context), state=state, page_size=request.page_size,
                page_token=request.page_token,
            )  # fmt: skip
            return pb.ListJobsResponse(jobs=[self._job(j) for j in jobs], next_page_token=token)
        except TalkingFaceError as error:
            abort(context, error)

    # --- avatars ---------------------------------------------------------------------------

    def CreateAvatar(self, request: pb.CreateAvatarRequest, context) -> pb.Job:
        try:
            tenant = self._tenant(context)
            preset = request.preset or "cpu"
            if preset not in PRESETS:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"preset must be one of {', '.join(PRESETS)} (or empty)"
                )
            source = request.WhichOneof("source")
            if source == "video_upload_id":
                self._upload(tenant, request.video_upload_id)
                raise TalkingFaceError(
                    "NOT_AVAILABLE_YET",
                    "avatars from real video are not available yet; upload a SynthTalk "
                    "avatar directory as a tar (synthtalk_upload_id)",
                )
            if source != "synthtalk_upload_id":
                raise TalkingFaceError("INVALID_REQUEST", "the request names no avatar source")
            data_key = self._upload(tenant, request.synthtalk_upload_id)
            if len(request.display_name) > MAX_DISPLAY_NAME:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"display_name is longer than {MAX_DISPLAY_NAME} characters"
                )
            avatar_id = new_avatar_id()
            body = {"avatar_id": avatar_id, "display_name": request.display_name,
                    "data_key": data_key, "preset": preset, "source": "synthtalk"}  # fmt: skip
            job, created = self.jobs.create(
                tenant, "train_avatar", body, request.idempotency_key or None,
                avatar_id=avatar_id,
                enqueue=(self.queues[TRAIN_QUEUE].stream, {"kind": "train_avatar"}),
            )  # fmt: skip
            if created:  # the training job claims it too, should this process die right here
                self.avatars.claim(tenant, request.display_name, job.job_id, avatar_id)
            return self._job(job)
        except TalkingFaceError as error:
            abort(context, error)

    def ListAvatars(self, request: pb.ListAvatarsRequest, context) -> pb.ListAvatarsResponse:
        try:
            tenant = self._tenant(context)
            records, token = self.avatars.list(tenant, request.page_size, request.page_token)
            return pb.ListAvatarsResponse(
                avatars=[self._avatar(r) for r in records], next_page_token=token
            )
        except TalkingFaceError as error:
            abort(context, error)

    def GetAvatar(self, request: pb.GetAvatarRequest, context) -> pb.Avatar:
        try:
            return self._avatar(self.avatars.get(self._tenant(context), request.avatar_id))
        except TalkingFaceError as error:
            abort(context, error)

    def DeleteAvatar(self, request: pb.DeleteAvatarRequest, context) -> pb.DeleteAvatarResponse:
        from talkingface.bundle import avatar_prefix

        try:
            tenant = self._tenant(context)
            record = self.avatars.get(tenant, request.avatar_id)
            if record.job_id:
                try:
                    self.jobs.request_cancel(record.job_id, tenant)
                except TalkingFaceError as exc:
                    if exc.code not in ("JOB_ALREADY_FINISHED", "JOB_NOT_FOUND"):
                        raise
            prefix = avatar_prefix(record.avatar_id)
            try:
                versions = self.store.list_versions(prefix)
                self.store.delete_prefix(prefix)
            except StoreError as exc:
                raise as_talkingface_error(exc) from None
            self.avatars.delete(tenant, record.avatar_id)
            log.info("avatar deleted", extra={"tenant": tenant, "avatar_id": record.avatar_id,
                                              "versions": len(versions)})  # fmt: skip
            return pb.DeleteAvatarResponse(
                avatar_id=record.avatar_id, versions_deleted=len(versions)
            )
        except TalkingFaceError as error:
            abort(context, error)

    # --- helpers ---------------------------------------------------------------------------

    def _tenant(self, context) -> str:
        from talkingface.broker.jobs import _check_tenant

        values = [v for k, v in (context.invocation_metadata() or ()) if k == TENANT_METADATA]
        if not values:
            if self.settings.broker_require_tenant:
                raise TalkingFaceError(
                    "UNAUTHENTICATED", f"the call carries no {TENANT_METADATA} metadata"
                )
            return DEFAULT_TENANT
        tenant = values[0]
        _check_tenant(tenant)
        return tenant

    def _upload(self, tenant: str, upload_id: str) -> str:
        """The store key of one of the tenant's uploads; NOT_FOUND otherwise."""
        try:
            validate_segment(upload_id)
            key = upload_key(tenant, upload_id)
            if self.store.exists(key):
                return key
        except StoreError:
            pass
        raise TalkingFaceError("NOT_FOUND", f"upload {upload_id!r} not found")

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.store.put(key, data)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None

    def _forget(self, key: str) -> None:
        try:
            self.store.delete(key)
        except StoreError:
            log.warning("could not delete %s", key)

    def _ready_version(self, avatar_id: str, version: str) -> str:
        from talkingface.bundle import read_manifest, require_files, resolve_version
        from talkingface.landmarks.bundle import PROJECTION_FILES
        from talkingface.render.bundle import RENDERER_FILES

        try:
            version = resolve_version(self.store, avatar_id, version)
        except TalkingFaceError as exc:
            if exc.code == "AVATAR_NOT_FOUND":  # registered, nothing published yet
                raise TalkingFaceError(
                    "AVATAR_NOT_READY", f"avatar {avatar_id!r} has no published version yet"
                ) from None
            raise
        manifest = read_manifest(self.store, avatar_id, version)
        require_files(manifest, RENDERER_FILES + PROJECTION_FILES, avatar_id, version,
                      "it cannot be rendered")  # fmt: skip
        return version

    def _job(self, job: Job) -> pb.Job:
        out = pb.Job(
            job_id=job.job_id,
            kind=JOB_KINDS.get(job.kind, pb.JOB_KIND_UNSPECIFIED),
            state=JOB_STATES[job.state],
            stage=pb.Stage.Value(f"STAGE_{job.stage}") if job.stage else pb.STAGE_UNSPECIFIED,
            progress=job.progress,
            created_at=_timestamp(job.created_at),
            updated_at=_timestamp(job.updated_at),
            idempotency_key=job.idempotency_key,
            attempt=job.attempt,
            avatar_id=job.avatar_id,
        )
        if job.state == "FAILED" and job.error_code:
            out.error.CopyFrom(
                common_pb2.ErrorDetail(
                    code=common_pb2.ErrorCode.Value(job.error_code), message=job.error_message
                )
            )
        if job.state == "SUCCEEDED" and job.result:
            if job.kind == "render":
                out.render.CopyFrom(self._render_result(job.result))
            else:
                out.avatar.CopyFrom(
                    pb.AvatarResult(
                        avatar_id=job.result.get("avatar_id", ""),
                        version=job.result.get("version", ""),
                        metrics=_numbers(job.result.get("metrics", {})),
                    )
                )
        return out

    def _render_result(self, result: dict[str, Any]) -> pb.RenderResult:
        video = result.get("video", {})
        out = pb.RenderResult(
            video=common_pb2.ObjectRef(
                key=video.get("key", ""), size=int(video.get("size", 0)),
                sha256=video.get("sha256", ""), content_type=video.get("content_type", ""),
            ),
            duration_seconds=float(result.get("duration_seconds", 0.0)),
            frames=int(result.get("frames", 0)),
            metrics=_numbers(result.get("metrics", {})),
        )  # fmt: skip
        if out.video.key:
            try:
                out.download_url = self.store.presigned_get(
                    out.video.key, timedelta(seconds=self.settings.result_url_seconds)
                )
            except StoreError as exc:
                log.warning("no download URL for %s: %s", out.video.key, exc)
        return out

    def _avatar(self, record: AvatarRecord) -> pb.Avatar:
        from talkingface.bundle import avatar_prefix

        prefix = avatar_prefix(record.avatar_id)
        versions = []
        try:
            for version in self.store.list_versions(prefix):
                manifest = self.store.read_manifest(prefix, version)
                versions.append(
                    pb.AvatarVersion(
                        version=version,
                        created_at=_iso_timestamp(manifest.get("created_at", "")),
                        metrics=_numbers(manifest.get("metadata", {})),
                    )
                )
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        state = pb.AVATAR_STATE_READY if versions else self._training_state(record)
        return pb.Avatar(
            avatar_id=record.avatar_id,
            display_name=record.display_name,
            state=state,
            latest_version=versions[-1].version if versions else "",
            versions=versions,
            created_at=_timestamp(record.created_at),
        )

    def _training_state(self, record: AvatarRecord) -> int:
        if not record.job_id:
            return pb.AVATAR_STATE_FAILED
        try:
            job = self.jobs.get(record.job_id, record.tenant)
        except TalkingFaceError:
            return pb.AVATAR_STATE_FAILED  # the job record expired without a version
        return pb.AVATAR_STATE_FAILED if job.state in TERMINAL_STATES else pb.AVATAR_STATE_TRAINING


def render_options(options: pb.RenderOptions) -> dict[str, Any]:
    """The job's options as JSON, checked: INVALID_REQUEST / PROJECTION_INVALID_OPTIONS."""
    out: dict[str, Any] = {"seed": int(options.seed)}
    if options.k < 0 or options.k > MAX_K:
        raise TalkingFaceError(
            "PROJECTION_INVALID_OPTIONS", f"k must be 0 (the default) or 1..{MAX_K}"
        )
    if options.k:
        out["k"] = int(options.k)
    if options.HasField("alpha"):
        if not (math.isfinite(options.alpha) and 0.0 <= options.alpha <= 1.0):
            raise TalkingFaceError("PROJECTION_INVALID_OPTIONS", "alpha must lie in [0, 1]")
        out["alpha"] = float(options.alpha)
    if not math.isfinite(options.temperature) or options.temperature < 0:
        raise TalkingFaceError("INVALID_REQUEST", "temperature must be 0 (default) or positive")
    out["temperature"] = float(options.temperature)
    if options.pose_mode not in POSE_MODES:
        raise TalkingFaceError(
            "INVALID_REQUEST", "pose_mode must be PING_PONG or LOOP (EXPLICIT needs pose indices)"
        )
    out["pose_mode"] = POSE_MODES[options.pose_mode]
    if options.resolution and not (
        16 <= options.resolution <= MAX_RESOLUTION and options.resolution % 2 == 0
    ):
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"resolution must be 0 (the avatar's) or an even size in 16..{MAX_RESOLUTION}",
        )
    out["resolution"] = int(options.resolution)
    return out


class _UploadReader(io.RawIOBase):
    """The upload stream's bytes as a binary file for `store.put`, checking the header comes
    first, chunk offsets are contiguous and the total stays under the limit. A problem is
    kept in `error` (the store would otherwise wrap it) and ends the stream."""

    def __init__(self, requests: Iterator[pb.UploadRequest], limit: int) -> None:
        self._requests = requests
        self._limit = limit
        self._buffer = b""
        self._offset = 0
        self._ended = False
        self.error: TalkingFaceError | None = None

    def header(self) -> pb.UploadHeader:
        first = next(self._requests, None)
        if first is None or first.WhichOneof("item") != "header":
            raise TalkingFaceError("INVALID_REQUEST", "an upload must start with its header")
        if first.header.total_bytes > self._limit:
            raise TalkingFaceError(
                "PAYLOAD_TOO_LARGE", f"upload of {first.header.total_bytes} bytes is over the limit"
            )
        return first.header

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._ended and (size < 0 or len(self._buffer) < size):
            self._pull()
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _pull(self) -> None:
        if self.error is not None:
            self._ended = True
            return
        message = next(self._requests, None)
        if message is None:
            self._ended = True
            return
        try:
            if message.WhichOneof("item") != "chunk":
                raise TalkingFaceError("INVALID_REQUEST", "a second upload header")
            chunk = message.chunk
            if chunk.offset != self._offset:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"chunk at offset {chunk.offset}, expected {self._offset}"
                )
            if self._offset + len(chunk.data) > self._limit:
                raise TalkingFaceError(
                    "PAYLOAD_TOO_LARGE", f"upload over {self._limit // (1024 * 1024)} MiB"
                )
        except TalkingFaceError as exc:
            self.error = exc
            self._ended = True
            return
        self._offset += len(chunk.data)
        self._buffer += chunk.data


_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")


def _content_type(header: pb.UploadHeader) -> str:
    """The client's content type when it is a plain `type/subtype`, else octet-stream (it is
    stored as object metadata, so nothing else of the user's string gets there)."""
    value = header.content_type.strip()
    return value if _MIME.fullmatch(value) else "application/octet-stream"


def _timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(int(ms))
    return stamp


def _iso_timestamp(text: str) -> Timestamp:
    from datetime import datetime

    stamp = Timestamp()
    if text:
        with contextlib.suppress(ValueError):
            stamp.FromDatetime(datetime.fromisoformat(text))
    return stamp


def _numbers(values: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a JSON object, flattened with dotted names."""
    out: dict[str, float] = {}
    if not isinstance(values, dict):
        return out
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, int | float) and math.isfinite(value):  # bool included
            out[key] = float(value)
        elif isinstance(value, dict):
            out.update(_numbers(value, f"{key}."))
    return out


def standalone(settings: Settings):
    """A ServiceServer hosting the broker API (workers run beside it: broker.service)."""
    from talkingface.broker.service import broker_server

    return broker_server(settings)
