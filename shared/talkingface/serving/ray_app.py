"""Serve a plain gRPC servicer class under Ray Serve's gRPC ingress.

Servicers are written once, grpc-style (`def Method(self, request, context)`, `context.abort`
for errors, generators for server streaming, a request iterator for client and bidi streaming). The
standalone server (serving.server) hosts them directly; `build_app` wraps the same class into
a Ray Serve deployment whose methods Ray's gRPC proxy calls by RPC name. Callers pick the
application with the `application` metadata key. Scaling knobs (replicas, autoscaling, GPU
fraction) are not set here: they come from the serve config file, so operators tune them
without code changes.

Metrics: Ray's proxy receives the calls, so no gRPC interceptor sees them; each replica
records the same talkingface_grpc_server_* RED series around its own method calls, plus
talkingface_service_info, and exports them with the other replicas of its node through one
/metrics endpoint on TALKINGFACE_METRICS_PORT (talkingface.serving.exporter).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any, NoReturn

import grpc

_END = object()


class RayAbort(Exception):
    """Raised by the adapted context's abort(); Ray turns the code set before it into the
    call's status."""


class RayContextAdapter:
    """The subset of grpc.ServicerContext our servicers use, over RayServegRPCContext."""

    def __init__(self, ray_context: Any) -> None:
        self._ctx = ray_context

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self._ctx.set_code(code)
        self._ctx.set_details(details)
        raise RayAbort(f"{code.name}: {details}")

    def set_code(self, code: grpc.StatusCode) -> None:
        self._ctx.set_code(code)

    def set_details(self, details: str) -> None:
        self._ctx.set_details(details)

    def code(self) -> grpc.StatusCode | None:
        return self._ctx.code()

    def details(self) -> str:
        return self._ctx.details()

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._ctx.set_trailing_metadata(list(metadata))

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return list(self._ctx.invocation_metadata())

    def peer(self) -> str:
        return self._ctx.peer()

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None


def _observe(service: str, method: str, rpc_type: str):
    from talkingface.serving.metrics import Observation

    return Observation(service, method, rpc_type)


def _finish(observation: Any, context: Any, failed: bool, cancelled: bool = False) -> None:
    from talkingface.serving.metrics import code_name

    observation.finish("CANCELLED" if cancelled else code_name(context, failed))


def _unary(service: str, name: str):
    def method(self, request, grpc_context):
        context = RayContextAdapter(grpc_context)
        observation, failed = _observe(service, name, "unary"), True
        try:
            response = getattr(self._servicer, name)(request, context)
            failed = False
            return response
        finally:
            _finish(observation, context, failed)

    return method


def _server_streaming(service: str, name: str):
    def method(self, request, grpc_context):
        context = RayContextAdapter(grpc_context)
        observation, failed, cancelled = _observe(service, name, "server_stream"), True, False
        try:
            yield from getattr(self._servicer, name)(request, context)
            failed = False
        except GeneratorExit:  # the caller went away mid-stream
            cancelled = True
            raise
        finally:
            _finish(observation, context, failed, cancelled)

    return method


def _sync_requests(request_stream: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """Ray hands client-streamed requests over as an async iterator; our servicers are
    synchronous and run in a worker thread, so pull each request through the event loop."""

    async def next_or_end() -> Any:
        try:
            return await request_stream.__anext__()
        except StopAsyncIteration:
            return _END

    while (item := asyncio.run_coroutine_threadsafe(next_or_end(), loop).result()) is not _END:
        yield item


def _client_streaming(service: str, name: str):
    async def method(self, request_stream, grpc_context):
        context = RayContextAdapter(grpc_context)
        observation, failed, cancelled = _observe(service, name, "client_stream"), True, False
        try:
            requests = _sync_requests(request_stream, asyncio.get_running_loop())
            servicer_method = getattr(self._servicer, name)
            response = await asyncio.to_thread(servicer_method, requests, context)
            failed = False
            return response
        except asyncio.CancelledError:  # Ray cancels the request: the caller went away
            cancelled = True
            raise
        finally:
            _finish(observation, context, failed, cancelled)

    return method


def _bidi_streaming(service: str, name: str):
    async def method(self, request_stream, grpc_context):
        context = RayContextAdapter(grpc_context)
        observation, failed, cancelled = _observe(service, name, "bidi_stream"), True, False
        try:
            requests = _sync_requests(request_stream, asyncio.get_running_loop())
            responses = iter(getattr(self._servicer, name)(requests, context))
            while (item := await asyncio.to_thread(next, responses, _END)) is not _END:
                yield item
            failed = False
        except (GeneratorExit, asyncio.CancelledError):
            cancelled = True
            raise
        finally:
            _finish(observation, context, failed, cancelled)

    return method


def _replica_settings(args: tuple, kwargs: dict) -> Any:
    """The Settings a servicer was built with (an init argument), else the environment's."""
    from talkingface.config import Settings

    for value in (*args, *kwargs.values()):
        if isinstance(value, Settings):
            return value
    return Settings.from_env()


def _start_replica_metrics(service: str, args: tuple, kwargs: dict) -> tuple[str, Any]:
    """Start this replica's share of the node's metrics export (before the servicer exists,
    so every series it creates is recorded in multiprocess mode); (stage name, settings)."""
    from talkingface.serving.exporter import start_replica_exporter
    from talkingface.serving.fleet import STAGES

    settings = _replica_settings(args, kwargs)
    start_replica_exporter(settings.metrics_port, settings.metrics_host)
    stage = {deployment: name for name, (_, deployment) in STAGES.items()}.get(service, service)
    return stage, settings


def _device(setting: str) -> str:
    """TALKINGFACE_DEVICE with `auto` resolved, for talkingface_service_info."""
    if setting != "auto":
        return setting
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def ingress_class(servicer_cls: type, pb2_module: ModuleType, service: str) -> type:
    """A class Ray Serve can deploy whose methods forward to `servicer_cls` by RPC name."""
    descriptor = pb2_module.DESCRIPTOR.services_by_name[service]
    full_name = descriptor.full_name  # e.g. talkingface.v1.Motion, the grpc_service label

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from talkingface import __version__
        from talkingface.serving.metrics import SERVICE_INFO

        stage, settings = _start_replica_metrics(service, args, kwargs)
        self._servicer = servicer_cls(*args, **kwargs)
        device = str(getattr(self._servicer, "device", "") or _device(settings.device))
        SERVICE_INFO.labels(stage, __version__, device).set(1)

    namespace: dict[str, Any] = {"__init__": __init__, "__doc__": servicer_cls.__doc__}
    for m in descriptor.methods:
        if m.client_streaming and m.server_streaming:
            namespace[m.name] = _bidi_streaming(full_name, m.name)
        elif m.client_streaming:
            namespace[m.name] = _client_streaming(full_name, m.name)
        elif m.server_streaming:
            namespace[m.name] = _server_streaming(full_name, m.name)
        else:
            namespace[m.name] = _unary(full_name, m.name)
    return type(f"{service}Ingress", (), namespace)


def build_app(
    servicer_cls: type,
    pb2_module: ModuleType,
    service: str,
    *init_args: Any,
    deployment_name: str | None = None,
    **init_kwargs: Any,
):
    """A Ray Serve Application serving `servicer_cls` for the gRPC service `service`, with
    the deployment options of an enclosing `deployment_options(...)` block (autoscaling,
    ray_actor_options, ...; the serve config file's, see talkingface.serving.fleet)."""
    from ray import serve

    deployment = serve.deployment(
        ingress_class(servicer_cls, pb2_module, service),
        name=deployment_name or service,
        **(_OPTIONS.get() or {}),
    )
    return deployment.bind(*init_args, **init_kwargs)


_OPTIONS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "talkingface_deployment_options", default=None
)


