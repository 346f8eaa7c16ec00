"""The asyncio gRPC server behind `ServiceServer(asyncio=True)` (the broker's API).

Why: grpcio's thread-pool server spends most of a short call's CPU handing it between its
polling thread and a pool thread, under one GIL. Measured on 2 cores with 200 concurrent
clients (one HGETALL per call, no interceptors): the thread-pool server answered 1550–1830
calls/s (p99 122–142 ms); the same method written as a coroutine on `grpc.aio` 2490–2790
calls/s (p99 84–90 ms).

How: a method written as a coroutine (`async def GetJob(self, request, context)`, unary only)
runs on the server's event loop and must not block. Every other method stays as written —
blocking, grpc-style — and runs in a thread pool with a `SyncContext`, which behaves as the
thread-pool server's context does (`abort` raises, `is_active`, `add_callback`, `code()`),
so servicers and their interceptors work unchanged under either server. The interceptors are
our own synchronous `grpc.ServerInterceptor`s (metrics, internal errors, authentication):
`Wrapping` applies them to each method once, when its servicer is added, then `bridged` turns
what they built into what the asyncio server runs. Their wrappers of a coroutine method are
coroutines themselves. Only unary methods may be coroutines.

The event loop has its own thread, so `AioServer` is started and stopped from ordinary
threads as a `grpc.Server` is.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any, NamedTuple

import grpc

_END = object()
# How often a blocked read of a client stream looks whether the call has ended.
_READ_POLL_S = 1.0
# How long a client stream's end waits for its call's end, which a client that went away
# brings (seen: within 6 ms of it; 1 read in 40 later than three turns of the loop).
_SETTLE_S, _SETTLE_POLL_S = 0.1, 0.005


class SyncContext:
    """A `grpc.ServicerContext` for a blocking method run in the pool, over the asyncio
    server's context of the call."""

    def __init__(self, context: grpc.aio.ServicerContext, loop: asyncio.AbstractEventLoop):
        self._context = context
        self._loop = loop
        # The asyncio context's done() stays False for a call the client cancelled; its
        # done callbacks run for every ending.
        self.ended = threading.Event()
        context.add_done_callback(lambda _context: self.ended.set())

    def _submit(self, coroutine: Any) -> futures.Future:
        """`coroutine` run on the server's loop (an error when the loop has stopped, the
        coroutine closed: also when the loop closes between the look and the hand-over,
        as the server's stop can while a pool thread aborts its call)."""
        try:
            if self._loop.is_closed() or not self._loop.is_running():
                raise RuntimeError("the loop has stopped")
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop's own "Event loop is closed" included
            coroutine.close()
            raise RuntimeError("the server has stopped") from None

    def finished(
        self, coroutine: Any, keep_waiting: Callable[[], bool] | None = None
    ) -> futures.Future | None:
        """Run `coroutine` on the server's loop and wait for it: its future, done; or None when
        the wait was given up because the loop stopped or `keep_waiting()` turned False
        (looked at every _READ_POLL_S). A coroutine given up before it started is closed
        then, not left to be collected unawaited."""
        future = self._submit(coroutine)
        while True:
            try:
                future.exception(timeout=_READ_POLL_S)
                return future
            except futures.TimeoutError:
                if self._loop.is_running() and (keep_waiting is None or keep_waiting()):
                    continue
                future.cancel()
            except futures.CancelledError:
                pass
            if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
                coroutine.close()
            return None

    def _wait(self, coroutine: Any) -> BaseException | None:
        """Run `coroutine` on the server's loop; the exception it ended with (None when it
        returned), waiting while the loop runs."""
        future = self.finished(coroutine)
        return RuntimeError("the server has stopped") if future is None else future.exception()

    def _run(self, coroutine: Any) -> None:
        error = self._wait(coroutine)
        if error is not None:
            raise error

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        # The asyncio context sends the status, then raises AbortError: raised here too, it
        # ends the method as the thread-pool server's abort does.
        error = self._wait(self._context.abort(code, details))
        raise error if error is not None else RuntimeError("abort did not end the call")

    def abort_with_status(self, status: Any) -> None:
        self.abort(status.code, status.details)

    def is_active(self) -> bool:
        return not (self.ended.is_set() or self._context.done())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._context.add_done_callback(lambda _context: callback())
        return True

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def send_initial_metadata(self, metadata: Any) -> None:
        self._run(self._context.send_initial_metadata(metadata))

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(metadata)

    def trailing_metadata(self) -> Any:
        return self._context.trailing_metadata()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def code(self) -> grpc.StatusCode | None:
        return self._context.code()

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def details(self) -> str | None:
        return self._context.details()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> Any:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def set_compression(self, compression: Any) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()


