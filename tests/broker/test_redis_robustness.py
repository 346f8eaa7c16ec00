"""The broker's Redis client gives up on a hung Redis after its socket timeout, rides out a
restart with retries, and its blocking reads stay under that timeout; the broker refuses a
Redis that can lose jobs (no AOF, an eviction policy) unless told to run anyway. Every Redis
here is one the test started (the session one, or a private one it can stop)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from talkingface.broker import service
from talkingface.broker.jobs import JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.broker.service import broker_server, check_redis_persistence
from talkingface.config import ConfigError, Settings
from talkingface.storage import LocalStore
from tests.fixtures.servers import (
    LOOPBACK,
    RedisServer,
    _redis_answers,
    free_port,
    start_redis,
    stop_process,
)


def settings_for(url: str, **env: str) -> Settings:
    return Settings.from_env({"TALKINGFACE_REDIS_URL": url, **env})


# ---- timeouts and retries ------------------------------------------------------------------


def test_a_hung_redis_fails_the_call_after_the_socket_timeout(tmp_path: Path):
    with start_redis(tmp_path / "redis") as server:
        settings = settings_for(server.url, TALKINGFACE_REDIS_SOCKET_TIMEOUT_SECONDS="0.5",
                                TALKINGFACE_REDIS_RETRIES="0")  # fmt: skip
        client = service.redis_client(settings)
        pid = int(client.info("server")["process_id"])
        outcome: dict[str, object] = {}

        def call() -> None:
            started = time.monotonic()
            try:
                client.get("probe")
                outcome["error"] = None
            except redis.RedisError as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - started

        os.kill(pid, signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            thread.join(4.0)
            hung = thread.is_alive()
        finally:
            os.kill(pid, signal.SIGCONT)
        thread.join(10.0)
        client.close()
    assert not hung, "the call waited on the hung Redis past 4 s"
    assert isinstance(outcome["error"], redis.TimeoutError)
    assert 0.4 <= float(outcome["seconds"]) < 2.0  # type: ignore[arg-type]


def _redis_on(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A redis-server with AOF on a given port (a restart of the same server)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run `make setup`"
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(workdir), "--daemonize", "no"]  # fmt: skip
    with (workdir / "redis-server.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _redis_answers(port):
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return proc


def test_commands_ride_out_a_redis_restart(tmp_path: Path):
    port = free_port()
    procs = [_redis_on(port, tmp_path)]
    try:
        settings = settings_for(f"redis://{LOOPBACK}:{port}/0", TALKINGFACE_REDIS_RETRIES="8")
        client = service.redis_client(settings)
        key = f"probe-{uuid.uuid4().hex}"
        client.set(key, b"kept")
        stop_process(procs[0])  # SIGTERM: the AOF has the key

        def restart() -> None:
            time.sleep(1.0)
            procs.append(_redis_on(port, tmp_path))

        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        started = time.monotonic()
        assert client.get(key) == b"kept"  # retried with backoff until Redis was back
        assert time.monotonic() - started >= 0.9
        restarter.join(30)
        client.close()
    finally:
        for proc in procs:
            stop_process(proc)


def test_blocking_reads_stay_under_the_socket_timeout(redis_server: RedisServer, redis_client):
    """The queue's idle wait and a job watch block in slices shorter than the socket timeout,
    so a long wait is never mistaken for a dead Redis."""
    settings = settings_for(redis_server.url, TALKINGFACE_REDIS_SOCKET_TIMEOUT_SECONDS="1.5",
                            TALKINGFACE_REDIS_RETRIES="0")  # fmt: skip
    client = service.redis_client(settings)
    try:
        queue = WorkQueue(client, f"idle-{uuid.uuid4().hex[:8]}")
        started = time.monotonic()
        assert queue.claim("w", block_ms=2500) is None
        assert time.monotonic() - started >= 2.4
        jobs = JobStore(client, ttl_s=600)
        job, _ = jobs.create(f"t-{uuid.uuid4().hex[:8]}", "render", {})
        seen = list(jobs.watch(job.job_id, timeout_s=2.5))
        assert [j.job_id for j in seen] == [job.job_id]
    finally:
        client.close()


def test_timeouts_and_retries_are_checked(redis_server: RedisServer):
    with pytest.raises(ConfigError) as info:
        service.redis_client(settings_for(redis_server.url,
                                          TALKINGFACE_REDIS_SOCKET_TIMEOUT_SECONDS="0",
                                          TALKINGFACE_REDIS_RETRIES="-1"))  # fmt: skip
    assert "TALKINGFACE_REDIS_SOCKET_TIMEOUT_SECONDS" in str(info.value)
    assert "TALKINGFACE_REDIS_RETRIES" in str(info.value)


# ---- persistence ---------------------------------------------------------------------------


def test_the_session_redis_is_durable(redis_server: RedisServer):
    client = redis.Redis.from_url(redis_server.url)
    try:
        check_redis_persistence(client, settings_for(redis_server.url))  # no ConfigError
    finally:
        client.close()


VOLATILE = ("--appendonly", "no", "--maxmemory-policy", "allkeys-lru")


def test_a_volatile_redis_is_refused_naming_both_settings(tmp_path: Path, caplog):
    with start_redis(tmp_path / "redis", VOLATILE) as server:
        client = redis.Redis.from_url(server.url)
        settings = settings_for(server.url)
        with pytest.raises(ConfigError) as info:
            check_redis_persistence(client, settings)
        text = str(info.value)
        assert "appendonly" in text and "appendonly yes" in text
        assert "maxmemory-policy" in text and "noeviction" in text
        assert "TALKINGFACE_REDIS_ALLOW_VOLATILE" in text
        with pytest.raises(ConfigError, match="appendonly"):  # the broker does not start
            broker_server(settings, store=LocalStore(tmp_path / "store"))

        with caplog.at_level(logging.WARNING, logger="talkingface.broker.service"):
            allowed = settings_for(server.url, TALKINGFACE_REDIS_ALLOW_VOLATILE="true")
            check_redis_persistence(client, allowed)
            check_redis_persistence(client, settings, strict=False)  # a worker: warns
        warnings = [r for r in caplog.records if "Redis can lose jobs" in r.getMessage()]
        assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
        client.close()


def test_only_the_eviction_policy_wrong_is_refused_too(tmp_path: Path):
    with start_redis(tmp_path / "redis", ("--maxmemory-policy", "volatile-lru")) as server:
        client = redis.Redis.from_url(server.url)
        with pytest.raises(ConfigError) as info:
            check_redis_persistence(client, settings_for(server.url))
        assert "maxmemory-policy is 'volatile-lru'" in str(info.value)
        assert "appendonly is" not in str(info.value)
        client.close()


def test_a_redis_that_refuses_config_is_a_warning(tmp_path: Path, caplog):
    with start_redis(tmp_path / "redis", ("--rename-command", "CONFIG", "")) as server:
        client = redis.Redis.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger="talkingface.broker.service"):
            check_redis_persistence(client, settings_for(server.url))
        assert any("CONFIG GET refused" in r.getMessage() for r in caplog.records)
        client.close()


# ---- the API while Redis is down -------------------------------------------------------------


def test_the_api_answers_unavailable_not_internal_while_redis_is_down(tmp_path: Path):
    """Chaos run finding: submissions during a Redis restart were refused INTERNAL (a bug, to
    clients) instead of UNAVAILABLE (retry)."""
    from talkingface.broker.client import BrokerClient
    from talkingface.errors import TalkingFaceError

    with start_redis(tmp_path / "redis") as server:
        settings = settings_for(
            server.url, TALKINGFACE_STORE="local", TALKINGFACE_STORE_DIR=str(tmp_path / "store"),
            TALKINGFACE_GRPC_HOST="127.0.0.1", TALKINGFACE_GRPC_PORT="0",
            TALKINGFACE_METRICS_PORT="0", TALKINGFACE_BROKER_WORKERS="0",
            TALKINGFACE_BROKER_TRAIN_WORKERS="0", TALKINGFACE_JANITOR_INTERVAL_SECONDS="0",
            TALKINGFACE_REDIS_RETRIES="0", TALKINGFACE_REDIS_CONNECT_TIMEOUT_SECONDS="1",
        )  # fmt: skip
        api = broker_server(settings)
        api.start()
        try:
            client = BrokerClient(f"127.0.0.1:{api.port}", "acme", timeout_s=30, api_key="",
                                  ca_file="")  # fmt: skip
            with pytest.raises(TalkingFaceError) as missing:
                client.get_job("0" * 32)
            assert missing.value.code == "JOB_NOT_FOUND"  # Redis up: an ordinary answer
            redis.Redis.from_url(server.url).shutdown(nosave=True)  # Redis gone
            with pytest.raises(TalkingFaceError) as down:
                client.get_job("0" * 32)
            assert down.value.code == "UNAVAILABLE", down.value
            assert down.value.transient
            client.close()
        finally:
            api.stop(grace=1.0)
