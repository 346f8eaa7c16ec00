"""Shared plumbing of our gRPC server interceptors (metrics, authentication, internal errors)."""

from __future__ import annotations

from collections.abc import Callable

import grpc


def rewrapped(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]):
    """`handler` with its behaviour replaced by `wrap(behaviour)`, of the same RPC type and with
    the same (de)serializers."""
    if handler.request_streaming and handler.response_streaming:
        make, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    elif handler.request_streaming:
        make, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    elif handler.response_streaming:
        make, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    else:
        make, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    return make(
        wrap(behaviour),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class Rewrapper:
    """`rewrapped` once per method: an interceptor sees the same handler object for a method on
    every call, so the wrapped one is built the first time and reused (building it on every
    call cost a few per cent of the broker's CPU per GetJob)."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def __call__(
        self, method: str, handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]
    ) -> grpc.RpcMethodHandler:
        built = self._built.get(method)
        if built is None or built[0] is not handler:
            built = (handler, rewrapped(handler, wrap))
            self._built[method] = built  # one assignment: safe across server threads
        return built[1]
