"""Durable job records in Redis: create (idempotently), read, update, cancel, list and watch.

Key layout (every key expires `ttl_s` after the job's last change; each change refreshes it):

- `tf:job:<job_id>` — a hash, one field per `Job` attribute. `request` and `result` are JSON,
  `created_at` / `updated_at` are unix milliseconds from the Redis clock, `cancel_requested`
  is `0` or `1`, `state` / `stage` are the proto enum names without their prefix (`RUNNING`,
  `AUDIO_FEATURES`; `stage` is empty when there is none), `kind` is `render` or `train_avatar`.
- `tf:idem:<tenant>:<idempotency_key>` — the job id a tenant's idempotency key was first used
  for. Tenants are restricted to `[A-Za-z0-9][A-Za-z0-9._-]*` (no `:`), so two tenants' keys
  can never name the same Redis key.
- `tf:tenantjobs:<tenant>` — the listing index: a sorted set whose members are
  `<created_at>:<sequence>:<job_id>` (zero-padded numbers, all scored 0, so they sort by
  creation time and then by creation order), which gives exact keyset pagination even while
  jobs are added or expire. `tf:jobseq` (one integer, never expires) is the counter behind
  the sequence numbers. Entries of expired jobs are dropped lazily when a listing meets them,
  and wholesale once they are older than twice the TTL.
- `tf:active:<tenant>` — a set of the tenant's job ids that may still be QUEUED or RUNNING
  (added at creation, pruned of ended and expired jobs by the next creation), behind the
  `active_jobs` quota (broker/limits.py).
- `tf:jobevents:<job_id>` — a stream with one entry per change: the whole record after the
  change (except the immutable `request`), trimmed to about EVENTS_MAXLEN entries.

Guarantees, and what they rest on:

- Every write is one Lua script (`talkingface.broker.lua`), so it is atomic: the idempotency
  check and the job it creates (two concurrent submits with one key get one job), the
  state-machine check and the write it guards (a terminal state is final even under racing
  workers and cancels), and the record change with its event-stream entry.
- The state machine: QUEUED -> RUNNING | CANCELLED | FAILED; RUNNING -> SUCCEEDED | FAILED |
  CANCELLED, or back to QUEUED for a retry; SUCCEEDED, FAILED and CANCELLED are final. Staying
  in QUEUED or RUNNING (progress, stage, attempt) is allowed. The process whose write made a
  job final observes talkingface_job_e2e_seconds (created_at to updated_at) for it: once per
  job, however often it was retried, since no second final write succeeds.
- `watch` reads the record and the id of the newest event in one MULTI, then reads the event
  stream from that id on, so no change between the first read and the next one is missed,
  and every change is seen as its own snapshot (unless a watcher falls EVENTS_MAXLEN events
  behind, when the oldest unread ones are trimmed away).
- A tenant sees only its own jobs; another tenant's job id reads as JOB_NOT_FOUND.
- Durability is Redis's: with AOF and `appendfsync always` a restart loses no acknowledged
  write; with the common `everysec` it can lose the last second of them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from talkingface.broker import lua
from talkingface.broker.queue import Lease, LeaseLost
from talkingface.broker.values import as_str
from talkingface.config import Settings
from talkingface.errors import GRPC_STATUS, TalkingFaceError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
KINDS = ("render", "train_avatar")
# Job kind -> (its work queue, the payload of its work message): what SubmitRender and
# CreateAvatar enqueue, and what the reconciler re-enqueues for a job whose message was lost.
KIND_WORK: dict[str, tuple[str, dict[str, str]]] = {
    "render": ("render", {"kind": "render"}),
    "train_avatar": ("train", {"kind": "train_avatar"}),
}
# talkingface.v1.Stage names without the STAGE_ prefix; "" = no stage.
STAGES = (
    "",
    "AUDIO_FEATURES",
    "MOTION",
    "LANDMARK_PROJECTION",
    "RENDER",
    "MUX",
    "PREPROCESS",
    "TRAIN",
    "PUBLISH",
)
DEFAULT_TTL_S = 7 * 24 * 3600
SEQUENCE_KEY = "tf:jobseq"
WEBHOOKS_DUE_KEY = "tf:webhooks:due"  # job ids whose webhook is due, scored by due time (ms)
EVENTS_MAXLEN = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_IDEMPOTENCY_KEY = 256
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_UPDATABLE = frozenset(
    {
        "state",
        "stage",
        "progress",
        "attempt",
        "error_code",
        "error_message",
        "result",
        "cancel_requested",
        "avatar_id",
        "resume",  # what an attempt stored that the next may reuse (a render's checkpoint)
    }
)


def job_key(job_id: str) -> str:
    return f"tf:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"tf:jobevents:{job_id}"


def tenant_index_key(tenant: str) -> str:
    return f"tf:tenantjobs:{tenant}"


def active_jobs_key(tenant: str) -> str:
    return f"tf:active:{tenant}"


def idempotency_key_name(tenant: str, key: str) -> str:
    return f"tf:idem:{tenant}:{key}"


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {as_str(flat[i]): as_str(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass(frozen=True)
class Job:
    """One job record as read from Redis."""

    job_id: str
    tenant: str
    kind: str
    state: str
    stage: str
    progress: float
    attempt: int
    error_code: str
    error_message: str
    created_at: int
    updated_at: int
    idempotency_key: str
    avatar_id: str
    request: dict[str, Any]
    result: dict[str, Any] | None
    cancel_requested: bool
    # The job's webhook (broker/webhooks.py): its URL and how its delivery went.
    callback_url: str = ""
    webhook_state: str = ""  # "" | pending | delivered | failed
    webhook_attempts: int = 0
    webhook_last_status: str = ""
    webhook_last_attempt_at: int = 0  # unix ms, 0 = never
    webhook_delivered_at: int = 0
    resume: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Job:
        f = {as_str(k): as_str(v) for k, v in fields.items()}
        return cls(
            job_id=f["job_id"],
            tenant=f["tenant"],
            kind=f["kind"],
            state=f["state"],
            stage=f.get("stage", ""),
            progress=float(f.get("progress") or 0.0),
            attempt=int(f.get("attempt") or 0),
            error_code=f.get("error_code", ""),
            error_message=f.get("error_message", ""),
            created_at=int(f["created_at"]),
            updated_at=int(f["updated_at"]),
            idempotency_key=f.get("idempotency_key", ""),
            avatar_id=f.get("avatar_id", ""),
            request=json.loads(f.get("request") or "{}"),
            result=json.loads(f["result"]) if f.get("result") else None,
            cancel_requested=f.get("cancel_requested") == "1",
            callback_url=f.get("callback_url", ""),
            webhook_state=f.get("webhook_state", ""),
            webhook_attempts=int(f.get("webhook_attempts") or 0),
            webhook_last_status=f.get("webhook_last_status", ""),
            webhook_last_attempt_at=int(f.get("webhook_last_attempt_at") or 0),
            webhook_delivered_at=int(f.get("webhook_delivered_at") or 0),
            resume=json.loads(f["resume"]) if f.get("resume") else {},
        )


def _not_found(job_id: str) -> TalkingFaceError:
    return TalkingFaceError("JOB_NOT_FOUND", f"job {job_id!r} not found", job_id=job_id)


def _encode_fields(fields: Mapping[str, Any]) -> list[str]:
    """Validate update fields and turn them into hash values (ValueError for a caller's bug)."""
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"job fields {sorted(unknown)} cannot be updated")
    out: list[str] = []
    for name, value in fields.items():
        if name == "state" and value not in STATES:
            raise ValueError(f"unknown job state {value!r}")
        if name == "stage" and value not in STAGES:
            raise ValueError(f"unknown stage {value!r}")
        if name == "progress":
            value = float(value)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"progress must be in [0, 1], got {value}")
            value = repr(value)
        elif name == "attempt":
            if int(value) < 0:
                raise ValueError("attempt must be 0 or more")
            value = str(int(value))
        elif name == "error_code" and value and value not in GRPC_STATUS:
            raise ValueError(f"unknown error code {value!r}")
        elif name in ("result", "resume"):
            value = "" if value is None else json.dumps(value, separators=(",", ":"))
        elif name == "cancel_requested":
            value = "1" if value else "0"
        out += [name, str(value)]
    return out


