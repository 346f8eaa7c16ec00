"""Running one queued job: claim, mark RUNNING, call the handler, store the outcome, then ack.

`run_once` is the whole worker protocol; a worker process calls it in a loop. The order of
its steps is what makes "exactly one result per job" hold on an at-least-once queue:

- the outcome (SUCCEEDED + result, FAILED + code, CANCELLED) is written to the job record
  before the message is acked, so a worker that dies in between leaves a pending message
  whose next delivery finds the job final and is simply acked;
- final states are final (`JobStore.update` refuses to change them atomically), so when two
  workers run one job (a lease taken over from a slow worker) only the first outcome sticks;
- every state change a worker makes is fenced by its lease (`JobStore.update(lease=...)`
  checks, in the same atomic Redis step, that the delivery is still this consumer's): a
  worker whose lease was taken over (a zombie: stopped, partitioned, too slow) can change
  neither the record nor the outcome; it drops what it made (`handler.discard(result)`, e.g.
  its own result object) and leaves the message to its new owner without acking.

Failures: a TalkingFaceError for bad input (its gRPC status is INVALID_ARGUMENT, NOT_FOUND or
FAILED_PRECONDITION, or PAYLOAD_TOO_LARGE) fails the job at once; but an object missing from
the job's own scratch space (`work/...`: STORE_OBJECT_NOT_FOUND) is the fleet's problem, not
the input's, and is retried. An outage (STORE_UNAVAILABLE, UNAVAILABLE: the object store or a
stage unreachable) is retried with backoff (at most OUTAGE_BACKOFF_MAX_S apart) without
counting against the delivery limit for `queue.outage_budget_s` from the job's submission, so
a store down for minutes does not fail every job in flight. Anything else is treated as
transient: the job goes back to QUEUED and is retried after `queue.backoff(deliveries)` until
the queue's delivery limit, when it fails with JOB_RETRIES_EXHAUSTED and is dead-lettered.
A job older than `queue.deadline_s` (from submission) fails with DEADLINE_EXCEEDED instead of
running or retrying again. A result that cannot be stored (not JSON) fails the job with
INTERNAL, without retries.

A stage replica that died under the job (a TalkingFaceError marked `stage_crash`, see
`talkingface.broker.stages`) is retried once, in case the replica died of something else;
the crashes are counted in the message's payload (`crashes`: stage -> count), and the second
crash of one stage fails the job with JOB_INPUT_CRASHED and dead-letters it for operators,
instead of letting one poison input take down a replica on every delivery.

The message a client reads is the TalkingFaceError's own (stages and handlers write those for
clients); any other exception is reported by its type name only, its text goes to the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from talkingface.broker.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, JobStore
from talkingface.broker.queue import Delivery, Lease, WorkQueue
from talkingface.broker.queue import LeaseLost as _LeaseLost
from talkingface.errors import PERMANENT_CODES, TalkingFaceError

log = logging.getLogger(__name__)

INPUT_ERROR_STATUSES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
# RESOURCE_EXHAUSTED also means "overloaded" (transient); these codes of it are not.
INPUT_ERROR_CODES = PERMANENT_CODES
MAX_ERROR_MESSAGE = 1000
CRASHES_ALLOWED = 1  # crashes of one stage on one job before the job fails
OUTAGE_CODES = frozenset({"STORE_UNAVAILABLE", "UNAVAILABLE"})
OUTAGE_BACKOFF_MAX_S = 30.0
SCRATCH_PREFIX = "work/"


class Cancelled(Exception):
    """Raised by the heartbeat when the job's cancellation was requested (or it finished
    elsewhere): the handler should stop and let it propagate."""


# Raised by the heartbeat and by fenced record writes when another worker has taken this
# delivery over (defined with the queue; re-exported here for handlers).
LeaseLost = _LeaseLost


class HandBack(Exception):
    """Raised by the heartbeat when the worker is shutting down (SIGTERM, a scale-down) and
    the job cannot finish in its grace: the handler stops, and the job goes back to its queue
    at once, without counting the delivery."""


class Heartbeat(Protocol):
    def __call__(
        self,
        stage: str | None = None,
        progress: float | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> Job: ...


Handler = Callable[[Job, Delivery, Heartbeat], "dict[str, Any] | None"]


def is_input_error(exc: BaseException) -> bool:
    """True for a TalkingFaceError that retrying cannot fix (the request itself is bad)."""
    if not isinstance(exc, TalkingFaceError):
        return False
    if exc.code == "STORE_OBJECT_NOT_FOUND" and SCRATCH_PREFIX in exc.message:
        return False  # the job's own scratch object (another attempt's, or a lost write)
    return exc.status in INPUT_ERROR_STATUSES or exc.code in INPUT_ERROR_CODES


def is_outage(exc: BaseException) -> bool:
    """The fleet could not be reached (store or stage): nothing wrong with the job."""
    return isinstance(exc, TalkingFaceError) and exc.code in OUTAGE_CODES


def _age_s(job: Job) -> float:
    return max(0.0, time.time() - job.created_at / 1000.0)


def _past_deadline(queue: WorkQueue, job: Job) -> bool:
    return queue.deadline_s > 0 and _age_s(job) > queue.deadline_s


def run_once(
    queue: WorkQueue,
    jobs: JobStore,
    consumer: str,
    handler: Handler,
    *,
    block_ms: int = 1000,
    stopping: threading.Event | None = None,
) -> bool:
    """Claim and process one delivery; False when none came within `block_ms`. Once
    `stopping` is set, the job in hand is handed back at its next heartbeat (HandBack).

    `handler(job, delivery, heartbeat)` does the work and returns the result to store (a
    JSON-able dict or None). It should call `heartbeat(stage=..., progress=...)` between steps,
    more often than the queue's lease: it renews the lease, records progress, and raises
    Cancelled or LeaseLost when the job must stop.
    """
    delivery = queue.claim(consumer, block_ms, on_dead_letter=lambda d: _give_up(jobs, d))
    if delivery is None:
        return False
    try:
        return _run(queue, jobs, delivery, handler, stopping)
    except LeaseLost:
        log.warning("lease lost; leaving the job to its new worker",
                    extra={"queue": queue.name, "job_id": delivery.job_id})  # fmt: skip
        return True


def _run(
    queue: WorkQueue,
    jobs: JobStore,
    delivery: Delivery,
    handler: Handler,
    stopping: threading.Event | None = None,
) -> bool:
    lease = delivery.lease
    context = {"queue": queue.name, "job_id": delivery.job_id, "delivery": delivery.deliveries}
    try:
        job = jobs.get(delivery.job_id)
    except TalkingFaceError as exc:
        if exc.code != "JOB_NOT_FOUND":
            raise
        log.warning("acking work for a job that no longer exists", extra=context)
        queue.ack(delivery)
        return True
    if job.cancel_requested and not job.terminal:
        _finish(jobs, job.job_id, lease, state=CANCELLED)
        job = jobs.get(job.job_id)
    if job.terminal:
        log.info("job already %s; acking its delivery", job.state, extra=context)
        queue.ack(delivery)
        return True
    if _past_deadline(queue, job):
        _fail_deadline(queue, jobs, delivery, job, context, handler=handler)
        return True
    job = _finish(jobs, job.job_id, lease, state=RUNNING, attempt=delivery.deliveries,
                  stage="", progress=0.0)  # fmt: skip
    if job is None:  # finished (cancelled) between the read and this update
        queue.ack(delivery)
        return True

    def heartbeat(
        stage: str | None = None,
        progress: float | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> Job:
        if stopping is not None and stopping.is_set():
            raise HandBack("the worker is shutting down")
        fields = {k: v for k, v in (("stage", stage), ("progress", progress),
                                    ("resume", checkpoint)) if v is not None}  # fmt: skip
        try:
            # One round trip: the fenced update checks the lease, renews it and records the
            # beat (a beat without fields changes nothing); LeaseLost when it was taken over.
            current = jobs.update(delivery.job_id, lease=lease, **fields)
        except TalkingFaceError as exc:
            if exc.code in ("JOB_ALREADY_FINISHED", "JOB_NOT_FOUND"):
                raise Cancelled(exc.message) from None
            raise
        if current.cancel_requested or current.terminal:
            raise Cancelled(f"job {delivery.job_id} was cancelled")
        return current

    try:
        result = handler(job, delivery, heartbeat)
    except LeaseLost:
        raise
    except HandBack:
        log.info("shutting down: handing the job back to its queue", extra=context)
        if _finish(jobs, job.job_id, lease, state=QUEUED, stage="", progress=0.0) is not None:
            queue.retry(delivery, 0.0, count=False)  # a delivery not burnt
        else:
            queue.ack(delivery)
        return True
    except Cancelled:
        log.info("job cancelled while running", extra=context)
        cancelled = _finish(jobs, job.job_id, lease, state=CANCELLED)
        if cancelled is not None:
            _cleanup(handler, cancelled, context)
        queue.ack(delivery)
        return True
    except Exception as exc:
        _handle_failure(queue, jobs, delivery, exc, context, job, handler)
        return True
    try:
        stored = _finish(jobs, job.job_id, lease, state=SUCCEEDED, result=result or {},
                         progress=1.0)  # fmt: skip
    except (TypeError, ValueError) as exc:  # a handler bug that no retry can fix
        log.error("handler returned a result that cannot be stored: %r", exc, extra=context)
        message = f"the job's result cannot be stored: {exc}"[:MAX_ERROR_MESSAGE]
        stored = _finish(jobs, job.job_id, lease, state=FAILED, error_code="INTERNAL",
                         error_message=message)  # fmt: skip
    except LeaseLost:
        _discard(handler, result, context)
        raise
    if stored is None:
        log.info("job finished elsewhere first; this outcome is dropped", extra=context)
        _discard(handler, result, context)
    else:
        _cleanup(handler, stored, context)
    queue.ack(delivery)
    return True


def _fail(
    jobs: JobStore,
    delivery: Delivery,
    code: str,
    message: str,
    handler: Handler | None = None,
    context: dict | None = None,
) -> None:
    """Fail the job (fenced by the delivery's lease) and, when this write made it final, let
    the handler clean up after it."""
    failed = _finish(jobs, delivery.job_id, delivery.lease, state=FAILED, error_code=code,
                     error_message=message[:MAX_ERROR_MESSAGE])  # fmt: skip
    if failed is not None:
        _cleanup(handler, failed, context or {"job_id": delivery.job_id})


def _cleanup(handler: Handler | None, final: Job, context: dict) -> None:
    """The job is final, recorded by this worker while it held the lease: hand the record to
    the handler's `cleanup`, which removes what every attempt of the job left and the record
    does not name (e.g. scratch space kept for resuming, and the result of an attempt killed
    between storing it and recording it, which no `discard` ever reached)."""
    cleanup = getattr(handler, "cleanup", None)
    if cleanup is None:
        return
    try:
        cleanup(final)
    except Exception:
        log.exception("could not clean up after the job", extra=context)


def _discard(handler: Handler, result: dict[str, Any] | None, context: dict) -> None:
    """Let the handler remove what it made for an outcome that was not recorded."""
    discard = getattr(handler, "discard", None)
    if discard is None or not result:
        return
    try:
        discard(result)
    except Exception:
        log.exception("could not discard a dropped outcome", extra=context)


def _fail_deadline(
    queue: WorkQueue,
    jobs: JobStore,
    delivery: Delivery,
    job: Job,
    context: dict,
    why: str = "",
    handler: Handler | None = None,
) -> None:
    log.warning("job past its deadline; failing it", extra=context)
    detail = (f"the job did not finish within {queue.deadline_s:g} s of its submission "
              f"({_age_s(job):.0f} s ago){why}")  # fmt: skip
    _fail(jobs, delivery, "DEADLINE_EXCEEDED", detail, handler, context)
    queue.ack(delivery)


def _handle_failure(
    queue: WorkQueue,
    jobs: JobStore,
    delivery: Delivery,
    exc: Exception,
    context: dict,
    job: Job | None = None,
    handler: Handler | None = None,
) -> None:
    if isinstance(exc, TalkingFaceError):
        message = f"{exc}"[:MAX_ERROR_MESSAGE]
    else:  # not written for clients: its text stays in the log
        log.error("job failed with an unexpected error", exc_info=exc, extra=context)
        message = f"internal error ({type(exc).__name__})"
    crashed = exc.metadata.get("stage_crash") if isinstance(exc, TalkingFaceError) else None
    if crashed:
        crashes = dict(delivery.payload.get("crashes") or {})
        crashes[crashed] = int(crashes.get(crashed, 0)) + 1
        delivery.payload["crashes"] = crashes  # carried over by retry()
        if crashes[crashed] > CRASHES_ALLOWED:
            log.error("the %s stage crashed on this job again; failing it", crashed,
                      extra=context)  # fmt: skip
            detail = (
                f"the {crashed} stage stopped while working on this job "
                f"{crashes[crashed]} times; the input is not retried"
            )
            _fail(jobs, delivery, "JOB_INPUT_CRASHED", detail, handler, context)
            queue.dead_letter(delivery, f"JOB_INPUT_CRASHED: {detail}")
            return
    if job is not None and _past_deadline(queue, job):
        _fail_deadline(queue, jobs, delivery, job, context, f"; last error: {message}", handler)
        return
    if job is not None and is_outage(exc) and _age_s(job) < queue.outage_budget_s:
        delay = min(queue.backoff(delivery.deliveries), OUTAGE_BACKOFF_MAX_S)
        log.warning("outage (%s); retrying in %.1f s, not counted", exc.code, delay,
                    extra=context)  # fmt: skip
        if _finish(jobs, delivery.job_id, delivery.lease, state=QUEUED, stage="",
                   progress=0.0) is not None:  # fmt: skip
            queue.retry(delivery, delay, count=False)
        else:
            queue.ack(delivery)
        return
    if is_input_error(exc):
        assert isinstance(exc, TalkingFaceError)
        log.info("job failed on its input: %s", exc.code, extra=context)
        _fail(jobs, delivery, exc.code, message, handler, context)
        queue.ack(delivery)
        return
    if delivery.deliveries >= queue.max_deliveries:
        log.error("job failed on its last delivery: %r", exc, extra=context)
        detail = f"gave up after {delivery.deliveries} deliveries; last error: {type(exc).__name__}"
        _fail(jobs, delivery, "JOB_RETRIES_EXHAUSTED", f"{detail}: {message}", handler, context)
        # The dead-letter stream is for operators: it keeps the exception's own text.
        queue.dead_letter(delivery, f"{type(exc).__name__}: {f'{exc}'[:MAX_ERROR_MESSAGE]}")
        return
    delay = queue.backoff(delivery.deliveries)
    log.warning("job failed, retrying in %.1f s: %r", delay, exc, extra=context)
    # The record first (fenced by the lease, which the retry gives up): if we die before the
    # retry, the message is still ours, and its next delivery runs the QUEUED job.
    if _finish(jobs, delivery.job_id, delivery.lease, state=QUEUED, stage="",
               progress=0.0) is not None:  # fmt: skip
        queue.retry(delivery, delay)
    else:  # finished meanwhile (cancelled): nothing to retry
        queue.ack(delivery)


def _give_up(jobs: JobStore, delivery: Delivery) -> None:
    """Fail the record of a job the queue dead-letters for too many deliveries."""
    _fail(jobs, delivery, "JOB_RETRIES_EXHAUSTED",
          f"gave up after {delivery.deliveries - 1} deliveries: each worker stopped before "
          "finishing it (crashed or lost its lease)")  # fmt: skip


def _finish(jobs: JobStore, job_id: str, lease: Lease | None, **fields: Any) -> Job | None:
    """`jobs.update` fenced by `lease`, or None when the job is already final or gone
    (someone else decided); LeaseLost when the delivery is no longer ours."""
    try:
        return jobs.update(job_id, lease=lease, **fields)
    except TalkingFaceError as exc:
        if exc.code in ("JOB_ALREADY_FINISHED", "JOB_NOT_FOUND"):
            return None
        raise
