"""Job records: idempotent create, tenant isolation, the state machine, cancel, list, watch."""

from __future__ import annotations

import threading

import pytest
import redis

from talkingface.broker.jobs import (
    DEFAULT_TTL_S,
    JobStore,
    events_key,
    idempotency_key_name,
    job_key,
)
from talkingface.config import Settings
from talkingface.errors import TalkingFaceError

REQUEST = {"avatar_id": "av1", "upload_id": "u1", "options": {"k": 20, "alpha": 0.5}}


def _code(excinfo: pytest.ExceptionInfo[TalkingFaceError]) -> str:
    return excinfo.value.code


def test_create_stores_a_queued_job(jobs: JobStore):
    job, created = jobs.create("acme", "render", REQUEST, None, avatar_id="av1")
    assert created
    assert (job.tenant, job.kind, job.state, job.stage) == ("acme", "render", "QUEUED", "")
    assert (job.progress, job.attempt, job.result, job.cancel_requested) == (0.0, 0, None, False)
    assert job.request == REQUEST and job.avatar_id == "av1" and job.idempotency_key == ""
    assert job.created_at == job.updated_at > 0
    assert jobs.get(job.job_id) == job
    assert jobs.get(job.job_id, "acme") == job


def test_the_same_idempotency_key_returns_the_same_job(jobs: JobStore):
    first, created = jobs.create("acme", "render", REQUEST, "submit-1")
    again, created_again = jobs.create("acme", "render", {"other": True}, "submit-1")
    assert created and not created_again
    assert again.job_id == first.job_id and again.request == REQUEST
    other, created_other = jobs.create("acme", "render", REQUEST, "submit-2")
    assert created_other and other.job_id != first.job_id
    assert len(jobs.list("acme")[0]) == 2


