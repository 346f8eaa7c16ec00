"""The avatar-training job under an at-least-once queue (issue 19): every phase keeps the
lease, a job publishes exactly one version however often it runs, and the manifest names its
owner. A real Redis (the session server), a LocalStore in a tmp dir and real (tiny) training
on a small SynthTalk avatar; each test uses a tenant, a queue and jobs of its own."""

from __future__ import annotations

import io
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from talkingface.broker import train_job
from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.jobs import Job
from talkingface.broker.train_job import TrainAvatarHandler, job_version, published_key
from talkingface.broker.worker import Cancelled, run_once
from talkingface.config import Settings
from talkingface.storage import LocalStore
from tests.broker.conftest import LEASE_MS, assert_drained

LEASE_S = LEASE_MS / 1000
SLOW_S = 6 * LEASE_S  # a phase this long without a beat loses the lease several times over


@pytest.fixture(scope="module")
def avatar_tar(tmp_path_factory) -> bytes:
    """A tiny SynthTalk avatar directory, as the tar a client uploads."""
    from talkingface.data.synthtalk.avatar import build_avatar

    root = tmp_path_factory.mktemp("train-avatar") / "avatar"
    build_avatar(root, seconds=2.0, seed=3, size=128, progress=False)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root, arcname="avatar")
    return buffer.getvalue()


@pytest.fixture
def setup(tmp_path, redis_client, avatar_tar):
    store = LocalStore(tmp_path / "store")
    settings = Settings(store="local", store_dir=tmp_path / "store", queue_lease_seconds=LEASE_S)
    handler = TrainAvatarHandler(store, settings, AvatarRegistry(redis_client))
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    key = f"uploads/{tenant}/{uuid.uuid4().hex}/data"
    store.put(key, avatar_tar)
    return store, handler, tenant, key


def request_for(key: str, **extra) -> dict:
    avatar_id = f"av-{uuid.uuid4().hex[:12]}"
    return {"avatar_id": avatar_id, "data_key": key, "source": "synthtalk", "preset": "tiny",
            "steps": 2, "display_name": "Ada", **extra}  # fmt: skip


def bare_job(tenant: str, request: dict) -> Job:
    return Job(job_id=uuid.uuid4().hex, tenant=tenant, kind="train_avatar", state="RUNNING",
               stage="", progress=0.0, attempt=1, error_code="", error_message="",
               created_at=int(time.time() * 1000), updated_at=0, idempotency_key="",
               avatar_id=request["avatar_id"], request=request, result=None,
               cancel_requested=False)  # fmt: skip


def slow_unpack(monkeypatch, seconds: float) -> None:
    """Unpacking (our own step) made slow: it takes `seconds` more, silently."""
    real = train_job.unpack_tar

    def unpack(*args, **kwargs):
        real(*args, **kwargs)
        time.sleep(seconds)

    monkeypatch.setattr(train_job, "unpack_tar", unpack)


def test_a_phase_slower_than_the_lease_keeps_the_lease(setup, jobs, make_queue, monkeypatch):
    store, handler, tenant, key = setup
    slow_unpack(monkeypatch, SLOW_S)
    queue = make_queue(f"train-{uuid.uuid4().hex[:8]}")
    request = request_for(key)
    job, _ = jobs.create(tenant, "train_avatar", request, avatar_id=request["avatar_id"])
    queue.enqueue(job.job_id, {}, tenant)
    rival_calls = []
    claimed = []
    started = time.monotonic()
    worker = threading.Thread(
        target=lambda: claimed.append(run_once(queue, jobs, "slow", handler, block_ms=1000))
    )
    worker.start()
    while jobs.get(job.job_id).state != "RUNNING" and worker.is_alive():
        time.sleep(0.01)
    while worker.is_alive():  # another worker, ready to take over a lease that runs out
        run_once(queue, jobs, "rival", lambda *a: rival_calls.append(a) or {}, block_ms=20)
    worker.join()
    assert claimed == [True]
    assert time.monotonic() - started > SLOW_S  # the slow phase did run
    done = jobs.get(job.job_id)
    assert rival_calls == []
    assert (done.state, done.attempt) == ("SUCCEEDED", 1), done
    prefix = f"avatars/{request['avatar_id']}"
    assert store.list_versions(prefix) == [done.result["version"]] == [job_version(done)]
    assert_drained(queue)


def test_a_cancel_stops_a_silent_phase_within_a_beat(setup, monkeypatch):
    store, handler, tenant, key = setup
    slow_unpack(monkeypatch, 30.0)
    job = bare_job(tenant, request_for(key))
    beats = []

    def heartbeat(stage=None, progress=None):
        beats.append(stage)
        if len(beats) >= 3:
            raise Cancelled("cancelled by the test")

    started = time.monotonic()
    with pytest.raises(Cancelled):
        handler(job, None, heartbeat)
    assert time.monotonic() - started < 5.0
    assert set(beats) == {"PREPROCESS"}
    assert store.list_versions(f"avatars/{job.avatar_id}") == []