def _encode_token(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        member = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        member = ""
    parts = member.split(":")
    if not (len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and parts[2]):
        raise TalkingFaceError("INVALID_REQUEST", "page_token is not valid")
    return member


class JobStore:
    """Job records of every tenant in one Redis database."""

    def __init__(self, client: redis.Redis, ttl_s: int = DEFAULT_TTL_S) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be 1 or more")
        self.redis = client
        self.ttl_s = int(ttl_s)
        self._create = client.register_script(lua.JOB_CREATE)
        self._update = client.register_script(lua.JOB_UPDATE)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> JobStore:
        return cls(client, ttl_s=settings.job_ttl_seconds)

    def create(
        self,
        tenant: str,
        kind: str,
        request: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        avatar_id: str = "",
        enqueue: tuple[str, dict[str, Any]] | None = None,
        active_limit: int = 0,
        active_hint: str = "",
        callback_url: str = "",
    ) -> tuple[Job, bool]:
        """A new QUEUED job, or the tenant's existing job for this idempotency key.

        Returns (job, created); created is False when the key had been used before (the
        earlier job is returned as it is now, whatever `request` says this time).
        `enqueue=(queue name, payload)` adds the job's work message to the tenant's sub-queue
        of that work queue (`WorkQueue.name`) atomically with the record: both or neither.
        `active_limit` (0 = none) refuses the job with QUOTA_EXCEEDED when the tenant has
        that many jobs QUEUED or RUNNING, counted in the same atomic step (the message ends
        with `active_hint`); a reused idempotency key is answered whatever the count.
        `callback_url` (checked by the caller: broker.webhooks) is POSTed the job once it ends.
        """
        check_tenant(tenant)
        if kind not in KINDS:
            raise TalkingFaceError("INVALID_REQUEST", f"job kind must be one of {KINDS}")
        if len(idempotency_key or "") > MAX_IDEMPOTENCY_KEY:
            raise TalkingFaceError(
                "INVALID_REQUEST", f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY}"
            )
        try:
            request_json = json.dumps(request, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TalkingFaceError("INVALID_REQUEST", f"request is not JSON: {exc}") from None
        job_id = uuid.uuid4().hex
        keys = [job_key(job_id), tenant_index_key(tenant), events_key(job_id), SEQUENCE_KEY,
                active_jobs_key(tenant)]  # fmt: skip
        if idempotency_key:
            keys.append(idempotency_key_name(tenant, idempotency_key))
        queue_name, payload = "", ""
        if enqueue is not None:
            queue_name, payload = enqueue[0], json.dumps(enqueue[1])
        fields = {
            "tenant": tenant,
            "kind": kind,
            "state": QUEUED,
            "stage": "",
            "progress": "0.0",
            "attempt": "0",
            "error_code": "",
            "error_message": "",
            "idempotency_key": idempotency_key or "",
            "avatar_id": avatar_id,
            "request": request_json,
            "result": "",
            "cancel_requested": "0",
        }
        if callback_url:
            fields["callback_url"] = callback_url
        flat = [item for pair in fields.items() for item in pair]
        has_key = "1" if idempotency_key else "0"
        args = [self.ttl_s, EVENTS_MAXLEN, job_id, has_key, payload, max(0, active_limit),
                queue_name, tenant, *flat]  # fmt: skip
        reply = self._create(keys=keys, args=args)
        if int(reply[0]) == 1:
            return Job.from_fields(_pairs(reply[2])), True
        if int(reply[0]) == -1:
            raise TalkingFaceError(
                "QUOTA_EXCEEDED",
                f"tenant {tenant!r} has {int(reply[1])} active jobs (queued + running): the "
                f"active_jobs limit is {active_limit}"
                + (f"; {active_hint}" if active_hint else ""),
            )
        existing = as_str(reply[1])
        try:
            return self.get(existing, tenant), False
        except TalkingFaceError:
            # The key outlived its job (deleted by hand): a bug or an operator, not a retry.
            raise TalkingFaceError(
                "INTERNAL", f"idempotency key refers to job {existing!r}, which is gone"
            ) from None

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job now; JOB_NOT_FOUND when it does not exist or belongs to another tenant."""
        fields = self.redis.hgetall(job_key(job_id)) if job_id else {}
        return self._visible(job_id, fields, tenant)

    async def get_async(self, reads: Any, job_id: str, tenant: str | None = None) -> Job:
        """`get` on an event loop: `reads` is a broker.reads.CoalescedReads of the same Redis."""
        fields = await reads.hgetall(job_key(job_id)) if job_id else {}
        return self._visible(job_id, fields, tenant)

    def update(self, job_id: str, *, lease: Lease | None = None, **fields: Any) -> Job:
        """Change fields of a job that has not finished, checking the state transition.

        Raises JOB_NOT_FOUND, JOB_ALREADY_FINISHED (the job is in a final state) or INTERNAL
        (a transition the state machine forbids, e.g. QUEUED -> SUCCEEDED). With `lease` (a
        worker's delivery), LeaseLost unless that delivery is still the worker's, checked in
        the same atomic step as the write, which also renews the lease (a heartbeat is one
        such call, with or without fields).
        """
        return self._run_update(job_id, "", "update", _encode_fields(fields), lease)

    def request_cancel(self, job_id: str, tenant: str) -> Job:
        """Cancel a job: a QUEUED job is CANCELLED at once; a RUNNING one is flagged
        (`cancel_requested`) for its worker to stop at the next heartbeat."""
        check_tenant(tenant)
        return self._run_update(job_id, tenant, "cancel", [])

    def list(
        self,
        tenant: str,
        state: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
    ) -> tuple[list[Job], str]:
        """The tenant's jobs, newest first, and the token of the next page ("" at the end).

        `state` filters; `page_size` 0 means DEFAULT_PAGE_SIZE, and more than MAX_PAGE_SIZE
        is served as MAX_PAGE_SIZE.
        """
        check_tenant(tenant)
        if state is not None and state not in STATES:
            raise TalkingFaceError("INVALID_REQUEST", f"state must be one of {STATES}")
        if page_size < 0:
            raise TalkingFaceError("INVALID_REQUEST", "page_size must be 0 or more")
        page_size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        index = tenant_index_key(tenant)
        cursor = _decode_token(page_token) if page_token else ""
        found: list[tuple[str, Job]] = []
        while len(found) <= page_size:
            upper = "(" + cursor if cursor else "+"
            members = [as_str(m) for m in self.redis.zrevrangebylex(index, upper, "-", 0, 100)]
            if not members:
                break
            cursor = members[-1]
            with self.redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(job_key(member.rpartition(":")[2]))
                records = pipe.execute()
            gone = [m for m, rec in zip(members, records, strict=True) if not rec]
            if gone:
                self.redis.zrem(index, *gone)
            for member, rec in zip(members, records, strict=True):
                if rec:
                    job = Job.from_fields(rec)
                    if job.tenant == tenant and (state is None or job.state == state):
                        found.append((member, job))
        more = len(found) > page_size
        page = found[:page_size]
        return [job for _, job in page], _encode_token(page[-1][0]) if more else ""

    def watch(
        self,
        job_id: str,
        tenant: str | None = None,
        *,
        block_ms: int = 1000,
        timeout_s: float | None = None,
    ) -> Iterator[Job]:
        """The job now, then a snapshot after every change, ending after a final state.

        Also ends when the record expires or `timeout_s` passes without the job finishing;
        `block_ms` bounds each wait on Redis, so a caller regains control that often.
        """
        events = events_key(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(job_key(job_id))
            pipe.xrevrange(events, count=1)
            fields, newest = pipe.execute()
        job = self._visible(job_id, fields, tenant)
        request = {"request": json.dumps(job.request)}
        yield job
        cursor = as_str(newest[0][0]) if newest else "0-0"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not job.terminal:
            wait = block_ms
            if deadline is not None:
                wait = min(wait, int((deadline - time.monotonic()) * 1000))
                if wait <= 0:
                    return
            reply = self.redis.xread({events: cursor}, count=100, block=max(wait, 1))
            entries = _stream_entries(reply)
            if not entries and not self.redis.exists(job_key(job_id)):
                return
            for entry_id, entry in entries:
                cursor = as_str(entry_id)
                job = Job.from_fields({**entry, **request})
                yield job
                if job.terminal:
                    return

    def _visible(self, job_id: str, fields: Mapping[Any, Any], tenant: str | None) -> Job:
        if not fields:
            raise _not_found(job_id)
        job = Job.from_fields(fields)
        if tenant is not None and job.tenant != tenant:
            raise _not_found(job_id)
        return job

    def _run_update(
        self, job_id: str, tenant: str, mode: str, flat: list[str], lease: Lease | None = None
    ) -> Job:
        if not job_id:
            raise _not_found(job_id)
        keys = [job_key(job_id), events_key(job_id), WEBHOOKS_DUE_KEY]
        fence = ["", "", ""]
        if lease is not None:
            keys.append(lease.stream)
            fence = [lease.group, lease.message_id, lease.consumer]
        reply = self._update(keys=keys, args=[self.ttl_s, EVENTS_MAXLEN, tenant, mode, *fence,
                                              *flat])  # fmt: skip
        status = as_str(reply[0])
        if status == "LEASE_LOST" and lease is not None:
            raise LeaseLost(
                f"the delivery {lease.message_id} of job {job_id} is no longer {lease.consumer}'s"
            )
        if status == "OK":
            job = Job.from_fields(_pairs(reply[1]))
            if job.terminal:  # this write made it final: the script refuses a second one
                _observe_end(job)
            return job
        if status == "JOB_NOT_FOUND":
            raise _not_found(job_id)
        if status == "JOB_ALREADY_FINISHED":
            raise TalkingFaceError(
                "JOB_ALREADY_FINISHED",
                f"job {job_id!r} has already finished ({as_str(reply[1])})",
                job_id=job_id,
            )
        raise TalkingFaceError(
            "INTERNAL",
            f"job {job_id!r} cannot go from {as_str(reply[1])} to {as_str(reply[2])}",
            job_id=job_id,
        )


def _observe_end(job: Job) -> None:
    """talkingface_job_e2e_seconds: submission to final state, both on the Redis clock."""
    from talkingface.serving.metrics import JOB_E2E_SECONDS

    seconds = max(0, job.updated_at - job.created_at) / 1000.0
    JOB_E2E_SECONDS.labels(job.kind, job.state.lower()).observe(seconds)


def check_tenant(tenant: str) -> None:
    """INVALID_REQUEST unless `tenant` is a valid tenant name (one key segment, no `:`)."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise TalkingFaceError(
            "INVALID_REQUEST", "tenant must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}"
        )


def _stream_entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """Entries of the one stream an XREAD/XREADGROUP asked for (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    entries = streams[0]
    if entries and isinstance(entries[0], list) and not isinstance(entries[0][0], bytes | str):
        entries = entries[0]  # RESP3 wraps the entries once more
    return [(entry_id, dict(fields or {})) for entry_id, fields in entries]
