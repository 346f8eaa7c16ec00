"""Run a parser of untrusted bytes where a native crash or hang costs one request, not the process.

Codecs are native code: one malformed (or merely unusual) file can make FFmpeg, or PyAV's
bindings around it, segfault, loop, or allocate without end. `run_task` therefore never runs
a task in the calling process. It hands the bytes to a *sandbox server*, a small
single-threaded helper process (`python -m talkingface.sandbox`) that has imported the task's
module once, and the server forks one child per request. The child lowers its own limits
before it touches the bytes (address space, CPU seconds, no core file), runs the task and
writes the answer to a pipe; the server watches the wall clock, kills a child that overruns,
reaps it, and relays either the answer or how the child ended. A crash therefore costs one
fork, a few milliseconds, and the caller gets a `SandboxError` it can turn into its own clean
error code. The server itself never parses the bytes; if it dies anyway, the client drops it
and starts another.

Forking in the server (not in the caller) matters: callers are gRPC servers, Ray replicas and
render workers with many threads, where `fork()` is unsafe; the server has one thread.

A task is a function `fn(data: bytes, params: dict) -> (meta: dict, body: bytes)`, named as
"module:function". It raises `TaskError(code, message)` for a clean refusal; any other
exception comes back as its type name.

Settings (docs/configuration.md): TALKINGFACE_SANDBOX_MEMORY_MB, TALKINGFACE_SANDBOX_CPU_SECONDS,
TALKINGFACE_SANDBOX_TIMEOUT_SECONDS. See docs/audio_features.md, "Crash isolation".
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_SERVERS = 4  # concurrent requests per process; more wait for a free server
_HEADER = struct.Struct("!IQ")  # JSON header length, body length
_MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one sandboxed request may use: memory on top of the server's own address space,
    CPU time of the child, and wall-clock time from fork to answer."""

    memory_mb: int = 2048
    cpu_seconds: float = 60.0
    timeout_seconds: float = 120.0

    @classmethod
    def from_settings(cls, settings: Any = None) -> Limits:
        if settings is None:
            from talkingface.config import ConfigError, Settings

            try:
                settings = Settings.from_env()
            except ConfigError:
                return cls()  # the process reports its configuration elsewhere
        return cls(
            memory_mb=settings.sandbox_memory_mb,
            cpu_seconds=settings.sandbox_cpu_seconds,
            timeout_seconds=settings.sandbox_timeout_seconds,
        )


