"""The reconciler re-queues QUEUED or RUNNING jobs whose work message vanished (a Redis that
lost writes, an operator's DEL), after a grace, and leaves every job that has its message alone;
the janitor runs it. Avatar records are rebuilt from the store's manifests."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis

from talkingface.broker.avatars import AvatarRegistry, record_key
from talkingface.broker.janitor import Janitor
from talkingface.broker.jobs import CANCELLED, QUEUED, RUNNING, SUCCEEDED, JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.broker.reconcile import LOCK_KEY, Reconciler, queued_job_ids
from talkingface.errors import TalkingFaceError
from talkingface.serving.metrics import JOB_REQUEUED
from talkingface.storage import LocalStore

GRACE_S = 5.0


@pytest.fixture
def setup(redis_client: redis.Redis, jobs: JobStore):
    """A render and a train queue of this test's own names, and a reconciler over them."""
    suffix = uuid.uuid4().hex[:8]
    render = WorkQueue(redis_client, f"render-{suffix}", lease_ms=200)
    train = WorkQueue(redis_client, f"train-{suffix}", lease_ms=200)
    kinds = {"render": (render.name, {"kind": "render"}),
             "train_avatar": (train.name, {"kind": "train_avatar"})}  # fmt: skip
    reconciler = Reconciler(jobs, [render, train], GRACE_S, kinds=kinds)
    return render, train, reconciler


def submit(jobs: JobStore, queue: WorkQueue, tenant: str, kind: str = "render") -> str:
    job, _ = jobs.create(tenant, kind, {"n": 1}, enqueue=(queue.name, {"kind": kind}))
    return job.job_id


def lose_waiting(queue: WorkQueue, tenant: str) -> None:
    """What a Redis that lost writes leaves: job records without their waiting messages (all
    of the tenant's, with their backlog entries)."""
    client = queue.redis
    for raw in client.lrange(queue.tenant_key(tenant), 0, -1):
        client.lrem(queue.backlog_key, 1, json.loads(raw)["job_id"])
    client.delete(queue.tenant_key(tenant))
    client.lrem(queue.ring_key, 0, tenant)


def test_a_queued_job_whose_message_was_lost_is_requeued_after_the_grace(setup, jobs):
    render, _, reconciler = setup
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    job_id = submit(jobs, render, tenant)
    lose_waiting(render, tenant)
    assert render.messages_of(job_id)["queued"] == 0
    before = JOB_REQUEUED.labels("render")._value.get()

    assert reconciler.sweep(now=100.0) == []  # first seen missing: the grace starts
    assert reconciler.sweep(now=100.0 + GRACE_S / 2) == []
    assert render.messages_of(job_id)["queued"] == 0
    assert reconciler.sweep(now=100.0 + GRACE_S) == [job_id]

    assert render.messages_of(job_id) == {"queued": 1, "pending": 0, "delayed": 0, "dead": 0}
    assert JOB_REQUEUED.labels("render")._value.get() == before + 1
    delivery = render.claim("w")
    assert delivery is not None and delivery.job_id == job_id
    assert delivery.payload == {"kind": "render"} and delivery.tenant == tenant
    assert jobs.get(job_id).state == QUEUED
    assert reconciler.sweep(now=1000.0) == []  # it has its message again (claimed)


def test_a_running_job_whose_claimed_message_vanished_goes_back_to_queued(setup, jobs):
    _, train, reconciler = setup
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    job_id = submit(jobs, train, tenant, kind="train_avatar")
    delivery = train.claim("w")
    assert delivery is not None and delivery.job_id == job_id
    jobs.update(job_id, state=RUNNING, stage="TRAIN", progress=0.5)
    train.redis.xack(train.stream, "workers", delivery.message_id)
    train.redis.xdel(train.stream, delivery.message_id)  # the claimed message is gone

    assert reconciler.sweep(now=0.0) == []
    assert reconciler.sweep(now=GRACE_S) == [job_id]

    job = jobs.get(job_id)
    assert job.state == QUEUED and job.stage == "" and job.progress == 0.0
    again = train.claim("w2")
    assert again is not None and again.job_id == job_id
    assert again.payload == {"kind": "train_avatar"} and again.tenant == tenant


def test_jobs_that_have_their_message_or_have_ended_are_left_alone(setup, jobs):
    render, _, reconciler = setup
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    claimed = submit(jobs, render, tenant)
    assert render.claim("w").job_id == claimed  # in the stream, pending
    jobs.update(claimed, state=RUNNING)
    delayed = submit(jobs, render, tenant)
    delivery = render.claim("w")
    assert delivery.job_id == delayed and render.retry(delivery, delay_s=3600)  # delayed
    waiting = submit(jobs, render, tenant)  # in its tenant's list
    ended = submit(jobs, render, tenant)
    cancelled = submit(jobs, render, tenant)
    lose_waiting(render, tenant)  # the messages of waiting, ended and cancelled
    jobs.update(ended, state=RUNNING)
    jobs.update(ended, state=SUCCEEDED, result={})
    jobs.request_cancel(cancelled, tenant)
    render.enqueue(waiting, {"kind": "render"}, tenant=tenant)  # waiting has its message back

    assert queued_job_ids(render) == {claimed, delayed, waiting}
    for now in (0.0, GRACE_S, 10 * GRACE_S):
        assert reconciler.sweep(now=now) == []
    assert jobs.get(claimed).state == RUNNING
    assert jobs.get(ended).state == SUCCEEDED and jobs.get(cancelled).state == CANCELLED
    assert render.messages_of(ended)["queued"] == 0
    assert render.messages_of(cancelled)["queued"] == 0
    assert render.messages_of(waiting)["queued"] == 1


