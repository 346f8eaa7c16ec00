"""Who owns which avatar: the broker's avatar registry in Redis, over the bundles in the store.

An avatar's bundles live in the object store under `avatars/<avatar_id>/<version>/` (the
layout every stage reads, `talkingface.bundle`); the registry adds what the store does not
know: the tenant that owns it, its display name and the training job that makes it.

Key layout (no TTL: an avatar lives until it is deleted):

- `tf:avatar:<avatar_id>` — a hash: `avatar_id`, `tenant`, `display_name`, `created_at` (unix
  ms), `job_id` (the training job; empty for a bundle imported ready-made).
- `tf:tenantavatars:<tenant>` — a sorted set of the tenant's avatar ids scored by creation
  time, for listing (newest first).

The avatar's state is derived, never stored, so it cannot go stale: READY once a version is
published; otherwise TRAINING while its training job has not finished, FAILED after it.
Another tenant's avatar reads as AVATAR_NOT_FOUND, exactly like one that does not exist.

The registry can be rebuilt from the store (a Redis lost or flushed): every published version's
manifest carries `metadata["tenant"]`, `["display_name"]` and `["job_id"]`, and
`rebuild_from_store` re-creates the missing records from them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from talkingface.broker.values import as_str
from talkingface.bundle import AVATARS, avatar_prefix
from talkingface.errors import TalkingFaceError

log = logging.getLogger(__name__)

MAX_DISPLAY_NAME = 200
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

# KEYS: avatar hash, tenant index; ARGV: avatar_id, tenant, display_name, job_id, now ms.
# Returns 1 when created, 0 when the same tenant already had it (record updated), -1 when
# another tenant owns the id.
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'tenant')
if owner and owner ~= ARGV[2] then return -1 end
local created = redis.call('HGET', KEYS[1], 'created_at') or ARGV[5]
redis.call('HSET', KEYS[1], 'avatar_id', ARGV[1], 'tenant', ARGV[2], 'display_name', ARGV[3],
           'job_id', ARGV[4], 'created_at', created)
redis.call('ZADD', KEYS[2], tonumber(created), ARGV[1])
if owner then return 0 end
return 1
"""

