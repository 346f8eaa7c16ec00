"""Durable work queues on Redis Streams: leases, retries with backoff, a dead-letter stream.

Key layout for a queue named `<name>`:

- `tf:queue:<name>` — the stream of work messages (`job_id`, `payload` as JSON, `prior` = the
  deliveries this job had before this message was enqueued; a retried job's message also has
  `enqueued`, the Redis-clock millisecond its first message was added, which is a first
  message's own id time), read through the consumer group `workers`, created at id 0 so
  messages added before any worker existed are delivered too.
- `tf:delayed:<name>` — a sorted set of messages waiting out a retry backoff, scored by the
  Redis-clock millisecond at which they are due; `promote_due()` moves due ones into the stream
  (workers do it before each claim, and the broker API's janitor every second, so retries
  are not stranded while no worker runs).
- `tf:dead:<name>` — the dead-letter stream: messages given up on, with the reason, the
  delivery count, the original message id and the consumer that gave up.

Guarantees, and what they rest on:

- A claimed message stays in the group's pending list (PEL) until `ack`, `retry` or
  `dead_letter` removes it, so a worker that dies mid-job loses nothing: once its lease (the
  PEL idle time, `lease_ms`) expires, `claim` takes the message over with XAUTOCLAIM. Workers
  renew the lease with `extend` while they work. Ack only after the job's result is stored.
- Delivery counts are Redis's own PEL counters (XREADGROUP and XAUTOCLAIM increment them)
  plus `prior`, which carries the count over a retry's re-enqueue, so `Delivery.deliveries`
  counts every delivery of a job: retries and lease takeovers alike.
- A message delivered more than `max_deliveries` times (a job that kills its workers) is moved
  to the dead-letter stream by `claim` instead of being handed out again.
- `retry`, `dead_letter` and the promotion of delayed messages are Lua scripts: the new copy
  is written and the old message acked and deleted in one atomic step, so a crash can neither
  lose the job nor leave two copies. `retry` and `extend` act only while the caller still owns
  the message (the PEL names it), so a worker whose lease was taken over cannot disturb the
  new owner.
- Acked messages are deleted from the stream, so its length is exactly pending + undelivered.
- Delivery is at least once: a job can run twice (a lease that expired under a slow worker),
  so consumers make "exactly one result" hold by storing results with a check, as
  `talkingface.broker.worker` does against the job record's final states.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from talkingface.config import Settings

log = logging.getLogger(__name__)

GROUP = "workers"
DEFAULT_LEASE_MS = 60_000
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_RETRY_BASE_S = 2.0
DEFAULT_RETRY_MAX_S = 300.0
PROMOTE_BATCH = 100
OLDEST_SCAN = 1000  # entries of the stream and of the delayed set `oldest_age_seconds` reads
_ALL = 2**31 - 1  # XPENDING's COUNT for "the whole PEL" (Redis allocates nothing for it)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_ms(message_id: str) -> int:
    """The Redis-clock millisecond of a stream id ("1718000000000-0")."""
    return int(message_id.partition("-")[0])


def _job_id(fields: dict[Any, Any] | None) -> str:
    """The `job_id` field of a stream entry (bytes or str keys, as the client decodes)."""
    fields = fields or {}
    return _text(fields.get(b"job_id", fields.get("job_id", "")))


@dataclass(frozen=True)
class Delivery:
    """One claimed message: the job it is for, its payload and how often it was delivered."""

    queue: str
    job_id: str
    payload: dict[str, Any]
    message_id: str
    deliveries: int
    consumer: str
    enqueued_ms: int = 0  # when the job's first message was added (Redis clock); 0 = unknown


_LUA_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: stream; ARGV: group, consumer, min idle ms. Takes over the first message whose lease
# expired, scanning the whole PEL; returns {id, fields, times delivered} or nil.
_CLAIM_EXPIRED = """
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', 1)
  cursor = r[1]
  local entry = r[2][1]
  if entry then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    return {entry[1], entry[2], p[1][4]}
  end
