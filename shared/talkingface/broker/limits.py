"""Per-tenant quotas and rate limits of the broker's public API.

Every limit has a default in the settings (TALKINGFACE_QUOTA_*, TALKINGFACE_RATE_*,
TALKINGFACE_UPLOAD_MAX_MB) and may be overridden for one tenant in the Redis hash
`tf:limits:<tenant>` (field = the limit's name below, value = the tenant's value), e.g.
`redis-cli HSET tf:limits:acme active_jobs 500` or `Limits.set_override`. An override that
does not parse is ignored (with a warning) and the default applies.

- `active_jobs`: jobs of the tenant that are QUEUED or RUNNING. Counted by the job-creation
  script itself (`JobStore.create(active_limit=...)`): the tenant's set `tf:active:<tenant>`
  is pruned of ended and expired jobs and compared with the limit in the same atomic Redis
  step that creates the job, so concurrent submissions can never exceed it (exact, not just
  race-tolerant). Refused with QUOTA_EXCEEDED.
- `uploads_per_day`: Upload calls per UTC day, an INCR on `tf:uploads:<tenant>:<YYYYMMDD>`
  (refunded when the upload is refused or fails, so only stored uploads count). Inline audio
  of SubmitRender is not counted (it is bounded by the submit rate and `active_jobs`).
  Refused with QUOTA_EXCEEDED.
- `upload_max_mb`: the largest single upload (default TALKINGFACE_UPLOAD_MAX_MB);
  PAYLOAD_TOO_LARGE.
- `train_presets`: the training presets the tenant may use in CreateAvatar (comma-separated);
  PERMISSION_DENIED for another.
- `submit_per_second` / `submit_burst` (SubmitRender and CreateAvatar) and
  `upload_per_second` / `upload_burst` (Upload): token buckets in `tf:bucket:<tenant>:<name>`,
  refilled by the time elapsed on the Redis clock and taken from in one Lua script (atomic for
  every broker replica). An empty bucket answers RATE_LIMITED, whose message and trailing
  metadata `retry-after-ms` say when a token will be there. A rate of 0 = no limit.
- Per API key, within the tenant's buckets: `tf:keybucket:<key_id>:<name>`, with the rates
  of TALKINGFACE_RATE_KEY_* (0 = none) or the key's own (`talkingface key limits`, stored in
  the key's record: KEY_LIMITS). A call takes a token from the tenant's bucket and from its
  key's in one step, or from neither, so a refused call costs no token anywhere.

Audio seconds per job are not limited at submission: knowing them needs decoding the upload
(untrusted media, done sandboxed in the features stage, which refuses more than
TALKINGFACE_AUDIO_MAX_SECONDS with AUDIO_TOO_LONG). SubmitRender does refuse at once an audio
upload larger than the features stage accepts (TALKINGFACE_AUDIO_MAX_UPLOAD_MB).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis

from talkingface.broker.values import as_str
from talkingface.config import Settings, env_name
from talkingface.errors import RETRY_AFTER_METADATA_KEY, TalkingFaceError

log = logging.getLogger(__name__)

PRESETS = ("tiny", "cpu", "full")
SUBMIT, UPLOAD = "submit", "upload"
UPLOAD_COUNT_TTL_S = 2 * 24 * 3600


def _presets(raw: str) -> str:
    names = [p.strip() for p in str(raw).split(",") if p.strip()]
    unknown = [p for p in names if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown presets {', '.join(unknown)} (one of {', '.join(PRESETS)})")
    return ",".join(names)


def _count(raw: Any) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive(raw: Any) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _rate(raw: Any) -> float:
    value = float(raw)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("must be a number, 0 or more")
    return value


# Limit name (the override's field) -> (the setting holding its default, parser).
LIMITS: dict[str, tuple[str, Any]] = {
    "active_jobs": ("quota_active_jobs", _count),
    "uploads_per_day": ("quota_uploads_per_day", _count),
    "upload_max_mb": ("upload_max_mb", _positive),
    "train_presets": ("quota_train_presets", _presets),
    "submit_per_second": ("rate_submit_per_second", _rate),
    "submit_burst": ("rate_submit_burst", _positive),
    "upload_per_second": ("rate_upload_per_second", _rate),
    "upload_burst": ("rate_upload_burst", _positive),
}


def overrides_key(tenant: str) -> str:
    return f"tf:limits:{tenant}"


def bucket_key(tenant: str, bucket: str) -> str:
    return f"tf:bucket:{tenant}:{bucket}"


def key_bucket_key(key_id: str, bucket: str) -> str:
    return f"tf:keybucket:{key_id}:{bucket}"


# A key's own rates (fields of its record, `talkingface key limits`) -> the setting of the
# default every key without its own has.
KEY_LIMITS: dict[str, tuple[str, Any]] = {
    "submit_per_second": ("rate_key_submit_per_second", _rate),
    "submit_burst": ("rate_key_submit_burst", _positive),
    "upload_per_second": ("rate_key_upload_per_second", _rate),
    "upload_burst": ("rate_key_upload_burst", _positive),
}


def parse_key_limits(values: dict[str, Any]) -> dict[str, str]:
    """A key's own rates as its record stores them; INVALID_REQUEST for a bad name or value."""
    out = {}
    for name, value in values.items():
        if name not in KEY_LIMITS:
            known = ", ".join(KEY_LIMITS)
            raise TalkingFaceError("INVALID_REQUEST", f"unknown key limit {name!r}: one of {known}")
        try:
            out[name] = str(KEY_LIMITS[name][1](value))
        except (TypeError, ValueError) as exc:
            raise TalkingFaceError("INVALID_REQUEST", f"key limit {name}: {exc}") from None
    return out


