"""`talkingface bench chaos`: no job lost, none done twice, while the fleet is being broken.

Starts a whole fleet on this machine, all real parts: a private redis-server persisting to an
append-only file, moto's S3 server behind a TCP proxy of this module, the four stage
applications on local Ray Serve (tiny models) behind a second proxy, the broker API in this
process (no workers of its own) and `talkingface worker --queues render` child processes.
It submits `jobs` short render jobs from `tenants` tenants (inline audio, one idempotency
key each, a refused submission retried like a client would) spread over a fault schedule:

- `worker_kill`: SIGKILL of a worker, a replacement started;
- `worker_stop`: SIGSTOP of a worker for a few lease lengths, then SIGCONT (its lease is
  taken over meanwhile: whatever it writes after waking must be fenced off);
- `worker_term`: SIGTERM of a worker (a scale-down: graceful), a replacement started;
- `redis_kill`: `kill -9` of Redis, restarted from its AOF on the same port after a moment;
- `s3_outage`: the S3 proxy closes its listener and drops its connections (connection
  refused) for `s3_outage_s`, then listens again; moto keeps its objects;
- `replica_kill`: a Ray Serve replica actor killed (the renderer's when there is one);
- `stage_slow`: the stages proxy holds every byte for longer than the stage deadline.

Each fault is logged with its time. Once every fault is over, it waits (at most
`drain_timeout_s`) for every job to reach a final state, sweeps scratch space as the janitor
does and reports one JSON object:

- `submitted`, `succeeded`, `failed_by_code`, `cancelled`, `refused_by_code` (submissions
  never accepted, by code);
- `lost`: accepted jobs with no final state at the end (still queued or running, or their
  record gone: a job id the client was given that Redis no longer knows);
- `duplicated`: jobs with more than one object under `results/<tenant>/<job_id>/`, or whose
  result object's sha256 differs from the job record's; `results_of_unsucceeded`: result
  objects of jobs that did not succeed (written by an attempt that should have been fenced);
- `attempts`: histogram of the job records' `attempt`; `latency_s`: p50/p99/max from
  submission to final state (the record's own timestamps, Redis clock);
- `scratch_left`: objects under `work/` after every job is final and the janitor's sweep
  (`sweep_scratch(min_age_s=0)`) has found nothing more for a few seconds;
- `unexplained_failures`: failed jobs whose code is not in `ALLOWED_FAILURES` for a fault
  of the schedule; `queue_left`: messages still pending, queued or dead-lettered;
- `faults` (the log), `durations`, `settings` (the fleet's timings), the machine, and `logs`:
  the folder with the workers', Redis's and moto's logs (kept).

`ALLOWED_FAILURES` names the only codes a job may fail with here: each names an injected
fault. The acceptance (issue 19): `--jobs 200` on 2 cores, 0 lost, 0 duplicated, >= 99 %
succeeded, no unexplained failure, no scratch left.

The tiny models (a motion checkpoint and a trained avatar bundle, as tests/fixtures/motion.py
makes them) are trained once into `<TALKINGFACE_CACHE_DIR>/bench-chaos/` and reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

FAULTS = (
    "worker_kill", "worker_stop", "s3_outage", "worker_term", "replica_kill", "redis_kill",
    "stage_slow",
)  # fmt: skip
# The only codes a job may fail with in a chaos run, each with the faults that explain it:
# a job whose deliveries were all spent on injected transient faults (outages, deadlines,
# takeovers) ends JOB_RETRIES_EXHAUSTED; one whose stage replica was killed under it twice
# ends JOB_INPUT_CRASHED (docs/broker.md, "Jobs and queues").
ALLOWED_FAILURES: dict[str, tuple[str, ...]] = {
    "JOB_RETRIES_EXHAUSTED": FAULTS,
    "JOB_INPUT_CRASHED": ("replica_kill",),
}
TARGETS = {"lost": 0, "duplicated": 0, "succeeded_fraction": 0.99, "scratch_left": 0}
START_TIMEOUT_S = 60.0
AUDIO_SECONDS = 0.8
SHARD_FRAMES = 16
MODELS_VERSION = "1"  # bump when the cached tiny models must be trained again


def run(
    jobs: int = 200,
    *,
    tenants: int = 4,
    workers: int = 2,
    seed: int = 0,
    s3_outage_s: float = 60.0,
    redis_down_s: float = 3.0,
    stop_s: float | None = None,
    slow_s: float | None = None,
    gap_s: float = 10.0,
    lease_s: float = 3.0,
    stage_timeout_s: float = 15.0,
    drain_timeout_s: float = 900.0,
    models: tuple[Path, Path, Path] | None = None,
    serve_port: int | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run the chaos benchmark (see the module docstring) and return its report.

    `models` is (CKPT_DIR, avatar dir, bundle dir) to use instead of the cached tiny models;
    `serve_port` the gRPC port of a Ray Serve already running in this process's Ray (the
    applications are deployed there) instead of starting Ray here; `stop_s` (SIGSTOP length,
    default 3 leases) and `slow_s` (how long the stages proxy holds bytes, default the stage
    timeout + 5 s) are derived from the timings when not given.
    """
    if jobs < 1 or tenants < 1 or workers < 1:
        raise SystemExit("talkingface bench chaos: --jobs, tenants and workers must be >= 1")
    stop_s = 3 * lease_s if stop_s is None else stop_s
    slow_s = stage_timeout_s + 5.0 if slow_s is None else slow_s
    durations = {"worker_stop": stop_s, "s3_outage": s3_outage_s, "redis_kill": redis_down_s,
                 "stage_slow": slow_s}  # fmt: skip
    started = time.monotonic()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tf-bench-chaos-"))
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        if models is None:
            models = _tiny_models(_cache_root())
        timings["models_s"] = round(time.monotonic() - started, 1)
        fleet = stack.enter_context(
            _Fleet(root, models, workers, lease_s, stage_timeout_s, serve_port, tenants)
        )
        timings["fleet_start_s"] = round(time.monotonic() - started - timings["models_s"], 1)
        report = _chaos(fleet, jobs, random.Random(seed), durations, gap_s, drain_timeout_s,
                        timings)  # fmt: skip
    timings["total_s"] = round(time.monotonic() - started, 1)
    report.update(
        durations=timings, seed=seed, targets=TARGETS,
        allowed_failures={k: list(v) for k, v in ALLOWED_FAILURES.items()},
        settings={"jobs": jobs, "tenants": tenants, "workers": workers, "lease_s": lease_s,
                  "stage_timeout_s": stage_timeout_s, "gap_s": gap_s, **fleet.timings,
                  **{f"{k}_s": v for k, v in durations.items()}},
        machine={"cpus": os.cpu_count(), "python": platform.python_version()},
    )  # fmt: skip
    # The workers', Redis's and moto's logs: kept for a post-mortem when a target was missed
    # (or the caller chose the folder), removed after a clean run.
    keep = workdir is not None or not passed(report)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    report["logs"] = str(root) if keep else None
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m talkingface.bench.chaos [--jobs N] [--seed S] [--s3-outage-s S]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="talkingface bench chaos")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--s3-outage-s", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    report = run(args.jobs, seed=args.seed, s3_outage_s=args.s3_outage_s, workers=args.workers)
    print(json.dumps(report, sort_keys=True))
    return 0 if passed(report) else 1


