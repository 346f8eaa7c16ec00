"""gRPC server bootstrap used by every talkingface service.

`ServiceServer` adds to the caller's servicers: grpc.health.v1 (NOT_SERVING until warm-up
finishes, then SERVING; NOT_SERVING again when shutdown starts), server reflection (unless
`reflection=False`, as on the broker's public port by default), the Info service,
message-size limits, the Prometheus metrics interceptor and /metrics endpoint, and a graceful
SIGTERM: stop accepting, give in-flight RPCs `shutdown_grace_s`, then exit.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import start_http_server

from talkingface import __version__
from talkingface.config import Settings
from talkingface.serving.info import InfoServicer
from talkingface.serving.metrics import SERVICE_INFO, MetricsInterceptor
from talkingface.v1 import info_pb2, info_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServicerBinding:
    """A servicer, the generated function that registers it, and its full service name."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    service_name: str  # e.g. "talkingface.v1.Motion"


def binding_for(servicer: Any, add_to_server: Callable, pb2_module: Any, service: str):
    """Build a ServicerBinding, taking the full service name from the generated module."""
    full_name = pb2_module.DESCRIPTOR.services_by_name[service].full_name
    return ServicerBinding(servicer, add_to_server, full_name)


def grpc_message_options(max_message_mb: int) -> list[tuple[str, int]]:
    limit = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


class ServiceServer:
    """One process's gRPC server with health, reflection, Info, metrics and shutdown."""

    def __init__(
        self,
        name: str,
        bindings: Sequence[ServicerBinding],
        settings: Settings,
        *,
        warmup: Callable[[], None] | None = None,
        device: str = "cpu",
        backends: Mapping[str, str] | None = None,
        on_stop: Callable[[], None] | None = None,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        credentials: grpc.ServerCredentials | None = None,
        reflection: bool = True,
        max_workers: int | None = None,
        asyncio: bool = False,
    ) -> None:
        self.name = name
        self.max_workers = max_workers or settings.grpc_workers  # the broker adds its streams
        self.reflection = reflection
        self.asyncio = asyncio  # grpc.aio with coroutine methods on its loop (serving/aio.py)
        self._interceptors = list(interceptors)  # after the metrics one (refusals are counted)
        self._credentials = credentials  # TLS on the gRPC port when given
        self._on_stop = on_stop
        self.settings = settings
        self._warmup = warmup
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        info = InfoServicer(name, device=device, backends=backends, ready=self._ready.is_set)
        self.bindings = [
            binding_for(info, info_pb2_grpc.add_InfoServicer_to_server, info_pb2, "Info"),
            *bindings,
        ]
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self._server: Any = None  # grpc.Server, or serving.aio.AioServer
        self._health_server: grpc.Server | None = None
        self.health_port: int | None = None
        SERVICE_INFO.labels(name, __version__, device).set(1)

    @property
    def service_names(self) -> list[str]:
        return [b.service_name for b in self.bindings]

    def start(self) -> int:
        """Bind and start serving (health NOT_SERVING); returns the bound gRPC port."""
        s = self.settings
        interceptors = [MetricsInterceptor(), *self._interceptors]
        options = grpc_message_options(s.grpc_max_message_mb)
        if self.asyncio:
            from talkingface.serving.aio import AioServer

            server: Any = AioServer(self.name, pool_size=self.max_workers,
                                    interceptors=interceptors, options=options)  # fmt: skip
            add = server.add
        else:
            server = grpc.server(
                futures.ThreadPoolExecutor(
                    max_workers=self.max_workers, thread_name_prefix=f"{self.name}-rpc"
                ),
                interceptors=interceptors,
                options=options,
            )

            def add(add_to_server: Callable, servicer: Any) -> None:
                add_to_server(servicer, server)

        for binding in self.bindings:
            add(binding.add_to_server, binding.servicer)
        add(health_pb2_grpc.add_HealthServicer_to_server, self.health)
        for service in ["", *self.service_names]:
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.reflection:  # the blocking servicer under either server
            names = [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
            add(reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                reflection.ReflectionServicer(names))  # fmt: skip
        address = f"{s.grpc_host}:{s.grpc_port}"
        if self._credentials is not None:
            self.port = server.add_secure_port(address, self._credentials)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC port {s.grpc_host}:{s.grpc_port}")
        server.start()
        self._server = server
        if s.grpc_health_port > 0:
            self._start_health_server(f"{s.grpc_host}:{s.grpc_health_port}")
        self._metrics_server, _ = start_http_server(s.metrics_port, addr=s.metrics_host)
        self.metrics_port = self._metrics_server.server_port
        log.info(
            "gRPC server listening",
            extra={
                "grpc_port": self.port,
                "metrics_port": self.metrics_port,
                "services": self.service_names,
                "tls": self._credentials is not None,
            },
        )
        return self.port

    def _start_health_server(self, address: str) -> None:
        """Only grpc.health.v1 (the same statuses), in plaintext: what a kubelet's gRPC probe
        can reach when the main port has TLS. Nothing else is served there."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self.name}-health")
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise RuntimeError(f"could not bind the health port {address}")
        server.start()
        self._health_server = server
        log.info("health port listening", extra={"health_port": self.health_port})

    def warm_up(self) -> None:
        """Run the warm-up (model loading), then report SERVING."""
        if self._warmup is not None:
            log.info("warming up")
            self._warmup()
        self.set_serving()

    def set_serving(self) -> None:
        if self._stopping.is_set():
            return
        for service in ["", *self.service_names]:
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        # What start-up loaded (modules, protobuf descriptors, clients) lives as long as the
        # process: leave it out of the cycle collector's full passes, which otherwise stop
        # every RPC for tens of milliseconds each time they walk it.
        gc.collect()
        gc.freeze()
        self._ready.set()
        log.info("serving")

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new RPCs, let in-flight ones finish within `grace` seconds."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace})
        self.health.enter_graceful_shutdown()
        # New RPCs are refused from now on and in-flight ones get `grace`; meanwhile the hook
        # (in-process workers: stop claiming, finish or hand back their jobs) runs, so the
        # whole stop takes about `grace`, not twice it.
        stopped = self._server.stop(grace) if self._server is not None else None
        if self._on_stop is not None:
            try:
                self._on_stop()
            except Exception:
                log.exception("shutdown hook failed")
        if stopped is not None:
            stopped.wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._stopped.set()
        log.info("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def serve_forever(self) -> None:
        """start + warm_up + block until SIGTERM/SIGINT, then a graceful stop. Main thread."""
        requested = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        warm = threading.Thread(target=self._warm_up_or_stop, args=(requested,), daemon=True)
        warm.start()
        while not requested.wait(0.5):
            pass
        self.stop()

    def _warm_up_or_stop(self, requested: threading.Event) -> None:
        try:
            self.warm_up()
        except Exception:
            log.exception("warm-up failed; stopping")
            requested.set()


def wait_for_stop_signal() -> None:
    """Block the main thread until SIGTERM or SIGINT (for processes that serve from other
    threads: Ray Serve, worker pools, the local fleet)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timed wait, so the signal handler gets to run
        pass
