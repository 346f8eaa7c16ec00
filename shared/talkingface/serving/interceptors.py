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
