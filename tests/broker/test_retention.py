"""Retention (broker/retention.py): TTLs enforced by the janitor's sweep and DeleteJob, and the
tenant purge (broker/purge.py), on the session Redis and a moto S3 bucket of this module's own,
through a real broker over loopback. TTLs are 2 s (per-tenant overrides) instead of the issue's
60 s to keep the tests short. Every test uses tenants of its own and asserts only on their keys
and objects (other modules' tenants share the Redis)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import grpc
import pytest

from talkingface.broker.auth import Principal
from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.janitor import Janitor
from talkingface.broker.jobs import JobStore, events_key, idempotency_key_name, job_key
from talkingface.broker.keys import KeyStore
from talkingface.broker.limits import SUBMIT, Limits, key_bucket_key
from talkingface.broker.queue import WorkQueue
from talkingface.broker.retention import Retention
from talkingface.broker.servicer import TENANT_METADATA
from talkingface.cli import main
from talkingface.config import Settings
from talkingface.v1 import broker_pb2 as pb
from tests.broker.conftest import minio_store, serving_broker
from tests.broker.fleet_support import NO_MESSAGES

TTL_S = 2  # S3 last-modified times have 1 s resolution


@pytest.fixture(scope="module")
def env(redis_server, s3_server):
    return {
        "TALKINGFACE_STORE": "minio",
        "TALKINGFACE_MINIO_ENDPOINT": s3_server.endpoint,
        "TALKINGFACE_MINIO_ACCESS_KEY": s3_server.access_key,
        "TALKINGFACE_MINIO_SECRET_KEY": s3_server.secret_key,
        "TALKINGFACE_MINIO_REGION": s3_server.region,
        "TALKINGFACE_MINIO_BUCKET": f"tf-ret-{uuid.uuid4().hex[:12]}",
        "TALKINGFACE_REDIS_URL": redis_server.url,
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_JANITOR_INTERVAL_SECONDS": "0",  # the tests sweep themselves
        "TALKINGFACE_LOG_FORMAT": "text",
        "TALKINGFACE_DEAD_LETTER_MAX_ENTRIES": "10",
    }


@pytest.fixture(scope="module")
def broker(env):
    settings = Settings.from_env(env)
    store = minio_store(env, settings)
    with serving_broker(settings, store) as (client, stub):
        jobs = JobStore.from_settings(client, settings)
        yield type("Broker", (), {
            "settings": settings, "store": store, "redis": client, "jobs": jobs, "stub": stub,
            "retention": Retention(client, store, settings, jobs=jobs),
        })  # fmt: skip


def new_tenant() -> str:
    return f"ret-{uuid.uuid4().hex[:10]}"


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return ((TENANT_METADATA, tenant),)


def janitor(broker, queues=()) -> Janitor:
    retention = Retention(broker.redis, broker.store, broker.settings, jobs=broker.jobs,
                          queues=queues)  # fmt: skip
    return Janitor(broker.store, broker.jobs, 0, retention=retention)


def finished_job(broker, tenant: str, *, idem: str | None = None) -> str:
    """A SUCCEEDED render job with a result and a scratch object in the store."""
    job, _ = broker.jobs.create(tenant, "render", {"audio_key": "x"}, idem)
    broker.jobs.update(job.job_id, state="RUNNING")
    key = f"results/{tenant}/{job.job_id}/video.mp4"
    broker.store.put(key, b"mp4")
    broker.store.put(f"work/{job.job_id}/seg-0.mp4", b"seg")
    broker.jobs.update(job.job_id, state="SUCCEEDED", result={"video_key": key})
    return job.job_id


def keys_under(store, prefix: str) -> list[str]:
    return [info.key for info in store.list(prefix)]


def test_two_sweeps_leave_nothing_older_under_uploads_and_results(broker):
    tenant, other = new_tenant(), new_tenant()
    for name in ("upload_retention_seconds", "result_retention_seconds"):
        broker.retention.set_override(tenant, name, TTL_S)
    sweeper = janitor(broker)
    old_upload = f"uploads/{tenant}/u-old/data"
    broker.store.put(old_upload, b"audio")
    old_job = finished_job(broker, tenant)
    other_upload = f"uploads/{other}/u-1/data"  # default retention: 7 days
    broker.store.put(other_upload, b"audio")
    other_job = finished_job(broker, other)
    # An upload a queued job still reads is kept, however old.
    in_use = f"uploads/{tenant}/u-queued/data"
    broker.store.put(in_use, b"audio")
    queued, _ = broker.jobs.create(tenant, "render", {"audio_key": in_use})
    time.sleep(TTL_S + 0.2)
    new_upload = f"uploads/{tenant}/u-new/data"
    broker.store.put(new_upload, b"audio")

    first = sweeper.sweep()
    assert f"uploads/{tenant}/u-old" in first.uploads
    started = time.time()
    second = sweeper.sweep()
    assert second is not None
    for prefix in (f"uploads/{tenant}", f"results/{tenant}"):
        for info in broker.store.list(prefix):
            if info.key != in_use:
                assert info.modified is not None and started - info.modified < TTL_S, info.key
    assert keys_under(broker.store, f"results/{tenant}") == []
    assert set(keys_under(broker.store, f"uploads/{tenant}")) == {in_use, new_upload}
    assert broker.jobs.get(old_job, tenant).state == "SUCCEEDED"  # records: their own TTL
    assert broker.jobs.get(queued.job_id, tenant).state == "QUEUED"
    assert keys_under(broker.store, f"uploads/{other}") == [other_upload]
    assert keys_under(broker.store, f"results/{other}/{other_job}") == [
        f"results/{other}/{other_job}/video.mp4"
    ]


def test_job_records_expire_and_take_their_results(broker):
    tenant = new_tenant()
    broker.retention.set_override(tenant, "job_retention_seconds", TTL_S)
    done = finished_job(broker, tenant, idem="k1")
    running, _ = broker.jobs.create(tenant, "render", {})
    broker.jobs.update(running.job_id, state="RUNNING")
    time.sleep(TTL_S + 0.2)
    report = janitor(broker).sweep()
    assert report is not None and done in report.jobs
    assert not broker.redis.exists(job_key(done), events_key(done),
                                   idempotency_key_name(tenant, "k1"))  # fmt: skip
    assert keys_under(broker.store, f"results/{tenant}/{done}") == []
    assert keys_under(broker.store, f"work/{done}") == []
    assert broker.jobs.get(running.job_id, tenant).state == "RUNNING"  # never a live job
    assert [j.job_id for j in broker.jobs.list(tenant)[0]] == [running.job_id]

    # Redis's own TTL: the record goes by itself, and the next sweep takes its orphan result.
    short = JobStore(broker.redis, ttl_s=1)
    job, _ = short.create(tenant, "render", {})
    orphan = f"results/{tenant}/{job.job_id}/video.mp4"
    broker.store.put(orphan, b"mp4")
    deadline = time.monotonic() + 5
    while broker.redis.exists(job_key(job.job_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not broker.redis.exists(job_key(job.job_id))
    assert f"results/{tenant}/{job.job_id}" in janitor(broker).sweep().results
    assert not broker.store.exists(orphan)


def test_a_result_whose_record_is_gone_is_deleted_at_once(broker):
    tenant = new_tenant()  # default result retention (7 days): only the orphan goes
    kept = finished_job(broker, tenant)
    orphan = f"results/{tenant}/{uuid.uuid4().hex}/video.mp4"
    broker.store.put(orphan, b"mp4")
    janitor(broker).sweep()
    assert not broker.store.exists(orphan)
    assert broker.store.exists(f"results/{tenant}/{kept}/video.mp4")


def test_objects_that_a_final_record_does_not_name_are_deleted(broker):
    """A killed attempt's video (stored, never recorded) goes once the job is final; what the
    record names stays, and nothing of a running job is touched."""
    tenant = new_tenant()
    succeeded = finished_job(broker, tenant)
    stray = f"results/{tenant}/{succeeded}/a1/video.mp4"
    broker.store.put(stray, b"mp4 of a killed attempt")
    failed, _ = broker.jobs.create(tenant, "render", {"audio_key": "x"})
    broker.store.put(f"results/{tenant}/{failed.job_id}/a1/video.mp4", b"mp4")
    broker.jobs.update(failed.job_id, state="FAILED")
    running, _ = broker.jobs.create(tenant, "render", {"audio_key": "x"})
    broker.jobs.update(running.job_id, state="RUNNING")
    in_flight = f"results/{tenant}/{running.job_id}/a1/video.mp4"
    broker.store.put(in_flight, b"mp4")
    report = janitor(broker).sweep()
    assert keys_under(broker.store, f"results/{tenant}") == sorted(
        [f"results/{tenant}/{succeeded}/video.mp4", in_flight]
    )
    assert sorted(report.strays) == sorted(
        [stray, f"results/{tenant}/{failed.job_id}/a1/video.mp4"]
    )


def test_the_dead_letter_stream_stays_at_its_cap(broker):
    queue = WorkQueue(broker.redis, f"ret-{uuid.uuid4().hex[:8]}", lease_ms=200)
    queue.ensure_group()
    sweeper = janitor(broker, queues=[queue])
    for i in range(25):
        queue.enqueue(f"job-{i}", {"kind": "render"})
        delivery = queue.claim("c1", block_ms=0)
        queue.dead_letter(delivery, "test")
        if i % 10 == 9:
            sweeper.sweep()
            assert broker.redis.xlen(queue.dead_key) == 10
    sweeper.sweep()
    assert broker.redis.xlen(queue.dead_key) == 10
    kept = [e["job_id"] for e in queue.dead_letters(100)]
    assert kept == [f"job-{i}" for i in range(15, 25)]  # the newest ten

    # By age as well: entries older than the retention go, whatever the count.
    aged = Retention(broker.redis, broker.store,
                     dataclasses.replace(broker.settings, dead_letter_retention_seconds=1),
                     queues=[queue])  # fmt: skip
    time.sleep(1.2)
    queue.enqueue("job-new", {"kind": "render"})
    queue.dead_letter(queue.claim("c1", block_ms=0), "test")
    aged.trim_dead_letters()
    assert [e["job_id"] for e in queue.dead_letters(100)] == ["job-new"]
    broker.redis.delete(queue.stream, queue.dead_key)


def test_delete_job_removes_record_and_result_and_is_tenant_scoped(broker):
    tenant, other = new_tenant(), new_tenant()
    job_id = finished_job(broker, tenant, idem="key-1")
    result = f"results/{tenant}/{job_id}/video.mp4"
    with pytest.raises(grpc.RpcError) as info:
        broker.stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), metadata=md(other), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert broker.store.exists(result) and broker.redis.exists(job_key(job_id))

    reply = broker.stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), metadata=md(tenant),
                                  timeout=30)  # fmt: skip
    assert (reply.job_id, reply.state, reply.cancelled) == (job_id, pb.JOB_STATE_SUCCEEDED, False)
    assert reply.objects_deleted == 2  # the result and the scratch segment
    assert not broker.store.exists(result) and keys_under(broker.store, f"work/{job_id}") == []
    assert not broker.redis.exists(job_key(job_id), events_key(job_id),
                                   idempotency_key_name(tenant, "key-1"))  # fmt: skip
    assert broker.jobs.list(tenant)[0] == []
    with pytest.raises(grpc.RpcError) as info:
        broker.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md(tenant), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:  # a second delete: gone
        broker.stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), metadata=md(tenant), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    # A job that has not ended is cancelled first, then deleted.
    queued, _ = broker.jobs.create(tenant, "render", {})
    reply = broker.stub.DeleteJob(pb.DeleteJobRequest(job_id=queued.job_id),
                                  metadata=md(tenant), timeout=30)  # fmt: skip
    assert (reply.state, reply.cancelled) == (pb.JOB_STATE_CANCELLED, True)
    assert not broker.redis.exists(job_key(queued.job_id))


def _seed_tenant(broker, tenant: str) -> dict[str, list[str]]:
    """Jobs, an avatar, limits, a bucket, an upload counter, a tenant record, an API key and
    objects under every prefix: what a purge must remove."""
    job_id = finished_job(broker, tenant, idem="idem-1")
    # A job waiting in the tenant's sub-queue of the render queue (no worker runs here).
    queued, _ = broker.jobs.create(tenant, "render", {}, enqueue=("render", {"kind": "render"}))
    avatar = f"av-{uuid.uuid4().hex[:12]}"
    AvatarRegistry(broker.redis).claim(tenant, "Ann", avatar_id=avatar)
    broker.store.publish_version(f"avatars/{avatar}", {"renderer.safetensors": b"w"})
    broker.store.put(f"uploads/{tenant}/u-1/data", b"audio")
    limits = Limits(broker.redis, broker.settings)
    limits.set_override(tenant, "active_jobs", 7)
    limits.take(limits.for_tenant(tenant), SUBMIT)
    limits.count_upload(limits.for_tenant(tenant))
    keys = KeyStore(broker.redis)
    keys.create_tenant(tenant)
    _, info = keys.create_key(tenant, "render", limits={"submit_per_second": 1})
    limits.take(limits.for_tenant(tenant), SUBMIT,
                Principal(info.key_id, tenant, frozenset({"render"}), info.limits))  # fmt: skip
    assert broker.redis.exists(key_bucket_key(info.key_id, SUBMIT))
    return {"jobs": [job_id, queued.job_id], "avatars": [avatar], "api_keys": [info.key_id]}


def _tenant_redis_keys(broker, tenant: str, ids: dict[str, list[str]]) -> list[str]:
    found = set()
    for pattern in (f"tf:*:{tenant}", f"tf:*:{tenant}:*"):
        found |= {k.decode() for k in broker.redis.scan_iter(pattern, 1000)}
    for job_id in ids["jobs"]:
        found |= {k for k in (job_key(job_id), events_key(job_id)) if broker.redis.exists(k)}
    for avatar in ids["avatars"]:
        if broker.redis.exists(f"tf:avatar:{avatar}"):
            found.add(f"tf:avatar:{avatar}")
    for key_id in ids["api_keys"]:
        if broker.redis.exists(f"tf:apikey:{key_id}"):
            found.add(f"tf:apikey:{key_id}")
        found |= {k.decode() for k in broker.redis.scan_iter(f"tf:keybucket:{key_id}:*")}
    if broker.redis.sismember("tf:tenants", tenant):
        found.add("tf:tenants member")
    return sorted(found)


def _tenant_objects(broker, tenant: str, ids: dict[str, list[str]]) -> list[str]:
    prefixes = [f"uploads/{tenant}", f"results/{tenant}"]
    prefixes += [f"avatars/{a}" for a in ids["avatars"]] + [f"work/{j}" for j in ids["jobs"]]
    return [key for prefix in prefixes for key in keys_under(broker.store, prefix)]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tenant_purge_leaves_no_key_and_no_object(broker, env, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tenant, other = new_tenant(), new_tenant()
    ids, other_ids = _seed_tenant(broker, tenant), _seed_tenant(broker, other)
    before_keys = _tenant_redis_keys(broker, tenant, ids)
    before_objects = _tenant_objects(broker, tenant, ids)
    other_keys = _tenant_redis_keys(broker, other, other_ids)
    other_objects = _tenant_objects(broker, other, other_ids)
    assert len(before_keys) >= 12 and len(before_objects) >= 5
    render = WorkQueue(broker.redis, "render")
    assert f"tf:fair:render:t:{tenant}" in before_keys
    assert render.backlog_by_tenant()[tenant] == 1

    code, out, _ = _cli(capsys, "tenant", "purge", "--tenant", tenant, "--json")  # a dry run
    counts = json.loads(out)
    assert code == 2 and counts["purged"] is False
    assert (counts["jobs"], counts["avatars"], counts["api_keys"]) == (2, 1, 1)
    assert counts["objects"] == len(before_objects)
    assert _tenant_redis_keys(broker, tenant, ids) == before_keys  # nothing deleted

    code, out, err = _cli(capsys, "tenant", "purge", "--tenant", tenant, "--yes", "--json")
    assert code == 0, err
    counts = json.loads(out)
    assert counts["purged"] is True and counts["objects"] == len(before_objects)
    assert counts["redis_keys"] >= len(before_keys) - 1  # the tenants-set member is no key
    assert _tenant_redis_keys(broker, tenant, ids) == []
    assert _tenant_objects(broker, tenant, ids) == []
    assert tenant not in render.backlog_by_tenant()  # out of the ring
    assert all(render.messages_of(j) == NO_MESSAGES for j in ids["jobs"])
    assert render.backlog_by_tenant()[other] == 1
    assert _tenant_redis_keys(broker, other, other_ids) == other_keys
    assert _tenant_objects(broker, other, other_ids) == other_objects
    render.drop_tenant(other)  # no later test's worker is to run it
    code, out, _ = _cli(capsys, "tenant", "purge", "--tenant", tenant, "--yes", "--json")
    assert code == 0 and json.loads(out)["objects"] == 0  # again: nothing left