until cursor == '0-0'
return false
"""

# KEYS: stream, delayed; ARGV: max messages. Returns {moved, ms until the next is due or -1}.
_PROMOTE = (
    _LUA_NOW
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local m = cjson.decode(member)
  local enqueued = m.enqueued or string.match(m.from or '', '^(%d+)') or ''
  redis.call('XADD', KEYS[1], '*', 'job_id', m.job_id, 'payload', m.payload, 'prior', m.prior,
             'enqueued', enqueued)
  redis.call('ZREM', KEYS[2], member)
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if next_due[2] then wait = math.max(0, tonumber(next_due[2]) - now) end
return {#due, wait}
"""
)

# KEYS: stream, delayed; ARGV: max entries of each to read. Returns the age in ms of the
# oldest job among the stream's first entries (undelivered and pending: acked ones are
# deleted) and the delayed set's, from its first enqueue (`enqueued`, else the id's time).
_OLDEST_AGE = (
    _LUA_NOW
    + """
local now = now_ms()
local oldest = now
local limit = tonumber(ARGV[1])
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', limit)) do
  local ms = tonumber(string.match(entry[1], '^(%d+)'))
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'enqueued' then ms = math.min(ms, tonumber(fields[i + 1]) or ms) end
  end
  if ms < oldest then oldest = ms end
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, limit - 1)) do
  local ok, m = pcall(cjson.decode, member)
  if ok and type(m) == 'table' then
    local ms = tonumber(m.enqueued) or tonumber(string.match(m['from'] or '', '^(%d+)'))
    if ms and ms < oldest then oldest = ms end
  end
end
return now - oldest
"""
)

