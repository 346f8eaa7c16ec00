"""Signed webhooks: a job's `callback_url` is POSTed the final job as JSON when the job ends.

- SubmitRender and CreateAvatar take a `callback_url`, checked by `check_callback_url` (https,
  or http where TALKINGFACE_WEBHOOK_ALLOW_HTTP allows it; a host; no credentials or fragment;
  not a literal non-public address nor `localhost`) and kept on the job record.
- Server-side request forgery: a webhook reaches only public internet addresses, and the
  networks of TALKINGFACE_WEBHOOK_ALLOWED_NETWORKS. Each delivery resolves the host, refuses
  (a failed attempt, `blocked: ...`) when any address it resolves to is not allowed (private,
  loopback, link-local such as the cloud metadata endpoint 169.254.169.254, shared, reserved,
  multicast; IPv4 inside IPv6 too), and connects to the very address it checked, with the
  URL's host name for Host and TLS, so a DNS answer that changes between check and connect
  (rebinding) cannot redirect it.
- The write that makes such a job final (broker.jobs, one Lua script) sets its
  `webhook_state` to `pending` and adds its id to `tf:webhooks:due`, a sorted set scored by
  the due time (Redis clock, ms). The worker never waits for a receiver.
- `WebhookDeliverer` threads in the broker API process claim due ids (a claim pushes the due
  time one lease ahead, so two broker processes never POST the same attempt and a delivery
  whose process died is retried after the lease), POST the job (the API's `Job` message as
  JSON, field names as in the proto), and record each attempt on the job
  (`webhook_attempts`, `webhook_last_status`, `webhook_last_attempt_at`,
  `webhook_delivered_at`, `webhook_state`: `delivered`, or `failed` after
  TALKINGFACE_WEBHOOK_MAX_ATTEMPTS). A failed POST (connection error, timeout, any status but
  2xx; redirects are not followed) is retried after TALKINGFACE_WEBHOOK_RETRY_BASE_SECONDS,
  doubled after each failure up to TALKINGFACE_WEBHOOK_RETRY_MAX_SECONDS.
- Signature: `X-Talkingface-Timestamp: <unix seconds>` and `X-Talkingface-Signature:
  v1=<hex HMAC-SHA256 over "<timestamp>.<body>">` keyed by the tenant's webhook secret
  (`tf:webhooksecret:<tenant>`, made on first use or by `talkingface tenant webhook-secret`).
  `verify` is what a receiver does (docs/broker.md#webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import random
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import redis

from talkingface import __version__
from talkingface.broker.jobs import WEBHOOKS_DUE_KEY, JobStore, check_tenant, job_key
from talkingface.broker.values import as_str
from talkingface.config import Settings, env_name
from talkingface.errors import TalkingFaceError

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Talkingface-Timestamp"
SIGNATURE_HEADER = "X-Talkingface-Signature"
SIGNATURE_VERSION = "v1"
MAX_URL_LENGTH = 2048
REPLAY_TOLERANCE_S = 300
POLL_S = 0.2
BATCH = 8  # deliveries claimed (and POSTed concurrently) at a time by one process


def secret_key(tenant: str) -> str:
    return f"tf:webhooksecret:{tenant}"


def tenant_secret(client: redis.Redis, tenant: str, *, rotate: bool = False) -> str:
    """The tenant's webhook secret, made now when it has none (or replaced: `rotate`)."""
    check_tenant(tenant)
    fresh = "whsec_" + secrets.token_urlsafe(32)
    if rotate:
        client.set(secret_key(tenant), fresh)
        return fresh
    client.set(secret_key(tenant), fresh, nx=True)
    return as_str(client.get(secret_key(tenant)))


