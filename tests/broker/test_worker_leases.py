"""The worker when a lease runs out: a slow worker taken over, a zombie that comes back after
the takeover, and worker processes SIGKILLed mid-job or between storing and acking. Each
ends with exactly one outcome recorded and nothing left in the queue (issues 8 and 19)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from talkingface.broker.queue import WorkQueue
from talkingface.broker.worker import run_once
from talkingface.errors import TalkingFaceError
from tests.broker.conftest import LEASE_MS, assert_drained, drive, submit

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = LEASE_MS / 1000


@pytest.mark.parametrize("slow_worker", ["heartbeats", "returns_a_result"])
def test_a_slow_worker_loses_its_lease_and_only_one_result_is_stored(jobs, make_queue, slow_worker):
    queue = make_queue()
    job = submit(jobs, queue)

    def fast(job, delivery, heartbeat):
        assert delivery.deliveries == 2
        return {"by": "fast"}

    def slow(job, delivery, heartbeat):
        time.sleep(LEASE_S + 0.05)  # stalls past its lease...
        assert run_once(queue, jobs, "fast", fast, block_ms=0)  # ...and is taken over
        if slow_worker == "heartbeats":
            heartbeat(progress=0.9)  # raises LeaseLost
            raise AssertionError("heartbeat should have raised")
        return {"by": "slow"}

    assert run_once(queue, jobs, "slow", slow, block_ms=100)
    done = jobs.get(job.job_id)
    assert (done.state, done.result, done.attempt) == ("SUCCEEDED", {"by": "fast"}, 2)
    assert_drained(queue)


class _Handler:
    """A handler with a `discard` hook, recording what the worker asked it to drop."""

    def __init__(self, run) -> None:
        self.run = run
        self.discarded: list[dict] = []

    def __call__(self, job, delivery, heartbeat):
        return self.run(job, delivery, heartbeat)

    def discard(self, result):
        self.discarded.append(result)


@pytest.mark.parametrize("zombie_ends", ["succeeds", "fails", "retries"])
def test_a_zombie_that_ends_first_changes_nothing(jobs, make_queue, zombie_ends):
    """Fencing (issue 19): the first worker stalls past its lease and another takes the job
    over; the stalled one comes back and ends the job BEFORE the new owner does. Its outcome
    (a result, an input error, a retry) is refused because it no longer holds the lease; the
    new owner's outcome is recorded, and the zombie's result is handed to `discard`.
    (Before fencing, the zombie's write was the first final one, so it stuck.)"""
    queue = make_queue()
    job = submit(jobs, queue)
    claimed, go_zombie = threading.Event(), threading.Event()
    owner_running, go_owner = threading.Event(), threading.Event()

    def zombie(job, delivery, heartbeat):
        claimed.set()
        go_zombie.wait(30)  # no heartbeat meanwhile: the lease runs out
        if zombie_ends == "succeeds":
            return {"by": "zombie"}
        if zombie_ends == "fails":
            raise TalkingFaceError("AUDIO_CORRUPT", "the zombie thinks so")
        raise RuntimeError("a transient error the zombie would retry")

    def owner(job, delivery, heartbeat):
        assert delivery.deliveries == 2
        owner_running.set()
        while not go_owner.wait(LEASE_S / 4):
            heartbeat(progress=0.5)  # keeps the lease
        return {"by": "owner"}

    zombie_handler, owner_handler = _Handler(zombie), _Handler(owner)
    z = threading.Thread(target=run_once, args=(queue, jobs, "zombie", zombie_handler),
                         kwargs={"block_ms": 100})  # fmt: skip
    z.start()
    assert claimed.wait(10)
    time.sleep(LEASE_S + 0.05)
    o = threading.Thread(target=run_once, args=(queue, jobs, "owner", owner_handler),
                         kwargs={"block_ms": 0})  # fmt: skip
    o.start()
    assert owner_running.wait(10)
    go_zombie.set()
    z.join(10)
    assert not z.is_alive()
    current = jobs.get(job.job_id)
    assert (current.state, current.result, current.attempt) == ("RUNNING", None, 2)
    go_owner.set()
    o.join(10)
    done = jobs.get(job.job_id)
    assert (done.state, done.result, done.attempt) == ("SUCCEEDED", {"by": "owner"}, 2)
    assert zombie_handler.discarded == ([{"by": "zombie"}] if zombie_ends == "succeeds" else [])
    assert owner_handler.discarded == []
    assert_drained(queue)


def _start_doomed_worker(redis_server, queue: WorkQueue, mode: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.broker.crash_worker"]
    argv += [redis_server.url, queue.name, str(queue.lease_ms), mode]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "shared")]))
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen[str], timeout_s: float = 30.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the worker process did not report in time"
    line = proc.stdout.readline()
    assert line, f"the worker process exited early with status {proc.wait()}"
    return line.strip()


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.stdout.close()


def test_a_worker_killed_mid_job_is_taken_over_and_finished_once(jobs, make_queue, redis_server):
    queue = make_queue()
    job = submit(jobs, queue)
    proc = _start_doomed_worker(redis_server, queue, "mid-job")
    try:
        assert _wait_for_line(proc) == f"working {job.job_id}"
        assert jobs.get(job.job_id).stage == "AUDIO_FEATURES"
    finally:
        _kill(proc)
    calls = []

    def handler(job, delivery, heartbeat):
        calls.append(delivery.deliveries)
        return {"by": "survivor"}

    done = drive(queue, jobs, job.job_id, handler, consumer="survivor")
    assert calls == [2]
    assert (done.state, done.result, done.attempt) == ("SUCCEEDED", {"by": "survivor"}, 2)
    assert_drained(queue)


def test_a_worker_killed_between_storing_and_acking_is_not_run_again(
    jobs, make_queue, redis_server
):
    queue = make_queue()
    job = submit(jobs, queue)
    proc = _start_doomed_worker(redis_server, queue, "before-ack")
    try:
        assert _wait_for_line(proc) == f"stored {job.job_id}"
    finally:
        _kill(proc)
    assert queue.pending() == 1
    calls = []
    done = drive(queue, jobs, job.job_id, lambda *a: calls.append(a), consumer="survivor")
    assert calls == []
    assert (done.state, done.result) == ("SUCCEEDED", {"by": "doomed"})
    assert_drained(queue)
