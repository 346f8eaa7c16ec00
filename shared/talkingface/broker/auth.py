"""Authentication of the broker's public API: tenants, API keys and the server interceptor.

With TALKINGFACE_BROKER_AUTH=keys every talkingface.v1.Broker RPC must carry
`authorization: Bearer <API key>` metadata; the key's tenant is the caller's tenant (the
`x-talkingface-tenant` metadata is then ignored). Health checks, reflection and the Info
service stay open.

- A key reads `tfk_<key id>_<secret>`: a 16-hex-digit id (public: listed, revoked by) and a
  43-character `secrets.token_urlsafe(32)` secret. It is shown once, at creation; Redis holds
  only the sha256 of the secret (enough for 256 random bits: no salt or slow hash needed),
  compared in constant time.
- Redis: `tf:tenants` (set of names), `tf:tenant:<name>` (hash: created_at),
  `tf:apikey:<key id>` (hash: tenant, secret_sha256, scopes, name, created_at, expires_at,
  revoked_at; 0 = never / not revoked), `tf:tenantkeys:<tenant>` (set of key ids).
- Scopes: `render` (SubmitRender, DeleteJob), `avatars` (CreateAvatar, ListAvatars, GetAvatar,
  DeleteAvatar), either of them for Upload and the job RPCs (GetJob, WatchJob, CancelJob,
  ListJobs: an avatar's training job is followed through them too), `admin` for everything.
- Refusals: UNAUTHENTICATED for no key, a malformed, unknown, expired or revoked key;
  PERMISSION_DENIED for a key without the RPC's scope.
- Cost: one HGETALL per RPC, or none while the key's record is in the in-process cache
  (TALKINGFACE_BROKER_AUTH_CACHE_SECONDS, 5 s by default): a revoked key keeps working in a
  broker process for at most that long.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import hmac
import inspect
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import redis

from talkingface.broker.jobs import check_tenant
from talkingface.broker.limits import KEY_LIMITS, parse_key_limits
from talkingface.broker.values import as_str
from talkingface.errors import TalkingFaceError, abort, abort_async
from talkingface.serving.interceptors import Rewrapper

KEY_PREFIX = "tfk_"
SCOPES = ("render", "avatars", "admin")
BROKER_SERVICE = "talkingface.v1.Broker"
AUTH_METADATA = "authorization"
TENANTS_KEY = "tf:tenants"
MAX_CACHE_ENTRIES = 10_000
_KEY_RE = re.compile(r"tfk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})")
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")

# The scopes that allow each Broker RPC (any one of them; `admin` allows every RPC).
JOB_SCOPES = frozenset({"render", "avatars"})
METHOD_SCOPES: dict[str, frozenset[str]] = {
    "Upload": JOB_SCOPES,
    "SubmitRender": frozenset({"render"}),
    "GetJob": JOB_SCOPES,
    "WatchJob": JOB_SCOPES,
    "CancelJob": JOB_SCOPES,
    "DeleteJob": frozenset({"render"}),
    "ListJobs": JOB_SCOPES,
    "CreateAvatar": frozenset({"avatars"}),
    "ListAvatars": frozenset({"avatars"}),
    "GetAvatar": frozenset({"avatars"}),
    "DeleteAvatar": frozenset({"avatars"}),
}


def tenant_key(tenant: str) -> str:
    return f"tf:tenant:{tenant}"


def api_key_key(key_id: str) -> str:
    return f"tf:apikey:{key_id}"


def tenant_keys_key(tenant: str) -> str:
    return f"tf:tenantkeys:{tenant}"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its tenant and its scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    limits: tuple[tuple[str, str], ...] = ()  # the key's own rates (broker.limits.KEY_LIMITS)

    def allows(self, method: str) -> bool:
        if "admin" in self.scopes:
            return True
        return bool(self.scopes & METHOD_SCOPES.get(method, frozenset()))


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
        if not _KEY_ID_RE.fullmatch(key_id):
            return None
        return _key_info(key_id, self.redis.hgetall(api_key_key(key_id)))

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


def _key_info(key_id: str, record: dict[Any, Any]) -> KeyInfo | None:
    if not record:
        return None
    r = {as_str(k): as_str(v) for k, v in record.items()}
    scopes = tuple(s for s in r.get("scopes", "").split(",") if s)
    limits = tuple(sorted((k, v) for k, v in r.items() if k in KEY_LIMITS))
    return KeyInfo(key_id, r.get("tenant", ""), scopes, r.get("name", ""),
                   float(r.get("created_at") or 0), float(r.get("expires_at") or 0),
                   float(r.get("revoked_at") or 0), limits)  # fmt: skip


class Authenticator:
    """Turns a bearer key into a Principal (one HGETALL, cached for `cache_s` seconds)."""

    def __init__(self, client: redis.Redis, cache_s: float = 5.0) -> None:
        self.redis = client
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, dict[Any, Any]]] = {}
        self._lock = threading.Lock()

    def _record(self, key_id: str, lookup: bool = True) -> dict[Any, Any]:
        now = time.monotonic()
        if self.cache_s > 0:
            with self._lock:
                hit = self._cache.get(key_id)
            if hit is not None and now - hit[0] < self.cache_s:
                return hit[1]
        if not lookup:
            raise NeedsLookup(key_id)
        try:
            record = self.redis.hgetall(api_key_key(key_id))
        except redis.RedisError as exc:
            raise TalkingFaceError("UNAVAILABLE", f"cannot check the API key: {exc}") from None
        if self.cache_s > 0:
            with self._lock:
                if len(self._cache) >= MAX_CACHE_ENTRIES:
                    self._cache.clear()
                self._cache[key_id] = (now, record)
        return record

    def authenticate(
        self, metadata: Iterable[tuple[str, Any]] | None, *, lookup: bool = True
    ) -> Principal:
        """The caller's Principal, or TalkingFaceError(UNAUTHENTICATED). With `lookup=False`
        (on an event loop, which must not wait on Redis) a key not in the cache raises
        NeedsLookup instead of reading Redis."""
        values = [as_str(v) for k, v in (metadata or ()) if k == AUTH_METADATA]
        if not values:
            raise TalkingFaceError(
                "UNAUTHENTICATED",
                "no API key: send `authorization: Bearer <key>` metadata (a key from "
                "`talkingface key create`; clients read TALKINGFACE_API_KEY)",
            )
        scheme, _, token = values[0].strip().partition(" ")
        match = _KEY_RE.fullmatch(token.strip()) if scheme.lower() == "bearer" else None
        if match is None:
            raise TalkingFaceError(
                "UNAUTHENTICATED", "malformed authorization: expected `Bearer tfk_<id>_<secret>`"
            )
        key_id, secret = match.groups()
        record = {as_str(k): as_str(v) for k, v in self._record(key_id, lookup).items()}
        info = _key_info(key_id, record)
        stored = record.get("secret_sha256", "")
        if info is None or not hmac.compare_digest(secret_hash(secret), stored):
            raise TalkingFaceError("UNAUTHENTICATED", f"unknown API key {key_id}")
        status = info.status()
        if status != "active":
            raise TalkingFaceError("UNAUTHENTICATED", f"API key {key_id} is {status}")
        return Principal(key_id, info.tenant, frozenset(info.scopes), info.limits)


class NeedsLookup(Exception):
    """The key's record is not cached: authenticate again where Redis may be waited on."""


