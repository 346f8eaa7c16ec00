"""The Info servicer every talkingface server carries: identity, device and readiness."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping

import grpc

from talkingface import __version__
from talkingface.v1 import info_pb2, info_pb2_grpc


class InfoServicer(info_pb2_grpc.InfoServicer):
    """Answers GetInfo from what the hosting server knows about itself."""

    def __init__(
        self,
        service: str,
        device: str = "cpu",
        backends: Mapping[str, str] | None = None,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.service = service
        self.device = device
        self.backends = dict(backends or {})
        self._ready = ready
        self._started = time.monotonic()

    def GetInfo(
        self, request: info_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> info_pb2.ServiceInfo:
        return info_pb2.ServiceInfo(
            service=self.service,
            version=__version__,
            device=self.device,
            ready=self._ready(),
            backends=self.backends,
            hostname=socket.gethostname(),
            uptime_seconds=time.monotonic() - self._started,
        )