def test_two_runs_of_one_job_publish_one_version_that_both_return(setup, redis_client, monkeypatch):
    store, handler, tenant, key = setup
    job = bare_job(tenant, request_for(key))
    results: dict[str, object] = {}
    trained = threading.Barrier(2)
    real = _real_train_avatar()

    def train_then_meet(*args, **kwargs):  # both runs trained: then both go to publish
        report = real(*args, **kwargs)
        trained.wait(60)
        return report

    monkeypatch.setattr("talkingface.render.commands.train_avatar", train_then_meet)

    def run(name: str) -> None:
        try:
            results[name] = handler(job, None, lambda **beat: None)
        except BaseException as exc:  # reported by the assertions below
            results[name] = exc

    runs = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(120)
    first, second = results["first"], results["second"]
    assert isinstance(first, dict) and isinstance(second, dict), results
    prefix = f"avatars/{job.avatar_id}"
    # The manifest names the avatar's owner (AvatarRegistry.rebuild_from_store reads it).
    metadata = store.read_manifest(prefix, first["version"])["metadata"]
    assert metadata["tenant"] == tenant
    assert metadata["display_name"] == "Ada"
    assert metadata["job_id"] == job.job_id
    assert "renderer" in metadata
    assert store.list_versions(prefix) == [first["version"]] == [second["version"]]
    assert first["version"] == job_version(job)
    assert first["metrics"] and first["metrics"] == second["metrics"]
    claim = redis_client.get(published_key(job.job_id))
    assert claim.decode() == first["version"]
    # A third delivery (the winner died before storing its outcome) does not train again.
    monkeypatch.setattr("talkingface.render.commands.train_avatar", _no_training)
    assert handler(job, None, lambda **beat: None) == first
    assert store.list_versions(prefix) == [first["version"]]


def _real_train_avatar():
    from talkingface.render.commands import train_avatar

    return train_avatar


def _no_training(*args, **kwargs):
    raise AssertionError("trained again")


def test_a_run_that_loses_the_claim_waits_and_writes_nothing(setup, redis_client):
    store, handler, tenant, key = setup
    job = bare_job(tenant, request_for(key))
    prefix = f"avatars/{job.avatar_id}"
    version = job_version(job)
    claim = published_key(job.job_id)
    redis_client.set(claim, f"{version} other-run", px=5000)  # another run is publishing

    def other_run_finishes() -> None:
        time.sleep(4 * LEASE_S)
        store.publish_version(prefix, {"a.bin": b"winner"}, {"renderer": {"x": 1.0}}, version)
        redis_client.set(claim, version, ex=60)

    finisher = threading.Thread(target=other_run_finishes)
    finisher.start()
    beats = []
    result = handler._publish(
        job, prefix, {"a.bin": b"loser"}, {"renderer": {"x": 2.0}},
        train_job.Beating(lambda **beat: beats.append(beat), handler.beat_s),
    )  # fmt: skip
    finisher.join()
    assert result == {"avatar_id": job.avatar_id, "version": version, "metrics": {"x": 1.0}}
    assert store.read_version_file(prefix, version, "a.bin") == b"winner"
    assert len(beats) >= 3  # it kept its lease while it waited
    assert store.list_versions(prefix) == [version]


def test_a_claim_left_by_a_dead_run_is_taken_over(setup, redis_client):
    store, handler, tenant, key = setup
    job = bare_job(tenant, request_for(key))
    prefix = f"avatars/{job.avatar_id}"
    claim = published_key(job.job_id)
    redis_client.set(claim, f"{job_version(job)} dead-run", px=int(2 * LEASE_MS))
    phase = train_job.Beating(lambda **beat: None, handler.beat_s)
    result = handler._publish(job, prefix, {"a.bin": b"mine"}, {"renderer": {}}, phase)
    assert result["version"] == job_version(job)
    assert store.read_version_file(prefix, result["version"], "a.bin") == b"mine"
    assert redis_client.get(claim).decode() == result["version"]


def test_a_publish_past_the_claim_cannot_make_a_second_version(setup, redis_client):
    store, handler, tenant, key = setup
    job = bare_job(tenant, request_for(key))
    prefix = f"avatars/{job.avatar_id}"
    phase = train_job.Beating(lambda **beat: None, handler.beat_s)
    first = handler._publish(job, prefix, {"a.bin": b"one"}, {"renderer": {"x": 1.0}}, phase)
    redis_client.delete(published_key(job.job_id))  # the claim is gone (expired, flushed)
    again = handler._publish(job, prefix, {"a.bin": b"two"}, {"renderer": {"x": 2.0}}, phase)
    assert again == first
    assert store.list_versions(prefix) == [first["version"]]
    assert store.read_version_file(prefix, first["version"], "a.bin") == b"one"


def test_an_imported_bundle_names_its_tenant(setup, tmp_path):
    store, handler, tenant, key = setup
    trained = bare_job(tenant, request_for(key))
    done = handler(trained, None, lambda **beat: None)
    source = f"avatars/{trained.avatar_id}"
    manifest = store.read_manifest(source, done["version"])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in manifest["files"]:
            data = store.read_version_file(source, done["version"], name)
            info = tarfile.TarInfo(f"bundle/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    upload = f"uploads/{tenant}/{uuid.uuid4().hex}/data"
    store.put(upload, buffer.getvalue())
    job = bare_job(tenant, request_for(upload, source="bundle", display_name="Imported"))
    result = handler(job, None, lambda **beat: None)
    prefix = f"avatars/{job.avatar_id}"
    metadata = store.read_manifest(prefix, result["version"])["metadata"]
    assert metadata == {"imported": True, "tenant": tenant, "display_name": "Imported",
                        "job_id": job.job_id}  # fmt: skip
    assert store.list_versions(prefix) == [result["version"]] == [job_version(job)]
    assert handler(job, None, lambda **beat: None) == result  # run again: the same version
    assert store.list_versions(prefix) == [result["version"]]


def test_job_versions_are_per_job_and_valid_keys(setup):
    _, _, tenant, key = setup
    a, b = bare_job(tenant, request_for(key)), bare_job(tenant, request_for(key))
    assert job_version(a) == job_version(a) != job_version(b)
    assert Path(job_version(a)).name == job_version(a)