class SyncRequests:
    """A client stream's messages as a blocking iterator, for a method run in the pool. A call
    that ended (the client went away) raises grpc.RpcError, as the thread-pool server's does."""

    def __init__(self, requests: Any, context: SyncContext) -> None:
        self._requests = requests
        self._iterator: Any = None  # made on the first read: an unread stream makes none
        self._context = context

    def __iter__(self) -> Iterator[Any]:
        return self

    async def _next(self) -> Any:
        if self._iterator is None:
            self._iterator = self._requests.__aiter__()
        try:
            return await self._iterator.__anext__()
        except StopAsyncIteration:
            # A client that went away reads as the end of its stream too. Its call ends in the
            # same batch of events or soon after: wait up to _SETTLE_S for that to land (a
            # stream that really ended waits it all out, its call staying active).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _SETTLE_S
            while self._context.is_active() and loop.time() < deadline:
                await asyncio.sleep(_SETTLE_POLL_S)
            raise

    def __next__(self) -> Any:
        ended = "the call ended while its messages were read"
        if not self._context.is_active():
            raise grpc.RpcError("the call has ended")
        try:
            future = self._context.finished(self._next(), self._context.is_active)
        except RuntimeError:  # the server's loop has stopped
            raise grpc.RpcError("the call has ended") from None
        if future is None:
            raise grpc.RpcError(ended)
        try:
            return future.result()
        except StopAsyncIteration:
            if not self._context.is_active():  # the client went away: no end of stream
                raise grpc.RpcError(ended) from None
            raise StopIteration from None


def is_coroutine_method(behaviour: Callable) -> bool:
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary
        or handler.stream_stream
    )  # fmt: skip


def bridged(handler: grpc.RpcMethodHandler, pool: futures.Executor) -> grpc.RpcMethodHandler:
    """`handler` for the asyncio server: a coroutine method as it is, a blocking one run in
    `pool` (a response stream is pulled one message at a time)."""
    behaviour = _behaviour(handler)
    if is_coroutine_method(behaviour):
        if handler.request_streaming or handler.response_streaming:
            raise TypeError("only unary-unary methods may be coroutines (a stream blocks)")
        return handler
    request_streaming, response_streaming = handler.request_streaming, handler.response_streaming

    def arguments(request: Any, context: Any, loop: asyncio.AbstractEventLoop) -> tuple:
        sync_context = SyncContext(context, loop)
        if request_streaming:
            return SyncRequests(request, sync_context), sync_context
        return request, sync_context

    if not response_streaming:

        async def unary(request: Any, context: Any) -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, behaviour, *arguments(request, context, loop))

        make = grpc.stream_unary_rpc_method_handler if request_streaming else (
            grpc.unary_unary_rpc_method_handler)  # fmt: skip
        return make(unary, handler.request_deserializer, handler.response_serializer)

    async def stream(request: Any, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        args = arguments(request, context, loop)
        responses = await loop.run_in_executor(pool, lambda: iter(behaviour(*args)))
        pending: asyncio.Future | None = None
        try:
            while True:
                pending = loop.run_in_executor(pool, next, responses, _END)
                message = await pending
                pending = None
                if message is _END:
                    return
                yield message
        finally:
            _close_later(responses, pending, pool)

    make = grpc.stream_stream_rpc_method_handler if request_streaming else (
        grpc.unary_stream_rpc_method_handler)  # fmt: skip
    return make(stream, handler.request_deserializer, handler.response_serializer)


def _close_later(responses: Any, pending: asyncio.Future | None, pool: futures.Executor) -> None:
    """Close a blocking response stream the call no longer reads (the client went away, or
    the stream ended), in the pool, once any `next` in progress has returned: its `finally`
    blocks run (stream slots released, the call's metrics recorded)."""
    close = getattr(responses, "close", None)
    if close is None:
        return

    def submit(_done: Any = None) -> None:
        try:
            pool.submit(close)
        except RuntimeError:  # the pool is shut down: the server is stopping
            close()

    if pending is None or pending.done():
        submit()
    else:
        pending.add_done_callback(submit)


class _Details(NamedTuple):
    """What our interceptors read of a call when they build its method's handler."""

    method: str
    invocation_metadata: tuple = ()


class Wrapping:
    """Each method's handler with our synchronous interceptors applied, then `bridged`:
    built once per method when the servicer is added, not per call (an asyncio interceptor
    would cost every call a coroutine of its own)."""

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor],
                 pool: futures.Executor) -> None:  # fmt: skip
        self._interceptors = list(interceptors)
        self._pool = pool
        self._built: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        built = self._built.get(method)
        if built is None or built[0] is not handler:
            wrapped, details = handler, _Details(method)
            for interceptor in reversed(self._interceptors):  # the first is the outermost
                wrapped = interceptor.intercept_service(lambda _d, h=wrapped: h, details)
            built = (handler, bridged(wrapped, self._pool))
            with self._lock:
                self._built[method] = built
        return built[1]


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, wrapping: Wrapping) -> None:
        self._inner = inner
        self._wrapping = wrapping

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._wrapping(handler_call_details.method, handler)