def passed(report: dict[str, Any]) -> bool:
    """Whether a report meets the acceptance: TARGETS, no unexplained failure, no refused
    submission, and every fault injected."""
    accepted = report["submitted"] or 1
    return (report["lost"] == 0 and report["duplicated"] == 0 and report["scratch_left"] == 0
            and not report["unexplained_failures"] and not report["refused_by_code"]
            and all("error" not in fault for fault in report["faults"])
            and report["succeeded"] / accepted >= TARGETS["succeeded_fraction"])  # fmt: skip


# --- the run --------------------------------------------------------------------------------


def _chaos(fleet, jobs, rng, durations, gap_s, drain_timeout_s, timings) -> dict[str, Any]:
    from talkingface.broker.jobs import JobStore

    schedule = _schedule(durations, gap_s)
    window = schedule[-1][0] + durations.get(schedule[-1][1], 0.0)
    t0 = time.monotonic()
    faults: list[dict[str, Any]] = []
    fault_thread = threading.Thread(
        target=_run_faults, args=(fleet, schedule, durations, rng, t0, faults), daemon=True
    )
    submitted: dict[str, tuple[str, str]] = {}  # job_id -> (tenant, idempotency key)
    refused: Counter[str] = Counter()
    submit_retries = Counter[str]()
    fault_thread.start()
    _submit_all(fleet, jobs, window, t0, submitted, refused, submit_retries)
    timings["submit_s"] = round(time.monotonic() - t0, 1)
    fault_thread.join()
    timings["faults_s"] = round(time.monotonic() - t0, 1)

    store = JobStore(fleet.redis_client())
    final = _drain(store, list(submitted), drain_timeout_s)
    timings["drain_s"] = round(time.monotonic() - t0 - timings["faults_s"], 1)
    report = _account(fleet, store, submitted, final)
    report["refused_by_code"] = dict(refused)
    report["submit_retries_by_code"] = dict(submit_retries)
    report["faults"] = faults
    report["unexplained_failures"] = {
        code: n for code, n in report["failed_by_code"].items()
        if not set(ALLOWED_FAILURES.get(code, ())) & {f["fault"] for f in faults}
    }  # fmt: skip
    return report


