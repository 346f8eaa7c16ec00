"""Long-lived broker streams (WatchJob, Upload) kept from starving the short calls.

The broker API's blocking methods run in its server's thread pool (serving/aio.py; GetJob
is a coroutine and needs no thread): every such RPC in progress holds one thread until it
returns, and a stream can last minutes. The pool is therefore sized as
TALKINGFACE_GRPC_WORKERS (the unary calls' share: SubmitRender, CancelJob, ...) plus one thread
for each stream the broker admits (`pool_size`), and `StreamGate` admits at most
TALKINGFACE_BROKER_MAX_WATCH_STREAMS WatchJob and TALKINGFACE_BROKER_MAX_UPLOAD_STREAMS Upload
streams at once: one over its cap is refused at once with OVERLOADED (RESOURCE_EXHAUSTED), so
the unary calls always find a free thread however many slow clients connect. Streams are also
bounded in time: an Upload that sends nothing for TALKINGFACE_BROKER_UPLOAD_IDLE_SECONDS ends
with DEADLINE_EXCEEDED (`idle_limited`), a WatchJob ends normally after
TALKINGFACE_BROKER_WATCH_MAX_SECONDS and the client watches again.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

from talkingface.config import Settings, env_name
from talkingface.errors import TalkingFaceError

T = TypeVar("T")


def pool_size(settings: Settings) -> int:
    """Threads of the broker API's server: the unary share plus one per admitted stream."""
    return (
        settings.grpc_workers
        + settings.broker_max_watch_streams
        + settings.broker_max_upload_streams
    )


class StreamGate:
    """At most `limit` streams of one kind at once (a non-blocking semaphore)."""

    def __init__(self, rpc: str, limit: int, setting: str) -> None:
        self.rpc = rpc
        self.limit = limit
        self.setting = setting
        self._lock = threading.Lock()
        self._open = 0

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    @contextlib.contextmanager
    def hold(self, context: Any = None) -> Iterator[None]:
        """Admit one stream for the `with` body, or raise OVERLOADED. The slot is given back
        when the body ends, or when the RPC ends (`context`'s callback), whichever is first."""
        with self._lock:
            if self._open >= self.limit:
                raise TalkingFaceError(
                    "OVERLOADED",
                    f"the broker is serving its maximum of {self.limit} {self.rpc} streams "
                    f"({env_name(self.setting)}): retry later"
                    + (" or poll GetJob" if self.rpc == "WatchJob" else ""),
                )
            self._open += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._open -= 1

        if context is not None:
            context.add_callback(release)  # a stream the client dropped mid-way
        try:
            yield
        finally:
            release()


class StreamGates:
    """The broker's WatchJob and Upload gates, from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.watch = StreamGate("WatchJob", settings.broker_max_watch_streams,
                                "broker_max_watch_streams")  # fmt: skip
        self.upload = StreamGate("Upload", settings.broker_max_upload_streams,
                                 "broker_max_upload_streams")  # fmt: skip


_END = object()


def idle_limited(messages: Iterator[T], idle_s: float, what: str = "upload") -> Iterator[T]:
    """`messages`, ended with DEADLINE_EXCEEDED when none arrives for `idle_s` seconds.

    A helper thread reads the stream (a blocking read of a gRPC request iterator cannot be
    timed out otherwise) and hands each message over; it ends with the RPC. A client that went
    away (the iterator raises) reads as CANCELLED."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def pump() -> None:
        try:
            for message in messages:
                while not stop.is_set():
                    try:
                        handoff.put((message, None), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: tuple[Any, BaseException | None] = (_END, None)
        except Exception as exc:  # grpc.RpcError: the client cancelled or went away
            item = (_END, exc)
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    reader = threading.Thread(target=pump, name="upload-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                message, error = handoff.get(timeout=idle_s)
            except queue.Empty:
                raise TalkingFaceError(
                    "DEADLINE_EXCEEDED",
                    f"the {what} sent nothing for {idle_s:g} s "
                    f"({env_name('broker_upload_idle_seconds')}): it was ended and what it "
                    "sent was deleted; send the chunks without pausing",
                ) from None
            if error is not None:
                raise TalkingFaceError("CANCELLED", f"the {what} stream broke off: {error}")
            if message is _END:
                return
            yield message
    finally:
        stop.set()