# KEYS: avatar hash, tenant index; ARGV: avatar_id, tenant, display_name, job_id, created ms.
# Writes the record only when there is none; returns 1 when written, 0 when one existed.
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'avatar_id', ARGV[1], 'tenant', ARGV[2], 'display_name', ARGV[3],
           'job_id', ARGV[4], 'created_at', ARGV[5])
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[1])
return 1
"""


def record_key(avatar_id: str) -> str:
    return f"tf:avatar:{avatar_id}"


def tenant_avatars_key(tenant: str) -> str:
    return f"tf:tenantavatars:{tenant}"


def new_avatar_id() -> str:
    return f"av-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class AvatarRecord:
    avatar_id: str
    tenant: str
    display_name: str
    created_at: int  # unix ms
    job_id: str


class AvatarRegistry:
    """Avatar ownership records of every tenant in one Redis database."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = client.register_script(_CLAIM)
        self._restore = client.register_script(_RESTORE)

    def claim(
        self, tenant: str, display_name: str = "", job_id: str = "", avatar_id: str | None = None
    ) -> AvatarRecord:
        """Register an avatar for `tenant` (a new id unless `avatar_id` is given; the same
        tenant claiming its own id again updates it). ALREADY_EXISTS when another tenant owns
        `avatar_id`."""
        avatar_id = avatar_id or new_avatar_id()
        avatar_prefix(avatar_id)  # INVALID_REQUEST for an id that is not one key segment
        if len(display_name) > MAX_DISPLAY_NAME:
            raise TalkingFaceError(
                "INVALID_REQUEST", f"display_name is longer than {MAX_DISPLAY_NAME} characters"
            )
        now = int(time.time() * 1000)
        status = int(
            self._claim(
                keys=[record_key(avatar_id), tenant_avatars_key(tenant)],
                args=[avatar_id, tenant, display_name, job_id, now],
            )
        )
        if status < 0:
            raise TalkingFaceError(
                "ALREADY_EXISTS", f"avatar id {avatar_id!r} belongs to another tenant"
            )
        return self.get(tenant, avatar_id)

    def get(self, tenant: str, avatar_id: str) -> AvatarRecord:
        fields = self.redis.hgetall(record_key(avatar_id)) if avatar_id else {}
        f = {as_str(k): as_str(v) for k, v in fields.items()}
        if not f or f.get("tenant") != tenant:
            raise TalkingFaceError("AVATAR_NOT_FOUND", f"avatar {avatar_id!r} not found")
        return AvatarRecord(
            f["avatar_id"], f["tenant"], f.get("display_name", ""), int(f["created_at"]),
            f.get("job_id", ""),
        )  # fmt: skip

    def delete(self, tenant: str, avatar_id: str) -> None:
        self.get(tenant, avatar_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(record_key(avatar_id))
            pipe.zrem(tenant_avatars_key(tenant), avatar_id)
            pipe.execute()

    def list(
        self, tenant: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[AvatarRecord], str]:
        """The tenant's avatars, newest first, and the next page's token ("" at the end)."""
        if page_size < 0:
            raise TalkingFaceError("INVALID_REQUEST", "page_size must be 0 or more")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        start = _decode_offset(page_token)
        ids = [as_str(i) for i in self.redis.zrevrange(tenant_avatars_key(tenant), start,
                                                        start + size)]  # fmt: skip
        records = []
        for avatar_id in ids[:size]:
            try:
                records.append(self.get(tenant, avatar_id))
            except TalkingFaceError:
                self.redis.zrem(tenant_avatars_key(tenant), avatar_id)  # deleted meanwhile
        more = len(ids) > size
        return records, _encode_offset(start + size) if more else ""

    def rebuild_from_store(self, store: Any) -> list[str]:
        """Re-create the records missing from Redis of the avatars published in `store`
        (an ObjectStore); the ids of the records written, sorted. Existing records are left
        as they are.

        Each avatar's owner is the `tenant` in its versions' manifest metadata (versions
        without one, published before manifests carried it, are skipped); its display name
        and training job are the newest version's, its creation time the oldest version's.
        An avatar whose versions name different tenants is skipped with a warning: which one
        owns it is for an operator to decide.
        """
        avatar_ids = sorted({info.key.split("/")[1] for info in store.list(AVATARS)
                             if info.key.count("/") >= 2})  # fmt: skip
        rebuilt = []
        for avatar_id in avatar_ids:
            owners = []  # (created_at, metadata) of the versions that name a tenant
            for version in store.list_versions(f"{AVATARS}/{avatar_id}"):
                manifest = store.read_manifest(f"{AVATARS}/{avatar_id}", version)
                metadata = manifest.get("metadata") or {}
                if isinstance(metadata, dict) and metadata.get("tenant"):
                    owners.append((manifest["created_at"], metadata))
            if not owners:
                continue
            tenants = {str(metadata["tenant"]) for _, metadata in owners}
            if len(tenants) > 1:
                log.warning("avatar %s: its versions name several tenants (%s); not restored",
                            avatar_id, ", ".join(sorted(tenants)))  # fmt: skip
                continue
            newest = owners[-1][1]  # list_versions is oldest first
            created_ms = int(datetime.fromisoformat(owners[0][0]).timestamp() * 1000)
            display_name = str(newest.get("display_name") or "")[:MAX_DISPLAY_NAME]
            written = self._restore(
                keys=[record_key(avatar_id), tenant_avatars_key(tenants.pop())],
                args=[avatar_id, str(newest["tenant"]), display_name,
                      str(newest.get("job_id") or ""), created_ms],
            )  # fmt: skip
            if int(written):
                rebuilt.append(avatar_id)
        if rebuilt:
            log.warning("restored %d avatar records from the store", len(rebuilt))
        return rebuilt


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"avatars:{offset}".encode()).decode().rstrip("=")


def _decode_offset(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        name, _, offset = text.partition(":")
        if name == "avatars" and offset.isdigit():
            return int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise TalkingFaceError("INVALID_REQUEST", "page_token is not valid")
