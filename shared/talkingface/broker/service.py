"""The broker process: the public gRPC API and the worker threads that drive the stages.

`broker_server(settings)` is what `talkingface serve broker` runs: a ServiceServer hosting
`BrokerServicer` plus a `WorkerPool` of TALKINGFACE_BROKER_WORKERS render workers and
TALKINGFACE_BROKER_TRAIN_WORKERS training workers (started once the server is up, stopped
first on shutdown). `talkingface worker` runs a WorkerPool alone, for fleets that scale the
workers apart from the API. Workers are stateless: any number of them, in any processes,
share the Redis queues, and one that dies mid-job loses nothing (its lease runs out and
another worker takes the job over).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from talkingface.broker.jobs import JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.broker.values import as_str
from talkingface.broker.worker import (
    Cancelled,
    HandBack,
    Handler,
    LeaseLost,
    is_input_error,
    run_once,
)
from talkingface.config import ConfigError, Settings, env_name
from talkingface.errors import TalkingFaceError

log = logging.getLogger(__name__)
QUEUES = ("render", "train")
IDLE_BLOCK_MS = 500
REDIS_DOWN_SLEEP_S = 1.0


REDIS_BACKOFF_BASE_S = 0.05  # first wait before a retry of a failed Redis command
REDIS_BACKOFF_CAP_S = 2.0  # longest wait between two retries


def redis_client(settings: Settings) -> redis.Redis:
    """The Redis of TALKINGFACE_REDIS_URL (ConfigError when it is not set).

    Every connect and every reply has a deadline (TALKINGFACE_REDIS_CONNECT_TIMEOUT_SECONDS,
    TALKINGFACE_REDIS_SOCKET_TIMEOUT_SECONDS), so a Redis that hangs fails the call instead of
    the thread; a call that fails on a lost connection or a timeout is retried
    TALKINGFACE_REDIS_RETRIES times with exponential backoff (a failover, a restart). A retried
    write whose first try did reach Redis can apply twice: the queues and job records are
    built for that (delivery is at least once, final states are final).
    """
    options, errors = _redis_options(settings)
    return redis.Redis.from_url(
        settings.redis_url, **options, retry=Retry(_backoff(), settings.redis_retries,
                                                   supported_errors=tuple(errors)),
    )  # fmt: skip


def async_redis_client(settings: Settings) -> redis.asyncio.Redis:
    """`redis_client` for coroutines (the broker's reads served on its event loop): the same
    server, deadlines and retries."""
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry

    options, errors = _redis_options(settings)
    return redis.asyncio.Redis.from_url(
        settings.redis_url, **options, retry=AsyncRetry(_backoff(), settings.redis_retries,
                                                        supported_errors=tuple(errors)),
    )  # fmt: skip


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=REDIS_BACKOFF_CAP_S, base=REDIS_BACKOFF_BASE_S)


def _redis_options(settings: Settings) -> tuple[dict[str, Any], list[type[Exception]]]:
    settings.require("redis_url", by="the broker")
    problems = [
        f"{env_name(name)} must be more than 0"
        for name in ("redis_socket_timeout_seconds", "redis_connect_timeout_seconds")
        if getattr(settings, name) <= 0
    ]
    if settings.redis_retries < 0:
        problems.append(f"{env_name('redis_retries')} must be 0 or more")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    errors: list[type[Exception]] = [redis.ConnectionError, redis.TimeoutError]
    options = {
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_connect_timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry_on_error": errors,
    }
    return options, errors


def check_redis_persistence(
    client: redis.Redis, settings: Settings, *, strict: bool = True
) -> None:
    """Refuse (ConfigError) a Redis that can lose jobs: one without AOF (`appendonly yes`),
    where a restart loses every job and work message since the last snapshot, or with an
    eviction policy other than `noeviction`, under which memory pressure silently deletes
    job records and queues. TALKINGFACE_REDIS_ALLOW_VOLATILE=true (or `strict=False`, for
    processes that only warn, such as `talkingface worker`) turns the refusal into a warning.
    A Redis that refuses CONFIG (a managed one that renames it) cannot be checked: a warning.
    """
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("maxmemory-policy"))
    except redis.ResponseError as exc:
        log.warning(
            "cannot check that Redis keeps jobs (CONFIG GET refused: %s); make sure it runs "
            "with appendonly yes and maxmemory-policy noeviction",
            exc,
        )
        return
    found = {as_str(name): as_str(value) for name, value in config.items()}
    problems = []
    if found.get("appendonly") != "yes":
        problems.append(
            f"appendonly is {found.get('appendonly')!r}: a restart loses the jobs and work "
            "messages written since the last snapshot (set `appendonly yes`, with "
            "`appendfsync everysec` or `always`)"
        )
    if found.get("maxmemory-policy") != "noeviction":
        problems.append(
            f"maxmemory-policy is {found.get('maxmemory-policy')!r}: memory pressure evicts "
            "job records and queues (set `maxmemory-policy noeviction`)"
        )
    if not problems:
        return
    text = (
        "Redis can lose jobs:\n  " + "\n  ".join(problems) + "\n  (in redis.conf or with "
        "CONFIG SET; or set TALKINGFACE_REDIS_ALLOW_VOLATILE=true to run anyway)"
    )
    if strict and not settings.redis_allow_volatile:
        raise ConfigError(text)
    log.warning("%s", text)


@dataclass
class WorkerSpec:
    queue: WorkQueue
    handler: Handler
    threads: int


class WorkerPool:
    """Threads that each claim and run one job at a time from their queue until stopped."""

    def __init__(self, jobs: JobStore, specs: list[WorkerSpec], name: str = "") -> None:
        self.jobs = jobs
        self.specs = [s for s in specs if s.threads > 0]
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._handback = threading.Event()  # jobs in hand go back to their queues
        self._threads: list[threading.Thread] = []
        self._counted: dict[str, int] = {}  # talkingface_workers added by start()

    @property
    def size(self) -> int:
        return sum(s.threads for s in self.specs)

    def start(self) -> None:
        from talkingface.serving.metrics import WORKERS

        for name in QUEUES:
            WORKERS.labels(name)  # every queue's series, 0 where this process has no workers
        for spec in self.specs:
            spec.queue.ensure_group()
            WORKERS.labels(spec.queue.name).inc(spec.threads)
            self._counted[spec.queue.name] = self._counted.get(spec.queue.name, 0) + spec.threads
            for i in range(spec.threads):
                consumer = f"{self.name}-{spec.queue.name}-{i}"
                thread = threading.Thread(
                    target=self._loop, args=(spec, consumer), name=consumer, daemon=True
                )
                thread.start()
                self._threads.append(thread)
        log.info("workers started", extra={"workers": [t.name for t in self._threads]})

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming at once; let the jobs in hand finish for half of `timeout`, then hand
        back the ones still running (their heartbeat raises HandBack: the job goes back to
        its queue at once, its delivery not counted), and wait for the rest of `timeout`."""
        from talkingface.serving.metrics import WORKERS

        self._stop.set()
        for name, threads in self._counted.items():
            WORKERS.labels(name).dec(threads)
        self._counted.clear()
        deadline = time.monotonic() + timeout
        finish_by = time.monotonic() + timeout / 2
        for thread in self._threads:
            thread.join(max(0.0, finish_by - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            log.info("handing back the jobs still running")
            self._handback.set()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in self._threads if t.is_alive()]
        if left:
            log.warning("workers still busy at shutdown", extra={"workers": left})

    def wait(self) -> None:
        for thread in self._threads:
            thread.join()

    def _loop(self, spec: WorkerSpec, consumer: str) -> None:
        while not self._stop.is_set():
            try:
                run_once(spec.queue, self.jobs, consumer, spec.handler, block_ms=IDLE_BLOCK_MS,
                         stopping=self._handback)  # fmt: skip
            except redis.RedisError as exc:
                log.warning("redis unavailable: %s", exc, extra={"consumer": consumer})
                self._stop.wait(REDIS_DOWN_SLEEP_S)
            except Exception:
                log.exception("worker step failed", extra={"consumer": consumer})
                self._stop.wait(REDIS_DOWN_SLEEP_S)


def instrumented(kind: str, handler: Handler) -> Handler:
    """`handler` counting its attempts and timing them by outcome, and its failed attempts by
    error code (talkingface_job_*)."""
    from talkingface.serving.metrics import JOB_ATTEMPTS, JOB_ERRORS, JOB_SECONDS

    def run(job, delivery, heartbeat):
        started = time.perf_counter()
        outcome = "error"
        try:
            result = handler(job, delivery, heartbeat)
            outcome = "succeeded"
            return result
        except Cancelled:
            outcome = "cancelled"
            raise
        except LeaseLost:
            outcome = "lease_lost"
            raise
        except HandBack:
            outcome = "handed_back"
            raise
        except Exception as exc:
            outcome = "input_error" if is_input_error(exc) else "error"
            JOB_ERRORS.labels(kind, error_code(exc)).inc()
            raise
        finally:
            JOB_ATTEMPTS.labels(kind, outcome).inc()
            JOB_SECONDS.labels(kind, outcome).observe(time.perf_counter() - started)

    # The worker's hooks (a dropped outcome's objects, what a final job's attempts left) stay
    # reachable.
    for hook in ("discard", "cleanup"):
        if hasattr(handler, hook):
            setattr(run, hook, getattr(handler, hook))
    return run


def error_code(exc: BaseException) -> str:
    """The stable ErrorCode name a failed attempt carries; INTERNAL when it carries none."""
    code = getattr(exc, "code", "") if isinstance(exc, TalkingFaceError) else ""
    return code if code and code != "ERROR_CODE_UNSPECIFIED" else "INTERNAL"


def worker_pool(
    settings: Settings,
    client: redis.Redis,
    *,
    render_threads: int | None = None,
    train_threads: int | None = None,
    store: Any = None,
) -> WorkerPool:
    """Workers for the `render` and `train` queues, with the settings' thread counts unless
    given."""
    from talkingface.broker.avatars import AvatarRegistry
    from talkingface.broker.render_job import RenderHandler
    from talkingface.broker.stages import StageClients
    from talkingface.broker.train_job import TrainAvatarHandler
    from talkingface.storage import store_from_settings

    store = store or store_from_settings(settings)
    render_threads = settings.broker_workers if render_threads is None else render_threads
    train_threads = settings.broker_train_workers if train_threads is None else train_threads
    specs = []
    if render_threads:
        handler = RenderHandler(StageClients.from_settings(settings), store, settings)
        specs.append(WorkerSpec(WorkQueue.from_settings(client, "render", settings),
                                instrumented("render", handler), render_threads))  # fmt: skip
    if train_threads:
        handler = TrainAvatarHandler(store, settings, AvatarRegistry(client))
        specs.append(WorkerSpec(WorkQueue.from_settings(client, "train", settings),
                                instrumented("train_avatar", handler), train_threads))  # fmt: skip
    return WorkerPool(JobStore.from_settings(client, settings), specs)


def export_queue_metrics(client: redis.Redis, settings: Settings) -> None:
    """Queue depth, pending, oldest-job age and dead-letter gauges, read from Redis at every
    scrape."""
    from talkingface.serving.metrics import (
        QUEUE_DEAD_LETTERS,
        QUEUE_DEPTH,
        QUEUE_OLDEST_AGE,
        QUEUE_PENDING,
    )

    for name in QUEUES:
        queue = WorkQueue.from_settings(client, name, settings)
        QUEUE_DEPTH.labels(name).set_function(_safe(queue.depth))
        QUEUE_PENDING.labels(name).set_function(_safe(queue.pending))
        QUEUE_OLDEST_AGE.labels(name).set_function(_safe(queue.oldest_age_seconds))
        QUEUE_DEAD_LETTERS.labels(name).set_function(
            _safe(lambda q=queue: q.redis.xlen(q.dead_key))
        )


def _safe(read: Callable[[], float]) -> Callable[[], float]:
    def value() -> float:
        try:
            return float(read())
        except redis.RedisError:
            return float("nan")

    return value


def broker_server(settings: Settings, *, store: Any = None):
    """The broker's ServiceServer (API + in-process workers); see the module docstring."""
    from talkingface.broker.auth import auth_interceptors, server_credentials
    from talkingface.broker.janitor import Janitor
    from talkingface.broker.reconcile import Reconciler
    from talkingface.broker.servicer import BrokerServicer
    from talkingface.broker.streams import pool_size
    from talkingface.broker.webhooks import WebhookDeliverer
    from talkingface.serving.internal_errors import InternalErrorInterceptor
    from talkingface.serving.server import ServiceServer, binding_for
    from talkingface.storage import store_from_settings
    from talkingface.v1 import broker_pb2, broker_pb2_grpc

    client = redis_client(settings)
    check_redis_persistence(client, settings)
    store = store or store_from_settings(settings)
    servicer = BrokerServicer(settings, client, store)
    pool = worker_pool(settings, client, store=store)
    export_queue_metrics(client, settings)
    binding = binding_for(servicer, broker_pb2_grpc.add_BrokerServicer_to_server, broker_pb2,
                          "Broker")  # fmt: skip
    # Always on: besides sweeping scratch space (when its interval is set) it promotes due
    # retries, which with no worker running (scaled to zero) nobody else would.
    # It also re-queues active jobs whose work message vanished (broker/reconcile.py).
    reconciler = Reconciler(servicer.jobs, servicer.queues.values(),
                            grace_s=2 * settings.queue_lease_seconds)  # fmt: skip
    janitor = Janitor(store, servicer.jobs, settings.janitor_interval_seconds,
                      queues=list(servicer.queues.values()),
                      retention=servicer.retention, reconciler=reconciler,
                      reconcile_interval_s=settings.reconcile_interval_seconds)  # fmt: skip
    webhooks = WebhookDeliverer(settings, client, servicer.jobs, store)

    def start() -> None:
        pool.start()
        janitor.start()
        webhooks.start()

    def stop() -> None:
        webhooks.stop()
        janitor.stop()
        pool.stop(settings.shutdown_grace_s)

    # Unexpected exceptions answer INTERNAL with a correlation id (outermost: auth's too).
    interceptors = [InternalErrorInterceptor(), *auth_interceptors(settings, client)]
    return ServiceServer(
        "broker",
        [binding],
        settings,
        warmup=start,
        on_stop=stop,
        interceptors=interceptors,
        credentials=server_credentials(settings),
        reflection=settings.broker_reflection,
        max_workers=pool_size(settings),  # streams + unary (broker.streams)
        asyncio=True,  # GetJob on the event loop (serving/aio.py)
    )
