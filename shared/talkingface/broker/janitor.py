"""Background upkeep in the broker API: scratch-space cleanup and promotion of due retries.

A render job writes its intermediate objects (tensors too big for a message, the renderer's
segments) under `work/<job_id>/` and deletes that prefix when it ends. Two cases leave
objects behind all the same: a worker killed mid-job (nobody knows its keys), and a shard the
renderer was still encoding when the job was cancelled (it lands after the cleanup). The
janitor lists `work/` and deletes the prefix of every job that is final (or whose record is
gone) and has not changed for `min_age_s`, so a slow straggler of a running job is never
touched. The broker runs it every TALKINGFACE_JANITOR_INTERVAL_SECONDS.

Retries wait out their backoff in each queue's delayed set, and only a worker's claim moved
them back into the stream; with no worker running (workers scaled to zero on an empty
stream) a retry would wait forever, unseen by a stream-length autoscaler. So the janitor also
promotes due retries of every queue every PROMOTE_INTERVAL_S (one small Lua call per queue),
whatever the sweep interval.

Given a Reconciler (broker/reconcile.py), it also re-queues, every `reconcile_interval_s`,
QUEUED or RUNNING jobs whose work message vanished from their queue.

At each sweep it also enforces retention (broker/retention.py, when given a Retention): uploads,
results and job records past their TTLs (per tenant), results whose record is gone, and the
dead-letter streams' caps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from talkingface.broker.jobs import JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.broker.reconcile import Reconciler
from talkingface.broker.retention import SCRATCH, Retention, SweepReport
from talkingface.errors import TalkingFaceError
from talkingface.storage import ObjectStore, StoreError

log = logging.getLogger(__name__)
PROMOTE_INTERVAL_S = 1.0


def sweep_scratch(store: ObjectStore, jobs: JobStore, min_age_s: float = 300.0) -> list[str]:
    """Delete the scratch prefixes of ended jobs; the ids of the jobs whose `work/<job_id>/`
    prefix was deleted, sorted (empty when `work/` cannot be listed)."""
    try:
        objects = store.list(SCRATCH)
    except StoreError as exc:
        log.warning("janitor cannot list %s/: %s", SCRATCH, exc)
        return []
    job_ids = sorted({info.key.split("/")[1] for info in objects if info.key.count("/") >= 2})
    now_ms = time.time() * 1000
    deleted: list[str] = []
    for job_id in job_ids:
        try:
            job = jobs.get(job_id)
        except TalkingFaceError:  # gone (expired or never a job): nobody will use it again
            job = None
        if job is not None and (not job.terminal or now_ms - job.updated_at < min_age_s * 1000):
            continue
        try:
            store.delete_prefix(f"{SCRATCH}/{job_id}")
            deleted.append(job_id)
        except StoreError as exc:
            log.warning("janitor cannot delete %s/%s: %s", SCRATCH, job_id, exc)
    if deleted:
        log.info("janitor removed scratch space of %d ended jobs", len(deleted))
    return deleted


def sweep_until_quiet(
    store: ObjectStore,
    jobs: JobStore,
    prefix: str = SCRATCH,
    quiet_s: float = 3.0,
    timeout_s: float = 60.0,
    interval_s: float = 0.5,
) -> int:
    """Sweep (min_age_s=0) until nothing has been under `prefix` for `quiet_s`: a shard a
    renderer was still encoding at a job's end lands after the job's cleanup, and nothing
    tells when the last one has. Returns the objects left under `prefix` (for benches and
    tests; the janitor's own loop just sweeps again later)."""
    deadline = time.monotonic() + timeout_s
    empty_since = None
    while time.monotonic() < deadline:
        sweep_scratch(store, jobs, min_age_s=0)
        if store.list(prefix):
            empty_since = None
        elif empty_since is None:
            empty_since = time.monotonic()
        elif time.monotonic() - empty_since >= quiet_s:
            break
        time.sleep(interval_s)
    return len(store.list(prefix))


def promote_due(queues: Sequence[WorkQueue]) -> int:
    """Move the due retries of every queue into its stream; how many moved."""
    moved = 0
    for queue in queues:
        moved += queue.promote_due()
    return moved


class Janitor:
    """In a daemon thread until stopped: `sweep` every `interval_s` (0 = never),
    `promote_due(queues)` every `promote_interval_s` and `reconciler.sweep()` every
    `reconcile_interval_s` (0 or no reconciler = never)."""

    def __init__(
        self,
        store: ObjectStore,
        jobs: JobStore,
        interval_s: float,
        *,
        queues: Sequence[WorkQueue] = (),
        promote_interval_s: float = PROMOTE_INTERVAL_S,
        retention: Retention | None = None,
        reconciler: Reconciler | None = None,
        reconcile_interval_s: float = 0.0,
    ) -> None:
        self.store, self.jobs, self.interval_s = store, jobs, interval_s
        self.retention = retention
        self.reconciler = reconciler if reconcile_interval_s > 0 else None
        self.reconcile_interval_s = reconcile_interval_s
        self.queues = list(queues)
        self.promote_interval_s = promote_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="janitor", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0 or self.queues or self.reconciler is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def sweep(self) -> SweepReport | None:
        """One sweep: scratch space, then retention; the retention report (None without)."""
        sweep_scratch(self.store, self.jobs, min_age_s=max(60.0, self.interval_s))
        return self.retention.sweep() if self.retention is not None else None

    def _loop(self) -> None:
        tick = self.promote_interval_s if self.queues else self.interval_s
        if self.interval_s > 0:
            tick = min(tick, self.interval_s)
        if self.reconciler is not None:
            tick = min(tick, self.reconcile_interval_s) if tick > 0 else self.reconcile_interval_s
        next_sweep = time.monotonic() + self.interval_s
        next_reconcile = time.monotonic() + self.reconcile_interval_s
        while not self._stop.wait(tick):
            if self.queues:
                try:
                    promote_due(self.queues)
                except Exception as exc:  # Redis away: the next tick tries again
                    log.warning("janitor cannot promote due retries: %r", exc)
            if self.interval_s > 0 and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.interval_s
                try:  # what it returns is for tests and operators; the log says how many
                    self.sweep()
                except Exception:
                    log.exception("janitor sweep failed")
            if self.reconciler is not None and time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + self.reconcile_interval_s
                try:
                    self.reconciler.sweep()
                except Exception as exc:  # Redis away: the next round tries again
                    log.warning("janitor cannot reconcile jobs with their queues: %r", exc)
