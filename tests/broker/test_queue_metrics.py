"""The broker's queue and job metrics on a real Redis: the oldest-job age (Redis clock), the
end-to-end job histogram observed once per job, stage timings of failed calls, failed
attempts by error code, the workers gauge, and the janitor promoting due retries with no
worker running."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import REGISTRY, generate_latest

from talkingface.broker.janitor import Janitor
from talkingface.broker.jobs import JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.broker.render_job import RenderHandler
from talkingface.broker.service import WorkerPool, WorkerSpec, export_queue_metrics, instrumented
from talkingface.broker.worker import run_once
from talkingface.config import Settings
from talkingface.errors import GRPC_STATUS, TalkingFaceError
from tests.broker.test_worker import drive, submit
from tests.fixtures.servers import free_port


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def redis_now_ms(queue: WorkQueue) -> int:
    seconds, micros = queue.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def add_aged(queue: WorkQueue, job_id: str, age_s: float) -> str:
    """A work message whose stream id says it was added `age_s` ago (Redis clock)."""
    message_id = f"{redis_now_ms(queue) - round(age_s * 1000)}-0"
    fields = {"job_id": job_id, "payload": "{}", "prior": "0"}
    return queue.redis.xadd(queue.stream, fields, id=message_id).decode()


# --- talkingface_queue_oldest_age_seconds -----------------------------------------------------


def test_oldest_age_is_zero_for_an_empty_queue(make_queue):
    assert make_queue().oldest_age_seconds() == 0.0


def test_oldest_age_covers_undelivered_pending_and_delayed_from_the_first_enqueue(make_queue):
    queue = make_queue(lease_ms=60_000)
    add_aged(queue, "old", 30)
    assert queue.oldest_age_seconds() == pytest.approx(30, abs=1)  # undelivered
    delivery = queue.claim("w1")
    assert delivery.job_id == "old" and queue.pending() == 1
    queue.enqueue("new", {})
    assert queue.oldest_age_seconds() == pytest.approx(30, abs=1)  # pending
    # A retry waits in the delayed set; its age still counts from the first enqueue.
    assert queue.retry(delivery, delay_s=60)
    assert queue.messages_of("old")["delayed"] == 1
    assert queue.oldest_age_seconds() == pytest.approx(30, abs=1)
    # Promoted into the stream with a new id, the job keeps its age.
    queue.redis.zadd(
        queue.delayed_key, {m: 0 for m in queue.redis.zrange(queue.delayed_key, 0, -1)}
    )
    assert queue.promote_due() == 1
    assert queue.oldest_age_seconds() == pytest.approx(30, abs=1)
    # A delayed member written before `enqueued` existed is aged by its former message id.
    legacy = {"job_id": "legacy", "payload": "{}", "prior": "1",
              "from": f"{redis_now_ms(queue) - 120_000}-0"}  # fmt: skip
    queue.redis.zadd(queue.delayed_key, {json.dumps(legacy): redis_now_ms(queue) + 60_000})
    assert queue.oldest_age_seconds() == pytest.approx(120, abs=1)
    queue.redis.delete(queue.delayed_key)
    for _ in range(2):
        queue.ack(queue.claim("w1"))
    assert queue.depth() == 0 and queue.oldest_age_seconds() == 0.0


def test_oldest_age_is_exported_at_scrape_time(redis_client, redis_server):
    settings = Settings.from_env({"TALKINGFACE_REDIS_URL": redis_server.url})
    export_queue_metrics(redis_client, settings)
    queue = WorkQueue.from_settings(redis_client, "train", settings)
    add_aged(queue, "slow", 45)
    text = generate_latest(REGISTRY).decode()
    line = next(x for x in text.splitlines()
                if x.startswith('talkingface_queue_oldest_age_seconds{queue="train"}'))  # fmt: skip
    assert float(line.split()[-1]) == pytest.approx(45, abs=1)
    assert sample("talkingface_queue_oldest_age_seconds", queue="render") == 0.0


# --- talkingface_job_e2e_seconds --------------------------------------------------------------


def test_e2e_is_observed_once_for_a_retried_job_that_succeeds(jobs, make_queue):
    queue = make_queue()
    job = submit(jobs, queue)
    before = sample("talkingface_job_e2e_seconds_count", kind="render", outcome="succeeded")
    sum_before = sample("talkingface_job_e2e_seconds_sum", kind="render", outcome="succeeded")
    calls = []

    def handler(job, delivery, heartbeat):
        calls.append(delivery.deliveries)
        if len(calls) < 3:
            raise ConnectionError("stage went away")
        return {"ok": True}

    done = drive(queue, jobs, job.job_id, handler)
    assert done.state == "SUCCEEDED" and calls == [1, 2, 3]
    after = sample("talkingface_job_e2e_seconds_count", kind="render", outcome="succeeded")
    assert after - before == 1
    observed = sample("talkingface_job_e2e_seconds_sum", kind="render", outcome="succeeded")
    assert observed - sum_before == pytest.approx((done.updated_at - done.created_at) / 1000)
    assert observed - sum_before >= 0.02 + 0.04  # at least the two backoffs


def test_e2e_is_observed_once_for_failed_and_cancelled_jobs(jobs, make_queue):
    queue = make_queue(max_deliveries=2)

    def failed() -> float:
        return sample("talkingface_job_e2e_seconds_count", kind="render", outcome="failed")

    before = failed()
    job = submit(jobs, queue)

    def always_fails(job, delivery, heartbeat):
        raise ConnectionError("never works")

    done = drive(queue, jobs, job.job_id, always_fails)
    assert (done.state, done.error_code) == ("FAILED", "JOB_RETRIES_EXHAUSTED")
    assert failed() - before == 1
    # The worker's late writes to a final job change nothing.
    with pytest.raises(TalkingFaceError):
        jobs.update(job.job_id, state="FAILED")
    assert failed() - before == 1

    cancelled = sample("talkingface_job_e2e_seconds_count", kind="render", outcome="cancelled")
    queued = submit(jobs, queue)
    jobs.request_cancel(queued.job_id, "acme")
    with pytest.raises(TalkingFaceError):
        jobs.request_cancel(queued.job_id, "acme")
    after = sample("talkingface_job_e2e_seconds_count", kind="render", outcome="cancelled")
    assert after - cancelled == 1


# --- talkingface_job_errors_total and talkingface_stage_seconds -------------------------------


def test_failed_attempts_are_counted_by_error_code(jobs, make_queue):
    queue = make_queue()
    job = submit(jobs, queue)

    def errors(code: str) -> float:
        return sample("talkingface_job_errors_total", kind="render", code=code)

    before = {c: errors(c) for c in ("INTERNAL", "UNAVAILABLE", "AUDIO_TOO_LONG")}
    outcomes = iter([ConnectionError("boom"), TalkingFaceError("UNAVAILABLE", "draining"),
                     TalkingFaceError("AUDIO_TOO_LONG", "too long")])  # fmt: skip

    def handler(job, delivery, heartbeat):
        raise next(outcomes)

    done = drive(queue, jobs, job.job_id, instrumented("render", handler))
    assert (done.state, done.error_code) == ("FAILED", "AUDIO_TOO_LONG")
    assert {c: errors(c) - before[c] for c in before} == {
        "INTERNAL": 1,
        "UNAVAILABLE": 1,
        "AUDIO_TOO_LONG": 1,
    }


def test_a_failing_stage_call_is_timed_with_outcome_error(jobs, make_queue, tmp_path):
    """A render job whose audio-features stage refuses the connection: the stage call is
    timed with outcome=error and the attempt counted under the code it failed with."""
    settings = Settings.from_env({
        "TALKINGFACE_STAGES_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing listens
        "TALKINGFACE_STAGE_TIMEOUT_SECONDS": "5",
        "TALKINGFACE_STORE": "local",
        "TALKINGFACE_STORE_DIR": str(tmp_path / "store"),
    })  # fmt: skip
    from talkingface.broker.stages import StageClients
    from talkingface.storage import store_from_settings

    handler = RenderHandler(StageClients.from_settings(settings), store_from_settings(settings),
                            settings)  # fmt: skip
    raised: list[BaseException] = []

    def watched(job, delivery, heartbeat):
        try:
            return handler(job, delivery, heartbeat)
        except BaseException as exc:
            raised.append(exc)
            raise

    queue = make_queue(lease_ms=30_000)
    job, _ = jobs.create("acme", "render", {"audio_key": "uploads/a.wav", "avatar_id": "ann"})
    queue.enqueue(job.job_id, {"kind": "render"})
    errors_before = sample("talkingface_stage_seconds_count", stage="audio_features",
                           outcome="error")  # fmt: skip
    ok_before = sample("talkingface_stage_seconds_count", stage="audio_features", outcome="ok")
    assert run_once(queue, jobs, "w1", instrumented("render", watched), block_ms=100)
    assert len(raised) == 1 and isinstance(raised[0], TalkingFaceError)
    code = raised[0].code
    assert code in GRPC_STATUS and code != "INTERNAL"
    after = sample("talkingface_stage_seconds_count", stage="audio_features", outcome="error")
    assert after - errors_before == 1
    assert sample("talkingface_stage_seconds_count", stage="audio_features", outcome="ok") == (
        ok_before
    )
    assert sample("talkingface_job_errors_total", kind="render", code=code) >= 1
    assert jobs.get(job.job_id).state == "QUEUED"  # transient: retried later


# --- talkingface_workers ----------------------------------------------------------------------


def test_the_workers_gauge_follows_the_pool(jobs, make_queue):
    def workers(queue: str) -> float:
        return sample("talkingface_workers", queue=queue)

    render, train = workers("render"), workers("train")
    pool = WorkerPool(jobs, [WorkerSpec(make_queue("render"), lambda *a: {}, 3)], name="gauge")
    pool.start()
    try:
        assert workers("render") - render == 3
        assert workers("train") == train  # exported, unchanged
        assert REGISTRY.get_sample_value("talkingface_workers", {"queue": "train"}) is not None
    finally:
        pool.stop(5.0)
    assert workers("render") == render


# --- the janitor promotes due retries ---------------------------------------------------------


def test_the_janitor_promotes_due_retries_with_no_worker_running(jobs: JobStore, make_queue):
    queue = make_queue(lease_ms=60_000)
    job = submit(jobs, queue)
    delivery = queue.claim("w1")
    assert queue.retry(delivery, delay_s=0.1)
    time.sleep(0.2)
    assert queue.messages_of(job.job_id) == {"queued": 0, "pending": 0, "delayed": 1, "dead": 0}
    janitor = Janitor(None, jobs, 0, queues=[queue], promote_interval_s=0.05)  # type: ignore[arg-type]
    janitor.start()
    try:
        deadline = time.monotonic() + 5
        while queue.messages_of(job.job_id)["queued"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        janitor.stop()
    assert queue.messages_of(job.job_id) == {"queued": 1, "pending": 0, "delayed": 0, "dead": 0}
    # The promoted message carries the job's delivery count and its first enqueue time.
    again = queue.claim("w2")
    assert (again.job_id, again.deliveries) == (job.job_id, 2)
    assert 0 < delivery.enqueued_ms <= int(delivery.message_id.split("-")[0])
    assert again.enqueued_ms == delivery.enqueued_ms
