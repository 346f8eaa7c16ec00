"""`talkingface bench api`: latency of the broker API under many concurrent clients.

Without `--broker`, starts its own: a private redis-server, the moto S3 server when moto is
installed (the local store otherwise) and `talkingface serve broker` in a child process (no
workers: jobs stay queued), with an avatar of placeholder files so SubmitRender is accepted.
With `--broker ADDRESS` it uses that broker as tenant TALKINGFACE_TENANT (API key from
TALKINGFACE_API_KEY) and needs `--avatar`, a READY avatar of that tenant (jobs it submits
are queued for real there).

Measured, each as p50/p99 milliseconds over every call (client threads, one call at a time
each, over a few shared channels):
- `submit_render`: SubmitRender (inline audio) from `clients` concurrent clients;
- `get_job`: GetJob of those jobs from `clients` concurrent clients;
- `get_job_with_streams`: 100 GetJob calls (10 at a time) while `watch_streams` WatchJob
  streams and `idle_uploads` Upload streams that send nothing are open.
Refused or failed calls are counted by code in `errors`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TARGETS = {"get_job_p99_ms": 100.0, "get_job_with_streams_p99_ms": 250.0}
CHANNELS = 8
AUDIO = b"RIFF" + bytes(4000)  # never decoded: no worker runs in the bench's own broker
START_TIMEOUT_S = 60.0


def run(
    broker: str | None = None,
    clients: int = 200,
    calls_per_client: int = 5,
    watch_streams: int = 50,
    idle_uploads: int = 10,
    avatar: str = "",
) -> dict[str, Any]:
    load_before = _load_average()
    with contextlib.ExitStack() as stack:
        if broker is None:
            broker, avatar, tenant, store = stack.enter_context(_own_broker())
        else:
            if not avatar:
                raise SystemExit("talkingface bench api: --broker needs --avatar (a READY "
                                 "avatar of TALKINGFACE_TENANT)")  # fmt: skip
            tenant, store = os.environ.get("TALKINGFACE_TENANT", "default"), "external"
        result = _measure(broker, tenant, avatar, clients, calls_per_client, watch_streams,
                          idle_uploads)  # fmt: skip
    result.update(
        broker=broker, store=store, clients=clients, calls_per_client=calls_per_client,
        watch_streams=watch_streams, idle_uploads=idle_uploads, targets=TARGETS,
        machine={"cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_average": {"before": load_before, "after": _load_average()}},
    )  # fmt: skip
    return result


# --- measuring ------------------------------------------------------------------------------


def _measure(address, tenant, avatar, clients, per_client, watch_streams, idle_uploads):
    import grpc

    from talkingface.broker.client import BrokerClient
    from talkingface.v1 import broker_pb2 as pb

    pool = [BrokerClient(address, tenant) for _ in range(CHANNELS)]
    pool[0].wait_ready(START_TIMEOUT_S)
    errors: Counter[str] = Counter()
    job_ids: list[str] = []
    lock = threading.Lock()

    def call(i: int, rpc: Callable[[Any], Any]) -> float | None:
        client = pool[i % CHANNELS]
        started = time.perf_counter()
        try:
            rpc(client)
        except grpc.RpcError as exc:
            with lock:
                errors[_code(exc)] += 1
            return None
        return (time.perf_counter() - started) * 1000

    def submit(client) -> None:
        job = client.stub.SubmitRender(
            pb.SubmitRenderRequest(avatar_id=avatar, inline_audio=AUDIO),
            metadata=client.metadata, timeout=60,
        )  # fmt: skip
        with lock:
            job_ids.append(job.job_id)

    def get(i: int) -> Callable[[Any], Any]:
        job_id = job_ids[i % len(job_ids)]
        return lambda c: c.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=c.metadata,
                                       timeout=60)  # fmt: skip

    n = clients * per_client
    out: dict[str, Any] = {}
    out["submit_render"] = _concurrently(clients, n, lambda i: call(i, submit))
    if not job_ids:
        raise SystemExit(f"talkingface bench api: no job could be submitted ({dict(errors)})")
    out["get_job"] = _concurrently(clients, n, lambda i: call(i, get(i)))

    release = threading.Event()
    held: list[Any] = []
    try:
        watched = 0
        for i in range(watch_streams):
            client = pool[i % CHANNELS]
            stream = client.stub.WatchJob(pb.WatchJobRequest(job_id=job_ids[i % len(job_ids)]),
                                          metadata=client.metadata, timeout=600)  # fmt: skip
            held.append(stream)
            try:
                next(stream)
                watched += 1
            except grpc.RpcError as exc:
                errors[f"WatchJob {_code(exc)}"] += 1
        for i in range(idle_uploads):
            client = pool[i % CHANNELS]
            upload = client.stub.Upload.future(
                _idle_upload(release), metadata=client.metadata, timeout=600
            )
            held.append(upload)
        time.sleep(0.5)  # the uploads reach the broker
        out["get_job_with_streams"] = _concurrently(10, 100, lambda i: call(i, get(i)))
        out["get_job_with_streams"]["watch_streams_open"] = watched
        out["get_job_with_streams"]["idle_uploads_open"] = sum(
            1 for h in held[watch_streams:] if not h.done()
        )
    finally:
        release.set()
        for stream in held:
            stream.cancel()
        for client in pool:
            client.close()
    out["errors"] = dict(errors)
    return out


def _idle_upload(release: threading.Event) -> Iterator[Any]:
    from talkingface.v1 import broker_pb2 as pb

    yield pb.UploadRequest(header=pb.UploadHeader(filename="idle.bin"))
    release.wait(600)


def _concurrently(threads: int, calls: int, one: Callable[[int], float | None]) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        times = [t for t in pool.map(one, range(calls)) if t is not None]
    wall = time.perf_counter() - started
    times.sort()
    return {
        "calls": calls, "ok": len(times), "concurrency": threads,
        "p50_ms": round(_pct(times, 0.50), 2), "p99_ms": round(_pct(times, 0.99), 2),
        "max_ms": round(times[-1], 2) if times else None,
        "per_second": round(len(times) / wall, 1),
    }  # fmt: skip


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the machine was (the figures are only
    comparable between runs on an otherwise idle machine)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def _code(exc: Any) -> str:
    from talkingface.errors import error_from_rpc

    return error_from_rpc(exc).code


# --- the bench's own broker ---------------------------------------------------------------------


@contextlib.contextmanager
def _own_broker() -> Iterator[tuple[str, str, str, str]]:
    """(address, avatar, tenant, store kind) of a broker in a child process, with its Redis
    and S3 server, for the length of the block."""
    import redis

    from talkingface.broker.avatars import AvatarRegistry
    from talkingface.landmarks.bundle import PROJECTION_FILES
    from talkingface.localfleet import PrivateRedis, free_port, stop_child
    from talkingface.render.bundle import RENDERER_FILES

    root = Path(tempfile.mkdtemp(prefix="tf-bench-api-"))
    procs: list[subprocess.Popen] = []
    private = PrivateRedis(root / "redis")
    try:
        private.start()
        env = dict(os.environ)
        env.update({
            "TALKINGFACE_REDIS_URL": private.url,
            "TALKINGFACE_GRPC_HOST": "127.0.0.1", "TALKINGFACE_GRPC_PORT": str(free_port()),
            "TALKINGFACE_METRICS_HOST": "127.0.0.1", "TALKINGFACE_METRICS_PORT": "0",
            "TALKINGFACE_BROKER_WORKERS": "0", "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
            "TALKINGFACE_BROKER_AUTH": "off", "TALKINGFACE_LOG_LEVEL": "WARNING",
            "TALKINGFACE_QUOTA_ACTIVE_JOBS": "0",
            "TALKINGFACE_RATE_SUBMIT_PER_SECOND": "100000",
            "TALKINGFACE_RATE_SUBMIT_BURST": "100000",
        })  # fmt: skip
        store_kind = "local"
        if _have("moto") and _have("flask"):
            port = free_port()
            s3_env = dict(env, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                          AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env=s3_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            _wait_http(port)
            env.update({
                "TALKINGFACE_STORE": "minio", "TALKINGFACE_MINIO_ENDPOINT": f"127.0.0.1:{port}",
                "TALKINGFACE_MINIO_ACCESS_KEY": "bench",
                "TALKINGFACE_MINIO_SECRET_KEY": "bench-secret",
                "TALKINGFACE_MINIO_REGION": "us-east-1",
                "TALKINGFACE_MINIO_BUCKET": f"tf-bench-{uuid.uuid4().hex[:8]}",
            })  # fmt: skip
            store_kind = "minio (moto)"
        else:
            env.update({"TALKINGFACE_STORE": "local",
                        "TALKINGFACE_STORE_DIR": str(root / "store")})  # fmt: skip
        from talkingface.config import Settings
        from talkingface.storage import store_from_settings

        settings = Settings.from_env(env)
        store = store_from_settings(settings)
        tenant, avatar = "bench", f"av-{uuid.uuid4().hex[:12]}"
        client = redis.Redis.from_url(private.url)
        AvatarRegistry(client).claim(tenant, "Bench", avatar_id=avatar)
        client.close()
        files = {name: b"placeholder" for name in RENDERER_FILES + PROJECTION_FILES}
        store.publish_version(f"avatars/{avatar}", files)
        code = "import sys; from talkingface.cli import main; sys.exit(main(['serve', 'broker']))"
        with open(root / "broker.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env,
                                          stdout=subprocess.DEVNULL, stderr=log))  # fmt: skip
        yield f"127.0.0.1:{settings.grpc_port}", avatar, tenant, store_kind
    finally:
        for proc in reversed(procs):
            stop_child(proc, 20)
        private.stop()
        shutil.rmtree(root, ignore_errors=True)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _wait_http(port: int) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise SystemExit(f"talkingface bench api: the S3 server did not start on port {port}")
