"""The sandbox for untrusted media (talkingface.sandbox): answers come back whole; a child
that crashes, hangs, spins or allocates without end is one clean SandboxError, and the
next request is served as if nothing happened."""

from __future__ import annotations

import os
import threading
import time

import pytest

from talkingface.sandbox import _POOL, Limits, SandboxError, run_task

T = "tests._sandbox_tasks:"
FAST = Limits(memory_mb=256, cpu_seconds=2, timeout_seconds=4)


def _fails(task: str, limits: Limits = FAST) -> SandboxError:
    with pytest.raises(SandboxError) as caught:
        run_task(T + task, b"payload", {}, limits)
    return caught.value


def _still_serves() -> None:
    meta, body = run_task(T + "echo", b"abc", {"k": 1}, FAST)
    assert (meta["n"], meta["params"], body) == (3, {"k": 1}, b"cba")


def test_an_answer_comes_back_whole_from_another_process():
    data = os.urandom(3 * 1024 * 1024 + 17)  # bigger than a pipe's buffer, both ways
    meta, body = run_task(T + "echo", data, {"k": [1, "x"]}, FAST)
    assert body == data[::-1] and meta["n"] == len(data) and meta["params"] == {"k": [1, "x"]}
    assert meta["pid"] != os.getpid()
    again, _ = run_task(T + "echo", b"", {}, FAST)
    assert again["pid"] != meta["pid"]  # one child per request


@pytest.mark.parametrize(
    ("task", "reason", "sig"),
    [("segfault", "crashed", "SIGSEGV"), ("abort", "crashed", "SIGABRT"),
     ("exit_quietly", "exited", "")],
)  # fmt: skip
def test_a_child_that_dies_is_a_clean_error(task, reason, sig):
    error = _fails(task)
    assert (error.reason, error.signal) == (reason, sig) and error.input_fault
    _still_serves()


def test_a_hang_is_killed_at_the_wall_clock_limit():
    started = time.monotonic()
    error = _fails("sleep", Limits(memory_mb=256, cpu_seconds=2, timeout_seconds=1))
    assert error.reason == "timeout"
    assert time.monotonic() - started < 10
    _still_serves()


def test_a_spin_is_stopped_by_the_cpu_limit():
    error = _fails("spin", Limits(memory_mb=256, cpu_seconds=1, timeout_seconds=60))
    assert error.reason == "cpu" and error.signal in ("SIGXCPU", "SIGKILL")
    _still_serves()


def test_memory_beyond_the_limit_is_refused():
    assert _fails("allocate").reason == "memory"
    _still_serves()


def test_refusals_and_exceptions_keep_their_meaning_but_not_their_text():
    refused = _fails("refuse")
    assert (refused.reason, refused.code, refused.message) == ("task_error", "AUDIO_CORRUPT",
                                                                "not audio")  # fmt: skip
    raised = _fails("raise_value_error")
    assert raised.reason == "exception" and raised.message == "ValueError"
    missing = _fails("no_such_task")
    assert missing.reason == "unavailable" and not missing.input_fault


def test_a_dead_server_is_replaced():
    run_task(T + "echo", b"x", {}, FAST)
    with _POOL._lock:
        servers = list(_POOL._idle)
    assert servers
    for server in servers:
        server.proc.kill()
        server.proc.wait(10)
    _still_serves()


def test_concurrent_requests_from_threads():
    errors, results = [], []

    def call(i: int) -> None:
        try:
            task = "segfault" if i % 3 == 0 else "echo"
            results.append(run_task(T + task, bytes([i]) * 1000, {"i": i}, FAST))
        except SandboxError as exc:
            errors.append((i, exc.reason))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(errors) == [(i, "crashed") for i in range(0, 12, 3)]
    assert sorted(meta["params"]["i"] for meta, _ in results) == [i for i in range(12) if i % 3]