class TaskError(Exception):
    """Raised by a task for a clean refusal: `code` is the caller's error code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class SandboxError(Exception):
    """A sandboxed request that gave no answer. `reason` is one of:

    - "task_error": the task refused cleanly (`code`, `message` are the task's own);
    - "exception": the task raised another exception (`message` is its type name);
    - "memory": the task ran out of its memory limit (MemoryError);
    - "crashed": the child was killed by a signal (`signal` is its name, e.g. "SIGSEGV");
    - "cpu": the child used up its CPU-time limit (SIGXCPU);
    - "timeout": the child ran past the wall-clock limit and was killed;
    - "exited": the child exited without an answer (`message` has the status);
    - "unavailable": the sandbox server could not be started or died (not the input's fault).
    """

    def __init__(self, reason: str, message: str, code: str = "", sig: str = "") -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.code, self.signal = reason, message, code, sig

    def describe(self, limits: Limits) -> str:
        """A plain sentence for a client about a child that gave no answer (no internals)."""
        return {
            "crashed": f"the decoder crashed on this file ({self.signal})",
            "cpu": f"decoding used more than {limits.cpu_seconds:g} s of CPU",
            "timeout": f"decoding took longer than {limits.timeout_seconds:g} s",
            "memory": f"decoding needed more than {limits.memory_mb} MiB of memory",
        }.get(self.reason, f"the file could not be decoded ({self.message})")

    @property
    def input_fault(self) -> bool:
        """True when the input is to blame (anything but an unavailable sandbox)."""
        return self.reason != "unavailable"


# --- wire format (both sides) ----------------------------------------------------------------


def _write_frame(fd: int, header: dict, body: bytes | memoryview = b"") -> None:
    raw = json.dumps(header).encode()
    _write_all(fd, _HEADER.pack(len(raw), len(body)) + raw)
    _write_all(fd, body)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view[: 1 << 20]) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_frame(fd: int) -> tuple[dict, bytes] | None:
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    header_len, body_len = _HEADER.unpack(head)
    raw = _read_exact(fd, header_len)
    body = _read_exact(fd, body_len) if body_len else b""
    if raw is None or body is None:
        return None
    return json.loads(raw), body


def _parse_frame(buffer: bytes) -> tuple[dict, bytes] | None:
    """A complete frame from a child's whole output, or None when it is incomplete."""
    if len(buffer) < _HEADER.size:
        return None
    header_len, body_len = _HEADER.unpack_from(buffer)
    end = _HEADER.size + header_len
    if len(buffer) != end + body_len:
        return None
    try:
        return json.loads(buffer[_HEADER.size : end]), buffer[end:]
    except ValueError:
        return None


# --- the server (python -m talkingface.sandbox) ------------------------------------------------


def _resolve(task: str) -> Callable[[bytes, dict], tuple[dict, bytes]]:
    module, _, name = task.partition(":")
    return getattr(importlib.import_module(module), name)


def _virtual_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(out_fd: int, task: str, data: bytes, params: dict, limits: dict) -> None:
    """In the forked child: limit ourselves, run the task, write one frame, _exit."""
    import resource

    status = 0
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        cpu = max(1, int(limits["cpu_seconds"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        memory = _virtual_bytes() + int(limits["memory_mb"]) * _MB
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        try:
            meta, body = _resolve(task)(data, params)
            _write_frame(out_fd, {"ok": True, "meta": meta}, body)
        except TaskError as exc:
            _write_frame(out_fd, {"ok": False, "reason": "task_error", "code": exc.code,
                                  "message": exc.message})  # fmt: skip
        except MemoryError:
            _write_frame(out_fd, {"ok": False, "reason": "memory", "message": "out of memory"})
        except Exception as exc:
            _write_frame(out_fd, {"ok": False, "reason": "exception",
                                  "message": type(exc).__name__})  # fmt: skip
    except BaseException:
        status = 70
    finally:
        os._exit(status)


def _run_child(task: str, data: bytes, params: dict, limits: dict, control: tuple[int, int]):
    try:
        _resolve(task)  # imported here once (trusted code), so every child starts warm
    except Exception as exc:
        message = f"task {task!r} cannot be loaded ({type(exc).__name__})"
        return {"ok": False, "reason": "unavailable", "message": message}, b""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        for fd in control:
            os.close(fd)
        _child(write_fd, task, data, params, limits)
    os.close(write_fd)
    deadline = time.monotonic() + float(limits["timeout_seconds"])
    output = bytearray()
    most = int(limits["memory_mb"]) * _MB + (1 << 20)  # an answer cannot be bigger than that
    timed_out = too_big = False
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if poller.poll(min(left, 1.0) * 1000):
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                output += chunk
                if len(output) > most:
                    too_big = True
                    break
    finally:
        os.close(read_fd)
        if timed_out or too_big:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
    if timed_out:
        return {"ok": False, "reason": "timeout",
                "message": f"no answer within {limits['timeout_seconds']:g} s"}, b""  # fmt: skip
    if too_big:
        return {"ok": False, "reason": "memory", "message": "the answer is too big"}, b""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        cpu_spent = usage.ru_utime + usage.ru_stime >= float(limits["cpu_seconds"])
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_spent):
            return {"ok": False, "reason": "cpu", "signal": name,
                    "message": f"more than {limits['cpu_seconds']:g} s of CPU"}, b""  # fmt: skip
        return {"ok": False, "reason": "crashed", "signal": name,
                "message": f"killed by {name}"}, b""  # fmt: skip
    frame = _parse_frame(bytes(output))
    if frame is None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        return {"ok": False, "reason": "exited",
                "message": f"exited with status {code} without an answer"}, b""  # fmt: skip
    return frame


def serve() -> None:
    """The server loop: one request at a time on stdin, one answer each on stdout."""
    # The protocol keeps its own descriptors; fds 0 and 1 point at /dev/null so that nothing a
    # task prints can corrupt it.
    inp, out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client decides when we stop
    while True:
        frame = _read_frame(inp)
        if frame is None:
            return  # the client closed our stdin: it is gone or done with us
        request, data = frame
        header, body = _run_child(
            request["task"], data, request.get("params", {}), request["limits"], (inp, out)
        )
        _write_frame(out, header, body)


# --- the client ---------------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "talkingface.sandbox"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C in a terminal goes to the client only
        )

    def request(self, task: str, data: bytes, params: dict, limits: Limits):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        header = {"task": task, "params": params, "limits": limits.__dict__}
        _write_frame(self.proc.stdin.fileno(), header, data)
        # The server enforces the child's timeout; the margin covers the fork and the relay.
        deadline = time.monotonic() + limits.timeout_seconds + 30.0
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select(): a busy server process has fds above 1024
        poller.register(fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the sandbox server did not answer")
            if poller.poll(left * 1000):
                frame = _read_frame(fd)
                if frame is None:
                    raise EOFError("the sandbox server closed its output")
                return frame

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _Pool:
    """Idle servers of this process, at most MAX_SERVERS of them busy at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Server] = []
        self._slots = threading.BoundedSemaphore(MAX_SERVERS)
        self._pid = os.getpid()

    def _take(self) -> _Server:
        with self._lock:
            if self._pid != os.getpid():  # inherited over a fork: those servers are not ours
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                server = self._idle.pop()
                if server.alive():
                    return server
                server.close()
        return _Server()

    def _give_back(self, server: _Server) -> None:
        with self._lock:
            self._idle.append(server)

    def run(self, task: str, data: bytes, params: dict, limits: Limits):
        with self._slots:
            server = self._take()
            try:
                answer = server.request(task, data, params, limits)
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                with contextlib.suppress(Exception):
                    server.proc.kill()
                server.close()
                raise SandboxError(
                    "unavailable", f"the sandbox server failed ({type(exc).__name__})"
                ) from None
            self._give_back(server)
            return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for server in idle:
            server.close()


_POOL = _Pool()


def run_task(
    task: str, data: bytes, params: dict | None = None, limits: Limits | None = None
) -> tuple[dict, bytes]:
    """Run `task` ("module:function") on `data` in a forked, limited child; its (meta, body).

    Raises SandboxError when the child gave no answer (see SandboxError.reason).
    """
    limits = limits or Limits.from_settings()
    try:
        json.dumps(params or {})
    except TypeError as exc:
        raise ValueError(f"params must be JSON: {exc}") from None
    header, body = _POOL.run(task, data, params or {}, limits)
    if header.get("ok"):
        return header.get("meta", {}), body
    raise SandboxError(
        header.get("reason", "exited"),
        header.get("message", ""),
        code=header.get("code", ""),
        sig=header.get("signal", ""),
    )


def shutdown() -> None:
    """Stop this process's idle sandbox servers (they also stop when the process exits)."""
    _POOL.close()


if __name__ == "__main__":
    # Run the imported module's `serve`, so that tasks raise the very TaskError it catches.
    from talkingface.sandbox import serve as _serve

    _serve()
