"""The stage replicas' metrics export (talkingface.serving.exporter): one /metrics per node
merging every process's series (prometheus_client multiprocess mode), taken over by another
process when the serving one dies; and the whole path under Ray Serve in a real local fleet
(`talkingface up`): a stage call shows up in talkingface_grpc_server_handled_total."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from talkingface.broker.client import BrokerClient
from talkingface.errors import TalkingFaceError
from talkingface.serving.capability import METADATA_KEY, job_capability
from talkingface.serving.exporter import ADDRESS_FILE, exporter_address
from tests.fixtures.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
STAGE_SECRET = "metrics-test-stage-secret"

REPLICA = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from talkingface.serving.exporter import NodeExporter, enable_multiprocess
    directory = Path(sys.argv[1])
    enable_multiprocess(directory)  # prometheus_client is imported first, as in a Ray worker
    from talkingface.serving.metrics import HANDLED_TOTAL, IN_FLIGHT, SERVICE_INFO
    HANDLED_TOTAL.labels("talkingface.v1.Test", "Call", "unary", "OK").inc()
    IN_FLIGHT.labels("talkingface.v1.Test", "Call").inc()
    SERVICE_INFO.labels("test", "0", "cpu").set(1)
    NodeExporter(directory, 0, "127.0.0.1", retry_s=0.2).start()
    print("ready", flush=True)
    time.sleep(600)
    """
)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_one_exporter_per_node_merges_processes_and_survives_its_death(tmp_path):
    directory = tmp_path / "node"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'shared'}{os.pathsep}{ROOT}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [sys.executable, "-c", REPLICA, str(directory)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        first = exporter_address(directory, timeout_s=20)
        assert first["pid"] in {p.pid for p in procs}
        url = f"http://127.0.0.1:{first['port']}/metrics"
        samples = scrape(url)
        ok = {"grpc_service": "talkingface.v1.Test", "grpc_method": "Call", "grpc_type": "unary",
              "grpc_code": "OK"}  # fmt: skip
        assert value(samples, "talkingface_grpc_server_handled_total", **ok) == 2
        call = {"grpc_service": "talkingface.v1.Test", "grpc_method": "Call"}
        assert value(samples, "talkingface_grpc_server_in_flight", **call) == 2  # livesum
        info = {"service": "test", "version": "0", "device": "cpu"}
        assert value(samples, "talkingface_service_info", **info) == 1  # livemax, no pid label

        serving = next(p for p in procs if p.pid == first["pid"])
        serving.send_signal(signal.SIGKILL)
        serving.wait(10)
        second = exporter_address(directory, timeout_s=20)
        assert second["pid"] != first["pid"]
        samples = scrape(f"http://127.0.0.1:{second['port']}/metrics")
        # Counters keep the dead process's share; its live gauges are gone.
        assert value(samples, "talkingface_grpc_server_handled_total", **ok) == 2
        assert value(samples, "talkingface_grpc_server_in_flight", **call) == 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


# --- under Ray Serve, in a local fleet ----------------------------------------------------------


def _wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def _audio_only_config(path: Path, grpc_port: int) -> Path:
    """The fleet's serve config with only the audio_features stage (one replica, no GPU)."""
    raw = yaml.safe_load((ROOT / "services" / "serve_config.yaml").read_text())
    raw["grpc_options"]["port"] = grpc_port
    raw["applications"] = [a for a in raw["applications"] if a["name"] == "audio_features"]
    deployment = raw["applications"][0]["deployments"][0]
    deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    deployment["ray_actor_options"]["num_gpus"] = 0
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_a_stage_call_under_ray_serve_is_exported_on_the_nodes_metrics_port(tmp_path):
    import grpc

    from talkingface.v1 import audio_features_pb2, audio_features_pb2_grpc

    config = _audio_only_config(tmp_path / "serve.yaml", free_port())
    env = {
        **os.environ,
        "TALKINGFACE_CACHE_DIR": str(tmp_path / "cache"),
        "TALKINGFACE_STORE": "local",
        "TALKINGFACE_STORE_DIR": str(tmp_path / "store"),
        "TALKINGFACE_MOTION_CHECKPOINT": str(tmp_path / "unused"),  # no motion stage here
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_LOG_FORMAT": "text",
        "TALKINGFACE_LOG_LEVEL": "WARNING",
        # The stage plane is closed (talkingface up makes a secret when none is set): this
        # test calls a stage as the broker's workers do, with a capability signed by it.
        "TALKINGFACE_STAGE_SECRET": STAGE_SECRET,
    }
    for name in ("TALKINGFACE_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "RAY_ADDRESS",
                 "TALKINGFACE_BROKER_AUTH", "TALKINGFACE_API_KEY"):  # fmt: skip
        env.pop(name, None)
    argv = [sys.executable, "-m", "talkingface.cli", "up", "--json", "--config", str(config),
            "--port", str(free_port())]  # fmt: skip
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                            cwd=ROOT)  # fmt: skip
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            pytest.fail(f"talkingface up exited ({proc.returncode}):\n"
                        + (tmp_path / "up.log").read_text()[-3000:])  # fmt: skip
        endpoints = json.loads(line)
        assert endpoints["stage_metrics"].startswith("http://127.0.0.1:")
        # API keys are on by default: the fleet made its client a key, and the client commands
        # on this machine find it in the cache directory.
        key_file = tmp_path / "cache" / "fleet" / "api_key"
        assert endpoints["api_key"].startswith("tfk_")
        assert key_file.read_text().strip() == endpoints["api_key"]
        assert key_file.stat().st_mode & 0o077 == 0
        with BrokerClient(endpoints["broker"], timeout_s=30, api_key="", ca_file="") as anon:
            with pytest.raises(TalkingFaceError) as denied:
                anon.get_job("0" * 32)
            assert denied.value.code == "UNAUTHENTICATED"
        with BrokerClient(endpoints["broker"], timeout_s=30, api_key=endpoints["api_key"],
                          ca_file="") as client:  # fmt: skip
            with pytest.raises(TalkingFaceError) as missing:
                client.get_job("0" * 32)
            assert missing.value.code == "JOB_NOT_FOUND"

        channel = grpc.insecure_channel(endpoints["stages"])
        stub = audio_features_pb2_grpc.AudioFeaturesStub(channel)
        token = job_capability(STAGE_SECRET, tenant="t", job_id="metrics-test", reads=(),
                               writes=(), ttl_s=600)  # fmt: skip
        metadata = (("application", "audio_features"), (METADATA_KEY, token))
        good = audio_features_pb2.ExtractFeaturesRequest(
            audio=audio_features_pb2.AudioInput(data=_wav())
        )
        assert len(list(stub.Extract(good, metadata=metadata, timeout=120))) > 1
        empty = audio_features_pb2.ExtractFeaturesRequest(audio=audio_features_pb2.AudioInput())
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Extract(empty, metadata=metadata, timeout=60))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        samples = scrape(endpoints["stage_metrics"])
        labels = {"grpc_service": "talkingface.v1.AudioFeatures", "grpc_method": "Extract",
                  "grpc_type": "server_stream"}  # fmt: skip
        handled = "talkingface_grpc_server_handled_total"
        assert value(samples, handled, **labels, grpc_code="OK") == 1
        assert value(samples, handled, **labels, grpc_code="INVALID_ARGUMENT") == 1
        assert value(samples, "talkingface_grpc_server_handling_seconds_count", **labels) == 2
        info = [k for k in samples if k[0] == "talkingface_service_info"]
        assert any(("service", "audio_features") in k[1] for k in info), info
        # The broker's own endpoint is another process's: it has no stage series.
        broker = scrape(endpoints["broker_metrics"])
        assert value(broker, handled, **labels, grpc_code="OK") is None

        # Ray's own export (ray_serve_*, ray_node_*): this fleet started Ray, on a known port.
        deadline = time.monotonic() + 60
        names: set[str] = set()
        while time.monotonic() < deadline and not any(n.startswith("ray_") for n in names):
            with contextlib.suppress(OSError):
                names = {k[0] for k in scrape(endpoints["ray_metrics"])}
            time.sleep(2)
        assert any(n.startswith("ray_") for n in names), sorted(names)[:20]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    assert not (tmp_path / "cache" / "fleet" / "api_key").exists()  # removed at the stop


