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
  `train` queue: a SynthTalk avatar directory (a tar upload, `synthtalk_upload_id`), a
  person's talking video (`video_upload_id`, ingested by the training worker first), or a
  bundle trained elsewhere (`bundle_upload_id`, a tar: checked and published, no training).
- Upload, SubmitRender and CreateAvatar are held to the tenant's quotas and rate limits
  (broker/limits.py: active jobs, uploads a day and their size, training presets, token
  buckets); ListJobs serves at most LIST_MAX_PAGE_SIZE jobs a page.
- GetJob and WatchJob's final message put a fresh, short-lived download URL (presigned for
  MinIO, file:// for the local store; TALKINGFACE_RESULT_URL_SECONDS) into a finished render
  job's result; ListJobs never does (GetJob the job you want to download).
- WatchJob and Upload streams are capped and bounded in time (broker/streams.py), so they
  cannot take the threads GetJob, SubmitRender and the other short calls need.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Iterator

import redis

from talkingface.broker.auth import current_principal
from talkingface.broker.avatars import (
    MAX_DISPLAY_NAME,
    AvatarRegistry,
    new_avatar_id,
)
from talkingface.broker.jobs import KIND_WORK, Job, JobStore, check_tenant
from talkingface.broker.limits import SUBMIT, UPLOAD, Limits, how_to_raise
from talkingface.broker.messages import (
    JOB_STATES,
    avatar_message,
    job_message,
    mints_url,
    render_options,
)
from talkingface.broker.queue import WorkQueue
from talkingface.broker.reads import CoalescedReads
from talkingface.broker.service import async_redis_client
from talkingface.broker.streams import StreamGates, idle_limited
from talkingface.broker.uploads import find_upload, receive_upload, upload_key
from talkingface.config import Settings, env_name
from talkingface.errors import TalkingFaceError, abort, abort_async
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.v1 import broker_pb2 as pb

log = logging.getLogger(__name__)

TENANT_METADATA = "x-talkingface-tenant"
DEFAULT_TENANT = "default"
RENDER_QUEUE = "render"
TRAIN_QUEUE = "train"
MAX_INLINE_AUDIO = 4 * 1024 * 1024
WATCH_SPAN_S = 2.0
LIST_MAX_PAGE_SIZE = 100  # ListJobs serves larger requests as 100
PRESETS = ("tiny", "cpu", "full")
# CreateAvatar's sources -> the training job's `source`.
SOURCES = {"video_upload_id": "video", "synthtalk_upload_id": "synthtalk",
           "bundle_upload_id": "bundle"}  # fmt: skip