class _Registrar:
    """What a generated `add_XServicer_to_server` is given: it registers the servicer's
    handlers on the asyncio server, wrapped."""

    def __init__(self, server: grpc.aio.Server, wrapping: Wrapping) -> None:
        self._server = server
        self._wrapping = wrapping

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(h, self._wrapping) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(service, {
            name: self._wrapping(f"/{service}/{name}", handler)
            for name, handler in handlers.items()
        })  # fmt: skip


class AioServer:
    """A `grpc.aio` server on an event loop of its own thread, driven from other threads the
    way a `grpc.Server` is: add servicers and ports, `start()`, `stop(grace).wait()`."""

    def __init__(self, name: str, *, pool_size: int,
                 interceptors: Sequence[grpc.ServerInterceptor] = (),
                 options: Sequence[tuple[str, Any]] = ()) -> None:  # fmt: skip
        self.pool = futures.ThreadPoolExecutor(max_workers=pool_size,
                                               thread_name_prefix=f"{name}-rpc")  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{name}-aio",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        self._wrapping = Wrapping(interceptors, self.pool)

        async def make() -> grpc.aio.Server:
            return grpc.aio.server(options=list(options))

        self.server = self._wait(make())

    def _wait(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def on_loop(self, call: Callable[[], Any]) -> Any:
        """Run `call()` on the server's loop thread; its result."""

        async def run() -> Any:
            return call()

        return self._wait(run())

    def add(self, add_to_server: Callable[[Any, Any], None], servicer: Any) -> None:
        """Add a servicer with a generated `add_XServicer_to_server`, its methods wrapped."""
        registrar = _Registrar(self.server, self._wrapping)
        self.on_loop(lambda: add_to_server(servicer, registrar))

    def add_insecure_port(self, address: str) -> int:
        return self.on_loop(lambda: self.server.add_insecure_port(address))

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self.on_loop(lambda: self.server.add_secure_port(address, credentials))

    def start(self) -> None:
        self._wait(self.server.start())

    def stop(self, grace: float | None) -> _Stopping:
        """Refuse new calls, give those in progress `grace` seconds; `.wait()` for the end."""
        return _Stopping(self, asyncio.run_coroutine_threadsafe(self.server.stop(grace),
                                                                 self.loop))  # fmt: skip

    def _close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class _Stopping:
    def __init__(self, server: AioServer, stopped: futures.Future) -> None:
        self._server = server
        self._stopped = stopped
        self._lock = threading.Lock()
        self._done = False

    def wait(self, timeout: float | None = None) -> bool:
        try:
            self._stopped.result(timeout)
        except futures.TimeoutError:
            return False
        with self._lock:
            if not self._done:
                self._done = True
                self._server._close()
        return True
