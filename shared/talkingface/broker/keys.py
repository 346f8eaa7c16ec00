"""Tenants and API keys of the broker's public API, in Redis (the interceptor that checks the
keys on every RPC is `talkingface.broker.auth`).

- A key reads `tfk_<key id>_<secret>`: a 16-hex-digit id (public: listed, revoked by) and a
  43-character `secrets.token_urlsafe(32)` secret. It is shown once, at creation; Redis holds
  only the sha256 of the secret (enough for 256 random bits: no salt or slow hash needed),
  compared in constant time.
- Redis: `tf:tenants` (set of names), `tf:tenant:<name>` (hash: created_at),
  `tf:apikey:<key id>` (hash: tenant, secret_sha256, scopes, name, created_at, expires_at,
  revoked_at; 0 = never / not revoked, and the key's own rates), `tf:tenantkeys:<tenant>`
  (set of key ids).
- Scopes: `render`, `avatars`, `admin` (which RPCs each allows: `talkingface.broker.auth`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from talkingface.broker.jobs import check_tenant
from talkingface.broker.limits import KEY_LIMITS, parse_key_limits
from talkingface.broker.values import as_str
from talkingface.errors import TalkingFaceError

KEY_PREFIX = "tfk_"
SCOPES = ("render", "avatars", "admin")
TENANTS_KEY = "tf:tenants"
KEY_RE = re.compile(r"tfk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})")  # the key: (id, secret)
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")


def tenant_key(tenant: str) -> str:
    return f"tf:tenant:{tenant}"


def api_key_key(key_id: str) -> str:
    return f"tf:apikey:{key_id}"


def tenant_keys_key(tenant: str) -> str:
    return f"tf:tenantkeys:{tenant}"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    """An API key's record, as `key list` shows it (never the secret)."""

    key_id: str
    tenant: str
    scopes: tuple[str, ...]
    name: str
    created_at: float
    expires_at: float  # 0 = never
    revoked_at: float  # 0 = not revoked
    limits: tuple[tuple[str, str], ...] = ()  # its own rates (broker.limits.KEY_LIMITS)

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at:
            return "revoked"
        if self.expires_at and now >= self.expires_at:
            return "expired"
        return "active"

    def as_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "tenant": self.tenant, "scopes": list(self.scopes),
                "name": self.name, "created_at": self.created_at,
                "expires_at": self.expires_at or None, "revoked_at": self.revoked_at or None,
                "status": self.status(), "limits": dict(self.limits)}  # fmt: skip


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """`render,avatars` -> ('avatars', 'render'); INVALID_REQUEST for an unknown or no scope."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = sorted({s.strip() for s in items if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"scopes must be one or more of {', '.join(SCOPES)} (comma-separated); "
            f"got {', '.join(unknown) or 'none'}",
        )
    return tuple(scopes)


class KeyStore:
    """Tenants and API keys in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # --- tenants ---------------------------------------------------------------------------

    def create_tenant(self, tenant: str, *, exist_ok: bool = False) -> bool:
        """Register a tenant; ALREADY_EXISTS unless `exist_ok` (then False when it was)."""
        check_tenant(tenant)
        added = self.redis.sadd(TENANTS_KEY, tenant)
        if not added:
            if exist_ok:
                return False
            raise TalkingFaceError("ALREADY_EXISTS", f"tenant {tenant!r} already exists")
        self.redis.hset(tenant_key(tenant), mapping={"created_at": repr(time.time())})
        return True

    def tenant_exists(self, tenant: str) -> bool:
        return bool(self.redis.sismember(TENANTS_KEY, tenant))

    def list_tenants(self) -> list[dict[str, Any]]:
        names = sorted(as_str(n) for n in self.redis.smembers(TENANTS_KEY))
        out = []
        for name in names:
            record = self.redis.hgetall(tenant_key(name))
            created = float(as_str(record.get(b"created_at", b"0")) or 0)
            keys = self.redis.scard(tenant_keys_key(name))
            out.append({"tenant": name, "created_at": created, "keys": int(keys)})
        return out

    def delete_tenant(self, tenant: str) -> int:
        """Unregister a tenant and delete its keys (they stop working within the cache TTL);
        its jobs, avatars and objects stay. The number of keys deleted; NOT_FOUND when the
        tenant is not registered."""
        check_tenant(tenant)
        if not self.tenant_exists(tenant):
            raise TalkingFaceError("NOT_FOUND", f"no tenant {tenant!r} (see `tenant list`)")
        key_ids = [as_str(k) for k in self.redis.smembers(tenant_keys_key(tenant))]
        pipe = self.redis.pipeline(transaction=True)
        for key_id in key_ids:
            pipe.delete(api_key_key(key_id))
        pipe.delete(tenant_keys_key(tenant), tenant_key(tenant))
        pipe.srem(TENANTS_KEY, tenant)
        pipe.execute()
        return len(key_ids)

    # --- keys ------------------------------------------------------------------------------

    def create_key(
        self,
        tenant: str,
        scopes: str | Iterable[str],
        *,
        expires_in_s: float | None = None,
        name: str = "",
        limits: dict[str, Any] | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key for a registered tenant: (the key, shown only now; its record).
        `limits`: the key's own rates (broker.limits.KEY_LIMITS), else the settings'."""
        check_tenant(tenant)
        scope_list = parse_scopes(scopes)
        own = parse_key_limits(limits or {})
        if not self.tenant_exists(tenant):
            raise TalkingFaceError(
                "NOT_FOUND", f"no tenant {tenant!r}: create it with `talkingface tenant create`"
            )
        if expires_in_s is not None and expires_in_s <= 0:
            raise TalkingFaceError("INVALID_REQUEST", "a key's lifetime must be more than 0")
        if len(name) > 200:
            raise TalkingFaceError("INVALID_REQUEST", "a key's name is at most 200 characters")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        info = KeyInfo(key_id, tenant, scope_list, name, now,
                       now + expires_in_s if expires_in_s else 0.0, 0.0)  # fmt: skip
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(api_key_key(key_id), mapping={
            "tenant": tenant, "secret_sha256": secret_hash(secret), "scopes": ",".join(scope_list),
            "name": name, "created_at": repr(now), "expires_at": repr(info.expires_at),
            "revoked_at": "0", **own,
        })  # fmt: skip
        pipe.sadd(tenant_keys_key(tenant), key_id)
        pipe.execute()
        return f"{KEY_PREFIX}{key_id}_{secret}", dataclasses.replace(
            info, limits=tuple(sorted(own.items()))
        )

    def get_key(self, key_id: str) -> KeyInfo | None:
        if not KEY_ID_RE.fullmatch(key_id):
            return None
        return key_info(key_id, self.redis.hgetall(api_key_key(key_id)))

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        tenants = [tenant] if tenant else [as_str(t) for t in self.redis.smembers(TENANTS_KEY)]
        out = []
        for name in tenants:
            for key_id in sorted(as_str(k) for k in self.redis.smembers(tenant_keys_key(name))):
                info = self.get_key(key_id)
                if info is not None:
                    out.append(info)
        return sorted(out, key=lambda k: (k.tenant, k.created_at))

    def set_key_limits(self, key_id: str, limits: dict[str, Any],
                       clear: Iterable[str] = ()) -> KeyInfo:  # fmt: skip
        """Set (and clear) a key's own rates; the broker applies them within its auth cache
        time. NOT_FOUND for an unknown key, INVALID_REQUEST for a bad limit."""
        key_id = key_id.removeprefix(KEY_PREFIX).split("_")[0]
        own = parse_key_limits(limits)
        cleared = list(clear)
        parse_key_limits(dict.fromkeys(cleared, 1))  # names only
        if self.get_key(key_id) is None:
            raise TalkingFaceError("NOT_FOUND", f"no API key {key_id!r} (see `key list`)")
        with self.redis.pipeline(transaction=True) as pipe:
            if cleared:
                pipe.hdel(api_key_key(key_id), *cleared)
            if own:
                pipe.hset(api_key_key(key_id), mapping=own)
            pipe.execute()
        return self.get_key(key_id)  # type: ignore[return-value]

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Mark a key revoked (kept for `key list`); NOT_FOUND for an unknown id."""
        key_id = key_id.removeprefix(KEY_PREFIX).split("_")[0]  # a whole key works too
        info = self.get_key(key_id)
        if info is None:
            raise TalkingFaceError("NOT_FOUND", f"no API key {key_id!r} (see `key list`)")
        if not info.revoked_at:
            self.redis.hset(api_key_key(key_id), "revoked_at", repr(time.time()))
        return self.get_key(key_id)  # type: ignore[return-value]


def key_info(key_id: str, record: dict[Any, Any]) -> KeyInfo | None:
    """The key's `tf:apikey:<key id>` hash as a KeyInfo; None for an empty (absent) one."""
    if not record:
        return None
    r = {as_str(k): as_str(v) for k, v in record.items()}
    scopes = tuple(s for s in r.get("scopes", "").split(",") if s)
    limits = tuple(sorted((k, v) for k, v in r.items() if k in KEY_LIMITS))
    return KeyInfo(key_id, r.get("tenant", ""), scopes, r.get("name", ""),
                   float(r.get("created_at") or 0), float(r.get("expires_at") or 0),
                   float(r.get("revoked_at") or 0), limits)  # fmt: skip
