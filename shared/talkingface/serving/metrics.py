"""Prometheus metrics of every talkingface process: RED metrics for every RPC (recorded by a
gRPC server interceptor, or by the Ray Serve ingress adapter), caches, and the broker's queues
and jobs. Names and labels are a contract with the dashboards and alerts (docs/broker.md).

Series (labels), and the process that exports them:
  talkingface_grpc_server_handling_seconds  histogram (grpc_service, grpc_method, grpc_type)
  talkingface_grpc_server_handled_total     counter   (grpc_service, grpc_method, grpc_type,
                                                       grpc_code)   errors = grpc_code != "OK"
  talkingface_grpc_server_in_flight         gauge     (grpc_service, grpc_method)
  talkingface_service_info                  gauge = 1 (service, version, device)
  talkingface_avatar_cache_bytes            gauge     (cache)  per-avatar state held in memory
  talkingface_avatar_cache_lookups_total    counter   (cache, result = hit | miss)
  talkingface_avatar_cache_evictions_total  counter   (cache)
  talkingface_render_backend_info           gauge = 1 (backend = tcnn | torch, device)  the
                                                       hash-grid backend of loaded renderers
      every gRPC server (standalone `talkingface serve`, the broker API) on its own /metrics;
      the stage replicas under Ray Serve through one exporter per Ray node (serving.exporter,
      prometheus_client multiprocess mode: gauges say how to merge replicas below)
  talkingface_queue_depth                   gauge     (queue)  broker work not yet finished
  talkingface_queue_pending                 gauge     (queue)  claimed, not yet acknowledged
  talkingface_queue_dead_letters            gauge     (queue)  jobs given up on
  talkingface_queue_oldest_age_seconds      gauge     (queue)  age of the oldest unfinished job
      every broker API process, read from Redis at each scrape (aggregate with max by (queue))
  talkingface_job_attempts_total            counter   (kind, outcome)
  talkingface_job_seconds                   histogram (kind, outcome)  one worker attempt
  talkingface_job_errors_total              counter   (kind, code)  failed attempts by ErrorCode
  talkingface_stage_seconds                 histogram (stage, outcome = ok | error)  render-job
                                                       stages, as the broker's worker sees them
  talkingface_workers                       gauge     (queue)  worker threads in this process
      every process running broker workers (the broker API's in-process ones, `talkingface
      worker`)
  talkingface_job_requeued_total            counter   (kind)  QUEUED or RUNNING jobs whose work
                                                       message was lost, re-queued
      every broker API process (its janitor's reconciler, broker/reconcile.py)
  talkingface_job_e2e_seconds               histogram (kind, outcome = succeeded | failed |
                                                       cancelled)  submission to final state
      the process that moved the job to its final state (a worker; the API for a cancel of a
      queued job): exactly once per job, since the job record refuses a second final state
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from talkingface.serving.interceptors import Rewrapper

# Stage calls range from a millisecond (health, projection) to minutes (long renders).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

HANDLING_SECONDS = Histogram(
    "talkingface_grpc_server_handling_seconds",
    "Time from receiving an RPC to sending its final status.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=LATENCY_BUCKETS,
)
HANDLED_TOTAL = Counter(
    "talkingface_grpc_server_handled_total",
    "RPCs completed, by final status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
IN_FLIGHT = Gauge(
    "talkingface_grpc_server_in_flight",
    "RPCs being handled right now.",
    ["grpc_service", "grpc_method"],
    multiprocess_mode="livesum",  # Ray Serve replicas of a node: the node's total
)
SERVICE_INFO = Gauge(
    "talkingface_service_info",
    "Constant 1, labelled with what this process serves.",
    ["service", "version", "device"],
    multiprocess_mode="livemax",  # 1 while a replica of it lives on the node
)

AVATAR_CACHE_BYTES = Gauge(
    "talkingface_avatar_cache_bytes",
    "Bytes of per-avatar state (postnets, projection indexes, renderers) held in a "
    "service's cache.",
    ["cache"],
    multiprocess_mode="livesum",
)
AVATAR_CACHE_LOOKUPS = Counter(
    "talkingface_avatar_cache_lookups_total",
    "Per-avatar cache lookups, by result (hit: already loaded; miss: loaded from the store).",
    ["cache", "result"],
)
AVATAR_CACHE_EVICTIONS = Counter(
    "talkingface_avatar_cache_evictions_total",
    "Per-avatar entries dropped to keep a cache under its byte bound.",
    ["cache"],
)
RENDER_BACKEND_INFO = Gauge(
    "talkingface_render_backend_info",
    "Constant 1 for each hash-grid backend (tcnn, torch) and device the renderer service has "
    "loaded an avatar on; torch on a GPU replica means tiny-cuda-nn was not used.",
    ["backend", "device"],
    multiprocess_mode="livemax",
)


def split_method(full_method: str) -> tuple[str, str]:
    """Split "/talkingface.v1.Info/GetInfo" into ("talkingface.v1.Info", "GetInfo")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def code_name(context: Any, failed: bool) -> str:
    """The final status of a call, from its context's code and whether it raised."""
    code = context.code()
    if code is None or code == grpc.StatusCode.OK:
        # An exception without a status set is an UNKNOWN to the caller.
        return "UNKNOWN" if failed else "OK"
    # context.code() is a StatusCode once set by set_code()/abort().
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class Observation:
    """Times one RPC and records it exactly once (also used by the Ray Serve adapter)."""

    def __init__(self, service: str, method: str, rpc_type: str) -> None:
        self.labels = (service, method, rpc_type)
        self.start = time.perf_counter()
        _series(service, method, rpc_type)[0].inc()

    def finish(self, code: str) -> None:
        in_flight, seconds = _series(*self.labels)
        in_flight.dec()
        seconds.observe(time.perf_counter() - self.start)
        _handled(*self.labels, code).inc()