def _schedule(durations: dict[str, float], gap_s: float) -> list[tuple[float, str]]:
    """(seconds from the start, fault) for every fault kind, one after the other."""
    out, at = [], gap_s
    for fault in FAULTS:
        out.append((at, fault))
        at += durations.get(fault, 0.0) + gap_s
    return out


def _run_faults(fleet, schedule, durations, rng, t0, log) -> None:
    for at, fault in schedule:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        entry: dict[str, Any] = {"fault": fault, "t_s": round(time.monotonic() - t0, 2)}
        try:
            entry["detail"] = fleet.inject(fault, durations.get(fault, 0.0), rng)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["end_s"] = round(time.monotonic() - t0, 2)
        log.append(entry)


def _submit_all(fleet, jobs, window, t0, submitted, refused, retries) -> None:
    """Submit `jobs` jobs spread evenly over `window` seconds, round robin over the tenants;
    a submission refused for a transient reason is retried with its idempotency key."""
    from talkingface.broker.client import BrokerClient

    lock = threading.Lock()
    tenants = fleet.tenants

    def submitter(k: int) -> None:
        tenant, avatar = tenants[k]
        with BrokerClient(fleet.broker_address, tenant, timeout_s=15.0, api_key="") as client:
            for i in range(k, jobs, len(tenants)):
                delay = t0 + window * i / jobs - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                key = f"chaos-{fleet.run_id}-{i}"
                job_id, code = _submit_one(client, avatar, fleet.audio, key, retries, lock)
                with lock:
                    if job_id:
                        submitted[job_id] = (tenant, key)
                    else:
                        refused[code] += 1

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(len(tenants))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


TRANSIENT_SUBMIT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "STORE_UNAVAILABLE", "INTERNAL",
                    "RATE_LIMITED", "OVERLOADED", "CANCELLED"}  # fmt: skip
SUBMIT_TIMEOUT_S = 300.0


def _submit_one(client, avatar, audio, key, retries, lock) -> tuple[str, str]:
    from talkingface.errors import TalkingFaceError

    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while True:
        try:
            return client.submit_render(avatar, audio=audio, idempotency_key=key).job_id, ""
        except TalkingFaceError as exc:
            if exc.code not in TRANSIENT_SUBMIT or time.monotonic() > deadline:
                return "", exc.code
            with lock:
                retries[exc.code] += 1
            time.sleep(0.5)


