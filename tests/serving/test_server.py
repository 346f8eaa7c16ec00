"""The shared gRPC server bootstrap, exercised in a real subprocess over loopback."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from talkingface.v1 import info_pb2, info_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 3.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _read_listening_line(proc: subprocess.Popen, deadline: float) -> dict:
    """Return the JSON log entry announcing the ports (logs go to stdout as JSON lines)."""
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        entry = json.loads(line)
        if entry["msg"] == "gRPC server listening":
            return entry
    raise AssertionError(f"server never announced its ports; output: {''.join(seen)}")


# Both gRPC servers a ServiceServer runs: grpcio's thread pool (the stages) and grpc.aio
# (the broker, serving/aio.py).
SERVER_KINDS = ["threads", "asyncio"]


@pytest.fixture(params=SERVER_KINDS)
def plumbing_server(tmp_path, request):
    ready_file = tmp_path / "ready"
    env = {
        **os.environ,
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_HOST": "127.0.0.1",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_SHUTDOWN_GRACE_S": str(GRACE_S),
        "TALKINGFACE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.serving.plumbing_server", str(ready_file), request.param],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        entry = _read_listening_line(proc, time.monotonic() + 60)
        yield proc, ready_file, entry
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _metric_samples(port: int) -> list:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _sample(samples, name, **labels):
    matches = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0].value


def test_health_metrics_and_graceful_sigterm(plumbing_server):
    proc, ready_file, entry = plumbing_server
    channel = grpc.insecure_channel(f"127.0.0.1:{entry['grpc_port']}")
    health = health_pb2_grpc.HealthStub(channel)
    info = info_pb2_grpc.InfoStub(channel)

    # Not ready yet: every service reports NOT_SERVING, Info says ready=false.
    for service in ("", "talkingface.v1.Info"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == NOT_SERVING
    assert info.GetInfo(info_pb2.GetInfoRequest(), timeout=10).ready is False

    # Watch the overall health while the warm-up finishes.
    seen: list[int] = []
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))

    def follow():
        try:
            for response in watch:
                seen.append(response.status)
        except grpc.RpcError:
            pass

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:  # the watch is registered
        time.sleep(0.02)
    ready_file.touch()
    deadline = time.monotonic() + 30
    while SERVING not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen[:2] == [NOT_SERVING, SERVING]

    reply = info.GetInfo(info_pb2.GetInfoRequest(), timeout=10)
    assert reply.ready is True and reply.service == "plumbing"
    with pytest.raises(grpc.RpcError) as missing:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # Reflection lists our service next to health.
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"talkingface.v1.Info", "grpc.health.v1.Health"} <= names

    samples = _metric_samples(entry["metrics_port"])
    labels = {"grpc_service": "talkingface.v1.Info", "grpc_method": "GetInfo"}
    count = _sample(
        samples, "talkingface_grpc_server_handling_seconds_count", grpc_type="unary", **labels
    )
    assert count == 2
    assert _sample(samples, "talkingface_grpc_server_handled_total", grpc_code="OK", **labels) == 2
    bucket_le = {
        s.labels["le"]
        for s in samples
        if s.name == "talkingface_grpc_server_handling_seconds_bucket"
        and labels.items() <= s.labels.items()
    }
    assert {"0.001", "1.0", "+Inf"} <= bucket_le
    not_found = _sample(
        samples,
        "talkingface_grpc_server_handled_total",
        grpc_service="grpc.health.v1.Health",
        grpc_method="Check",
        grpc_code="NOT_FOUND",
    )
    assert not_found == 1
    # The open Watch stream is in flight right now.
    in_flight = _sample(
        samples,
        "talkingface_grpc_server_in_flight",
        grpc_service="grpc.health.v1.Health",
        grpc_method="Watch",
    )
    assert in_flight == 1

    # SIGTERM: health flips to NOT_SERVING for the open watcher, the process exits cleanly
    # within the grace period (the open stream is cancelled when the grace runs out).
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=GRACE_S + 10)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, rest
    assert elapsed < GRACE_S + 5, f"took {elapsed:.1f}s to stop"
    follower.join(timeout=5)
    assert seen[-1] == NOT_SERVING
    messages = [json.loads(line)["msg"] for line in rest.splitlines() if line.startswith("{")]
    assert "signal received" in messages and messages[-1] == "stopped"


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_stop_runs_the_hook_while_rpcs_drain_so_it_takes_one_grace(tmp_path, kind):
    """The broker's stop: its in-process workers (the hook) finish or hand back their jobs
    while in-flight RPCs drain. Before, the hook ran first and the RPCs got their grace after
    it: twice the grace (40 s by default, over Kubernetes' 30 s)."""
    from talkingface.config import Settings
    from talkingface.serving.server import ServiceServer

    grace = 2.0
    settings = Settings.from_env({"TALKINGFACE_GRPC_HOST": "127.0.0.1",
                                  "TALKINGFACE_GRPC_PORT": "0",
                                  "TALKINGFACE_METRICS_PORT": "0"})  # fmt: skip
    hook_ran = threading.Event()

    def slow_hook() -> None:  # workers using their whole share of the grace
        time.sleep(grace)
        hook_ran.set()

    server = ServiceServer("plumbing", [], settings, on_stop=slow_hook, asyncio=kind == "asyncio")
    port = server.start()
    server.set_serving()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    assert next(watch).status == SERVING  # an RPC in flight for the whole grace
    started = time.monotonic()
    server.stop(grace)
    elapsed = time.monotonic() - started
    assert hook_ran.is_set()
    assert grace <= elapsed < 1.6 * grace, f"stop took {elapsed:.1f} s"
    channel.close()
