"""Keeping a job's lease while one of its slow steps runs.

A worker renews its queue lease only when its handler calls `heartbeat`; a step that does not
return for longer than the lease (unpacking a large tar, evaluating a renderer, training a
postnet, uploading a bundle) would let the lease run out, and another worker would take the
job over while this one still works on it. `Beating.run` runs such a step in a thread of its
own while the calling thread beats every `beat_s` (a quarter of the lease, as the handlers
use), so the lease stays renewed however long the step takes.

The step's own progress reports go to `report(stage, progress)` (safe from the step's
thread: it only records them); the next beat carries them. When a beat raises (Cancelled,
LeaseLost, or what an `on_beat` hook raises) the step is told to stop (`stopping` is set and
its next `report` raises Cancelled), given up to one beat to end, and then abandoned: `run`
re-raises the beat's exception at once, so the handler stops within one beat whether or not
the step looks at the flag. With `settle=True` the step is waited for to its end instead (what
it writes is then there for the handler to clean up). `stopping` tells afterwards whether a
beat ended the wait (the step's own exception leaves it clear).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from talkingface.broker.worker import Cancelled, Heartbeat

T = TypeVar("T")


class Beating:
    """Runs slow steps of one job while beating its heartbeat (see the module docstring)."""

    def __init__(self, heartbeat: Heartbeat, beat_s: float) -> None:
        self.heartbeat = heartbeat
        self.beat_s = beat_s
        self.stopping = threading.Event()
        self._stage: str | None = None
        self._progress: float | None = None
        self._lock = threading.Lock()

    def report(self, stage: str | None = None, progress: float | None = None) -> None:
        """Record the step's stage and progress for the next beat; raises Cancelled once the
        job must stop (call it from the step, between its pieces of work)."""
        with self._lock:
            if stage is not None:
                self._stage = stage
            if progress is not None:
                self._progress = round(progress, 4)
        if self.stopping.is_set():
            raise Cancelled("the job stopped while this step ran")

    def beat(self, on_beat: Callable[[], None] | None = None) -> None:
        """One heartbeat with the latest stage and progress (and `on_beat` after it)."""
        with self._lock:
            stage, progress = self._stage, self._progress
        self.heartbeat(stage=stage, progress=progress)
        if on_beat is not None:
            on_beat()

    def run(
        self,
        step: Callable[[], T],
        stage: str,
        progress: float | None = None,
        on_beat: Callable[[], None] | None = None,
        *,
        settle: bool = False,
        beat_first: bool = True,
    ) -> T:
        """`step()` run in a thread while this thread beats every `beat_s`; its result, or the
        exception it raised. A beat that raises stops the wait (see the module docstring).
        `beat_first=False` leaves out the beat before the step (the caller has just beaten)."""
        self.report(stage, progress)
        if beat_first:
            self.beat(on_beat)
        done = threading.Event()
        outcome: list = [None, None]  # result, exception

        def target() -> None:
            try:
                outcome[0] = step()
            except BaseException as exc:  # handed to the caller's thread
                outcome[1] = exc
            finally:
                done.set()

        thread = threading.Thread(target=target, name=f"job-step-{stage.lower()}", daemon=True)
        thread.start()
        while not done.wait(self.beat_s):
            try:
                self.beat(on_beat)
            except BaseException:
                self.stopping.set()
                # A step that looks at the flag ends; others are left (or, settling, waited for).
                done.wait(None if settle else self.beat_s)
                raise
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def wait(self, seconds: float, on_beat: Callable[[], None] | None = None) -> None:
        """Sleep `seconds`, beating every `beat_s` meanwhile (and once at the end)."""
        remaining = seconds
        while True:
            pause = min(self.beat_s, max(remaining, 0.0))
            if self.stopping.wait(pause):
                raise Cancelled("the job stopped")
            remaining -= pause
            self.beat(on_beat)
            if remaining <= 0:
                return