def test_concurrent_submits_with_one_key_create_one_job(jobs: JobStore):
    threads_n = 16
    barrier = threading.Barrier(threads_n)
    outcomes: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def submit() -> None:
        barrier.wait()
        job, created = jobs.create("acme", "render", REQUEST, "same-key")
        with lock:
            outcomes.append((job.job_id, created))

    threads = [threading.Thread(target=submit) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == threads_n
    assert len({job_id for job_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    assert len(jobs.list("acme")[0]) == 1


def test_another_tenant_with_the_same_key_gets_its_own_job(jobs: JobStore):
    mine, _ = jobs.create("acme", "render", REQUEST, "k")
    theirs, created = jobs.create("globex", "render", REQUEST, "k")
    assert created and theirs.job_id != mine.job_id and theirs.tenant == "globex"


def test_a_tenant_never_sees_another_tenants_job(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    with pytest.raises(TalkingFaceError) as err:
        jobs.get(job.job_id, "globex")
    assert _code(err) == "JOB_NOT_FOUND"
    with pytest.raises(TalkingFaceError) as err:
        jobs.request_cancel(job.job_id, "globex")
    assert _code(err) == "JOB_NOT_FOUND"
    with pytest.raises(TalkingFaceError) as err:
        next(jobs.watch(job.job_id, "globex"))
    assert _code(err) == "JOB_NOT_FOUND"
    assert jobs.list("globex") == ([], "")
    assert jobs.get(job.job_id, "acme").state == "QUEUED"  # the failed cancel changed nothing
    for missing in ("", "0" * 32):
        with pytest.raises(TalkingFaceError) as err:
            jobs.get(missing)
        assert _code(err) == "JOB_NOT_FOUND"


@pytest.mark.parametrize(
    ("tenant", "kind", "request_", "key"),
    [
        ("a:b", "render", {}, None),  # ':' would let tenants share idempotency keys
        ("", "render", {}, None),
        ("acme", "paint", {}, None),
        ("acme", "render", {"x": float("nan")}, None),
        ("acme", "render", {"x": object()}, None),
        ("acme", "render", {}, "k" * 257),
    ],
)
def test_bad_create_arguments_are_invalid_requests(jobs, tenant, kind, request_, key):
    with pytest.raises(TalkingFaceError) as err:
        jobs.create(tenant, kind, request_, key)
    assert _code(err) == "INVALID_REQUEST"


def test_the_state_machine_allows_the_documented_paths(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    job = jobs.update(job.job_id, state="RUNNING", attempt=1, stage="AUDIO_FEATURES")
    job = jobs.update(job.job_id, progress=0.25, stage="MOTION")
    assert (job.state, job.stage, job.progress) == ("RUNNING", "MOTION", 0.25)
    job = jobs.update(job.job_id, state="QUEUED", stage="", progress=0.0)  # a retry
    job = jobs.update(job.job_id, state="RUNNING", attempt=2)
    job = jobs.update(job.job_id, state="SUCCEEDED", progress=1.0, result={"frames": 50})
    assert (job.state, job.result, job.attempt) == ("SUCCEEDED", {"frames": 50}, 2)
    queued, _ = jobs.create("acme", "render", REQUEST)
    failed = jobs.update(queued.job_id, state="FAILED", error_code="AUDIO_EMPTY", error_message="x")
    assert (failed.state, failed.error_code) == ("FAILED", "AUDIO_EMPTY")


@pytest.mark.parametrize("final", ["SUCCEEDED", "FAILED", "CANCELLED"])
def test_final_states_are_final(jobs: JobStore, final: str):
    job, _ = jobs.create("acme", "render", REQUEST)
    jobs.update(job.job_id, state="RUNNING")
    jobs.update(job.job_id, state=final)
    for change in ({"state": "RUNNING"}, {"state": "QUEUED"}, {"progress": 0.5}, {"state": final}):
        with pytest.raises(TalkingFaceError) as err:
            jobs.update(job.job_id, **change)
        assert _code(err) == "JOB_ALREADY_FINISHED"
    assert jobs.get(job.job_id).state == final


def test_illegal_transitions_and_values_are_refused(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    with pytest.raises(TalkingFaceError) as err:
        jobs.update(job.job_id, state="SUCCEEDED")  # never ran
    assert _code(err) == "INTERNAL"
    for bad in (
        {"state": "DONE"},
        {"stage": "PAINTING"},
        {"progress": 1.5},
        {"progress": float("nan")},
        {"attempt": -1},
        {"error_code": "OOPS"},
        {"tenant": "globex"},
        {"created_at": 0},
    ):
        with pytest.raises(ValueError):
            jobs.update(job.job_id, **bad)
    with pytest.raises(TalkingFaceError) as err:
        jobs.update("0" * 32, state="RUNNING")
    assert _code(err) == "JOB_NOT_FOUND"
    assert jobs.get(job.job_id) == job


def test_cancel_of_a_queued_job_is_immediate(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    cancelled = jobs.request_cancel(job.job_id, "acme")
    assert cancelled.state == "CANCELLED" and cancelled.cancel_requested
    with pytest.raises(TalkingFaceError) as err:
        jobs.request_cancel(job.job_id, "acme")
    assert _code(err) == "JOB_ALREADY_FINISHED"


def test_cancel_of_a_running_job_asks_its_worker(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    jobs.update(job.job_id, state="RUNNING", progress=0.4)
    flagged = jobs.request_cancel(job.job_id, "acme")
    assert (flagged.state, flagged.cancel_requested, flagged.progress) == ("RUNNING", True, 0.4)
    assert jobs.request_cancel(job.job_id, "acme").cancel_requested  # asking twice is fine
    assert jobs.update(job.job_id, state="CANCELLED").state == "CANCELLED"


def test_cancel_of_a_finished_job_is_refused(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    jobs.update(job.job_id, state="RUNNING")
    jobs.update(job.job_id, state="SUCCEEDED", result={})
    with pytest.raises(TalkingFaceError) as err:
        jobs.request_cancel(job.job_id, "acme")
    assert _code(err) == "JOB_ALREADY_FINISHED"
    assert err.value.status.name == "FAILED_PRECONDITION"


def test_watch_sees_every_change_and_ends_at_the_final_state(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    seen = []
    first_read = threading.Event()

    def watch() -> None:
        for snapshot in jobs.watch(job.job_id, "acme", block_ms=50, timeout_s=20):
            seen.append(snapshot)
            first_read.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first_read.wait(10)
    jobs.update(job.job_id, state="RUNNING", stage="AUDIO_FEATURES", attempt=1)
    for i in range(1, 10):
        jobs.update(job.job_id, progress=i / 10, stage="RENDER")
    jobs.update(job.job_id, state="SUCCEEDED", progress=1.0, result={"frames": 3})
    watcher.join(timeout=20)
    assert not watcher.is_alive()
    assert [s.state for s in seen] == ["QUEUED"] + ["RUNNING"] * 10 + ["SUCCEEDED"]
    assert [s.progress for s in seen[1:]] == [0.0] + [i / 10 for i in range(1, 10)] + [1.0]
    assert seen[-1].result == {"frames": 3} and seen[-1].request == REQUEST


def test_watch_misses_no_change_made_right_after_its_first_read(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    stream = jobs.watch(job.job_id, block_ms=50, timeout_s=10)
    assert next(stream).state == "QUEUED"
    # These land after the record was read but before the watcher waits for changes.
    jobs.update(job.job_id, state="RUNNING")
    jobs.request_cancel(job.job_id, "acme")
    jobs.update(job.job_id, state="CANCELLED")
    rest = list(stream)
    assert [(s.state, s.cancel_requested) for s in rest] == [
        ("RUNNING", False),
        ("RUNNING", True),
        ("CANCELLED", True),
    ]


def test_watch_of_a_finished_job_yields_it_once(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    jobs.request_cancel(job.job_id, "acme")
    assert [s.state for s in jobs.watch(job.job_id, block_ms=50, timeout_s=5)] == ["CANCELLED"]


def test_watch_gives_up_after_its_timeout(jobs: JobStore):
    job, _ = jobs.create("acme", "render", REQUEST)
    assert [s.state for s in jobs.watch(job.job_id, block_ms=20, timeout_s=0.1)] == ["QUEUED"]


def test_list_pages_newest_first_and_filters_by_state(jobs: JobStore, redis_client):
    created = [jobs.create("acme", "render", {"n": i})[0] for i in range(7)]
    jobs.create("globex", "render", {"n": 99})
    newest_first = [j.job_id for j in reversed(created)]
    pages, token = [], ""
    while True:
        page, token = jobs.list("acme", page_size=3, page_token=token)
        pages.append([j.job_id for j in page])
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == newest_first

    jobs.update(created[2].job_id, state="RUNNING")
    jobs.request_cancel(created[4].job_id, "acme")
    assert [j.job_id for j in jobs.list("acme", state="RUNNING")[0]] == [created[2].job_id]
    assert [j.job_id for j in jobs.list("acme", state="CANCELLED")[0]] == [created[4].job_id]
    assert len(jobs.list("acme", state="QUEUED")[0]) == 5

    redis_client.delete(job_key(created[6].job_id))  # as if it had expired
    page, _ = jobs.list("acme", page_size=50)
    assert [j.job_id for j in page] == newest_first[1:]
    assert redis_client.zcard("tf:tenantjobs:acme") == 6  # the dangling entry was dropped

    for bad in ({"page_token": "not-a-token"}, {"page_size": -1}, {"state": "DONE"}):
        with pytest.raises(TalkingFaceError) as err:
            jobs.list("acme", **bad)
        assert _code(err) == "INVALID_REQUEST"


def test_records_expire_and_every_update_refreshes_the_ttl(redis_client: redis.Redis):
    jobs = JobStore(redis_client, ttl_s=100)
    job, _ = jobs.create("acme", "render", REQUEST, "key-1")
    keys = [job_key(job.job_id), events_key(job.job_id), idempotency_key_name("acme", "key-1")]
    assert all(90 < redis_client.ttl(k) <= 100 for k in keys)
    for key in keys[:2]:
        redis_client.expire(key, 5)
    jobs.update(job.job_id, state="RUNNING")
    assert all(90 < redis_client.ttl(k) <= 100 for k in keys[:2])


def test_defaults_match_the_settings():
    assert Settings().job_ttl_seconds == DEFAULT_TTL_S
