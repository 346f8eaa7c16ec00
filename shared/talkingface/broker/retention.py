"""Retention: how long uploads, results, job records and dead letters are kept; DeleteJob.

TTLs have defaults in the settings and may be overridden for one tenant in the same Redis hash
as its limits, `tf:limits:<tenant>` (broker/limits.py), e.g.
`redis-cli HSET tf:limits:acme upload_retention_seconds 86400`:

- `upload_retention_seconds` (TALKINGFACE_RETENTION_UPLOAD_SECONDS): objects under
  `uploads/<tenant>/` older than this (by the store's last-modified time) are deleted, except
  the uploads a QUEUED or RUNNING job of the tenant still reads.
- `result_retention_seconds` (TALKINGFACE_RETENTION_RESULT_SECONDS): `results/<tenant>/<job>/`
  older than this is deleted.
- `job_retention_seconds` (default TALKINGFACE_JOB_TTL_SECONDS): a job record in a final state
  whose last change is older than this is deleted with its result and scratch space. Redis
  expires every record TALKINGFACE_JOB_TTL_SECONDS after its last change anyway, so an
  override can shorten a tenant's retention, not lengthen it.
- Dead letters (per queue, not per tenant): `tf:dead:<queue>` is trimmed to
  TALKINGFACE_DEAD_LETTER_MAX_ENTRIES entries (XTRIM MAXLEN, exact) and to entries younger
  than TALKINGFACE_DEAD_LETTER_RETENTION_SECONDS (XTRIM MINID on the Redis clock).

A value of 0 keeps that kind forever. The broker API's janitor runs `sweep_retention` every
TALKINGFACE_JANITOR_INTERVAL_SECONDS (broker/janitor.py).

A result never outlives its job record unseen: the sweep lists `results/` and deletes every
result whose record is gone (expired, deleted, or another tenant's id), whatever its age,
and deleting a record for retention (or DeleteJob) deletes its result in the same call. So a
result is reachable through its job for as long as it exists, apart from at most one sweep
interval after Redis expired the record. Under a final job's results the sweep also deletes
every object its record does not name (all of them for a job that did not succeed): the
worker's cleanup does that when the job ends, and the sweep catches what an outage of the
store kept it from deleting (a killed attempt's video, stored but never recorded).

`delete_job` (the DeleteJob RPC) cancels a job that has not ended (a QUEUED one is CANCELLED
at once; a RUNNING one is flagged and its worker stops at its next heartbeat, when it finds
the record gone), then deletes `results/<tenant>/<job_id>/`, `work/<job_id>/` and the record
with its event stream, idempotency key and index entries. A straggler object the stopping
worker writes after that has no record and goes at the next sweep. Uploads stay: they are the
tenant's, possibly shared by several jobs, and go by their own TTL or the purge.

The tenant purge, which deletes everything of one tenant, is broker/purge.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from talkingface.broker.jobs import (
    TERMINAL_STATES,
    Job,
    JobStore,
    active_jobs_key,
    check_tenant,
    job_key,
    tenant_index_key,
)
from talkingface.broker.limits import (
    overrides_key,
)
from talkingface.broker.queue import WorkQueue
from talkingface.broker.values import as_str
from talkingface.config import Settings
from talkingface.errors import TalkingFaceError
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error

log = logging.getLogger(__name__)

UPLOADS, RESULTS, SCRATCH, AVATARS = "uploads", "results", "work", "avatars"
BATCH = 100

# Override field (in tf:limits:<tenant>) -> the setting holding its default.
RETENTION: dict[str, str] = {
    "upload_retention_seconds": "retention_upload_seconds",
    "result_retention_seconds": "retention_result_seconds",
    "job_retention_seconds": "job_ttl_seconds",
}

# KEYS: job; ARGV: job_id, tenant ('' = any), cutoff ms (0 = none: delete whatever its age),
# final only ('1' | '0'). Returns 1 when deleted, 0 when absent (or another tenant's), -1 when
# not final and `final only`, -2 when changed at or after the cutoff. Deletes the record, its
# event stream, its idempotency key (if it still names this job), its entry in the tenant's
# active set and listing index (keys derived here, as the job-creation script does).
_DELETE = """
local f = redis.call('HMGET', KEYS[1], 'tenant', 'state', 'created_at', 'updated_at',
                     'idempotency_key')