# KEYS: stream, delayed; ARGV: group, consumer, message id, delay ms, delayed member.
_RETRY = (
    _LUA_NOW
    + """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: stream, dead; ARGV: group, message id, then the dead-letter entry's field/value pairs.
_DEAD_LETTER = (
    _LUA_NOW
    + """
redis.call('XADD', KEYS[2], '*', 'dead_at', now_ms(), unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: stream; ARGV: group, consumer, message id. Resets the idle time if still ours.
_EXTEND = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


class WorkQueue:
    """One named work queue: `enqueue` on the API side, `claim` ... `ack` on the worker side."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        lease_ms: int = DEFAULT_LEASE_MS,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
    ) -> None:
        if not name or ":" in name:
            raise ValueError(f"queue name {name!r} must be non-empty and without ':'")
        if lease_ms < 1 or max_deliveries < 1 or not 0 <= retry_base_s <= retry_max_s:
            raise ValueError("need lease_ms >= 1, max_deliveries >= 1, 0 <= base <= max")
        self.redis = client
        self.name = name
        self.stream = f"tf:queue:{name}"
        self.delayed_key = f"tf:delayed:{name}"
        self.dead_key = f"tf:dead:{name}"
        self.lease_ms = int(lease_ms)
        self.max_deliveries = int(max_deliveries)
        self.retry_base_s = float(retry_base_s)
        self.retry_max_s = float(retry_max_s)
        self._claim_expired = client.register_script(_CLAIM_EXPIRED)
        self._promote = client.register_script(_PROMOTE)
        self._retry = client.register_script(_RETRY)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._extend = client.register_script(_EXTEND)
        self._oldest_age = client.register_script(_OLDEST_AGE)
        self.ensure_group()

    @classmethod
    def from_settings(cls, client: redis.Redis, name: str, settings: Settings) -> WorkQueue:
        return cls(
            client,
            name,
            lease_ms=round(settings.queue_lease_seconds * 1000),
            max_deliveries=settings.queue_max_deliveries,
            retry_base_s=settings.queue_retry_base_seconds,
            retry_max_s=settings.queue_retry_max_seconds,
        )

    def ensure_group(self) -> None:
        """Create the stream and its consumer group (at id 0) unless they exist."""
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def enqueue(self, job_id: str, payload: dict[str, Any]) -> str:
        """Add work for a job; returns the stream message id."""
        fields = {"job_id": job_id, "payload": json.dumps(payload), "prior": "0"}
        return _text(self.redis.xadd(self.stream, fields))

    def claim(
        self,
        consumer: str,
        block_ms: int = 0,
        on_dead_letter: Callable[[Delivery], None] | None = None,
    ) -> Delivery | None:
        """The next delivery for `consumer`, or None when nothing came within `block_ms`.

        Due retries are promoted first, then an expired lease is taken over, and only then
        are new messages read (waiting up to `block_ms`; 0 = do not wait). A message past
        `max_deliveries` is dead-lettered instead of returned; `on_dead_letter(delivery)` runs
        just before, so the caller can fail the job's record (if it raises, the message stays
        pending and the next claim tries again).
        """
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        while True:
            delivery = self._with_group(lambda: self._next(consumer, deadline))
            if delivery is None or delivery.deliveries <= self.max_deliveries:
                return delivery
            log.warning(
                "dead-lettering a message delivered too often",
                extra={
                    "queue": self.name,
                    "job_id": delivery.job_id,
                    "deliveries": delivery.deliveries,
                },
            )
            if on_dead_letter is not None:
                on_dead_letter(delivery)
            self.dead_letter(
                delivery,
                f"delivered {delivery.deliveries} times (limit {self.max_deliveries}) "
                "without being finished",
            )

    def ack(self, delivery: Delivery) -> bool:
        """Finish a delivery (XACK + XDEL); call it only after the job's result is stored."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, delivery.message_id)
            pipe.xdel(self.stream, delivery.message_id)
            acked, _ = pipe.execute()
        return bool(acked)

    def extend(self, delivery: Delivery) -> bool:
        """Renew the lease; False when the delivery is no longer this consumer's."""
        args = [GROUP, delivery.consumer, delivery.message_id]
        return bool(self._extend(keys=[self.stream], args=args))

    def backoff(self, deliveries: int) -> float:
        """Seconds to wait before retrying after the `deliveries`-th delivery failed."""
        return min(self.retry_base_s * 2 ** min(max(deliveries - 1, 0), 60), self.retry_max_s)

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> bool:
        """Re-enqueue after `delay_s` (default: `backoff(deliveries)`) and ack this delivery.

        Returns False (and does nothing) when the delivery is no longer this consumer's.
        """
        delay_s = self.backoff(delivery.deliveries) if delay_s is None else max(delay_s, 0.0)
        member = json.dumps(
            {
                "job_id": delivery.job_id,
                "payload": json.dumps(delivery.payload),
                "prior": str(delivery.deliveries),
                "from": delivery.message_id,  # keeps members unique
                "enqueued": str(delivery.enqueued_ms or _id_ms(delivery.message_id)),
            }
        )
        args = [GROUP, delivery.consumer, delivery.message_id, round(delay_s * 1000), member]
        return bool(self._retry(keys=[self.stream, self.delayed_key], args=args))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the dead-letter stream with `reason` and ack it."""
        entry = {
            "job_id": delivery.job_id,
            "payload": json.dumps(delivery.payload),
            "reason": reason,
            "deliveries": str(delivery.deliveries),
            "message_id": delivery.message_id,
            "consumer": delivery.consumer,
        }
        flat = [item for pair in entry.items() for item in pair]
        self._dead_letter(
            keys=[self.stream, self.dead_key], args=[GROUP, delivery.message_id, *flat]
        )

    def promote_due(self) -> int:
        """Move retries whose backoff is over into the stream; returns how many moved."""
        return self._promote_due()[0]

    def depth(self) -> int:
        """Messages not yet finished: pending (claimed) + undelivered + waiting out a backoff."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xlen(self.stream)
            pipe.zcard(self.delayed_key)
            in_stream, delayed = pipe.execute()
        return int(in_stream) + int(delayed)

    def oldest_age_seconds(self) -> float:
        """Age of the oldest job not yet finished (undelivered, pending or delayed), from when
        its first work message was added (Redis clock, so any host's clock skew is moot); 0
        when there is none. Reads the first OLDEST_SCAN entries of the stream and of the
        delayed set: past them, only a promoted retry could be older than the stream's head."""
        age_ms = self._oldest_age(keys=[self.stream, self.delayed_key], args=[OLDEST_SCAN])
        return max(0, int(age_ms)) / 1000.0

    def pending(self) -> int:
        """Messages claimed by a worker and not yet acked."""
        try:
            return int(self.redis.xpending(self.stream, GROUP)["pending"])
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise

    def messages_of(self, job_id: str) -> dict[str, int]:
        """How many messages of `job_id` this queue holds, by state: "queued" (in the stream,
        not yet delivered), "pending" (claimed and not acked: in the group's PEL), "delayed"
        (waiting out a retry backoff) and "dead" (in the dead-letter stream).

        One consistent snapshot (a MULTI of XRANGE, XPENDING, ZRANGE and XRANGE), but it
        reads the whole stream, PEL, delayed set and dead-letter stream: O(queue length), for
        tests and operators, not hot paths.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(self.stream)
            pipe.xpending_range(self.stream, GROUP, min="-", max="+", count=_ALL)
            pipe.zrange(self.delayed_key, 0, -1)
            pipe.xrange(self.dead_key)
            in_stream, pel, delayed, dead = pipe.execute(raise_on_error=False)
        for reply in (in_stream, delayed, dead):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(pel, Exception):
            if not isinstance(pel, redis.ResponseError) or "NOGROUP" not in str(pel):
                raise pel
            pel = []  # no group (or no stream): nothing was ever claimed
        claimed = {_text(entry["message_id"]) for entry in pel}
        counts = dict.fromkeys(("queued", "pending", "delayed", "dead"), 0)
        for message_id, fields in in_stream:
            if _job_id(fields) == job_id:
                counts["pending" if _text(message_id) in claimed else "queued"] += 1
        counts["delayed"] = sum(json.loads(m).get("job_id") == job_id for m in delayed)
        counts["dead"] = sum(_job_id(fields) == job_id for _, fields in dead)
        return counts

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The oldest `count` dead-letter entries (each with its `id`), for operators."""
        rows = self.redis.xrange(self.dead_key, count=count)
        return [{"id": _text(i), **{_text(k): _text(v) for k, v in f.items()}} for i, f in rows]

    def _promote_due(self) -> tuple[int, int]:
        moved, wait = self._promote(keys=[self.stream, self.delayed_key], args=[PROMOTE_BATCH])
        return int(moved), int(wait)

    def _next(self, consumer: str, deadline: float) -> Delivery | None:
        while True:
            _, next_due_ms = self._promote_due()
            taken = self._claim_expired(keys=[self.stream], args=[GROUP, consumer, self.lease_ms])
            if taken:
                message_id, flat, delivered = taken
                fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
                delivery = self._delivery(consumer, _text(message_id), fields, int(delivered))
            else:
                # Wait in slices that end in time for the next due retry and for leases that
                # may expire meanwhile, both of which only the loop above picks up.
                block = min(int((deadline - time.monotonic()) * 1000), self.lease_ms)
                if next_due_ms >= 0:
                    block = min(block, max(next_due_ms, 1))
                delivery = self._read_new(consumer, block)
            if delivery is not False and (delivery is not None or time.monotonic() >= deadline):
                return delivery  # a Delivery, or None when nothing came in time

    def _read_new(self, consumer: str, block_ms: int) -> Delivery | bool | None:
        reply = self.redis.xreadgroup(
            GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms if block_ms > 0 else None
        )
        if not reply:
            return None
        streams = list(reply.values()) if isinstance(reply, dict) else [r[1] for r in reply]
        entries = streams[0]
        if entries and isinstance(entries[0], list) and not isinstance(entries[0][0], bytes | str):
            entries = entries[0]  # RESP3 wraps the entries once more
        message_id, raw = entries[0]
        fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
        return self._delivery(consumer, _text(message_id), fields, 1)

    def _delivery(
        self, consumer: str, message_id: str, fields: dict[str, str], delivered: int
    ) -> Delivery | bool:
        """A Delivery, or False after dead-lettering a message that cannot be parsed."""
        try:
            payload = json.loads(fields["payload"])
            if not isinstance(payload, dict) or not fields["job_id"]:
                raise ValueError("payload is not an object or job_id is empty")
            prior = int(fields.get("prior") or 0)
            enqueued = int(fields.get("enqueued") or _id_ms(message_id))
        except (KeyError, ValueError) as exc:
            bad = Delivery(self.name, fields.get("job_id", ""), {}, message_id, delivered, consumer)
            log.error("dead-lettering a malformed message", extra={"queue": self.name})
            self.dead_letter(bad, f"malformed message: {exc!r}")
            return False
        return Delivery(
            self.name, fields["job_id"], payload, message_id, prior + delivered, consumer, enqueued
        )

    def _with_group(self, action: Callable[[], Any]) -> Any:
        # The group vanishes with its stream (a flushed or restarted Redis without AOF).
        try:
            return action()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        self.ensure_group()
        return action()
