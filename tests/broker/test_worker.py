"""The worker protocol: results stored before ack, retries, input errors, poison jobs,
cancellation, outages, deadlines, stopping pools and the cleanup hook (lease takeovers and
killed worker processes: test_worker_leases.py)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from talkingface.broker.jobs import Job
from talkingface.broker.queue import Delivery
from talkingface.broker.worker import is_input_error, run_once
from talkingface.errors import TalkingFaceError
from tests.broker.conftest import LEASE_MS, assert_drained, drive, submit

LEASE_S = LEASE_MS / 1000


def test_a_result_is_stored_and_the_message_acked(jobs, make_queue):
    queue = make_queue()
    job = submit(jobs, queue)
    seen = []

    def handler(job, delivery, heartbeat):
        seen.append((job.state, job.attempt, delivery.payload))
        heartbeat(stage="AUDIO_FEATURES", progress=0.2)
        assert jobs.get(job.job_id).stage == "AUDIO_FEATURES"
        heartbeat(stage="RENDER", progress=0.8)
        return {"frames": 25}

    assert run_once(queue, jobs, "w1", handler, block_ms=100)
    done = jobs.get(job.job_id)
    assert seen == [("RUNNING", 1, {"upload_id": "u1"})]
    assert (done.state, done.result, done.progress, done.attempt) == (
        "SUCCEEDED",
        {"frames": 25},
        1.0,
        1,
    )
    assert_drained(queue)
    assert not run_once(queue, jobs, "w1", handler, block_ms=20)


def test_transient_failures_are_retried_with_growing_backoff(jobs, make_queue):
    queue = make_queue(retry_base_s=0.1, retry_max_s=1.0)
    job = submit(jobs, queue)
    calls: list[float] = []

    def handler(job, delivery, heartbeat):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ConnectionError("renderer replica went away")
        if len(calls) == 2:
            raise TalkingFaceError("UNAVAILABLE", "motion service draining")
        return {"ok": True}

    run_once(queue, jobs, "w1", handler, block_ms=100)
    retrying = jobs.get(job.job_id)
    assert (retrying.state, retrying.attempt, retrying.error_code) == ("QUEUED", 1, "")
    done = drive(queue, jobs, job.job_id, handler)
    assert (done.state, done.result, done.attempt) == ("SUCCEEDED", {"ok": True}, 3)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 3
    assert gaps[0] >= queue.backoff(1) == 0.1
    assert gaps[1] >= queue.backoff(2) == 0.2
    assert_drained(queue)


@pytest.mark.parametrize(
    "code", ["AUDIO_CORRUPT", "AVATAR_NOT_FOUND", "AVATAR_NOT_READY", "PAYLOAD_TOO_LARGE"]
)
def test_input_errors_fail_at_once_without_retry(jobs, make_queue, code):
    queue = make_queue()
    job = submit(jobs, queue)
    calls = []

    def handler(job, delivery, heartbeat):
        calls.append(job.attempt)
        raise TalkingFaceError(code, "the request cannot be served")

    assert is_input_error(TalkingFaceError(code, "x"))
    done = drive(queue, jobs, job.job_id, handler)
    assert calls == [1]
    assert (done.state, done.error_code) == ("FAILED", code)
    assert done.error_message.endswith("the request cannot be served")
    assert queue.dead_letters() == []
    assert_drained(queue)


def test_a_job_that_always_fails_is_dead_lettered_with_retries_exhausted(jobs, make_queue):
    queue = make_queue(max_deliveries=3, retry_base_s=0.01, retry_max_s=0.05)
    job = submit(jobs, queue)
    calls = []

    def handler(job, delivery, heartbeat):
        calls.append(delivery.deliveries)
        raise RuntimeError("segfault in a stage")

    done = drive(queue, jobs, job.job_id, handler)
    assert calls == [1, 2, 3]
    assert (done.state, done.error_code, done.attempt) == ("FAILED", "JOB_RETRIES_EXHAUSTED", 3)
    # The client reads the type only; the operators' dead letter keeps the text.
    assert "RuntimeError" in done.error_message and "segfault" not in done.error_message
    (dead,) = queue.dead_letters()
    assert dead["job_id"] == job.job_id and dead["deliveries"] == "3"
    assert dead["reason"] == "RuntimeError: segfault in a stage"
    assert_drained(queue)


def test_a_job_whose_workers_keep_dying_is_given_up_by_claim(jobs, make_queue):
    queue = make_queue(max_deliveries=2)
    job = submit(jobs, queue)
    for consumer in ("w1", "w2"):  # each takes it and vanishes without a word
        assert queue.claim(consumer, block_ms=100).job_id == job.job_id
        time.sleep(LEASE_S + 0.05)
    calls = []
    assert not run_once(queue, jobs, "w3", lambda *a: calls.append(a), block_ms=0)
    done = jobs.get(job.job_id)
    assert calls == []
    assert (done.state, done.error_code) == ("FAILED", "JOB_RETRIES_EXHAUSTED")
    assert queue.dead_letters()[0]["deliveries"] == "3"
    assert_drained(queue)


def test_a_job_cancelled_while_queued_is_skipped(jobs, make_queue):
    queue = make_queue()
    job = submit(jobs, queue)
    jobs.request_cancel(job.job_id, "acme")
    calls = []
    assert run_once(queue, jobs, "w1", lambda *a: calls.append(a), block_ms=100)
    assert calls == [] and jobs.get(job.job_id).state == "CANCELLED"
    assert_drained(queue)


def test_a_running_job_stops_at_the_heartbeat_after_a_cancel(jobs, make_queue):
    queue = make_queue()
    job = submit(jobs, queue)
    steps = []

    def handler(job, delivery, heartbeat):
        heartbeat(stage="MOTION", progress=0.3)
        steps.append("motion")
        jobs.request_cancel(job.job_id, "acme")  # the API, meanwhile
        heartbeat(stage="RENDER", progress=0.6)
        steps.append("render")

    assert run_once(queue, jobs, "w1", handler, block_ms=100)
    done = jobs.get(job.job_id)
    assert steps == ["motion"]
    assert (done.state, done.cancel_requested, done.result) == ("CANCELLED", True, None)
    assert_drained(queue)


def test_a_result_that_cannot_be_stored_fails_the_job_without_retry(jobs, make_queue):
    queue = make_queue()
    job = submit(jobs, queue)
    calls = []

    def handler(job, delivery, heartbeat):
        calls.append(delivery.deliveries)
        return {"video": object()}

    done = drive(queue, jobs, job.job_id, handler)
    assert calls == [1]
    assert (done.state, done.error_code) == ("FAILED", "INTERNAL")
    assert_drained(queue)


def test_a_job_whose_record_is_gone_is_acked_and_skipped(jobs, make_queue):
    queue = make_queue()
    queue.enqueue("0" * 32, {})
    calls = []
    assert run_once(queue, jobs, "w1", lambda *a: calls.append(a), block_ms=100)
    assert calls == []
    assert_drained(queue)


def test_transient_errors_and_bugs_are_not_input_errors():
    assert not is_input_error(RuntimeError("x"))
    assert not is_input_error(TalkingFaceError("UNAVAILABLE", "x"))
    assert not is_input_error(TalkingFaceError("OVERLOADED", "x"))


# --- failures classified right (issue 19) ---------------------------------------------------


def _failing(times: int, error: Exception):
    """A handler that raises `error` on its first `times` runs, then succeeds."""
    runs = []

    def handler(job, delivery, heartbeat):
        runs.append(delivery.deliveries)
        if len(runs) <= times:
            raise error
        return {"runs": len(runs)}

    return handler, runs


def test_an_outage_is_ridden_out_without_using_up_the_deliveries(jobs, make_queue):
    """The store down for longer than the delivery limit's backoffs: before, the job failed
    JOB_RETRIES_EXHAUSTED after max_deliveries; now outage retries are not counted while the
    job is younger than the outage budget."""
    queue = make_queue(max_deliveries=2, outage_budget_s=60.0)
    job = submit(jobs, queue)
    handler, runs = _failing(4, TalkingFaceError("STORE_UNAVAILABLE", "connection refused"))
    done = drive(queue, jobs, job.job_id, handler)
    assert (done.state, done.result) == ("SUCCEEDED", {"runs": 5})
    assert runs == [1, 1, 1, 1, 1]  # none of the outage retries counted as a delivery
    assert_drained(queue)


def test_an_outage_longer_than_the_budget_counts_again(jobs, make_queue):
    queue = make_queue(max_deliveries=2, outage_budget_s=0.0)
    job = submit(jobs, queue)
    handler, runs = _failing(10, TalkingFaceError("UNAVAILABLE", "the stage is down"))
    done = drive(queue, jobs, job.job_id, handler)
    assert (done.state, done.error_code) == ("FAILED", "JOB_RETRIES_EXHAUSTED")
    assert runs == [1, 2]


def test_a_missing_scratch_object_is_retried_not_an_input_error(jobs, make_queue):
    """Before, STORE_OBJECT_NOT_FOUND (NOT_FOUND) failed the job for good even when the object
    was the job's own scratch output (deleted by a stale attempt's cleanup)."""
    queue = make_queue()
    job = submit(jobs, queue)
    missing = TalkingFaceError("STORE_OBJECT_NOT_FOUND", "no such object: work/j1/a1-1-0/lm3d.npy")
    handler, runs = _failing(1, missing)
    done = drive(queue, jobs, job.job_id, handler)
    assert (done.state, len(runs)) == ("SUCCEEDED", 2)
    # A missing input (not scratch) still fails at once.
    job2 = submit(jobs, queue)
    upload_gone = TalkingFaceError("STORE_OBJECT_NOT_FOUND", "no such object: uploads/t/u/data")
    handler, runs = _failing(1, upload_gone)
    done = drive(queue, jobs, job2.job_id, handler)
    assert (done.state, done.error_code, len(runs)) == ("FAILED", "STORE_OBJECT_NOT_FOUND", 1)


def test_a_job_past_its_deadline_fails_instead_of_running_or_retrying(jobs, make_queue):
    queue = make_queue(deadline_s=0.3)
    job = submit(jobs, queue)
    time.sleep(0.4)
    ran = []
    assert run_once(queue, jobs, "w1", lambda *a: ran.append(1), block_ms=100)
    done = jobs.get(job.job_id)
    assert (done.state, done.error_code, ran) == ("FAILED", "DEADLINE_EXCEEDED", [])
    assert "0.3 s of its submission" in done.error_message
    assert_drained(queue)
    # A job that fails transiently after its deadline is not retried again.
    job = submit(jobs, queue)

    def slow_then_fails(job, delivery, heartbeat):
        time.sleep(0.4)
        raise RuntimeError("transient")

    assert run_once(queue, jobs, "w1", slow_then_fails, block_ms=100)
    done = jobs.get(job.job_id)
    assert (done.state, done.error_code) == ("FAILED", "DEADLINE_EXCEEDED")
    assert "last error" in done.error_message
    assert_drained(queue)


# --- graceful scale-down (issue 19) -----------------------------------------------------------


def test_a_stopping_pool_hands_its_job_back_at_once_without_burning_a_delivery(jobs, make_queue):
    """SIGTERM of a worker (a scale-down): before, the pool stopped claiming and waited; the
    job in hand stayed pending until its lease ran out and came back as another delivery.
    Now a job that cannot finish in half the grace is handed back: QUEUED at once, and its
    next delivery is still its first."""
    from talkingface.broker.service import WorkerPool, WorkerSpec

    queue = make_queue(lease_ms=60_000)  # a takeover cannot be what brings the job back
    job = submit(jobs, queue)
    started, deliveries = threading.Event(), []

    def endless(job, delivery, heartbeat):
        deliveries.append(delivery.deliveries)
        started.set()
        while True:
            heartbeat(progress=0.3)
            time.sleep(0.05)

    pool = WorkerPool(jobs, [WorkerSpec(queue, endless, 1)], name="stopping")
    pool.start()
    assert started.wait(10)
    begun = time.monotonic()
    pool.stop(1.0)
    took = time.monotonic() - begun
    assert took < 3.0, took  # within its grace (and a little)
    back = jobs.get(job.job_id)
    assert (back.state, back.stage, back.progress) == ("QUEUED", "", 0.0)
    again = queue.claim("next", block_ms=2000)
    assert again is not None and again.job_id == job.job_id
    assert again.deliveries == 1 and deliveries == [1]
    queue.ack(again)
    assert_drained(queue)


def test_a_stopping_pool_lets_a_short_job_finish(jobs, make_queue):
    from talkingface.broker.service import WorkerPool, WorkerSpec

    queue = make_queue(lease_ms=60_000)
    job = submit(jobs, queue)
    started = threading.Event()

    def short(job, delivery, heartbeat):
        started.set()
        time.sleep(0.3)
        heartbeat(progress=0.9)
        return {"done": True}

    pool = WorkerPool(jobs, [WorkerSpec(queue, short, 1)], name="finishing")
    pool.start()
    assert started.wait(10)
    pool.stop(4.0)
    done = jobs.get(job.job_id)
    assert (done.state, done.result) == ("SUCCEEDED", {"done": True})
    assert_drained(queue)


def test_a_fenced_read_publishes_nothing(jobs, make_queue, redis_client):
    """A heartbeat without progress checks the lease in Redis (a fenced update with no field)
    but changes nothing and sends watchers no event; a lost lease still raises."""
    from talkingface.broker.jobs import events_key
    from talkingface.broker.queue import LeaseLost

    queue = make_queue(lease_ms=60_000)
    job = submit(jobs, queue)
    delivery = queue.claim("w1", block_ms=100)
    jobs.update(job.job_id, lease=delivery.lease, state="RUNNING")
    before = redis_client.xlen(events_key(job.job_id))
    current = jobs.update(job.job_id, lease=delivery.lease)
    assert current.state == "RUNNING"
    assert redis_client.xlen(events_key(job.job_id)) == before
    stranger = Delivery(delivery.queue, job.job_id, {}, delivery.message_id, 1, "w2")
    with pytest.raises(LeaseLost):
        jobs.update(job.job_id, lease=stranger.lease)
    queue.ack(delivery)


def test_the_final_record_is_handed_to_cleanup(jobs, make_queue):
    """After recording a job final, the worker hands the record to the handler's `cleanup`
    (which removes what the job's attempts left that the record does not name), once."""
    queue = make_queue()
    job = submit(jobs, queue)
    settled: list[Job] = []

    def handler(job, delivery, heartbeat):
        return {"video": {"key": f"results/acme/{job.job_id}/a1/video.mp4"}}

    handler.cleanup = settled.append  # type: ignore[attr-defined]
    done = drive(queue, jobs, job.job_id, handler)
    assert done.state == "SUCCEEDED"
    assert [(j.job_id, j.state, j.result) for j in settled] == [
        (job.job_id, "SUCCEEDED", done.result)
    ]