class BrokerServicer:
    """talkingface.v1.Broker (methods named as the RPCs)."""

    def __init__(self, settings: Settings, client: redis.Redis, store: ObjectStore) -> None:
        self.settings = settings
        self.jobs = JobStore.from_settings(client, settings)
        # Reads of the methods served as coroutines (GetJob), pipelined per loop turn.
        self.reads = CoalescedReads(async_redis_client(settings))
        self.queues = {
            name: WorkQueue.from_settings(client, name, settings)
            for name in (RENDER_QUEUE, TRAIN_QUEUE)
        }
        for queue in self.queues.values():
            queue.ensure_group()
        self.avatars = AvatarRegistry(client)
        self.store = store
        self.limits = Limits(client, settings)
        self.streams = StreamGates(settings)  # WatchJob and Upload caps (broker/streams.py)
        from talkingface.broker.retention import Retention

        self.retention = Retention(client, store, settings, jobs=self.jobs,
                                   queues=list(self.queues.values()))  # fmt: skip

    # --- uploads ---------------------------------------------------------------------------

    def Upload(self, requests: Iterable[pb.UploadRequest], context) -> pb.UploadResponse:
        try:
            tenant = self._tenant(context)
            with self.streams.upload.hold(context):
                limits = self.limits.for_tenant(tenant)
                self.limits.take(limits, UPLOAD, current_principal())
                counted = self.limits.count_upload(limits)
                idle_s = self.settings.broker_upload_idle_seconds
                try:
                    return receive_upload(
                        self.store, tenant, idle_limited(iter(requests), idle_s),
                        self.limits.upload_bytes(limits),
                        hint=f"upload_max_mb = {limits['upload_max_mb']}; "
                        + how_to_raise(tenant, "upload_max_mb"),
                    )  # fmt: skip
                except BaseException:
                    self.limits.refund(counted)  # only stored uploads count
                    raise
        except TalkingFaceError as error:
            abort(context, error)

    # --- render jobs -----------------------------------------------------------------------

    def SubmitRender(self, request: pb.SubmitRenderRequest, context) -> pb.Job:
        try:
            tenant = self._tenant(context)
            limits = self.limits.for_tenant(tenant)
            self.limits.take(limits, SUBMIT, current_principal())
            options = render_options(request.options)
            callback_url = self._callback_url(tenant, request.callback_url)
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
                self._check_audio_size(audio_key, request.upload_id)
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
            try:
                job, created = self.jobs.create(
                    tenant, "render", body, request.idempotency_key or None,
                    avatar_id=request.avatar_id,
                    enqueue=KIND_WORK["render"],
                    active_limit=limits["active_jobs"], active_hint=self.limits.active_hint(limits),
                    callback_url=callback_url,
                )  # fmt: skip
            except TalkingFaceError:
                if stored_inline:
                    self._forget(stored_inline)  # a refused call leaves nothing behind
                raise
            if not created and stored_inline:
                self._forget(stored_inline)  # the first submission's audio is the job's
            log.info("render job %s", "submitted" if created else "reused",
                     extra={"tenant": tenant, "job_id": job.job_id})  # fmt: skip
            return self._message(job)
        except TalkingFaceError as error:
            abort(context, error)

    async def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        """Served on the broker's event loop (serving/aio.py): clients poll it most, and a
        coroutine costs a fraction of a pool thread's hand-offs. Nothing here may block:
        the record is read with the asyncio Redis client, and a finished render's URL (an
        S3 signing, which may look the bucket's region up) is minted in a thread."""
        try:
            job = await self.jobs.get_async(self.reads, request.job_id,
                                            self._tenant(context))  # fmt: skip
            if mints_url(job):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, self._message, job)
            return self._message(job)
        except TalkingFaceError as error:
            await abort_async(context, error)

    def WatchJob(self, request: pb.WatchJobRequest, context) -> Iterator[pb.Job]:
        try:
            tenant = self._tenant(context)
            last = None
            with self.streams.watch.hold(context):
                # Served at most broker_watch_max_seconds, then ended (OK): the client
                # watches again. Short spans: a client that went away frees its thread soon.
                ends = time.monotonic() + self.settings.broker_watch_max_seconds
                while context.is_active() and time.monotonic() < ends:
                    span = min(WATCH_SPAN_S, max(0.1, ends - time.monotonic()))
                    for job in self.jobs.watch(
                        request.job_id, tenant, block_ms=500, timeout_s=span
                    ):
                        seen = (job.updated_at, job.state, job.stage, job.progress, job.attempt)
                        if seen != last:  # each span starts with the job as it is: sent once
                            last = seen
                            yield self._message(job, url=job.terminal)
                        if job.terminal:
                            return
        except TalkingFaceError as error:
            abort(context, error)

    def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        try:
            return self._message(self.jobs.request_cancel(request.job_id, self._tenant(context)))
        except TalkingFaceError as error:
            abort(context, error)

    def DeleteJob(self, request: pb.DeleteJobRequest, context) -> pb.DeleteJobResponse:
        """Cancel the job if it has not ended, then delete its record and result
        (broker/retention.py); another tenant's job is JOB_NOT_FOUND."""
        try:
            job, cancelled, objects = self.retention.delete_job(
                request.job_id, self._tenant(context)
            )
            return pb.DeleteJobResponse(job_id=job.job_id, state=JOB_STATES[job.state],
                                        cancelled=cancelled, objects_deleted=objects)  # fmt: skip
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
                self._tenant(context), state=state,
                page_size=min(request.page_size, LIST_MAX_PAGE_SIZE),
                page_token=request.page_token,
            )  # fmt: skip
            return pb.ListJobsResponse(  # no download URLs here: GetJob mints one
                jobs=[self._message(j, url=False) for j in jobs], next_page_token=token
            )
        except TalkingFaceError as error:
            abort(context, error)

    # --- avatars ---------------------------------------------------------------------------

    def CreateAvatar(self, request: pb.CreateAvatarRequest, context) -> pb.Job:
        try:
            tenant = self._tenant(context)
            limits = self.limits.for_tenant(tenant)
            self.limits.take(limits, SUBMIT, current_principal())
            preset = request.preset or "cpu"
            if preset not in PRESETS:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"preset must be one of {', '.join(PRESETS)} (or empty)"
                )
            source = request.WhichOneof("source")
            if source not in SOURCES:
                raise TalkingFaceError("INVALID_REQUEST", "the request names no avatar source")
            if SOURCES[source] != "bundle":  # an imported bundle is not trained here
                self.limits.check_preset(limits, preset)
            upload_id = getattr(request, source)
            callback_url = self._callback_url(tenant, request.callback_url)
            data_key = self._upload(tenant, upload_id)
            if len(request.display_name) > MAX_DISPLAY_NAME:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"display_name is longer than {MAX_DISPLAY_NAME} characters"
                )
            avatar_id = new_avatar_id()
            body = {"avatar_id": avatar_id, "display_name": request.display_name,
                    "data_key": data_key, "preset": preset,
                    "source": SOURCES[source]}  # fmt: skip
            job, created = self.jobs.create(
                tenant, "train_avatar", body, request.idempotency_key or None,
                avatar_id=avatar_id,
                enqueue=KIND_WORK["train_avatar"],
                active_limit=limits["active_jobs"], active_hint=self.limits.active_hint(limits),
                callback_url=callback_url,
            )  # fmt: skip
            if created:  # the training job claims it too, should this process die right here
                self.avatars.claim(tenant, request.display_name, job.job_id, avatar_id)
            return self._message(job)
        except TalkingFaceError as error:
            abort(context, error)

    def ListAvatars(self, request: pb.ListAvatarsRequest, context) -> pb.ListAvatarsResponse:
        try:
            tenant = self._tenant(context)
            records, token = self.avatars.list(tenant, request.page_size, request.page_token)
            return pb.ListAvatarsResponse(
                avatars=[avatar_message(r, self.store, self.jobs) for r in records],
                next_page_token=token,
            )
        except TalkingFaceError as error:
            abort(context, error)

    def GetAvatar(self, request: pb.GetAvatarRequest, context) -> pb.Avatar:
        try:
            record = self.avatars.get(self._tenant(context), request.avatar_id)
            return avatar_message(record, self.store, self.jobs)
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
        if self.settings.broker_auth == "keys":  # the API key's tenant (broker.auth)
            from talkingface.broker.auth import current_principal

            principal = current_principal()
            if principal is None:
                raise TalkingFaceError("UNAUTHENTICATED", "the call carries no valid API key")
            return principal.tenant
        values = [v for k, v in (context.invocation_metadata() or ()) if k == TENANT_METADATA]
        if not values:
            if self.settings.broker_require_tenant:
                raise TalkingFaceError(
                    "UNAUTHENTICATED", f"the call carries no {TENANT_METADATA} metadata"
                )
            return DEFAULT_TENANT
        tenant = values[0]
        check_tenant(tenant)
        return tenant

    def _callback_url(self, tenant: str, url: str) -> str:
        """A checked webhook URL ("" = none); the tenant's signing secret exists from now on."""
        from talkingface.broker.webhooks import check_callback_url, parse_networks, tenant_secret

        if not url:
            return ""
        check_callback_url(url, self.settings.webhook_allow_http,
                           parse_networks(self.settings.webhook_allowed_networks))  # fmt: skip
        tenant_secret(self.jobs.redis, tenant)
        return url

    def _upload(self, tenant: str, upload_id: str) -> str:
        return find_upload(self.store, tenant, upload_id)

    def _check_audio_size(self, key: str, upload_id: str) -> None:
        """PAYLOAD_TOO_LARGE now for audio the features stage would refuse later."""
        limit_mb = self.settings.audio_max_upload_mb
        try:
            size = self.store.stat(key).size
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        if size > limit_mb * 1024 * 1024:
            raise TalkingFaceError(
                "PAYLOAD_TOO_LARGE",
                f"upload {upload_id!r} holds {size} bytes, over the {limit_mb} MiB the audio "
                f"features stage accepts ({env_name('audio_max_upload_mb')}): send shorter or "
                "more compressed audio",
            )

    def _message(self, job: Job, url: bool = True) -> pb.Job:
        """The job; with `url`, a finished render's download URL is minted (one S3 signing)."""
        return job_message(job, self.store, self.settings.result_url_seconds if url else 0)

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
        from talkingface.pipeline import renderable_version

        try:
            return renderable_version(self.store, avatar_id, version)[0]
        except TalkingFaceError as exc:
            if exc.code == "AVATAR_NOT_FOUND":  # registered, nothing published yet
                raise TalkingFaceError(
                    "AVATAR_NOT_READY", f"avatar {avatar_id!r} has no published version yet"
                ) from None
            raise


def standalone(settings: Settings):
    """A ServiceServer hosting the broker API (workers run beside it: broker.service)."""
    from talkingface.broker.service import broker_server

    return broker_server(settings)
