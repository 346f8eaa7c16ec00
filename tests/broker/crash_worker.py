"""A worker process for the crash tests: it takes one job, says so, and hangs until killed.

    python -m tests.broker.crash_worker REDIS_URL QUEUE LEASE_MS mid-job|before-ack

`mid-job` hangs inside the handler; `before-ack` stores the job's result and hangs before
acking, the narrowest window a crash can hit.
"""

from __future__ import annotations

import sys
import time

import redis

from talkingface.broker.jobs import JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.broker.worker import run_once

CONSUMER = "doomed"


def main(url: str, queue_name: str, lease_ms: str, mode: str) -> None:
    client = redis.Redis.from_url(url)
    queue = WorkQueue(client, queue_name, lease_ms=int(lease_ms))
    jobs = JobStore(client, ttl_s=3600)
    if mode == "mid-job":

        def handler(job, delivery, heartbeat):
            heartbeat(stage="AUDIO_FEATURES", progress=0.1)
            print(f"working {job.job_id}", flush=True)
            time.sleep(600)

        run_once(queue, jobs, CONSUMER, handler, block_ms=10_000)
    elif mode == "before-ack":
        delivery = queue.claim(CONSUMER, block_ms=10_000)
        jobs.update(delivery.job_id, state="RUNNING", attempt=delivery.deliveries)
        jobs.update(delivery.job_id, state="SUCCEEDED", progress=1.0, result={"by": CONSUMER})
        print(f"stored {delivery.job_id}", flush=True)
        time.sleep(600)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
