"""The tenant purge (`talkingface tenant purge`): everything of one tenant, gone.

`TenantPurge.purge` deletes every Redis key of a tenant (job records and their event streams,
idempotency keys, the job index and active set, avatar records and index, limit overrides,
token buckets, upload counters, the tenant record, its API keys, its waiting work in each
queue) and every object under its prefixes (`uploads/<tenant>/`, `results/<tenant>/`,
`avatars/<avatar_id>/` of its avatars, `work/<job_id>/` of its jobs). Objects go first, then
keys, so an interrupted purge can be run again and finds what is left. Ids are found both by
scanning the records that name the tenant and through its indexes; an id from an index whose
record names another tenant is not this tenant's and stays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from talkingface.broker.avatars import record_key, tenant_avatars_key
from talkingface.broker.jobs import (
    active_jobs_key,
    check_tenant,
    events_key,
    job_key,
    tenant_index_key,
)
from talkingface.broker.keys import TENANTS_KEY, api_key_key, tenant_key, tenant_keys_key
from talkingface.broker.limits import (
    SUBMIT,
    UPLOAD,
    bucket_key,
    key_bucket_key,
    overrides_key,
    uploads_key,
)
from talkingface.broker.queue import WorkQueue
from talkingface.broker.retention import AVATARS, RESULTS, SCRATCH, UPLOADS, delete_objects
from talkingface.broker.values import as_str
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error

log = logging.getLogger(__name__)


class TenantPurge:
    """Every key and object of one tenant in one Redis database and store (module docstring);
    `queues`: the work queues whose waiting work of the tenant goes too."""

    def __init__(
        self, client: redis.Redis, store: ObjectStore, queues: Sequence[WorkQueue] = ()
    ) -> None:
        self.redis = client
        self.store = store
        self.queues = list(queues)

    def purge(self, tenant: str, *, dry_run: bool = False) -> dict[str, int]:
        """Delete every key and object of `tenant` (or only count them with `dry_run`):
        counts of jobs, avatars, API keys, Redis keys and objects."""
        check_tenant(tenant)
        job_ids = self._records("tf:job:*", tenant, job_key(""))
        job_ids |= {as_str(m).rpartition(":")[2]
                    for m in self.redis.zrange(tenant_index_key(tenant), 0, -1)}  # fmt: skip
        job_ids |= {as_str(m) for m in self.redis.smembers(active_jobs_key(tenant))}
        avatar_ids = self._records("tf:avatar:*", tenant, record_key(""))
        avatar_ids |= {as_str(m) for m in self.redis.zrange(tenant_avatars_key(tenant), 0, -1)}
        key_ids = self._records("tf:apikey:*", tenant, api_key_key(""))
        key_ids |= {as_str(m) for m in self.redis.smembers(tenant_keys_key(tenant))}
        # Ids from the indexes whose records name another tenant are not this tenant's.
        job_ids = {i for i in job_ids if self._owner(job_key(i)) in (None, tenant)}
        avatar_ids = {i for i in avatar_ids if self._owner(record_key(i)) in (None, tenant)}
        key_ids = {i for i in key_ids if self._owner(api_key_key(i)) in (None, tenant)}

        prefixes = [f"{UPLOADS}/{tenant}", f"{RESULTS}/{tenant}"]
        prefixes += [f"{AVATARS}/{a}" for a in sorted(avatar_ids) if _segment(a)]
        prefixes += [f"{SCRATCH}/{j}" for j in sorted(job_ids) if _segment(j)]
        keys = set(self.named_keys(tenant))
        for job_id in job_ids:
            keys |= {job_key(job_id), events_key(job_id)}
        keys |= {record_key(a) for a in avatar_ids} | {api_key_key(k) for k in key_ids}
        keys |= {queue.tenant_key(tenant) for queue in self.queues}  # its waiting work
        keys |= {key_bucket_key(k, b) for k in key_ids for b in (SUBMIT, UPLOAD)}
        keys = {k for k in keys if self.redis.exists(k)}
        try:
            if dry_run:
                objects = sum(len(self.store.list(p)) for p in prefixes)
            else:
                objects = delete_objects(self.store, prefixes)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        if not dry_run:
            for queue in self.queues:  # its waiting work, its backlog and place in the ring
                queue.drop_tenant(tenant)
            for start in range(0, len(keys), 500):
                self.redis.delete(*sorted(keys)[start : start + 500])
            self.redis.srem(TENANTS_KEY, tenant)
            log.info("tenant purged", extra={"tenant": tenant, "keys": len(keys),
                                             "objects": objects})  # fmt: skip
        return {"jobs": len(job_ids), "avatars": len(avatar_ids), "api_keys": len(key_ids),
                "redis_keys": len(keys), "objects": objects}  # fmt: skip

    def named_keys(self, tenant: str) -> list[str]:
        """The tenant's keys that carry its name (exact keys and `<prefix>:<tenant>:*`)."""
        check_tenant(tenant)
        # The last one is broker/webhooks.py's signing secret.
        exact = [tenant_index_key(tenant), active_jobs_key(tenant), tenant_avatars_key(tenant),
                 overrides_key(tenant), tenant_key(tenant), tenant_keys_key(tenant),
                 f"tf:webhooksecret:{tenant}"]  # fmt: skip
        patterns = [f"tf:idem:{tenant}:*", bucket_key(tenant, "*"), uploads_key(tenant, "*")]
        found = [k for k in exact if self.redis.exists(k)]
        for pattern in patterns:
            found += [as_str(k) for k in self.redis.scan_iter(pattern, 1000)]
        return sorted(set(found))

    def _records(self, pattern: str, tenant: str, prefix: str) -> set[str]:
        """Ids of the hashes matching `pattern` whose `tenant` field is `tenant`."""
        names = [as_str(k) for k in self.redis.scan_iter(pattern, 1000)]
        found: set[str] = set()
        for start in range(0, len(names), 500):
            batch = names[start : start + 500]
            with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hget(name, "tenant")
                owners = pipe.execute(raise_on_error=False)
            found |= {n[len(prefix):] for n, o in zip(batch, owners, strict=True)
                      if isinstance(o, bytes | str) and as_str(o) == tenant}  # fmt: skip
        return found

    def _owner(self, key: str) -> str | None:
        try:
            owner = self.redis.hget(key, "tenant")
        except redis.ResponseError:
            return "?"
        return None if owner is None else as_str(owner)


def _segment(value: str) -> bool:
    from talkingface.storage.keys import validate_segment

    try:
        validate_segment(value)
        return True
    except ValueError:
        return False