def uploads_key(tenant: str, day: str) -> str:
    return f"tf:uploads:{tenant}:{day}"


def how_to_raise(tenant: str, name: str) -> str:
    """The sentence every refusal ends with: where the limit comes from and how to raise it."""
    return (
        f"an operator raises it for every tenant with {env_name(LIMITS[name][0])} or for this "
        f"one with `redis-cli HSET {overrides_key(tenant)} {name} <value>`"
    )


# KEYS: buckets; ARGV: rate (tokens/s) and burst of each. Refills every bucket by the time
# elapsed; takes one token from each when every one has a token, else none. Returns, per
# bucket, 0 (it had a token) or the milliseconds until it will have one.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local levels, waits, blocked = {}, {}, false
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(v[1])
  local ts = tonumber(v[2])
  if not tokens or not ts then
    tokens = burst
    ts = now
  end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  levels[i] = tokens
  waits[i] = 0
  if tokens < 1 then
    waits[i] = math.max(1, math.ceil((1 - tokens) * 1000 / rate))
    blocked = true
  end
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tokens = levels[i]
  if not blocked then tokens = tokens - 1 end
  redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.3f', now))
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
return waits
"""

# KEYS: the day's counter; ARGV: limit, ttl. Returns {1, count} when counted, {0, count}
# (nothing counted) when the limit is reached.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {0, n - 1}
end
return {1, n}
"""


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits: the defaults with its overrides applied."""

    tenant: str
    values: dict[str, Any]
    overridden: frozenset[str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def presets(self) -> tuple[str, ...]:
        return tuple(p for p in self.values["train_presets"].split(",") if p)


class Limits:
    """The quotas and rate limits of every tenant, on the broker's Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._take = client.register_script(_TAKE)
        self._count = client.register_script(_COUNT)

    # --- configuration ---------------------------------------------------------------------

    def for_tenant(self, tenant: str) -> TenantLimits:
        raw = {as_str(k): as_str(v) for k, v in self.redis.hgetall(overrides_key(tenant)).items()}
        values: dict[str, Any] = {}
        overridden = set()
        for name, (setting, parse) in LIMITS.items():
            values[name] = parse(getattr(self.settings, setting))
            if name in raw:
                try:
                    values[name] = parse(raw[name])
                    overridden.add(name)
                except ValueError as exc:
                    log.warning("ignoring the %s override of tenant %s: %s", name, tenant, exc)
        return TenantLimits(tenant, values, frozenset(overridden))

    def set_override(self, tenant: str, name: str, value: Any) -> None:
        """Override one limit for one tenant (ValueError for an unknown name or bad value)."""
        if name not in LIMITS:
            raise ValueError(f"unknown limit {name!r}: one of {', '.join(LIMITS)}")
        self.redis.hset(overrides_key(tenant), name, str(LIMITS[name][1](value)))

    def clear_override(self, tenant: str, name: str | None = None) -> None:
        """Back to the defaults: one limit, or every limit of the tenant."""
        if name is None:
            self.redis.delete(overrides_key(tenant))
        else:
            self.redis.hdel(overrides_key(tenant), name)

    # --- checks ----------------------------------------------------------------------------

    def take(self, limits: TenantLimits, bucket: str, principal: Any = None) -> None:
        """Take one token of the tenant's `bucket` (SUBMIT or UPLOAD) and, for a call made with
        an API key (`principal`: broker.auth.Principal), of the key's; RATE_LIMITED when either
        is empty (then neither is taken from)."""
        buckets = []  # (Redis key, rate, burst, who, the limit's name, how to raise it)
        rate = limits[f"{bucket}_per_second"]
        if rate > 0:
            buckets.append((bucket_key(limits.tenant, bucket), rate, limits[f"{bucket}_burst"],
                            f"tenant {limits.tenant!r}",
                            how_to_raise(limits.tenant, f"{bucket}_per_second")))  # fmt: skip
        if principal is not None:
            own = dict(getattr(principal, "limits", ()) or ())
            values = {}
            for name in (f"{bucket}_per_second", f"{bucket}_burst"):
                setting, parse = KEY_LIMITS[name]
                values[name] = getattr(self.settings, setting)
                with contextlib.suppress(ValueError):  # a bad record value: the default
                    values[name] = parse(own[name]) if name in own else values[name]
            if values[f"{bucket}_per_second"] > 0:
                setting = env_name(KEY_LIMITS[f"{bucket}_per_second"][0])
                hint = (f"an operator raises it for every key with {setting} or for this one "
                        f"with `talkingface key limits {principal.key_id} "
                        f"--{bucket}-per-second R`")  # fmt: skip
                buckets.append((key_bucket_key(principal.key_id, bucket),
                                values[f"{bucket}_per_second"], values[f"{bucket}_burst"],
                                f"API key {principal.key_id}", hint))  # fmt: skip
        if not buckets:
            return
        args = [value for b in buckets for value in (b[1], b[2])]
        waits = [int(w) for w in self._take(keys=[b[0] for b in buckets], args=args)]
        if max(waits) <= 0:
            return
        wait_ms, (_, rate, burst, who, hint) = max(zip(waits, buckets, strict=True),
                                                   key=lambda pair: pair[0])  # fmt: skip
        raise TalkingFaceError(
            "RATE_LIMITED",
            f"{who} is over its {bucket} rate limit ({bucket}_per_second = {rate:g}, "
            f"{bucket}_burst = {burst}): retry after {wait_ms} ms; {hint}",
            **{RETRY_AFTER_METADATA_KEY: str(wait_ms)},
        )

    def count_upload(self, limits: TenantLimits) -> str | None:
        """Count one upload against `uploads_per_day`; the counter's key (give it to `refund`
        when the upload is not stored after all), or None when there is no limit."""
        limit = limits["uploads_per_day"]
        if limit <= 0:
            return None
        key = uploads_key(limits.tenant, time.strftime("%Y%m%d", time.gmtime()))
        counted, count = self._count(keys=[key], args=[limit, UPLOAD_COUNT_TTL_S])
        if not int(counted):
            raise TalkingFaceError(
                "QUOTA_EXCEEDED",
                f"tenant {limits.tenant!r} made {int(count)} uploads today (UTC): the "
                f"uploads_per_day limit is {limit}; retry tomorrow, or "
                f"{how_to_raise(limits.tenant, 'uploads_per_day')}",
            )
        return key

    def refund(self, key: str | None) -> None:
        if key is not None:
            try:
                self.redis.decr(key)
            except redis.RedisError:
                log.warning("could not refund the upload count %s", key)

    def upload_bytes(self, limits: TenantLimits) -> int:
        return limits["upload_max_mb"] * 1024 * 1024

    def check_preset(self, limits: TenantLimits, preset: str) -> None:
        allowed = limits.presets()
        if preset not in allowed:
            raise TalkingFaceError(
                "PERMISSION_DENIED",
                f"the training preset {preset!r} is not allowed for tenant {limits.tenant!r} "
                f"(train_presets = {','.join(allowed) or '(none)'}); "
                f"{how_to_raise(limits.tenant, 'train_presets')}",
            )

    def active_hint(self, limits: TenantLimits) -> str:
        """The end of an active_jobs refusal (JobStore.create builds the start)."""
        return (
            f"wait for one to finish or cancel one, or {how_to_raise(limits.tenant, 'active_jobs')}"
        )