def check_callback_url(
    url: str, allow_http: bool = False, allowed_networks: tuple[Network, ...] = ()
) -> str:
    """`url` when it is an acceptable webhook URL, else INVALID_REQUEST saying why."""
    schemes = ("https", "http") if allow_http else ("https",)

    def bad(why: str) -> TalkingFaceError:
        return TalkingFaceError("INVALID_REQUEST", f"callback_url {why}")

    if len(url) > MAX_URL_LENGTH:
        raise bad(f"is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise bad("contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise bad(f"is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in schemes:
        if parts.scheme.lower() == "http":
            raise bad(
                "must use https (http is accepted only where "
                f"{env_name('webhook_allow_http')}=true, for local tests)"
            )
        raise bad(f"must be an {' or '.join(schemes)} URL, got {url[:80]!r}")
    if not parts.hostname:
        raise bad("has no host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry credentials (user:password@): the body is signed instead")
    if parts.fragment:
        raise bad("must not have a #fragment")
    host = parts.hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        raise bad(f"names {host!r}, a loopback host: webhooks go to public addresses")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None  # a name: checked after resolving it, at each delivery
    if literal is not None and not address_allowed(literal, allowed_networks):
        raise bad(f"is {literal}, not a public address: {_allow_hint()}")
    return url


def _allow_hint() -> str:
    return (f"webhooks go to public addresses (an operator allows a network with "
            f"{env_name('webhook_allowed_networks')})")  # fmt: skip


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """TALKINGFACE_WEBHOOK_ALLOWED_NETWORKS as networks (the settings check each is valid)."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False)
                 for c in text.split(",") if c.strip())  # fmt: skip


def address_allowed(address: Address, allowed: tuple[Network, ...] = ()) -> bool:
    """True for a public internet address, or one inside `allowed`."""
    if any(address in network for network in allowed):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_allowed(embedded, allowed)
    return address.is_global and not address.is_multicast


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def resolve_allowed(host: str, port: int, allowed: tuple[Network, ...]) -> str:
    """The address to connect to for `host`: every address it resolves to must be allowed
    (a mix of public and private answers is refused); BlockedTarget otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedTarget(f"cannot resolve {host}: {exc}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address_allowed(address, allowed):
            raise BlockedTarget(f"blocked: {host} resolves to {address}, not a public address")
        addresses.append(str(address))
    if not addresses:
        raise BlockedTarget(f"cannot resolve {host}: no address")
    return addresses[0]


class BlockedTarget(Exception):
    """The callback's host is (or resolves to) an address webhooks may not reach."""


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to `address` (already checked) while Host says the URL's host name."""

    def __init__(self, host: str, port: int | None, address: str, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As _PinnedHTTPConnection, with TLS verified against the URL's host name."""

    def __init__(self, host: str, port: int | None, address: str, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Talkingface-Signature value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = REPLAY_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (replays of
    an old delivery are refused). Header names are matched case-insensitively."""
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp = lower.get(TIMESTAMP_HEADER.lower(), "")
    signature = lower.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


# KEYS: due set; ARGV: how many, lease ms. Claims up to `how many` due ids by moving their due
# time one lease ahead; returns them.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
end
return ids
"""

# KEYS: job, due set; ARGV: job id, delivered ('1' | '0'), status text, max attempts, base
# delay ms, max delay ms, jitter (0..1). Records one attempt; reschedules or ends the delivery.
# Returns {attempts, state}.
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {0, 'gone'}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
redis.call('HSET', KEYS[1], 'webhook_last_status', ARGV[3], 'webhook_last_attempt_at', now)
local state
if ARGV[2] == '1' then
  state = 'delivered'
  redis.call('HSET', KEYS[1], 'webhook_delivered_at', now)
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif attempts >= tonumber(ARGV[4]) then
  state = 'failed'
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  state = 'pending'
  local delay = math.min(tonumber(ARGV[5]) * 2 ^ (attempts - 1), tonumber(ARGV[6]))
  delay = delay * (1 + tonumber(ARGV[7]))
  redis.call('ZADD', KEYS[2], now + math.floor(delay), ARGV[1])
end
redis.call('HSET', KEYS[1], 'webhook_state', state)
return {attempts, state}
"""


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    allowed_networks: tuple[Network, ...] = (),
) -> str:
    """POST once to an allowed address, never following a redirect; "HTTP <status>" or what
    went wrong.

    Raises nothing: the returned text is recorded on the job as is."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    https = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    try:
        address = resolve_allowed(host, parts.port or (443 if https else 80), allowed_networks)
    except BlockedTarget as exc:
        return f"{exc}"[:200]
    conn: http.client.HTTPConnection
    if https:
        conn = _PinnedHTTPSConnection(host, parts.port, address, timeout=timeout_s,
                                      context=ssl.create_default_context())  # fmt: skip
    else:
        conn = _PinnedHTTPConnection(host, parts.port, address, timeout=timeout_s)
    try:
        conn.request("POST", path, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read(64 * 1024)  # the receiver's answer is not used
        return f"HTTP {response.status}"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"timed out after {timeout_s:g} s"
    except ssl.SSLError as exc:
        return f"TLS error: {exc.reason or exc}"[:200]
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    finally:
        conn.close()


def delivered(status: str) -> bool:
    return status.startswith("HTTP 2")


class WebhookDeliverer:
    """Drains `tf:webhooks:due`: one thread claiming due deliveries, BATCH POSTing them."""

    def __init__(self, settings: Settings, client: redis.Redis, jobs: JobStore, store: Any) -> None:
        self.settings = settings
        self.redis = client
        self.jobs = jobs
        self.store = store
        self._claim = client.register_script(_CLAIM)
        self._record = client.register_script(_RECORD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        # A claim outlives the longest POST, so only a dead process's delivery is taken over.
        self.lease_ms = int((2 * settings.webhook_timeout_seconds + 10) * 1000)

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(BATCH, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.run_once():
                    self._stop.wait(POLL_S)
            except redis.RedisError as exc:
                log.warning("webhooks: redis unavailable: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("webhook delivery step failed")
                self._stop.wait(1.0)

    def run_once(self) -> int:
        """Claim the due deliveries (at most BATCH) and make one attempt at each."""
        ids = [as_str(i) for i in self._claim(keys=[WEBHOOKS_DUE_KEY], args=[BATCH, self.lease_ms])]
        if not ids:
            return 0
        if self._pool is None:
            for job_id in ids:
                self.deliver(job_id)
        else:
            for future in [self._pool.submit(self.deliver, job_id) for job_id in ids]:
                future.result()
        return len(ids)

    def deliver(self, job_id: str) -> str:
        """One attempt at a job's webhook, recorded on the job; returns its status text."""
        from google.protobuf import json_format

        from talkingface.broker.messages import job_message

        try:
            job = self.jobs.get(job_id)
        except TalkingFaceError:  # expired or deleted meanwhile: nothing to deliver
            self.redis.zrem(WEBHOOKS_DUE_KEY, job_id)
            return "gone"
        if not job.callback_url or not job.terminal:
            self.redis.zrem(WEBHOOKS_DUE_KEY, job_id)
            return "nothing to deliver"
        message = job_message(job, self.store, self.settings.result_url_seconds)
        message.ClearField("webhook")  # the delivery's own bookkeeping is not part of it
        body = json_format.MessageToJson(
            message, preserving_proto_field_name=True, indent=None, sort_keys=True
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"talkingface-webhooks/{__version__}",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(tenant_secret(self.redis, job.tenant), timestamp, body),
            "X-Talkingface-Job-Id": job.job_id,
        }
        status = post(job.callback_url, body, headers, self.settings.webhook_timeout_seconds,
                      parse_networks(self.settings.webhook_allowed_networks))  # fmt: skip
        s = self.settings
        attempts, state = self._record(
            keys=[job_key(job_id), WEBHOOKS_DUE_KEY],
            args=[job_id, "1" if delivered(status) else "0", status, s.webhook_max_attempts,
                  int(s.webhook_retry_base_seconds * 1000),
                  int(s.webhook_retry_max_seconds * 1000), random.uniform(0, 0.1)],
        )  # fmt: skip
        state = as_str(state)
        log.info("webhook attempt", extra={"job_id": job_id, "tenant": job.tenant,
                                           "status": status, "attempts": int(attempts),
                                           "webhook_state": state})  # fmt: skip
        return status