_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "talkingface_principal", default=None
)


def current_principal() -> Principal | None:
    """The authenticated caller of the Broker RPC this thread is serving (None when auth is
    off, or outside an RPC)."""
    return _PRINCIPAL.get()


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every talkingface.v1.Broker RPC (other services pass untouched) and runs
    the servicer with the caller's Principal in `current_principal()`."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._rewrap = Rewrapper()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service != BROKER_SERVICE:
            return handler
        return self._rewrap(
            method,
            handler,
            lambda behaviour: self._wrap(method, behaviour, handler.response_streaming),
        )

    def _check(self, method: str, context) -> contextvars.Context:
        try:
            principal = _allowed(self.authenticator.authenticate(context.invocation_metadata()),
                                 method)  # fmt: skip
        except TalkingFaceError as error:
            abort(context, error)
        ctx = contextvars.copy_context()
        ctx.run(_PRINCIPAL.set, principal)
        return ctx

    async def _check_async(self, method: str, context) -> Principal:
        metadata = context.invocation_metadata()
        try:
            try:
                principal = self.authenticator.authenticate(metadata, lookup=False)
            except NeedsLookup:  # read Redis off the event loop
                principal = await asyncio.get_running_loop().run_in_executor(
                    None, self.authenticator.authenticate, metadata
                )
            return _allowed(principal, method)
        except TalkingFaceError as error:
            await abort_async(context, error)

    def _wrap(self, method: str, behaviour: Callable, streaming: bool) -> Callable:
        if inspect.iscoroutinefunction(behaviour):  # served on the asyncio server's loop

            async def unary_async(request, context):
                # Each call of the asyncio server is a task of its own: the principal set
                # here is seen by this call only.
                token = _PRINCIPAL.set(await self._check_async(method, context))
                try:
                    return await behaviour(request, context)
                finally:
                    _PRINCIPAL.reset(token)

            return unary_async
        if streaming:

            def stream(request, context):
                ctx = self._check(method, context)
                responses = ctx.run(behaviour, request, context)
                while True:
                    try:
                        yield ctx.run(next, responses)
                    except StopIteration:
                        return

            return stream

        def unary(request, context):
            return self._check(method, context).run(behaviour, request, context)

        return unary


def _allowed(principal: Principal, method: str) -> Principal:
    if not principal.allows(method):
        need = " or ".join(sorted(METHOD_SCOPES.get(method, ()))) or "admin"
        raise TalkingFaceError(
            "PERMISSION_DENIED",
            f"API key {principal.key_id} lacks the scope for {method}: needs {need} "
            f"(it has {', '.join(sorted(principal.scopes))})",
        )
    return principal


def auth_interceptors(settings, client: redis.Redis) -> list[grpc.ServerInterceptor]:
    """The broker's interceptors for TALKINGFACE_BROKER_AUTH (none when `off`)."""
    if settings.broker_auth != "keys":
        return []
    return [AuthInterceptor(Authenticator(client, settings.broker_auth_cache_seconds))]


def server_credentials(settings) -> grpc.ServerCredentials | None:
    """TLS credentials from TALKINGFACE_TLS_CERT_FILE / _KEY_FILE (None when unset)."""
    from pathlib import Path

    from talkingface.config import ConfigError

    if not settings.tls_cert_file:
        return None
    try:
        cert = Path(settings.tls_cert_file).read_bytes()
        key = Path(settings.tls_key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)])