def test_a_message_back_within_the_grace_resets_it(setup, jobs):
    render, _, reconciler = setup
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    job_id = submit(jobs, render, tenant)
    lose_waiting(render, tenant)
    assert reconciler.sweep(now=0.0) == []
    render.enqueue(job_id, {"kind": "render"}, tenant=tenant)
    assert reconciler.sweep(now=GRACE_S / 2) == []  # present: forgotten
    lose_waiting(render, tenant)
    assert reconciler.sweep(now=GRACE_S) == []  # missing again: a new grace
    assert reconciler.sweep(now=2 * GRACE_S) == [job_id]
    assert render.messages_of(job_id)["queued"] == 1


def test_a_sweep_elsewhere_holds_the_lock(setup, jobs, redis_client):
    render, _, reconciler = setup
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    job_id = submit(jobs, render, tenant)
    lose_waiting(render, tenant)
    assert reconciler.sweep(now=0.0) == []
    redis_client.set(LOCK_KEY, "another broker", px=60_000)
    assert reconciler.sweep(now=GRACE_S) == []
    assert render.messages_of(job_id)["queued"] == 0
    redis_client.delete(LOCK_KEY)
    assert reconciler.sweep(now=GRACE_S) == [job_id]


def test_the_janitor_runs_the_reconciler(redis_client, jobs, tmp_path: Path):
    suffix = uuid.uuid4().hex[:8]
    render = WorkQueue(redis_client, f"render-{suffix}", lease_ms=200)
    reconciler = Reconciler(jobs, [render], 0.2,
                            kinds={"render": (render.name, {"kind": "render"})})  # fmt: skip
    tenant = f"t-{suffix}"
    job_id = submit(jobs, render, tenant)
    lose_waiting(render, tenant)
    janitor = Janitor(LocalStore(tmp_path / "store"), jobs, 0, reconciler=reconciler,
                      reconcile_interval_s=0.05)  # fmt: skip
    janitor.start()
    try:
        deadline = time.monotonic() + 10
        while render.messages_of(job_id)["queued"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        janitor.stop()
    assert render.messages_of(job_id)["queued"] == 1


# ---- the avatar registry, rebuilt from the store -------------------------------------------


def test_the_avatar_registry_is_rebuilt_from_the_manifests(redis_client, tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    registry = AvatarRegistry(redis_client)
    suffix = uuid.uuid4().hex[:8]
    tenant, other = f"t-{suffix}", f"o-{suffix}"
    lost, kept, legacy = f"av-lost-{suffix}", f"av-kept-{suffix}", f"av-legacy-{suffix}"
    first = store.publish_version(
        f"avatars/{lost}",
        {"a.bin": b"1"},
        {"tenant": tenant, "display_name": "Old", "job_id": "j1"},
    )
    store.publish_version(
        f"avatars/{lost}",
        {"a.bin": b"2"},
        {"tenant": tenant, "display_name": "Ann", "job_id": "j2"},
    )
    store.publish_version(
        f"avatars/{kept}",
        {"a.bin": b"1"},
        {"tenant": other, "display_name": "In the store", "job_id": "j3"},
    )
    store.publish_version(f"avatars/{legacy}", {"a.bin": b"1"})  # no owner in its manifest
    registry.claim(tenant, "Ann", "j2", avatar_id=lost)
    registry.claim(other, "In Redis", "j3", avatar_id=kept)
    redis_client.delete(record_key(lost))  # lost with a Redis
    redis_client.zrem(f"tf:tenantavatars:{tenant}", lost)
    with pytest.raises(TalkingFaceError):
        registry.get(tenant, lost)

    assert registry.rebuild_from_store(store) == [lost]

    record = registry.get(tenant, lost)
    assert (record.tenant, record.display_name, record.job_id) == (tenant, "Ann", "j2")
    created = first.manifest["created_at"]
    assert abs(record.created_at / 1000 - _iso_seconds(created)) < 0.002
    assert [r.avatar_id for r in registry.list(tenant)[0]] == [lost]
    with pytest.raises(TalkingFaceError):  # still nobody else's
        registry.get(other, lost)
    assert registry.get(other, kept).display_name == "In Redis"  # existing records kept
    assert not redis_client.exists(record_key(legacy))
    assert registry.rebuild_from_store(store) == []  # nothing missing any more


def _iso_seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()