def _drain(store, job_ids: list[str], timeout_s: float) -> dict[str, Any]:
    """The final record of each job (None: not final, or gone) once all are final or the
    timeout has passed."""
    from talkingface.errors import TalkingFaceError

    final: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for job_id in job_ids:
            if job_id in final:
                continue
            try:
                job = store.get(job_id)
            except TalkingFaceError:
                continue  # JOB_NOT_FOUND (lost) or Redis not back yet: look again
            except Exception:
                continue
            if job.terminal:
                final[job_id] = job
        if len(final) == len(job_ids) or time.monotonic() > deadline:
            return final
        time.sleep(0.5)


def _account(fleet, jobs, submitted, final) -> dict[str, Any]:
    from talkingface.broker.janitor import sweep_until_quiet
    from talkingface.broker.queue import WorkQueue

    store = fleet.store
    codes: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    latencies: list[float] = []
    succeeded = cancelled = duplicated = orphans = 0
    duplicates: list[dict[str, Any]] = []
    for job_id, (tenant, _) in submitted.items():
        job = final.get(job_id)
        objects = store.list(f"results/{tenant}/{job_id}", detailed=True)
        if job is None:
            continue
        attempts[str(job.attempt)] += 1
        latencies.append((job.updated_at - job.created_at) / 1000)
        if job.state == "SUCCEEDED":
            succeeded += 1
            video = (job.result or {}).get("video") or {}
            if len(objects) != 1 or objects[0].sha256 != video.get("sha256"):
                duplicated += 1
                duplicates.append({"job_id": job_id, "record": video,
                                   "objects": {o.key: o.sha256 for o in objects}})  # fmt: skip
        else:
            if job.state == "FAILED":
                codes[job.error_code or "UNSPECIFIED"] += 1
            else:
                cancelled += 1
            orphans += len(objects)
            if len(objects) > 1:
                duplicated += 1
                duplicates.append({"job_id": job_id, "objects": [o.key for o in objects]})
    lost = sorted(set(submitted) - set(final))
    scratch = sweep_until_quiet(store, jobs)
    queue = WorkQueue.from_settings(fleet.redis_client(), "render", fleet.settings)
    latencies.sort()
    return {
        "submitted": len(submitted), "succeeded": succeeded, "cancelled": cancelled,
        "failed_by_code": dict(codes), "lost": len(lost), "lost_jobs": lost[:20],
        "duplicated": duplicated, "duplicates": duplicates[:20],
        "results_of_unsucceeded": orphans,
        "attempts": dict(sorted(attempts.items(), key=lambda kv: int(kv[0]))),
        "latency_s": {"p50": _pct(latencies, 0.50), "p99": _pct(latencies, 0.99),
                      "max": round(latencies[-1], 2) if latencies else None},
        "scratch_left": scratch,
        "queue_left": {"queued": queue.depth(), "pending": queue.pending(),
                       "dead": len(queue.dead_letters(1000))},
    }  # fmt: skip


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


# --- the fleet ------------------------------------------------------------------------------


