"""The broker's records as API messages, and the API's render options as a job's request.

Job records (`broker.jobs.Job`) and avatar records (`broker.avatars.AvatarRecord` plus the
versions in the store) become `talkingface.v1` messages here; a finished render job's result
gets a fresh download URL on every read. `render_options` checks a SubmitRender's options and
turns them into the JSON the render job reads (an unset K or alpha stays unset: the stage's
default applies).
"""

from __future__ import annotations

import contextlib
import logging
import math
from datetime import timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from talkingface.broker.avatars import AvatarRecord
from talkingface.broker.jobs import TERMINAL_STATES, Job, JobStore
from talkingface.errors import TalkingFaceError
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import common_pb2, renderer_pb2

log = logging.getLogger(__name__)

# The stages' own limits (landmarks.servicer.MAX_K, render.servicer.MAX_RESOLUTION), checked at
# submission so a bad option fails the call, not the job; kept here so the API process does
# not import the stages' model code (a test keeps them equal).
MAX_K = 256
MAX_RESOLUTION = 1024
POSE_MODES = {
    renderer_pb2.POSE_MODE_UNSPECIFIED: "pingpong",
    renderer_pb2.POSE_MODE_PING_PONG: "pingpong",
    renderer_pb2.POSE_MODE_LOOP: "loop",
}
JOB_STATES = {name: pb.JobState.Value(f"JOB_STATE_{name}") for name in
              ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")}  # fmt: skip
JOB_KINDS = {"render": pb.JOB_KIND_RENDER, "train_avatar": pb.JOB_KIND_TRAIN_AVATAR}


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
    if options.pose_start < 0:
        raise TalkingFaceError("INVALID_REQUEST", "pose_start must be 0 or more")
    if options.pose_start:
        out["pose_start"] = int(options.pose_start)
    if options.resolution and not (
        16 <= options.resolution <= MAX_RESOLUTION and options.resolution % 2 == 0
    ):
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"resolution must be 0 (the avatar's) or an even size in 16..{MAX_RESOLUTION}",
        )
    out["resolution"] = int(options.resolution)
    return out


def mints_url(job: Job) -> bool:
    """Whether `job_message` signs a download URL for the job (a finished render)."""
    return job.state == "SUCCEEDED" and bool(job.result) and job.kind == "render"


def job_message(job: Job, store: ObjectStore, url_seconds: int) -> pb.Job:
    """The API's view of a job record (a render result with a fresh download URL valid
    `url_seconds`, or none when it is 0)."""
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
    if job.callback_url:
        out.callback_url = job.callback_url
        if job.webhook_state:
            out.webhook.state = job.webhook_state
            out.webhook.attempts = job.webhook_attempts
            out.webhook.last_status = job.webhook_last_status
            if job.webhook_last_attempt_at:
                out.webhook.last_attempt_at.CopyFrom(_timestamp(job.webhook_last_attempt_at))
            if job.webhook_delivered_at:
                out.webhook.delivered_at.CopyFrom(_timestamp(job.webhook_delivered_at))
    if job.state == "FAILED" and job.error_code:
        out.error.CopyFrom(
            common_pb2.ErrorDetail(
                code=common_pb2.ErrorCode.Value(job.error_code), message=job.error_message
            )
        )
    if job.state == "SUCCEEDED" and job.result:
        if mints_url(job):
            out.render.CopyFrom(render_result(job.result, store, url_seconds))
        else:
            out.avatar.CopyFrom(
                pb.AvatarResult(
                    avatar_id=job.result.get("avatar_id", ""),
                    version=job.result.get("version", ""),
                    metrics=_numbers(job.result.get("metrics", {})),
                )
            )
    return out


def render_result(result: dict[str, Any], store: ObjectStore, url_seconds: int) -> pb.RenderResult:
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
    if out.video.key and url_seconds > 0:  # 0: no URL (ListJobs)
        try:
            out.download_url = store.presigned_get(out.video.key, timedelta(seconds=url_seconds))
        except StoreError as exc:
            log.warning("no download URL for %s: %s", out.video.key, exc)
    return out


def avatar_message(record: AvatarRecord, store: ObjectStore, jobs: JobStore) -> pb.Avatar:
    """An avatar: its record, its published versions (with metrics), its derived state."""
    from talkingface.bundle import avatar_prefix

    prefix = avatar_prefix(record.avatar_id)
    versions = []
    try:
        for version in store.list_versions(prefix):
            manifest = store.read_manifest(prefix, version)
            versions.append(
                pb.AvatarVersion(
                    version=version,
                    created_at=_iso_timestamp(manifest.get("created_at", "")),
                    metrics=_numbers(manifest.get("metadata", {})),
                )
            )
    except StoreError as exc:
        raise as_talkingface_error(exc) from None
    state = pb.AVATAR_STATE_READY if versions else _training_state(record, jobs)
    return pb.Avatar(
        avatar_id=record.avatar_id,
        display_name=record.display_name,
        state=state,
        latest_version=versions[-1].version if versions else "",
        versions=versions,
        created_at=_timestamp(record.created_at),
    )


def _training_state(record: AvatarRecord, jobs: JobStore) -> int:
    if not record.job_id:
        return pb.AVATAR_STATE_FAILED
    try:
        job = jobs.get(record.job_id, record.tenant)
    except TalkingFaceError:
        return pb.AVATAR_STATE_FAILED  # the job record expired without a version
    return pb.AVATAR_STATE_FAILED if job.state in TERMINAL_STATES else pb.AVATAR_STATE_TRAINING


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
