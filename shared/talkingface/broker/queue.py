"""Durable work queues on Redis Streams: fair share between tenants, leases, retries with
backoff, a dead-letter stream.

Key layout for a queue named `<name>`:

- `tf:fair:<name>:t:<tenant>` — the tenant's waiting messages, a list in arrival order (JSON:
  `job_id`, `payload`, `prior`, `enqueued`); `tf:fair:<name>:ring` — the tenants that have
  waiting messages, each once, in round-robin order. A claim takes the first message of the
  ring's first tenant and moves that tenant to the end of the ring (or out of it when its list
  is empty), so with one worker and tenant A's 20 jobs queued before B's one, B's job is the
  next but one to start: tenants are served round robin, each in its own FIFO order.
- `tf:backlog:<name>` — one entry (the job id) per waiting message of every tenant, so its
  length is the queue's backlog: what KEDA's `redis` list trigger scales the workers on.
- `tf:wake:<name>` — a short list that enqueues push to, on which idle workers block (BLPOP)
  instead of on the stream, whose lag stays near 0 under fair dispatch.
- `tf:queue:<name>` — the stream of dispatched work messages (`job_id`, `payload` as JSON,
  `prior` = the deliveries this job had before this message was enqueued, `enqueued` = the
  Redis-clock millisecond its first message was added, `tenant`), read through the consumer
  group `workers`, created at id 0. A claim moves one message from the ring into the stream
  and reads it in the same Lua step, so the stream holds the claimed (pending) messages; a
  message added to the stream directly (by a broker from before fair share) is still read
  first, oldest first.
- `tf:delayed:<name>` — a sorted set of messages waiting out a retry backoff, scored by the
  Redis-clock millisecond at which they are due; `promote_due()` moves due ones to the front
  of their tenant's list (workers do it before each claim, and the broker API's janitor every
  second, so retries are not stranded while no worker runs).
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
- `retry`, `dead_letter` and the promotion of delayed messages are Lua scripts (all of this
  queue's scripts are in `talkingface.broker.lua`): the new copy is written and the old message
  acked and deleted in one atomic step, so a crash can neither lose the job nor leave two
  copies. `retry` and `extend` act only while the caller still owns the message (the PEL names
  it), so a worker whose lease was taken over cannot disturb the new owner.
- Acked messages are deleted from the stream, so its length is exactly pending + undelivered.
- Enqueue, dispatch, promotion and `drop_tenant` keep the ring, the lists and the backlog
  consistent in single Lua steps: a tenant is in the ring exactly while its list is non-empty,
  and the backlog has one entry per listed message. The scripts name the per-tenant lists
  themselves (one Redis, not Redis Cluster, like the job store's scripts).
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

from talkingface.broker import lua
from talkingface.broker.values import as_str
from talkingface.config import Settings

log = logging.getLogger(__name__)

GROUP = "workers"
DEFAULT_LEASE_MS = 60_000
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_RETRY_BASE_S = 2.0
DEFAULT_RETRY_MAX_S = 300.0
PROMOTE_BATCH = 100
OLDEST_SCAN = 1000  # entries of the stream and of the delayed set `oldest_age_seconds` reads
WAIT_SLICE_MS = 1000  # longest idle wait between looks at the ring (a lost wake-up costs this)
DEFAULT_TENANT = ""  # the sub-queue of messages enqueued without a tenant
_ALL = 2**31 - 1  # XPENDING's COUNT for "the whole PEL" (Redis allocates nothing for it)


def _id_ms(message_id: str) -> int:
    """The Redis-clock millisecond of a stream id ("1718000000000-0")."""
    return int(message_id.partition("-")[0])


def _redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _job_id(fields: dict[Any, Any] | None) -> str:
    """The `job_id` field of a stream entry (bytes or str keys, as the client decodes)."""
    fields = fields or {}
    return as_str(fields.get(b"job_id", fields.get("job_id", "")))


@dataclass(frozen=True)
class Lease:
    """A worker's hold on a job: its delivery's message in a work stream's consumer group
    (what fenced writes check: `JobStore.update(lease=...)`)."""

    stream: str
    group: str
    message_id: str
    consumer: str


class LeaseLost(Exception):
    """The worker's delivery was taken over (its lease expired): it must stop and change
    nothing more (raised by a fenced `JobStore.update`, and by the worker's heartbeat)."""


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
    tenant: str = DEFAULT_TENANT  # whose sub-queue a retry goes back to

    @property
    def lease(self) -> Lease:
        return Lease(f"tf:queue:{self.queue}", GROUP, self.message_id, self.consumer)

    @property
    def attempt_tag(self) -> str:
        """Names this delivery's own objects (scratch space, result):
        `a<deliveries>-<message id>`. Two deliveries of one job never share it: a takeover
        keeps the message id but counts one more delivery, a retry is a new message."""
        return f"a{self.deliveries}-{self.message_id}"


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
        outage_budget_s: float = 0.0,
        deadline_s: float = 0.0,
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
        self.ring_key = f"tf:fair:{name}:ring"
        self.backlog_key = f"tf:backlog:{name}"
        self.wake_key = f"tf:wake:{name}"
        self.lease_ms = int(lease_ms)
        self.max_deliveries = int(max_deliveries)
        self.retry_base_s = float(retry_base_s)
        self.retry_max_s = float(retry_max_s)
        # Read by the worker (broker.worker): how long outage retries go on uncounted, and
        # the longest a job may take from submission (0 = none).
        self.outage_budget_s = float(outage_budget_s)
        self.deadline_s = float(deadline_s)
        self._claim_expired = client.register_script(lua.CLAIM_EXPIRED)
        self._promote = client.register_script(lua.PROMOTE)
        self._retry = client.register_script(lua.RETRY)
        self._dead_letter = client.register_script(lua.DEAD_LETTER)
        self._extend = client.register_script(lua.EXTEND)
        self._oldest_age = client.register_script(lua.OLDEST_AGE)
        self._dispatch = client.register_script(lua.DISPATCH)
        self._drop_tenant = client.register_script(lua.DROP_TENANT)
        self._enqueue = client.register_script(lua.ENQUEUE)
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
            outage_budget_s=settings.queue_outage_budget_seconds,
            deadline_s=(
                settings.train_deadline_seconds
                if name == "train"
                else settings.render_deadline_seconds
            ),
        )

    def ensure_group(self) -> None:
        """Create the stream and its consumer group (at id 0) unless they exist."""
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def tenant_key(self, tenant: str) -> str:
        """The list of `tenant`'s waiting messages."""
        return f"tf:fair:{self.name}:t:{tenant}"

    def enqueue(self, job_id: str, payload: dict[str, Any], tenant: str = DEFAULT_TENANT) -> None:
        """Add work for a job to the end of `tenant`'s sub-queue. (The broker adds a job's first
        message atomically with its record instead: `JobStore.create(enqueue=...)`.)"""
        if not job_id:
            raise ValueError("job_id must be non-empty")
        self._enqueue(args=[self.name, tenant, job_id, self.message(job_id, payload)])

    def message(self, job_id: str, payload: dict[str, Any], enqueued_ms: int | None = None) -> str:
        """A first work message as the tenants' lists hold it (enqueued: now, by default)."""
        enqueued = _redis_now_ms(self.redis) if enqueued_ms is None else enqueued_ms
        fields = {"job_id": job_id, "payload": json.dumps(payload), "prior": "0",
                  "enqueued": str(enqueued)}  # fmt: skip
        return json.dumps(fields)

    def drop_tenant(self, tenant: str) -> int:
        """Remove every waiting message of `tenant` (its purge); returns how many."""
        return int(self._drop_tenant(keys=[self.ring_key, self.backlog_key],
                                     args=[self.name, tenant]))  # fmt: skip

    def backlog(self) -> int:
        """Messages waiting in the tenants' lists (not yet dispatched to the stream)."""
        return int(self.redis.llen(self.backlog_key))

    def backlog_by_tenant(self) -> dict[str, int]:
        """Waiting messages per tenant that has any, in the ring's order (next served first)."""
        tenants = [as_str(t) for t in self.redis.lrange(self.ring_key, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.llen(self.tenant_key(tenant))
            counts = pipe.execute()
        return {t: int(n) for t, n in zip(tenants, counts, strict=True)}

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

    def retry(self, delivery: Delivery, delay_s: float | None = None, count: bool = True) -> bool:
        """Re-enqueue after `delay_s` (default: `backoff(deliveries)`) and ack this delivery;
        with `count=False` this delivery does not count towards `max_deliveries` (a failure
        that was the fleet's, not the job's: an outage).

        Returns False (and does nothing) when the delivery is no longer this consumer's.
        """
        delay_s = self.backoff(delivery.deliveries) if delay_s is None else max(delay_s, 0.0)
        member = json.dumps(
            {
                "job_id": delivery.job_id,
                "payload": json.dumps(delivery.payload),
                "prior": str(delivery.deliveries if count else delivery.deliveries - 1),
                "from": delivery.message_id,  # keeps members unique
                "enqueued": str(delivery.enqueued_ms or _id_ms(delivery.message_id)),
                "tenant": delivery.tenant,
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
        """Messages not yet finished: waiting in the tenants' lists + in the stream (pending
        or undelivered) + waiting out a backoff."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(self.backlog_key)
            pipe.xlen(self.stream)
            pipe.zcard(self.delayed_key)
            waiting, in_stream, delayed = pipe.execute()
        return int(waiting) + int(in_stream) + int(delayed)

    def oldest_age_seconds(self) -> float:
        """Age of the oldest job not yet finished (undelivered, pending or delayed), from when
        its first work message was added (Redis clock, so any host's clock skew is moot); 0
        when there is none. Reads the first OLDEST_SCAN entries of the stream and of the
        delayed set, and the heads of the first OLDEST_SCAN tenants' lists (a list is in
        arrival order, but for retries put back at its front, which are older still)."""
        age_ms = self._oldest_age(keys=[self.stream, self.delayed_key, self.ring_key],
                                  args=[OLDEST_SCAN, self.name])  # fmt: skip
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
        """How many messages of `job_id` this queue holds, by state: "queued" (waiting in a
        tenant's list, or in the stream not yet delivered), "pending" (claimed and not acked:
        in the group's PEL), "delayed" (waiting out a retry backoff) and "dead" (in the
        dead-letter stream).

        One consistent snapshot (a MULTI of XRANGE, XPENDING, ZRANGE, XRANGE and LRANGE), but
        it reads the whole stream, PEL, delayed set, dead-letter stream and backlog: O(queue
        length), for tests and operators, not hot paths.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(self.stream)
            pipe.xpending_range(self.stream, GROUP, min="-", max="+", count=_ALL)
            pipe.zrange(self.delayed_key, 0, -1)
            pipe.xrange(self.dead_key)
            pipe.lrange(self.backlog_key, 0, -1)
            in_stream, pel, delayed, dead, waiting = pipe.execute(raise_on_error=False)
        for reply in (in_stream, delayed, dead, waiting):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(pel, Exception):
            if not isinstance(pel, redis.ResponseError) or "NOGROUP" not in str(pel):
                raise pel
            pel = []  # no group (or no stream): nothing was ever claimed
        claimed = {as_str(entry["message_id"]) for entry in pel}
        counts = dict.fromkeys(("queued", "pending", "delayed", "dead"), 0)
        counts["queued"] = sum(as_str(m) == job_id for m in waiting)
        for message_id, fields in in_stream:
            if _job_id(fields) == job_id:
                counts["pending" if as_str(message_id) in claimed else "queued"] += 1
        counts["delayed"] = sum(json.loads(m).get("job_id") == job_id for m in delayed)
        counts["dead"] = sum(_job_id(fields) == job_id for _, fields in dead)
        return counts

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The oldest `count` dead-letter entries (each with its `id`), for operators."""
        rows = self.redis.xrange(self.dead_key, count=count)
        return [{"id": as_str(i), **{as_str(k): as_str(v) for k, v in f.items()}} for i, f in rows]

    def _promote_due(self) -> tuple[int, int]:
        moved, wait = self._promote(keys=[self.stream, self.delayed_key],
                                    args=[PROMOTE_BATCH, self.name])  # fmt: skip
        return int(moved), int(wait)

    def _next(self, consumer: str, deadline: float) -> Delivery | None:
        while True:
            _, next_due_ms = self._promote_due()
            taken = self._claim_expired(keys=[self.stream], args=[GROUP, consumer, self.lease_ms])
            if taken:
                message_id, flat, delivered = taken
                fields = {as_str(flat[i]): as_str(flat[i + 1]) for i in range(0, len(flat), 2)}
                delivery = self._delivery(consumer, as_str(message_id), fields, int(delivered))
            else:
                delivery = self._read_new(consumer)
            if delivery is not None and delivery is not False:
                return delivery
            if delivery is None:
                # Nothing to do: wait for an enqueue's wake-up token, in slices that end in
                # time for the next due retry and for leases that may expire meanwhile, both of
                # which only the loop above picks up.
                block = min(int((deadline - time.monotonic()) * 1000), self.lease_ms,
                            WAIT_SLICE_MS)  # fmt: skip
                if next_due_ms >= 0:
                    block = min(block, max(next_due_ms, 1))
                if block <= 0:
                    return None
                self.redis.blpop([self.wake_key], timeout=block / 1000)

    def _read_new(self, consumer: str) -> Delivery | bool | None:
        """The next message for `consumer` by fair dispatch (lua.DISPATCH); None when
        no tenant has work, False after dead-lettering a malformed one."""
        reply = self._dispatch(keys=[self.stream, self.ring_key, self.backlog_key],
                               args=[GROUP, consumer, self.name])  # fmt: skip
        if not reply:
            return None
        message_id, flat = reply
        fields = {as_str(flat[i]): as_str(flat[i + 1]) for i in range(0, len(flat), 2)}
        return self._delivery(consumer, as_str(message_id), fields, 1)

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
        return Delivery(self.name, fields["job_id"], payload, message_id, prior + delivered,
                        consumer, enqueued, fields.get("tenant", DEFAULT_TENANT))  # fmt: skip

    def _with_group(self, action: Callable[[], Any]) -> Any:
        # The group vanishes with its stream (a flushed or restarted Redis without AOF).
        try:
            return action()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        self.ensure_group()
        return action()
