"""Sandbox tasks that misbehave on purpose (tests/test_sandbox.py, tests/audio/test_servicer.py).

They stand in for a codec that crashes, hangs, spins or allocates without end on one input.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

from talkingface.sandbox import TaskError


def echo(data: bytes, params: dict) -> tuple[dict, bytes]:
    return {"n": len(data), "params": params, "pid": os.getpid()}, data[::-1]


def segfault(data: bytes, params: dict) -> tuple[dict, bytes]:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a codec bug would
    return {}, b""


def abort(data: bytes, params: dict) -> tuple[dict, bytes]:
    os.kill(os.getpid(), signal.SIGABRT)
    return {}, b""


def sleep(data: bytes, params: dict) -> tuple[dict, bytes]:
    time.sleep(3600)
    return {}, b""


def spin(data: bytes, params: dict) -> tuple[dict, bytes]:
    while True:
        pass


def allocate(data: bytes, params: dict) -> tuple[dict, bytes]:
    hoard = []
    while True:
        hoard.append(bytearray(64 * 1024 * 1024))


def refuse(data: bytes, params: dict) -> tuple[dict, bytes]:
    raise TaskError("AUDIO_CORRUPT", "not audio")


def raise_value_error(data: bytes, params: dict) -> tuple[dict, bytes]:
    raise ValueError("a bug with /secret/paths in its text")


def exit_quietly(data: bytes, params: dict) -> tuple[dict, bytes]:
    os._exit(3)


def crash_on_marker(data: bytes, params: dict) -> tuple[dict, bytes]:
    """The real decode task, except that bytes starting with b"CRASH" segfault it."""
    from talkingface.audio.decode import decode_task

    if data.startswith(b"CRASH"):
        segfault(data, params)
    return decode_task(data, params)
