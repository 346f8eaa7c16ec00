"""Unexpected exceptions in a servicer answer INTERNAL with a correlation id, nothing more.

Without this, gRPC answers an exception that escapes a method with UNKNOWN and the
exception's text ("Exception calling application: ...") — internals (keys, paths, hosts) a
public API must not show. `InternalErrorInterceptor` catches such an exception, logs it with
its traceback and a fresh correlation id, and ends the call with INTERNAL
"INTERNAL: internal error, correlation id <32 hex digits>" (and `talkingface-error-code:
INTERNAL`), so an operator finds the log line from what the client reports. Calls that ended
on purpose (`context.abort`, a TalkingFaceError through `errors.abort`) pass untouched. A
backing service that cannot be reached (a Redis ConnectionError or TimeoutError, after the
client's own retries) is no bug: it answers UNAVAILABLE, which clients retry.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from talkingface.errors import TalkingFaceError, abort, abort_async
from talkingface.serving.interceptors import Rewrapper

log = logging.getLogger(__name__)


def _ended_on_purpose(context: grpc.ServicerContext) -> bool:
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


def _unreachable(exc: BaseException) -> bool:
    """A backing service (Redis) could not be reached: transient, not a bug."""
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency of the broker
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def _internal(method: str, exc: BaseException) -> TalkingFaceError:
    """What the client is told of an unexpected exception (logged here)."""
    if _unreachable(exc):  # e.g. Redis restarting: the client should retry, not report a bug
        log.warning("%s: a backing service is unreachable: %r", method, exc)
        return TalkingFaceError(
            "UNAVAILABLE", "the broker's database is unreachable for a moment; retry")  # fmt: skip
    correlation_id = uuid.uuid4().hex
    log.error(
        "unexpected exception in %s, correlation id %s", method, correlation_id,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"correlation_id": correlation_id, "method": method},
    )  # fmt: skip
    return TalkingFaceError("INTERNAL", f"internal error, correlation id {correlation_id}")


class InternalErrorInterceptor(grpc.ServerInterceptor):
    """Wraps every method (of the services named, or all): see the module docstring."""

    def __init__(self, services: tuple[str, ...] = ()) -> None:
        self.services = services
        self._rewrap = Rewrapper()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        service = method.lstrip("/").partition("/")[0]
        if handler is None or (self.services and service not in self.services):
            return handler
        return self._rewrap(
            method, handler, lambda behaviour: _wrap(method, behaviour, handler.response_streaming)
        )


def _wrap(method: str, behaviour: Callable, streaming: bool) -> Callable:
    if streaming:

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behaviour(request, context)
            except GeneratorExit:
                raise
            except Exception as exc:
                if _ended_on_purpose(context):
                    raise
                abort(context, _internal(method, exc))

        return stream

    if inspect.iscoroutinefunction(behaviour):  # served on the asyncio server's loop

        async def unary_async(request: Any, context: Any) -> Any:
            try:
                return await behaviour(request, context)
            except Exception as exc:
                if _ended_on_purpose(context):
                    raise
                await abort_async(context, _internal(method, exc))

        return unary_async

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request, context)
        except Exception as exc:
            if _ended_on_purpose(context):
                raise
            abort(context, _internal(method, exc))

    return unary