class _Fleet:
    """Redis (AOF), moto behind the S3 proxy, the stages behind the stages proxy, the broker
    API in this process and worker child processes; `inject` breaks one part."""

    def __init__(self, root, models, workers, lease_s, stage_timeout_s, serve_port, tenants):
        self.root = Path(root)
        self.ckpt, self.avatar_dir, self.bundle = (Path(p) for p in models)
        self.n_workers = workers
        self.lease_s = lease_s
        self.stage_timeout_s = stage_timeout_s
        self.serve_port = serve_port
        self.n_tenants = tenants
        self.run_id = uuid.uuid4().hex[:8]
        self.procs: list[subprocess.Popen] = []  # moto
        self.workers: list[subprocess.Popen] = []
        self.worker_logs: dict[int, Path] = {}
        self.retired: list[subprocess.Popen] = []
        self.redis: Any = None
        self.proxies: list[TcpProxy] = []
        self.broker: Any = None
        self._ray_started = False
        self.apps: list[str] = []
        self._clients: list[Any] = []
        self.timings: dict[str, float] = {}

    # -- start and stop

    def __enter__(self) -> _Fleet:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        from talkingface.broker.avatars import AvatarRegistry
        from talkingface.broker.service import broker_server
        from talkingface.config import Settings
        from talkingface.localfleet import PrivateRedis, free_port, local_serve_config
        from talkingface.render.commands import bundle_files
        from talkingface.serving.fleet import deploy_fleet
        from talkingface.storage import MinioStore

        self.root.mkdir(parents=True, exist_ok=True)
        self.redis = PrivateRedis(self.root / "redis")
        self.redis.start()
        moto_port = free_port()
        s3_env = dict(os.environ, AWS_ACCESS_KEY_ID="chaos", AWS_SECRET_ACCESS_KEY="chaos-secret",
                      AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
        with open(self.root / "moto.log", "wb") as log:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                env=s3_env, stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        _wait_port(moto_port, self.procs[-1], "moto.server", self.root / "moto.log")
        s3_proxy = TcpProxy(moto_port, "s3").start()
        self.proxies.append(s3_proxy)
        if self.serve_port is None:
            config = local_serve_config(port=free_port())
        else:
            config = local_serve_config().with_grpc_port(self.serve_port)
        stages_proxy = TcpProxy(config.grpc_port, "stages").start()
        self.proxies.append(stages_proxy)
        self.s3_proxy, self.stages_proxy = s3_proxy, stages_proxy
        bucket = f"tf-chaos-{self.run_id}"
        self.timings = {"queue_max_deliveries": 10, "queue_retry_base_s": 1.0,
                        "queue_retry_max_s": 20.0}  # fmt: skip
        self.env = {
            "TALKINGFACE_STORE": "minio",
            "TALKINGFACE_MINIO_ENDPOINT": f"127.0.0.1:{s3_proxy.port}",
            "TALKINGFACE_MINIO_ACCESS_KEY": "chaos",
            "TALKINGFACE_MINIO_SECRET_KEY": "chaos-secret",
            "TALKINGFACE_MINIO_REGION": "us-east-1",
            "TALKINGFACE_MINIO_BUCKET": bucket,
            "TALKINGFACE_REDIS_URL": self.redis.url,
            "TALKINGFACE_STAGES_ADDRESS": f"127.0.0.1:{stages_proxy.port}",
            "TALKINGFACE_MOTION_CHECKPOINT": str(self.ckpt / "motion"),
            "TALKINGFACE_DEVICE": "cpu",
            "TALKINGFACE_CACHE_DIR": str(self.root / "cache"),
            "TALKINGFACE_GRPC_HOST": "127.0.0.1",
            "TALKINGFACE_GRPC_PORT": "0",
            "TALKINGFACE_METRICS_PORT": "0",
            "TALKINGFACE_QUEUE_LEASE_SECONDS": str(self.lease_s),
            "TALKINGFACE_QUEUE_MAX_DELIVERIES": str(self.timings["queue_max_deliveries"]),
            "TALKINGFACE_QUEUE_RETRY_BASE_SECONDS": str(self.timings["queue_retry_base_s"]),
            "TALKINGFACE_QUEUE_RETRY_MAX_SECONDS": str(self.timings["queue_retry_max_s"]),
            "TALKINGFACE_STAGE_TIMEOUT_SECONDS": str(self.stage_timeout_s),
            "TALKINGFACE_SHUTDOWN_GRACE_S": "10",
            "TALKINGFACE_RENDER_SHARD_FRAMES": str(SHARD_FRAMES),
            "TALKINGFACE_RENDER_PARALLEL_SHARDS": "2",
            "TALKINGFACE_BROKER_WORKERS": "0",
            "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
            "TALKINGFACE_BROKER_AUTH": "off",
            "TALKINGFACE_QUOTA_ACTIVE_JOBS": "0",
            "TALKINGFACE_RATE_SUBMIT_PER_SECOND": "100000",
            "TALKINGFACE_RATE_SUBMIT_BURST": "100000",
            "TALKINGFACE_LOG_FORMAT": "text",
            "TALKINGFACE_LOG_LEVEL": "INFO",
            "TALKINGFACE_STAGE_SECRET": f"chaos-{uuid.uuid4().hex}",
        }
        self.settings = Settings.from_env(self.env)
        # The bench's own view of the store goes to moto directly: its checks never wait
        # for the outage it injects.
        self.store = MinioStore(f"127.0.0.1:{moto_port}", "chaos", "chaos-secret",
                                bucket=bucket, region="us-east-1")  # fmt: skip
        stage_settings = dataclasses.replace(self.settings, metrics_port=0)
        deploy_fleet(config, stage_settings, start=self.serve_port is None,
                     num_cpus=max(os.cpu_count() or 1, 8))  # fmt: skip
        self._ray_started = self.serve_port is None
        self.apps = [app["name"] for app in config.applications]
        files = bundle_files(self.bundle)
        registry = AvatarRegistry(self.redis_client())
        self.tenants: list[tuple[str, str]] = []
        for k in range(self.n_tenants):
            tenant, avatar = f"chaos-{k}", f"chaos-{self.run_id}-{k}"
            self.store.publish_version(f"avatars/{avatar}", files)
            registry.claim(tenant, f"Chaos {k}", avatar_id=avatar)
            self.tenants.append((tenant, avatar))
        self.audio = _speech(self.avatar_dir / "audio.wav", AUDIO_SECONDS)
        self.broker = broker_server(self.settings)
        self.broker.start()
        self.broker.warm_up()
        self.broker_address = f"127.0.0.1:{self.broker.port}"
        for _ in range(self.n_workers):
            self._start_worker()
        self.wait_workers()

    def redis_client(self):
        import redis

        client = redis.Redis.from_url(self.redis.url, socket_timeout=10,
                                      retry_on_timeout=True)  # fmt: skip
        self._clients.append(client)
        return client

    def __exit__(self, *exc) -> None:
        from talkingface.localfleet import stop_child

        for proc in self.workers + self.retired:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGCONT)
            stop_child(proc, 15)
        if self.broker is not None:
            self.broker.stop(grace=1.0)
        if self._ray_started:
            import ray
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        elif self.apps:  # a Serve that is not ours: take our applications off it again
            from ray import serve

            for app in self.apps:
                with contextlib.suppress(Exception):
                    serve.delete(app)
        for proxy in self.proxies:
            proxy.stop()
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        for proc in self.procs:
            stop_child(proc, 15)
        if self.redis is not None:
            self.redis.stop()

    # -- workers

    def _start_worker(self) -> subprocess.Popen:
        n = len(self.workers) + len(self.retired)
        env = {**os.environ, **self.env}
        path = self.root / f"worker-{n}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "talkingface.cli", "worker", "--queues", "render"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.workers.append(proc)
        self.worker_logs[proc.pid] = path
        return proc

    def wait_workers(self, timeout_s: float = 180.0) -> None:
        """Until every worker has started its pool (its start line in its log)."""
        deadline = time.monotonic() + timeout_s
        for proc in self.workers:
            log = self.worker_logs[proc.pid]
            while b"talkingface worker:" not in log.read_bytes():
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited at start-up; see {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not start within {timeout_s:.0f} s: {log}")
                time.sleep(0.2)

    def _busy_pids(self) -> set[int]:
        """Pids of the workers holding a render delivery (their consumer names in the work
        stream's pending list: `<host>-<pid>-render-<i>`)."""
        import redis

        try:
            summary = self.redis_client().xpending("tf:queue:render", "workers")
        except redis.RedisError:
            return set()
        pids = set()
        for consumer in summary.get("consumers") or []:
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else ""
            with contextlib.suppress(ValueError, IndexError):
                pids.add(int(name.rsplit("-", 3)[-3]))
        return pids

    def _victim(self, rng: random.Random, wait_s: float = 15.0) -> subprocess.Popen:
        """A live worker, one in the middle of a job when one is within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            alive = [p for p in self.workers if p.poll() is None]
            if not alive:
                raise RuntimeError("no live worker to break")
            busy = self._busy_pids()
            working = [p for p in alive if p.pid in busy]
            if working or time.monotonic() > deadline:
                return rng.choice(working or alive)
            time.sleep(0.2)

    def _retire(self, proc: subprocess.Popen) -> None:
        self.workers.remove(proc)
        self.retired.append(proc)

    # -- faults

    def inject(self, fault: str, duration_s: float, rng: random.Random) -> dict[str, Any]:
        """Break one part of the fleet (blocking for the fault's duration); what was done."""
        if fault in ("worker_kill", "worker_stop", "worker_term"):
            proc = self._victim(rng)
            detail: dict[str, Any] = {"pid": proc.pid}
            if fault == "worker_kill":
                proc.kill()
                proc.wait(30)
                self._retire(proc)
                detail["replacement_pid"] = self._start_worker().pid
            elif fault == "worker_stop":
                proc.send_signal(signal.SIGSTOP)
                time.sleep(duration_s)
                proc.send_signal(signal.SIGCONT)
                detail["stopped_s"] = duration_s
            else:
                proc.terminate()
                self._retire(proc)
                detail["replacement_pid"] = self._start_worker().pid
                begun = time.monotonic()
                try:
                    detail["exit_code"] = proc.wait(60)
                except subprocess.TimeoutExpired:
                    detail["exit_code"] = None  # still draining after 60 s: killed at the end
                detail["exit_s"] = round(time.monotonic() - begun, 2)
            return detail
        if fault == "redis_kill":
            return self._redis_kill(duration_s)
        if fault == "s3_outage":
            self.s3_proxy.outage(duration_s)
            return {"down_s": duration_s, "port": self.s3_proxy.port}
        if fault == "stage_slow":
            self.stages_proxy.hold(duration_s)
            time.sleep(duration_s)
            return {"held_s": duration_s, "stage_timeout_s": self.stage_timeout_s}
        if fault == "replica_kill":
            return _kill_replica(rng, self.apps)
        raise ValueError(f"unknown fault {fault!r}")

    def _redis_kill(self, down_s: float) -> dict[str, Any]:
        proc = self.redis.proc
        proc.kill()
        proc.wait(30)
        time.sleep(down_s)
        begun = time.monotonic()
        _restart_redis(self.redis)
        return {"pid": proc.pid, "down_s": down_s, "port": self.redis.port,
                "restart_s": round(time.monotonic() - begun, 2)}  # fmt: skip


def _restart_redis(private) -> None:
    """Start `private` (a killed talkingface.localfleet.PrivateRedis) again on its port, from
    the AOF in its directory (PrivateRedis.start picks a new port), and wait until it has
    loaded it."""
    import redis

    binary = shutil.which("redis-server")
    log_path = private.directory / "redis-server.log"
    argv = [binary, "--port", str(private.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir",
            str(private.directory), "--daemonize", "no", "--logfile", str(log_path)]  # fmt: skip
    client = redis.Redis.from_url(private.url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT_S
    private.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        while time.monotonic() < deadline:
            if private.proc.poll() is not None:  # the port not free yet: try again
                time.sleep(0.2)
                private.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.STDOUT)  # fmt: skip
                continue
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not come back on port {private.port}; see "
                           f"{log_path}")  # fmt: skip
    finally:
        client.close()


def _kill_replica(rng: random.Random, apps: list[str]) -> dict[str, Any]:
    """Kill one Ray Serve replica actor of the fleet's applications `apps` (the renderer's if
    it has one); Serve starts another."""
    import ray

    def app_of(name: str) -> str:  # SERVE_REPLICA::<application>#<deployment>#<id>
        return name.split("::", 1)[-1].split("#", 1)[0]

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA") and app_of(a["name"]) in apps]  # fmt: skip
    if not replicas:
        raise RuntimeError(f"no Ray Serve replica actor of {apps} found")
    renderers = [a for a in replicas if app_of(a["name"]) == "renderer"]
    actor = rng.choice(sorted(renderers or replicas, key=lambda a: a["name"]))
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    return {"replica": actor["name"]}


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start-up; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT_S:.0f} s")


def _speech(path: Path, seconds: float) -> bytes:
    from talkingface.media import read_wav, write_wav

    samples, rate = read_wav(path)
    buffer = io.BytesIO()
    write_wav(buffer, samples[: int(seconds * rate)], rate)
    return buffer.getvalue()


# --- the TCP proxy --------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`, one thread per direction of each
    connection. `outage(s)` closes the listener and drops every connection for `s` seconds
    (connection refused), then listens again on the same port; `hold(s)` delays every byte
    received in the next `s` seconds until they are over."""

    def __init__(self, target_port: int, name: str = "proxy", port: int = 0) -> None:
        from talkingface.localfleet import free_port

        self.target = ("127.0.0.1", target_port)
        self.name = name
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._hold_until = 0.0
        self.dropped = 0

    def start(self) -> TcpProxy:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        sock.listen(256)
        sock.settimeout(0.2)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True,
                         name=f"{self.name}-accept").start()  # fmt: skip
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _close(conn)
        self.dropped += len(conns) // 2

    def outage(self, seconds: float) -> None:
        self.stop()
        time.sleep(seconds)
        self.start()

    def hold(self, seconds: float) -> None:
        self._hold_until = time.monotonic() + seconds

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._listener is not listener:  # accepted as the outage began
                _close(client)
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                wait = self._hold_until - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# --- the tiny models ------------------------------------------------------------------------


def _cache_root() -> Path:
    from talkingface.config import Settings

    return Path(Settings.from_env().cache_dir) / "bench-chaos"


def _tiny_models(root: Path) -> tuple[Path, Path, Path]:
    """(CKPT_DIR, avatar dir, bundle dir) of tiny models under `root`, trained there the first
    time as tests/fixtures/motion.py does."""
    import argparse

    ckpt, avatar, bundle, done = root / "ckpt", root / "avatar", root / "bundle", root / "done"
    if done.exists() and done.read_text().strip() == MODELS_VERSION:
        return ckpt, avatar, bundle
    from talkingface.config import Settings
    from talkingface.data.synthtalk.avatar import build_avatar
    from talkingface.data.synthtalk.corpus import build_corpus
    from talkingface.motion.train import (
        default_config,
        prepare_corpus,
        train_motion,
        train_syncnet,
    )
    from talkingface.render.commands import train_avatar

    print(f"talkingface bench chaos: training tiny models into {root} (once)", file=sys.stderr)
    # Trained beside the cache and moved into place at the end: an interrupted run leaves
    # no half-trained cache, and two runs at once do not train into the same folder.
    part = root.parent / f"{root.name}.partial-{os.getpid()}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    build_corpus(part / "corpus", minutes=1.0, seed=3, progress=False)
    _, corpus = prepare_corpus(part / "corpus", part / "features", progress=False)
    config = default_config("tiny", "full", 1, None)
    train_syncnet(corpus, part / "ckpt", config, progress=False, device="cpu")
    train_motion(corpus, part / "ckpt", config, progress=False, device="cpu")
    build_avatar(part / "avatar", seconds=4.0, seed=2, size=64, progress=False)
    args = argparse.Namespace(data=part / "avatar", out=part / "bundle", preset="tiny",
                              steps=20, seed=1, quiet=True, ckpt=None, publish=None)  # fmt: skip
    train_avatar(args, Settings.from_env({}), "cpu")
    (part / "done").write_text(MODELS_VERSION + "\n")
    shutil.rmtree(root, ignore_errors=True)
    part.rename(root)
    return ckpt, avatar, bundle


if __name__ == "__main__":
    sys.exit(main())