@functools.lru_cache(maxsize=4096)
def _series(service: str, method: str, rpc_type: str) -> tuple[Any, Any]:
    """The in-flight gauge and latency histogram of one method (label lookups cost more than
    the observations themselves; the set of methods is fixed)."""
    return IN_FLIGHT.labels(service, method), HANDLING_SECONDS.labels(service, method, rpc_type)


@functools.lru_cache(maxsize=4096)
def _handled(service: str, method: str, rpc_type: str, code: str) -> Any:
    return HANDLED_TOTAL.labels(service, method, rpc_type, code)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Wraps every method handler so each call is timed, counted and tracked in flight."""

    def __init__(self) -> None:
        self._rewrap = Rewrapper()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = split_method(handler_call_details.method)
        rpc_type = _rpc_type(handler)
        if handler.response_streaming:
            wrap = self._wrap_streaming(service, method, rpc_type)
        else:
            wrap = self._wrap_unary(service, method, rpc_type)
        return self._rewrap(handler_call_details.method, handler, wrap)

    @staticmethod
    def _wrap_unary(service: str, method: str, rpc_type: str) -> Callable:
        def decorate(behaviour: Callable) -> Callable:
            if inspect.iscoroutinefunction(behaviour):  # served on the asyncio server's loop

                async def observed_async(request: Any, context: Any) -> Any:
                    observation = Observation(service, method, rpc_type)
                    failed = True
                    try:
                        response = await behaviour(request, context)
                        failed = False
                        return response
                    finally:
                        observation.finish(code_name(context, failed))

                return observed_async

            def observed(request: Any, context: grpc.ServicerContext) -> Any:
                observation = Observation(service, method, rpc_type)
                failed = True
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                finally:
                    observation.finish(code_name(context, failed))

            return observed

        return decorate

    @staticmethod
    def _wrap_streaming(service: str, method: str, rpc_type: str) -> Callable:
        def decorate(behaviour: Callable) -> Callable:
            def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                observation = Observation(service, method, rpc_type)
                failed = True
                try:
                    yield from behaviour(request, context)
                    failed = False
                except GeneratorExit:
                    # The client went away mid-stream.
                    context.set_code(grpc.StatusCode.CANCELLED)
                    raise
                finally:
                    observation.finish(code_name(context, failed))

            return observed

        return decorate


# Broker: queues and jobs.
QUEUE_DEPTH = Gauge(
    "talkingface_queue_depth",
    "Jobs in a work queue not yet finished: undelivered, claimed (pending) or waiting out a "
    "retry backoff.",
    ["queue"],
)
QUEUE_PENDING = Gauge(
    "talkingface_queue_pending",
    "Jobs of a work queue claimed by a worker and not yet acknowledged.",
    ["queue"],
)
QUEUE_DEAD_LETTERS = Gauge(
    "talkingface_queue_dead_letters",
    "Entries in a work queue's dead-letter stream (jobs given up on).",
    ["queue"],
)
JOB_ATTEMPTS = Counter(
    "talkingface_job_attempts_total",
    "Job attempts by a worker, by kind and outcome (succeeded, cancelled, input_error, "
    "error: retried or dead-lettered).",
    ["kind", "outcome"],
)
JOB_SECONDS = Histogram(
    "talkingface_job_seconds",
    "Wall time of one job attempt in a worker, by kind and outcome.",
    ["kind", "outcome"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "talkingface_stage_seconds",
    "Wall time of one pipeline stage of a render job, as the broker's worker sees it, by "
    "outcome (ok; error: the stage call failed).",
    ["stage", "outcome"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_OLDEST_AGE = Gauge(
    "talkingface_queue_oldest_age_seconds",
    "Age of the oldest job of a work queue not yet finished (undelivered, claimed or waiting "
    "out a retry backoff), from when it was first enqueued; 0 when there is none.",
    ["queue"],
)
# Jobs run from a second to hours (avatar training).
E2E_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0,
               1800.0, 3600.0, 7200.0, 14400.0)  # fmt: skip
JOB_E2E_SECONDS = Histogram(
    "talkingface_job_e2e_seconds",
    "Time from a job's submission to its final state (Redis clock), by kind and outcome "
    "(succeeded, failed, cancelled); observed once per job.",
    ["kind", "outcome"],
    buckets=E2E_BUCKETS,
)
JOB_ERRORS = Counter(
    "talkingface_job_errors_total",
    "Failed job attempts by kind and stable error code (the ErrorCode name; INTERNAL for an "
    "error that carries none).",
    ["kind", "code"],
)
JOB_REQUEUED = Counter(
    "talkingface_job_requeued_total",
    "QUEUED or RUNNING jobs whose work message had vanished from their queue (a Redis that "
    "lost writes, an operator's delete), re-queued by the broker's reconciler, by kind.",
    ["kind"],
)
WORKERS = Gauge(
    "talkingface_workers",
    "Worker threads serving a work queue in this process.",
    ["queue"],
    multiprocess_mode="livesum",
)
