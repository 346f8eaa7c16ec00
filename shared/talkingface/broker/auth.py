"""Authentication of the broker's public API: the server interceptor, on the tenants and API
keys of `talkingface.broker.keys` (the key format and its Redis records are described there).

With TALKINGFACE_BROKER_AUTH=keys every talkingface.v1.Broker RPC must carry
`authorization: Bearer <API key>` metadata; the key's tenant is the caller's tenant (the
`x-talkingface-tenant` metadata is then ignored). Health checks, reflection and the Info
service stay open.

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
import hmac
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import redis

from talkingface.broker.keys import KEY_RE, api_key_key, key_info, secret_hash
from talkingface.broker.values import as_str
from talkingface.errors import TalkingFaceError, abort, abort_async
from talkingface.serving.interceptors import Rewrapper

BROKER_SERVICE = "talkingface.v1.Broker"
AUTH_METADATA = "authorization"
MAX_CACHE_ENTRIES = 10_000

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
        match = KEY_RE.fullmatch(token.strip()) if scheme.lower() == "bearer" else None
        if match is None:
            raise TalkingFaceError(
                "UNAUTHENTICATED", "malformed authorization: expected `Bearer tfk_<id>_<secret>`"
            )
        key_id, secret = match.groups()
        record = {as_str(k): as_str(v) for k, v in self._record(key_id, lookup).items()}
        info = key_info(key_id, record)
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
