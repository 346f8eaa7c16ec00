"""Re-queue jobs whose work message vanished: no job is lost to a lost message.

A job's record and its first work message are written in one Lua step, and every later move of
the message (dispatch, retry, promotion, dead-lettering) is atomic too, so a QUEUED or RUNNING
job always has exactly one message somewhere in its queue: in its tenant's list (mirrored by
`tf:backlog:<queue>`), in the stream `tf:queue:<queue>` (claimed) or in `tf:delayed:<queue>`
(waiting out a retry backoff). What can still take the message away is outside those steps: a
Redis that lost writes (a failover to a lagging replica, an AOF that missed its last second), an
operator's DEL, an eviction on a volatile Redis. Such a job would stay QUEUED or RUNNING forever.

`Reconciler.sweep()` finds them: it reads, once per sweep and per queue, the job ids that have
a message (LRANGE of the backlog, XRANGE of the stream, ZRANGE of the delayed set, in one MULTI),
then the tenants' active jobs (`tf:active:<tenant>`, jobs.py), and a QUEUED or RUNNING job
whose queue has had no message for it for longer than `grace_s` (twice the lease by default,
so a slow step in flight is never mistaken for a loss) gets a new one
(`WorkQueue.enqueue(..., tenant=)`, the payload its kind's submission used); a RUNNING one is
set back to QUEUED first. Each is counted in talkingface_job_requeued_total and logged at
WARNING. The absence must be seen by two sweeps `grace_s` apart; a lock
(`tf:reconcile:lock`, held for one sweep) keeps two broker replicas from re-queuing the same
job twice. The broker's janitor runs it every TALKINGFACE_RECONCILE_INTERVAL_SECONDS.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from talkingface.broker.jobs import KIND_WORK, QUEUED, RUNNING, JobStore, job_key
from talkingface.broker.queue import WorkQueue
from talkingface.broker.values import as_str
from talkingface.errors import TalkingFaceError

log = logging.getLogger(__name__)

LOCK_KEY = "tf:reconcile:lock"
ACTIVE_PATTERN = "tf:active:*"
SCAN_COUNT = 500
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def queued_job_ids(queue: WorkQueue) -> set[str]:
    """The ids of the jobs that have a message in `queue`: waiting (the backlog mirrors the
    tenants' lists), in the stream (claimed, or added there directly) or delayed. One MULTI,
    so a message moving between them (atomic Lua steps) is seen exactly once."""
    with queue.redis.pipeline(transaction=True) as pipe:
        pipe.lrange(queue.backlog_key, 0, -1)
        pipe.xrange(queue.stream)
        pipe.zrange(queue.delayed_key, 0, -1)
        waiting, in_stream, delayed = pipe.execute()
    ids = {as_str(job_id) for job_id in waiting}
    for _, fields in in_stream:
        fields = fields or {}
        ids.add(as_str(fields.get(b"job_id", fields.get("job_id", ""))))
    for member in delayed:
        try:
            ids.add(str(json.loads(member).get("job_id", "")))
        except (ValueError, AttributeError):
            continue  # not ours to read; promotion dead-letters it
    ids.discard("")
    return ids


class Reconciler:
    """Finds and re-queues QUEUED or RUNNING jobs whose work message is gone (module doc)."""

    def __init__(
        self,
        jobs: JobStore,
        queues: Iterable[WorkQueue],
        grace_s: float,
        *,
        kinds: Mapping[str, tuple[str, dict[str, Any]]] = KIND_WORK,
        lock_ttl_s: float = 60.0,
    ) -> None:
        self.jobs = jobs
        self.kinds = dict(kinds)  # job kind -> (queue name, work payload)
        self.redis: redis.Redis = jobs.redis
        self.queues: dict[str, WorkQueue] = {q.name: q for q in queues}
        self.grace_s = float(grace_s)
        self.lock_ttl_s = float(lock_ttl_s)
        self._missing_since: dict[str, float] = {}  # job id -> when first seen without work
        self._release = self.redis.register_script(_RELEASE)

    def sweep(self, now: float | None = None) -> list[str]:
        """One pass; the ids of the jobs re-queued (sorted). `now` (time.monotonic()) is for
        tests. Does nothing (returns []) while another process holds the lock."""
        now = time.monotonic() if now is None else now
        token = uuid.uuid4().hex
        if not self.redis.set(LOCK_KEY, token, nx=True, px=max(1, round(self.lock_ttl_s * 1000))):
            return []
        try:
            return self._sweep(now)
        finally:
            self._release(keys=[LOCK_KEY], args=[token])

    def _sweep(self, now: float) -> list[str]:
        present = {name: queued_job_ids(queue) for name, queue in self.queues.items()}
        missing: dict[str, Mapping[str, str]] = {}
        for job_id, record in self._active_records():
            work = self.kinds.get(record.get("kind", ""))
            if record.get("state") not in (QUEUED, RUNNING) or work is None:
                continue
            if work[0] not in present or job_id in present[work[0]]:
                continue
            missing[job_id] = record
        for job_id in set(self._missing_since) - set(missing):
            del self._missing_since[job_id]  # its work is back, or it ended
        requeued = []
        for job_id, record in sorted(missing.items()):
            since = self._missing_since.setdefault(job_id, now)
            if now - since < self.grace_s:
                continue
            if self._requeue(job_id, record):
                requeued.append(job_id)
            self._missing_since.pop(job_id, None)
        return requeued

    def _active_records(self) -> Iterable[tuple[str, dict[str, str]]]:
        """(job id, state/kind/tenant of its record) of every job in a tenant's active set."""
        for key in self.redis.scan_iter(match=ACTIVE_PATTERN, count=SCAN_COUNT):
            ids = sorted(as_str(m) for m in self.redis.smembers(key))
            if not ids:
                continue
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(job_key(job_id), "state", "kind", "tenant")
                rows = pipe.execute()
            for job_id, (state, kind, tenant) in zip(ids, rows, strict=True):
                if state is not None:
                    yield job_id, {"state": as_str(state), "kind": as_str(kind or ""),
                                   "tenant": as_str(tenant or "")}  # fmt: skip

    def _requeue(self, job_id: str, record: Mapping[str, str]) -> bool:
        from talkingface.serving.metrics import JOB_REQUEUED

        queue_name, payload = self.kinds[record["kind"]]
        queue = self.queues[queue_name]
        # Read again just before: a job that ended (or whose message came back) since the
        # snapshot is left alone.
        if job_id in queued_job_ids(queue):
            return False
        try:
            job = self.jobs.get(job_id)
            if job.state == RUNNING:
                job = self.jobs.update(job_id, state=QUEUED, stage="", progress=0.0)
        except TalkingFaceError as exc:  # gone or finished meanwhile
            log.info("not re-queuing job %s: %s", job_id, exc.code)
            return False
        if job.state != QUEUED:
            return False
        queue.enqueue(job_id, payload, tenant=job.tenant)
        JOB_REQUEUED.labels(job.kind).inc()
        log.warning(
            "re-queued a %s job whose work message was lost (was %s)",
            job.kind,
            record["state"],
            extra={"job_id": job_id, "queue": queue_name, "tenant": job.tenant},
        )
        return True