@contextlib.contextmanager
def deployment_options(options: dict[str, Any]) -> Iterator[None]:
    """Deployment options (Ray Serve's `serve.deployment` keywords) for the applications
    built inside the block."""
    token = _OPTIONS.set(dict(options))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def app_settings(arg: Any) -> Any:
    """A stage `app(...)` argument as Settings (or None): Ray Serve calls application builders
    with the serve config's `args` dict, which holds TALKINGFACE_* overrides."""
    if isinstance(arg, dict):
        from talkingface.serving.fleet import settings_for

        return settings_for(arg)
    return arg


def servicer_function(pb2_grpc_module: ModuleType, service: str) -> str:
    """Import path of the generated add_<Service>Servicer_to_server, for gRPCOptions."""
    name = f"add_{service}Servicer_to_server"
    if not hasattr(pb2_grpc_module, name):
        raise ValueError(f"{pb2_grpc_module.__name__} has no {name}")
    return f"{pb2_grpc_module.__name__}.{name}"


PROXY_CHECK_TIMEOUT_S = 60
# The metrics export port of the Ray that start_local_serve started (None: none, or joined).
ray_metrics_port: int | None = None


def start_local_serve(
    grpc_port: int,
    servicer_functions: Sequence[str],
    *,
    http_port: int | None = None,
    ray_address: str = "",
    num_cpus: int | None = None,
) -> None:
    """Start (or join) Ray and Serve with gRPC ingress on `grpc_port`.

    The gRPC proxy binds all interfaces; the HTTP proxy binds loopback only.
    """
    # Local runs need no cluster auth token file.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Serve's proxy must answer its ready check within 5 s and its health checks within
    # 10 s, or the controller kills it; on a busy 2-core machine (training next door) it
    # misses them while starting. Local Ray's processes inherit these at ray.init.
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, str(PROXY_CHECK_TIMEOUT_S))
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    global ray_metrics_port
    if not ray.is_initialized():
        # A Ray started here exports its own metrics (ray_serve_*, ray_node_*) on a known
        # free port, so a local Prometheus can scrape them too.
        from talkingface.localfleet import free_port

        metrics_port = None if ray_address else free_port()
        ray.init(
            address=ray_address or None,
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _metrics_export_port=metrics_port,
        )
        ray_metrics_port = metrics_port
    http = (
        HTTPOptions(host="127.0.0.1", port=http_port)
        if http_port
        else HTTPOptions(host="127.0.0.1")
    )
    serve.start(
        http_options=http,
        grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=list(servicer_functions)),
    )


def deploy(app: Any, name: str) -> None:
    """Run `app` as the Serve application `name` (the value callers put in `application`).

    A route prefix is required for the proxies to route to an application at all; gRPC
    callers never see it.
    """
    from ray import serve

    serve.run(app, name=name, route_prefix=f"/{name}")


def deploy_many(apps: list[tuple[Any, str]]) -> None:
    """`deploy` each (app, name) at once, returning when all run: their replicas start side
    by side instead of one application after the other."""
    from ray import serve

    serve.run_many([serve.RunTarget(app, name=name, route_prefix=f"/{name}")
                    for app, name in apps])  # fmt: skip
