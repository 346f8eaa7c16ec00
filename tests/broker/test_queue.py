"""Work queues on Redis Streams: claim/ack, leases and takeover, retries, dead letters."""

from __future__ import annotations

import time

import pytest
import redis

from talkingface.broker.queue import GROUP, WorkQueue
from talkingface.config import ConfigError, Settings
from tests.broker.conftest import LEASE_MS, assert_drained

LEASE_S = LEASE_MS / 1000
LONG_LEASE_MS = 60_000  # for tests where a takeover would be a scheduling accident


def test_enqueue_claim_ack(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    queue.enqueue("job-1", {"audio": "u1", "n": 2})
    assert queue.depth() == 1 and queue.pending() == 0 and queue.backlog() == 1
    delivery = queue.claim("w1", block_ms=100)
    assert delivery is not None
    assert (delivery.job_id, delivery.payload) == ("job-1", {"audio": "u1", "n": 2})
    assert (delivery.deliveries, delivery.consumer) == (1, "w1")
    assert queue.depth() == 1 and queue.pending() == 1 and queue.backlog() == 0
    assert queue.messages_of("job-1") == {"queued": 0, "pending": 1, "delayed": 0, "dead": 0}
    assert queue.claim("w2", block_ms=0) is None  # leased to w1
    assert queue.ack(delivery)
    assert_drained(queue)


def test_claim_returns_none_when_nothing_comes(make_queue):
    queue = make_queue()
    assert queue.claim("w1", block_ms=50) is None
    assert queue.claim("w1", block_ms=0) is None


def test_messages_are_claimed_in_order_by_competing_consumers(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    for i in range(3):
        queue.enqueue(f"job-{i}", {})
    claimed = [queue.claim(f"w{i}", block_ms=100) for i in range(3)]
    assert [d.job_id for d in claimed] == ["job-0", "job-1", "job-2"]
    assert queue.pending() == 3 and queue.depth() == 3
    for delivery in claimed:
        queue.ack(delivery)
    assert_drained(queue)


def test_an_expired_lease_is_taken_over_with_the_delivery_counted(make_queue):
    queue = make_queue()
    queue.enqueue("job-1", {"x": 1})
    first = queue.claim("w1", block_ms=100)
    time.sleep(LEASE_S + 0.05)
    second = queue.claim("w2", block_ms=0)
    assert second is not None
    assert (second.message_id, second.deliveries, second.consumer) == (first.message_id, 2, "w2")
    assert not queue.extend(first)  # w1 has lost it and cannot steal it back
    assert queue.extend(second)
    assert queue.ack(second)
    assert not queue.ack(first)
    assert_drained(queue)


def test_extend_keeps_the_lease(make_queue):
    queue = make_queue(lease_ms=1000)  # a stall under 750 ms cannot break the test
    queue.enqueue("job-1", {})
    delivery = queue.claim("w1", block_ms=100)
    for _ in range(6):  # well past one lease in total
        time.sleep(0.25)
        assert queue.extend(delivery)
        assert queue.claim("w2", block_ms=0) is None
    queue.ack(delivery)
    assert_drained(queue)


def test_retry_waits_out_the_backoff_and_counts_deliveries(make_queue):
    queue = make_queue(retry_base_s=0.02, retry_max_s=0.2)
    assert [queue.backoff(n) for n in range(1, 7)] == [0.02, 0.04, 0.08, 0.16, 0.2, 0.2]
    queue.enqueue("job-1", {"x": 1})
    first = queue.claim("w1", block_ms=100)
    assert queue.retry(first, delay_s=1.0)
    assert queue.pending() == 0 and queue.depth() == 1  # waiting in the delayed set
    assert queue.claim("w2", block_ms=0) is None
    again = queue.claim("w2", block_ms=10_000)  # wakes when the retry is due
    assert again is not None
    assert (again.job_id, again.payload, again.deliveries) == ("job-1", {"x": 1}, 2)
    assert again.message_id != first.message_id
    queue.ack(again)
    assert_drained(queue)


def test_retry_by_a_worker_that_lost_its_lease_does_nothing(make_queue):
    queue = make_queue()
    queue.enqueue("job-1", {})
    stale = queue.claim("w1", block_ms=100)
    time.sleep(LEASE_S + 0.05)
    owner = queue.claim("w2", block_ms=0)
    assert not queue.retry(stale, delay_s=0)
    assert queue.pending() == 1 and queue.depth() == 1
    queue.ack(owner)
    assert_drained(queue)


def test_dead_letter_records_reason_and_deliveries(make_queue):
    queue = make_queue()
    queue.enqueue("job-1", {"x": 1})
    delivery = queue.claim("w1", block_ms=100)
    queue.dead_letter(delivery, "RuntimeError: boom")
    (dead,) = queue.dead_letters()
    assert dead["job_id"] == "job-1" and dead["reason"] == "RuntimeError: boom"
    assert dead["deliveries"] == "1" and dead["message_id"] == delivery.message_id
    assert dead["payload"] == '{"x": 1}' and dead["consumer"] == "w1"
    assert_drained(queue)


def test_claim_dead_letters_a_message_past_the_delivery_limit(make_queue):
    queue = make_queue(max_deliveries=2)
    queue.enqueue("poison", {})
    assert queue.claim("w1", block_ms=100).deliveries == 1  # each worker "dies" with it
    time.sleep(LEASE_S + 0.05)
    assert queue.claim("w2", block_ms=0).deliveries == 2
    time.sleep(LEASE_S + 0.05)
    given_up = []
    assert queue.claim("w3", block_ms=0, on_dead_letter=given_up.append) is None
    assert [(d.job_id, d.deliveries) for d in given_up] == [("poison", 3)]
    (dead,) = queue.dead_letters()
    assert dead["job_id"] == "poison" and dead["deliveries"] == "3"
    assert "limit 2" in dead["reason"]
    assert_drained(queue)


def test_a_malformed_message_is_dead_lettered(make_queue, redis_client: redis.Redis):
    queue = make_queue()
    redis_client.xadd(queue.stream, {"job_id": "job-1", "payload": "{not json"})
    queue.enqueue("job-2", {})
    delivery = queue.claim("w1", block_ms=100)
    assert delivery.job_id == "job-2"
    queue.ack(delivery)
    (dead,) = queue.dead_letters()
    assert dead["job_id"] == "job-1" and "malformed" in dead["reason"]
    assert_drained(queue)


def test_depth_counts_pending_undelivered_and_delayed(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    for i in range(3):
        queue.enqueue(f"job-{i}", {})
    a = queue.claim("w1", block_ms=100)
    b = queue.claim("w1", block_ms=100)
    assert (queue.depth(), queue.pending()) == (3, 2)
    queue.retry(a, delay_s=60)
    assert (queue.depth(), queue.pending()) == (3, 1)
    queue.ack(b)
    assert (queue.depth(), queue.pending()) == (2, 0)


ZERO = {"queued": 0, "pending": 0, "delayed": 0, "dead": 0}


def test_messages_of_counts_one_jobs_messages_in_each_state(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    assert queue.messages_of("job-1") == ZERO
    # Another job with a message in each state, in the same queue all along.
    for _ in range(3):
        queue.enqueue("other", {})
    _, delayed, dead = (queue.claim("w1", block_ms=100) for _ in range(3))
    assert queue.retry(delayed, delay_s=60)
    queue.dead_letter(dead, "boom")
    queue.enqueue("job-1", {"n": 1})
    queue.enqueue("job-1", {"n": 2})
    queue.enqueue("other", {})
    others = {"queued": 1, "pending": 1, "delayed": 1, "dead": 1}
    assert queue.messages_of("other") == others
    assert queue.messages_of("job-1") == {**ZERO, "queued": 2}
    mine = queue.claim("w2", block_ms=100)
    assert (mine.job_id, mine.payload) == ("job-1", {"n": 1})
    assert queue.messages_of("job-1") == {**ZERO, "queued": 1, "pending": 1}
    assert queue.retry(mine, delay_s=60)
    assert queue.messages_of("job-1") == {**ZERO, "queued": 1, "delayed": 1}
    second = queue.claim("w2", block_ms=100)
    assert (second.job_id, second.payload) == ("job-1", {"n": 2})
    assert queue.messages_of("job-1") == {**ZERO, "pending": 1, "delayed": 1}
    queue.dead_letter(second, "boom")
    assert queue.messages_of("job-1") == {**ZERO, "delayed": 1, "dead": 1}
    assert queue.messages_of("other") == others  # never counted with job-1's
    assert queue.messages_of("job-2") == ZERO


def test_messages_of_without_the_group(make_queue, redis_client):
    queue = make_queue()
    redis_client.delete(queue.stream)  # no stream, no group: XPENDING answers NOGROUP
    assert queue.messages_of("job-1") == ZERO
    queue.enqueue("job-1", {})  # a stream without the group: undelivered
    assert queue.messages_of("job-1") == {**ZERO, "queued": 1}


def test_the_group_is_recreated_when_the_stream_vanished(make_queue, redis_client):
    queue = make_queue()
    redis_client.delete(queue.stream)  # e.g. a Redis restarted without persistence
    queue.enqueue("job-1", {})  # XADD makes a stream without the group
    delivery = queue.claim("w1", block_ms=100)
    assert delivery is not None and delivery.job_id == "job-1"
    queue.ack(delivery)
    assert_drained(queue)
    assert redis_client.xinfo_groups(queue.stream)[0]["name"].decode() == GROUP


def test_defaults_match_the_settings(redis_client):
    settings = Settings()
    default = WorkQueue(redis_client, "defaults")
    configured = WorkQueue.from_settings(redis_client, "configured", settings)
    for queue in (default, configured):
        assert queue.lease_ms == 60_000 == round(settings.queue_lease_seconds * 1000)
        assert queue.max_deliveries == settings.queue_max_deliveries == 5
        assert queue.retry_base_s == settings.queue_retry_base_seconds == 2.0
        assert queue.retry_max_s == settings.queue_retry_max_seconds


def test_bad_queue_settings_fail_fast():
    bad = {
        "TALKINGFACE_JOB_TTL_SECONDS": "0",
        "TALKINGFACE_QUEUE_LEASE_SECONDS": "0",
        "TALKINGFACE_QUEUE_MAX_DELIVERIES": "0",
        "TALKINGFACE_QUEUE_RETRY_BASE_SECONDS": "10",
        "TALKINGFACE_QUEUE_RETRY_MAX_SECONDS": "1",
    }
    with pytest.raises(ConfigError) as err:
        Settings.from_env(bad)
    for name in list(bad)[:4]:
        assert name in str(err.value)


# --- fair share between tenants ---------------------------------------------------------------


def drain(queue: WorkQueue, consumer: str = "w1") -> list[str]:
    """Claim and ack everything, one at a time (one worker); the job ids in claim order."""
    order = []
    while (delivery := queue.claim(consumer, block_ms=0)) is not None:
        order.append(delivery.job_id)
        queue.ack(delivery)
    return order


def test_tenants_are_served_round_robin_each_in_its_own_order(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    for i in range(20):
        queue.enqueue(f"a{i}", {}, tenant="acme")
    queue.enqueue("b0", {}, tenant="globex")
    for i in range(2):
        queue.enqueue(f"c{i}", {}, tenant="initech")
    assert queue.backlog_by_tenant() == {"acme": 20, "globex": 1, "initech": 2}
    assert queue.backlog() == queue.depth() == 23
    order = drain(queue)
    assert order[:6] == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert order[6:] == [f"a{i}" for i in range(3, 20)]
    assert queue.backlog_by_tenant() == {}
    assert_drained(queue)


def test_one_worker_busy_with_a_then_b_starts_before_as_third(make_queue):
    """The issue's acceptance case at the queue: A's first job is already running when its
    other 19 and then B's one arrive."""
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    queue.enqueue("a0", {}, tenant="acme")
    running = queue.claim("w1", block_ms=100)
    for i in range(1, 20):
        queue.enqueue(f"a{i}", {}, tenant="acme")
    queue.enqueue("b0", {}, tenant="globex")
    queue.ack(running)
    order = [running.job_id, *drain(queue)]
    assert order.index("b0") < order.index("a2")
    assert sorted(order) == sorted([f"a{i}" for i in range(20)] + ["b0"])


def test_a_tenant_that_refills_its_queue_cannot_jump_the_ring(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    for i in range(3):
        queue.enqueue(f"a{i}", {}, tenant="acme")
        queue.enqueue(f"b{i}", {}, tenant="globex")
    served = []
    for i in range(6):  # globex puts one job back each time one of its jobs starts
        delivery = queue.claim("w1", block_ms=0)
        served.append(delivery.job_id)
        if delivery.job_id.startswith("c") or delivery.job_id.startswith("b"):
            queue.enqueue(f"c{i}", {}, tenant="globex")
        queue.ack(delivery)
    assert [s[0] for s in served] == ["a", "b", "a", "b", "a", "b"]


def test_a_retry_goes_back_to_the_front_of_its_tenants_queue(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    for i in range(3):
        queue.enqueue(f"a{i}", {"n": i}, tenant="acme")
    first = queue.claim("w1", block_ms=100)
    assert (first.job_id, first.tenant) == ("a0", "acme")
    assert queue.retry(first, delay_s=0)
    again = queue.claim("w1", block_ms=100)
    assert (again.job_id, again.payload, again.deliveries, again.tenant) == ("a0", {"n": 0}, 2,
                                                                             "acme")  # fmt: skip
    assert again.enqueued_ms == first.enqueued_ms
    queue.ack(again)
    assert drain(queue) == ["a1", "a2"]
    assert_drained(queue)


def test_drop_tenant_removes_only_its_waiting_messages(make_queue):
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    for i in range(3):
        queue.enqueue(f"a{i}", {}, tenant="acme")
        queue.enqueue(f"b{i}", {}, tenant="globex")
    assert queue.drop_tenant("acme") == 3
    assert queue.drop_tenant("acme") == 0
    assert queue.backlog_by_tenant() == {"globex": 3} and queue.backlog() == 3
    assert queue.messages_of("a0") == ZERO
    assert drain(queue) == ["b0", "b1", "b2"]
    assert_drained(queue)


def test_a_message_added_to_the_stream_directly_is_still_delivered_first(
    make_queue, redis_client: redis.Redis
):
    """Work a broker from before fair share put on the stream is not stranded by an upgrade."""
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    queue.enqueue("fair", {}, tenant="acme")
    redis_client.xadd(queue.stream, {"job_id": "legacy", "payload": "{}", "prior": "0"})
    assert queue.messages_of("legacy") == {**ZERO, "queued": 1}
    assert drain(queue) == ["legacy", "fair"]
    assert_drained(queue)


def test_a_malformed_waiting_message_is_dead_lettered(make_queue, redis_client: redis.Redis):
    queue = make_queue()
    redis_client.rpush(queue.tenant_key("acme"), "{not json")
    redis_client.rpush(queue.ring_key, "acme")
    queue.enqueue("good", {}, tenant="globex")
    assert drain(queue) == ["good"]
    (dead,) = queue.dead_letters()
    assert "malformed" in dead["reason"]
    assert queue.backlog_by_tenant() == {}


def test_an_idle_worker_wakes_up_when_work_arrives(make_queue, monkeypatch):
    """The claim waits on the wake-up list, not in slices: with the slice at 60 s, work
    enqueued while a worker waits reaches it long before the slice would have ended."""
    import threading

    from talkingface.broker import queue as queue_module

    monkeypatch.setattr(queue_module, "WAIT_SLICE_MS", 60_000)
    queue = make_queue(lease_ms=LONG_LEASE_MS)
    queue.redis.delete(queue.wake_key)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(queue.claim("w1", block_ms=50_000)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.3)
    queue.enqueue("job-1", {}, tenant="acme")
    waiter.join(timeout=40)
    assert not waiter.is_alive() and got and got[0].job_id == "job-1"
    assert time.monotonic() - started < 40
    queue.ack(got[0])