def test_the_address_file_names_a_live_process(tmp_path):
    """A stale address (its process gone) is not handed out."""
    (tmp_path / ADDRESS_FILE).write_text(json.dumps({"port": 1, "pid": 2**22 + 12345}))
    with pytest.raises(TimeoutError):
        exporter_address(tmp_path, timeout_s=0.3)


def test_node_directories_of_clusters_that_are_gone_are_swept(tmp_path):
    """Removed: a node directory nobody's exporter holds and untouched for an hour. Kept: the
    new cluster's own, one whose lock a live process holds, one written to recently."""
    import fcntl

    from talkingface.serving.exporter import LOCK_FILE, sweep_stale_nodes

    def node(name: str, age_s: float) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        for file in (LOCK_FILE, "counter_123.db"):
            (directory / file).write_bytes(b"x")
            os.utime(directory / file, (time.time() - age_s, time.time() - age_s))
        return directory

    gone, held, fresh, own = (node("node-gone", 7200), node("node-held", 7200),
                              node("node-fresh", 60), node("node-own", 7200))  # fmt: skip
    other = tmp_path / "not-a-node"
    other.mkdir()
    fd = os.open(held / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live exporter's lock
        assert sweep_stale_nodes(tmp_path, keep=own) == [gone]
    finally:
        os.close(fd)
    assert not gone.exists()
    assert held.is_dir() and fresh.is_dir() and own.is_dir() and other.is_dir()
