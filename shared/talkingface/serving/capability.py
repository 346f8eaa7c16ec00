"""The closed stage plane: signed per-job capabilities that every stage checks.

The four stages (features, motion, projection, renderer) read and write the object store on
behalf of whoever calls them. With TALKINGFACE_STAGE_SECRET set (the same value on the
broker's workers and on every stage), a stage call must carry, in the gRPC metadata
`x-talkingface-capability`, a token the worker signed for the job it runs:

    v1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, "v1." + claims part))>

The claims name the tenant, the job, the store key prefixes the job may read (its upload,
its scratch space `work/<job_id>/`, its avatar's bundle) and write (its scratch space, its
result folder), the avatar, and an expiry (`exp`, Unix seconds). A stage answers

- UNAUTHENTICATED when the token is missing, malformed, signed with another secret, or
  expired (the call never reaches the store);
- PERMISSION_DENIED when the request names a store key, an avatar or an output prefix the
  capability does not cover, with a message that says which.

What a request names is found generically (`check_request`): every ObjectRef key in it is a
read, every AvatarRef is the avatar (whose bundle `avatars/<id>/` is read), and an output
to the store (`output: OUTPUT_MODE_STORE`) writes under the request's `segment_prefix` or the
stage's own default prefix. One place, used by each servicer through `StageGuard.check`, so
the standalone server (`talkingface serve <stage>`) and Ray Serve enforce the same rules.

Without a secret the plane is open as before (any caller, any key), and each stage logs a
warning when it starts. Health and Info stay open either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from talkingface.errors import TalkingFaceError

log = logging.getLogger(__name__)

METADATA_KEY = "x-talkingface-capability"
VERSION = "v1"
MAX_TOKEN_BYTES = 8192
SECRET_ENV = "TALKINGFACE_STAGE_SECRET"

_OBJECT_REF = "talkingface.v1.ObjectRef"
_AVATAR_REF = "talkingface.v1.AvatarRef"
_OUTPUT_MODE_STORE = 2  # talkingface.v1.OutputMode.OUTPUT_MODE_STORE (checked in tests)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, signed: str) -> bytes:
    return hmac.new(secret.encode(), signed.encode("ascii"), hashlib.sha256).digest()


def _denied(message: str) -> TalkingFaceError:
    return TalkingFaceError("PERMISSION_DENIED", message)


def _unauthenticated(message: str) -> TalkingFaceError:
    return TalkingFaceError("UNAUTHENTICATED", message)


def _prefix(value: str) -> str:
    """A granted prefix, ending in '/' so `work/j1/` never covers `work/j10/...`."""
    value = value.strip()
    if not value or value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"not a store key prefix: {value!r}")
    return value if value.endswith("/") else value + "/"


@dataclass(frozen=True)
class Capability:
    """What one job may do on the stage plane (the token's claims)."""

    tenant: str
    job_id: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    avatar: str = ""
    expires: float = 0.0

    def claims(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "job": self.job_id,
            "reads": list(self.reads),
            "writes": list(self.writes),
            "avatar": self.avatar,
            "exp": int(self.expires),
        }

    # --- checks ------------------------------------------------------------------------

    def _covers(self, prefixes: Iterable[str], key: str) -> bool:
        return any(key.startswith(p) for p in prefixes)

    def check_read(self, key: str, what: str = "store key") -> None:
        _check_key(key[:-1] if key.endswith("/") else key, what)
        if not self._covers(self.reads, key):
            raise _denied(
                f"{what} {key!r} is outside what job {self.job_id} may read "
                f"(allowed prefixes: {', '.join(self.reads) or 'none'})"
            )

    def check_write(self, prefix: str, what: str = "output prefix") -> None:
        key = prefix if prefix.endswith("/") else prefix + "/"
        _check_key(key[:-1], what)
        if not self._covers(self.writes, key):
            raise _denied(
                f"{what} {prefix!r} is outside what job {self.job_id} may write "
                f"(allowed prefixes: {', '.join(self.writes) or 'none'})"
            )

    def check_avatar(self, avatar_id: str) -> None:
        if avatar_id != self.avatar:
            allowed = repr(self.avatar) if self.avatar else "no avatar"
            raise _denied(
                f"avatar {avatar_id!r} is not the avatar of job {self.job_id} ({allowed})"
            )
        self.check_read(f"avatars/{avatar_id}/", "avatar bundle")


def _check_key(key: str, what: str) -> None:
    from talkingface.storage.errors import InvalidKey
    from talkingface.storage.keys import validate_key

    try:
        validate_key(key)
    except InvalidKey as exc:
        raise TalkingFaceError("STORE_KEY_INVALID", f"{what} {key!r}: {exc.reason}") from None


# --- tokens ------------------------------------------------------------------------------


def sign(capability: Capability, secret: str) -> str:
    """The token of `capability`, signed with `secret`."""
    if not secret:
        raise ValueError(f"signing a stage capability needs a secret ({SECRET_ENV})")
    body = _b64(json.dumps(capability.claims(), separators=(",", ":"), sort_keys=True).encode())
    signed = f"{VERSION}.{body}"
    return f"{signed}.{_b64(_mac(secret, signed))}"


def verify(token: str, secret: str, now: float | None = None) -> Capability:
    """The Capability of a token signed with `secret` and not expired; UNAUTHENTICATED
    otherwise (the message says why, never what the signature should have been)."""
    if not token:
        raise _unauthenticated(
            f"this stage requires a capability ({METADATA_KEY} metadata): calls come from "
            "the broker's workers, which sign one per job"
        )
    if len(token) > MAX_TOKEN_BYTES:
        raise _unauthenticated(f"the capability is over {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise _unauthenticated(f"the capability is malformed (expected {VERSION}.<claims>.<mac>)")
    try:
        given = _unb64(parts[2])
    except (ValueError, TypeError):
        raise _unauthenticated("the capability's signature is not base64url") from None
    if not hmac.compare_digest(given, _mac(secret, f"{parts[0]}.{parts[1]}")):
        raise _unauthenticated(
            f"the capability's signature does not verify (another {SECRET_ENV}, or altered)"
        )
    try:
        claims = json.loads(_unb64(parts[1]))
        capability = Capability(
            tenant=str(claims["tenant"]),
            job_id=str(claims["job"]),
            reads=tuple(_prefix(str(p)) for p in claims.get("reads", [])),
            writes=tuple(_prefix(str(p)) for p in claims.get("writes", [])),
            avatar=str(claims.get("avatar", "")),
            expires=float(claims["exp"]),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise _unauthenticated(f"the capability's claims are malformed: {exc}") from None
    now = time.time() if now is None else now
    if capability.expires <= now:
        raise _unauthenticated(
            f"the capability of job {capability.job_id} expired "
            f"{now - capability.expires:.0f} s ago (TALKINGFACE_STAGE_CAPABILITY_SECONDS)"
        )
    return capability


def job_capability(
    secret: str,
    *,
    tenant: str,
    job_id: str,
    reads: Iterable[str],
    writes: Iterable[str],
    avatar: str = "",
    ttl_s: float,
    now: float | None = None,
) -> str:
    """A signed token for one job (the broker's workers call this per stage call)."""
    now = time.time() if now is None else now
    capability = Capability(
        tenant=tenant,
        job_id=job_id,
        reads=tuple(_prefix(p) for p in reads),
        writes=tuple(_prefix(p) for p in writes),
        avatar=avatar,
        expires=now + max(1.0, float(ttl_s)),
    )
    return sign(capability, secret)


def upload_prefix(key: str) -> str:
    """The folder of an uploaded object (`uploads/<tenant>/<upload_id>/`), what a job reads."""
    folder, sep, _ = key.rpartition("/")
    return folder + "/" if sep else key


# --- the stages' side --------------------------------------------------------------------


def check_request(capability: Capability, request: Any, default_output_prefix: str = "") -> None:
    """Every store key, avatar and store output `request` names, against `capability`."""
    outputs: list[str] = []
    store_output = _walk(capability, request, outputs)
    if store_output:
        prefix = next((p for p in outputs if p), "") or default_output_prefix
        if not prefix:
            raise _denied("this request writes to the store but names no prefix")
        capability.check_write(prefix)


def _walk(capability: Capability, message: Any, outputs: list[str]) -> bool:
    """Check one message (and those inside it); True when it asks for store output."""
    name = message.DESCRIPTOR.full_name
    if name == _OBJECT_REF:
        if message.key:
            capability.check_read(message.key)
        return False
    if name == _AVATAR_REF:
        if message.avatar_id or message.version:
            capability.check_avatar(message.avatar_id)
        return False
    store_output = False
    for fd, value in message.ListFields():
        if fd.name == "output" and fd.type == fd.TYPE_ENUM and value == _OUTPUT_MODE_STORE:
            store_output = True
        elif fd.name == "segment_prefix" and value:
            outputs.append(str(value))
        elif fd.type == fd.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                items = [v for v in value.values() if hasattr(v, "DESCRIPTOR")]
            elif hasattr(value, "DESCRIPTOR"):  # one message
                items = [value]
            else:  # a repeated field
                items = list(value)
            for item in items:
                store_output = _walk(capability, item, outputs) or store_output
    return store_output


def _metadata_value(context: Any, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("ascii", "replace")
    return ""


class StageGuard:
    """A stage's gate (one per servicer): `check` each request before it reads or writes."""

    def __init__(self, secret: str, stage: str, default_output_prefix: str = "") -> None:
        self.secret = secret
        self.stage = stage
        self.default_output_prefix = default_output_prefix
        if not secret:
            log.warning(
                "the %s stage is open: %s is not set, so any caller that reaches it may read "
                "and write any store key (docs/security.md)",
                stage,
                SECRET_ENV,
            )

    @classmethod
    def from_settings(
        cls, settings: Any, stage: str, default_output_prefix: str = ""
    ) -> StageGuard:
        return cls(settings.stage_secret, stage, default_output_prefix)

    @property
    def closed(self) -> bool:
        return bool(self.secret)

    def authorize(self, context: Any) -> Capability | None:
        """The call's verified capability; None when the plane is open."""
        if not self.secret:
            return None
        return verify(_metadata_value(context, METADATA_KEY), self.secret)

    def check(self, context: Any, request: Any = None) -> Capability | None:
        """Authorize the call and check what `request` names (raises TalkingFaceError)."""
        capability = self.authorize(context)
        if capability is not None and request is not None:
            check_request(capability, request, self.default_output_prefix)
        return capability

    def check_message(self, capability: Capability | None, message: Any) -> None:
        """Check a message that arrives after the call was authorized (a stream's header)."""
        if capability is not None:
            check_request(capability, message, self.default_output_prefix)