local tenant = f[1]
if not tenant then return 0 end
if ARGV[2] ~= '' and tenant ~= ARGV[2] then return 0 end
local final = f[2] == 'SUCCEEDED' or f[2] == 'FAILED' or f[2] == 'CANCELLED'
if ARGV[4] == '1' and not final then return -1 end
local cutoff = tonumber(ARGV[3])
if cutoff > 0 and tonumber(f[4] or '0') >= cutoff then return -2 end
local id = ARGV[1]
redis.call('DEL', KEYS[1], 'tf:jobevents:' .. id)
if f[5] and f[5] ~= '' then
  local idem = 'tf:idem:' .. tenant .. ':' .. f[5]
  if redis.call('GET', idem) == id then redis.call('DEL', idem) end
end
redis.call('SREM', 'tf:active:' .. tenant, id)
local index = 'tf:tenantjobs:' .. tenant
local ts = string.format('%015.0f', tonumber(f[3] or '0'))
for _, m in ipairs(redis.call('ZRANGEBYLEX', index, '[' .. ts .. ':', '(' .. ts .. ';')) do
  if string.sub(m, -#id - 1) == ':' .. id then redis.call('ZREM', index, m) end
end
return 1
"""


def _parse_ttl(raw: Any) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


@dataclass
class SweepReport:
    """What one retention sweep deleted (ids and prefixes, for tests and operators)."""

    uploads: list[str] = field(default_factory=list)  # upload prefixes
    results: list[str] = field(default_factory=list)  # result prefixes
    strays: list[str] = field(default_factory=list)  # result objects no final record names
    jobs: list[str] = field(default_factory=list)  # job ids whose records were deleted
    dead_letters: int = 0  # entries trimmed


class Retention:
    """TTLs per tenant, the retention sweep and DeleteJob."""

    def __init__(
        self,
        client: redis.Redis,
        store: ObjectStore,
        settings: Settings,
        *,
        jobs: JobStore | None = None,
        queues: Sequence[WorkQueue] = (),
    ) -> None:
        self.redis = client
        self.store = store
        self.settings = settings
        self.jobs = jobs or JobStore.from_settings(client, settings)
        self.queues = list(queues)
        self._delete = client.register_script(_DELETE)

    # --- TTLs ------------------------------------------------------------------------------

    def ttls(self, tenant: str) -> dict[str, int]:
        """The tenant's TTLs in seconds (0 = forever): defaults with its overrides."""
        raw = {as_str(k): as_str(v) for k, v in self.redis.hgetall(overrides_key(tenant)).items()}
        out = {}
        for name, setting in RETENTION.items():
            out[name] = int(getattr(self.settings, setting))
            if name in raw:
                try:
                    out[name] = _parse_ttl(raw[name])
                except ValueError as exc:
                    log.warning("ignoring the %s override of tenant %s: %s", name, tenant, exc)
        return out

    def set_override(self, tenant: str, name: str, seconds: int) -> None:
        if name not in RETENTION:
            raise ValueError(f"unknown retention {name!r}: one of {', '.join(RETENTION)}")
        self.redis.hset(overrides_key(tenant), name, str(_parse_ttl(seconds)))

    # --- DeleteJob -------------------------------------------------------------------------

    def delete_job(self, job_id: str, tenant: str) -> tuple[Job, bool, int]:
        """Delete one of the tenant's jobs (see the module docstring): (the job as it was,
        whether this call cancelled it, objects deleted). JOB_NOT_FOUND for another tenant's
        or an unknown job."""
        check_tenant(tenant)
        job = self.jobs.get(job_id, tenant)
        cancelled = False
        if not job.terminal:
            try:
                job = self.jobs.request_cancel(job_id, tenant)
                cancelled = True
            except TalkingFaceError as exc:
                if exc.code != "JOB_ALREADY_FINISHED":
                    raise
        try:
            prefixes = [f"{RESULTS}/{tenant}/{job_id}", f"{SCRATCH}/{job_id}"]
            objects = delete_objects(self.store, prefixes)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        if int(self._delete(keys=[job_key(job_id)], args=[job_id, tenant, 0, "0"])) != 1:
            raise TalkingFaceError("JOB_NOT_FOUND", f"job {job_id!r} not found", job_id=job_id)
        log.info("job deleted", extra={"tenant": tenant, "job_id": job_id, "objects": objects})
        return job, cancelled, objects

    # --- the sweep -------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> SweepReport:
        """One retention pass over job records, results, uploads and dead letters; each part
        logs and skips what it cannot reach (the next sweep tries again)."""
        now = time.time() if now is None else now
        report = SweepReport()
        ttls: dict[str, dict[str, int]] = {}

        def ttl(tenant: str, name: str) -> int:
            if tenant not in ttls:
                ttls[tenant] = self.ttls(tenant)
            return ttls[tenant][name]

        for part in (self._sweep_jobs, self._sweep_results, self._sweep_uploads):
            try:
                part(now, ttl, report)
            except (StoreError, redis.RedisError) as exc:
                log.warning("retention sweep (%s) failed: %r", part.__name__, exc)
        try:
            report.dead_letters = self.trim_dead_letters()
        except redis.RedisError as exc:
            log.warning("cannot trim the dead-letter streams: %r", exc)
        if report.uploads or report.results or report.strays or report.jobs or report.dead_letters:
            log.info("retention removed %d uploads, %d results, %d stray result objects, %d job "
                     "records, %d dead letters", len(report.uploads), len(report.results),
                     len(report.strays), len(report.jobs), report.dead_letters)  # fmt: skip
        return report

    def _tenants_with_jobs(self) -> list[str]:
        prefix = tenant_index_key("")
        return sorted({as_str(k)[len(prefix) :] for k in self.redis.scan_iter(f"{prefix}*", 1000)})

    def _sweep_jobs(self, now: float, ttl, report: SweepReport) -> None:
        """Final records older than the tenant's job retention, oldest first by creation (a
        record cannot have changed before it was created, so the walk stops at the cutoff)."""
        for tenant in self._tenants_with_jobs():
            seconds = ttl(tenant, "job_retention_seconds")
            if seconds <= 0:
                continue
            cutoff_ms = int((now - seconds) * 1000)
            index = tenant_index_key(tenant)
            upper = "(" + f"{cutoff_ms:015d}"
            cursor = "-"
            while True:
                found = self.redis.zrangebylex(index, cursor, upper, 0, BATCH)
                members = [as_str(m) for m in found]
                if not members:
                    break
                cursor = "(" + members[-1]
                for member in members:
                    job_id = member.rpartition(":")[2]
                    gone = self._delete(
                        keys=[job_key(job_id)], args=[job_id, tenant, cutoff_ms, "1"]
                    )
                    if int(gone) == 1:
                        report.jobs.append(job_id)
                        delete_objects(
                            self.store, [f"{RESULTS}/{tenant}/{job_id}", f"{SCRATCH}/{job_id}"]
                        )
                    elif int(gone) == 0:  # expired already: drop its index entry
                        self.redis.zrem(index, member)

    def _sweep_results(self, now: float, ttl, report: SweepReport) -> None:
        """Results whose record is gone, or older than the tenant's result retention; and
        the strays of ended jobs: objects under a final job's results that its record does
        not name (an attempt killed between storing its video and recording it, when the
        cleanup that follows the job's end could not reach the store)."""
        groups: dict[tuple[str, str], tuple[float | None, list[str]]] = {}
        for info in self.store.list(RESULTS):
            parts = info.key.split("/")
            if len(parts) < 4:
                continue
            group = (parts[1], parts[2])
            modified, keys = groups.get(group, (None, []))
            if info.modified is not None:  # the newest object dates the result
                modified = info.modified if modified is None else max(modified, info.modified)
            groups[group] = (modified, [*keys, info.key])
        items = sorted(groups.items())
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            with self.redis.pipeline(transaction=False) as pipe:
                for (_, job_id), _ in batch:
                    pipe.hmget(job_key(job_id), "tenant", "updated_at", "state", "result")
                records = pipe.execute()
            for ((tenant, job_id), (modified, keys)), record in zip(batch, records, strict=True):
                owner, updated, state, result = record
                seconds = ttl(tenant, "result_retention_seconds")
                if modified is None and updated is not None:
                    modified = int(as_str(updated)) / 1000
                orphan = owner is None or as_str(owner) != tenant
                expired = seconds > 0 and modified is not None and now - modified >= seconds
                if orphan or expired:
                    prefix = f"{RESULTS}/{tenant}/{job_id}"
                    self.store.delete_prefix(prefix)
                    report.results.append(prefix)
                elif state is not None and as_str(state) in TERMINAL_STATES:
                    recorded = json.loads(as_str(result)) if result else None
                    for key in unnamed_results(recorded, keys):
                        self.store.delete(key)
                        report.strays.append(key)

    def _sweep_uploads(self, now: float, ttl, report: SweepReport) -> None:
        """Uploads older than the tenant's upload retention that no active job reads."""
        old: dict[str, list[str]] = {}
        for info in self.store.list(UPLOADS):
            parts = info.key.split("/")
            if len(parts) < 3 or info.modified is None:
                continue
            seconds = ttl(parts[1], "upload_retention_seconds")
            if seconds > 0 and now - info.modified >= seconds:
                old.setdefault(parts[1], []).append(f"{UPLOADS}/{parts[1]}/{parts[2]}")
        for tenant, prefixes in sorted(old.items()):
            in_use = self._active_inputs(tenant)
            for prefix in sorted(set(prefixes)):
                if any(key.startswith(prefix + "/") for key in in_use):
                    continue
                self.store.delete_prefix(prefix)
                report.uploads.append(prefix)

    def _active_inputs(self, tenant: str) -> set[str]:
        """The store keys the tenant's QUEUED or RUNNING jobs read."""
        ids = [as_str(i) for i in self.redis.smembers(active_jobs_key(tenant))]
        keys: set[str] = set()
        for job_id in ids:
            try:
                job = self.jobs.get(job_id, tenant)
            except TalkingFaceError:
                continue
            if job.state not in TERMINAL_STATES:
                keys |= {str(job.request.get(k)) for k in ("audio_key", "data_key")
                         if job.request.get(k)}  # fmt: skip
        return keys

    def trim_dead_letters(self) -> int:
        """Cap every queue's dead-letter stream by length and age; entries trimmed."""
        trimmed = 0
        max_entries = self.settings.dead_letter_max_entries
        max_age = self.settings.dead_letter_retention_seconds
        if max_age > 0:
            seconds, micros = self.redis.time()
            min_id = int(seconds) * 1000 + int(micros) // 1000 - max_age * 1000
        for queue in self.queues:
            if max_entries > 0:
                trimmed += int(self.redis.xtrim(queue.dead_key, maxlen=max_entries,
                                                approximate=False))  # fmt: skip
            if max_age > 0 and min_id > 0:
                trimmed += int(self.redis.xtrim(queue.dead_key, minid=f"{min_id}-0",
                                                approximate=False))  # fmt: skip
        return trimmed


def delete_objects(store: ObjectStore, prefixes: Iterable[str]) -> int:
    """Delete every object under each of `prefixes`: how many there were."""
    count = 0
    for prefix in prefixes:
        found = store.list(prefix)
        if found:
            store.delete_prefix(prefix)
            count += len(found)
    return count


def unnamed_results(result: dict | None, keys: Iterable[str]) -> list[str]:
    """The result objects among `keys` that a final job's `result` (its record's, parsed)
    does not name: what its attempts left besides the result that counts (all of `keys` for
    a job without a result). The worker's cleanup and the retention sweep both go by it."""
    named = _named_keys(result)
    return [key for key in keys if key not in named]


def _named_keys(value: Any) -> set[str]:
    """Every object key under `results/` that a job's result (parsed JSON) names."""
    if isinstance(value, str):
        return {value} if value.startswith(f"{RESULTS}/") else set()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*(_named_keys(v) for v in value))
    return set()
