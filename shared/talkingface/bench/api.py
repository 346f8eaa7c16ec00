"""`talkingface bench api`: latency of the broker API under many concurrent clients.

Without `--broker`, starts its own: a private redis-server, the moto S3 server when moto is
installed (the local store otherwise) and `talkingface serve broker` in a child process (no
workers: jobs stay queued), with an avatar of placeholder files so SubmitRender is accepted.
With `--broker ADDRESS` it uses that broker as tenant TALKINGFACE_TENANT (API key from
TALKINGFACE_API_KEY) and needs `--avatar`, a READY avatar of that tenant (jobs it submits
are queued for real there).

Measured, each as p50/p99 milliseconds over every call. A client is a coroutine on one
asyncio loop (grpc.aio) with one call in flight at a time, making its next call as soon as
the last is answered (a closed loop: latency ≈ clients / throughput), over CHANNELS separate
connections; the load generator's garbage collector is off while it measures.
- `submit_render`: SubmitRender (inline audio) from `clients` concurrent clients;
- `get_job`: GetJob of those jobs from `clients` concurrent clients, after one unmeasured
  round of `clients` calls;
- `get_job_with_streams`: 100 GetJob calls (10 at a time) while `watch_streams` WatchJob
  streams and `idle_uploads` Upload streams that send nothing are open.
Refused or failed calls are counted by code in `errors`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
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
    import asyncio

    return asyncio.run(
        _measure_async(address, tenant, avatar, clients, per_client, watch_streams, idle_uploads)
    )


async def _measure_async(address, tenant, avatar, clients, per_client, watch_streams,
                         idle_uploads):  # fmt: skip
    """The calls themselves, from one asyncio loop (grpc.aio): a client is a coroutine with
    one call in flight at a time. A thread per client would spend more of the machine's two
    cores on the load generator than the broker spends answering."""
    import asyncio

    import grpc

    from talkingface.broker.client import BrokerClient
    from talkingface.serving.server import grpc_message_options
    from talkingface.v1 import broker_pb2 as pb
    from talkingface.v1 import broker_pb2_grpc

    with BrokerClient(address, tenant) as sync_client:
        sync_client.wait_ready(START_TIMEOUT_S)
        metadata = sync_client.metadata
    # Separate connections (no shared subchannel pool), as separate clients would have.
    options = [*grpc_message_options(8), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(CHANNELS)]
    stubs = [broker_pb2_grpc.BrokerStub(channel) for channel in channels]
    errors: Counter[str] = Counter()
    job_ids: list[str] = []

    async def call(i: int, rpc: Callable[[Any], Any]) -> float | None:
        started = time.perf_counter()
        try:
            await rpc(stubs[i % CHANNELS])
        except grpc.RpcError as exc:
            errors[_code(exc)] += 1
            return None
        return (time.perf_counter() - started) * 1000

    async def submit(stub) -> None:
        request = pb.SubmitRenderRequest(avatar_id=avatar, inline_audio=AUDIO)
        job = await stub.SubmitRender(request, metadata=metadata, timeout=60)
        job_ids.append(job.job_id)

    def get(i: int) -> Callable[[Any], Any]:
        request = pb.GetJobRequest(job_id=job_ids[i % len(job_ids)])
        return lambda stub: stub.GetJob(request, metadata=metadata, timeout=60)

    out: dict[str, Any] = {}
    held: list[Any] = []
    try:
        n = clients * per_client
        out["submit_render"] = await _concurrently(clients, n, lambda i: call(i, submit))
        if not job_ids:
            raise SystemExit(f"talkingface bench api: no job could be submitted ({dict(errors)})")
        await _concurrently(clients, clients, lambda i: call(i, get(i)))  # warm-up, not counted
        out["get_job"] = await _concurrently(clients, n, lambda i: call(i, get(i)))

        watched = 0
        for i in range(watch_streams):
            request = pb.WatchJobRequest(job_id=job_ids[i % len(job_ids)])
            stream = stubs[i % CHANNELS].WatchJob(request, metadata=metadata, timeout=600)
            held.append(stream)
            try:
                await stream.read()
                watched += 1
            except grpc.RpcError as exc:
                errors[f"WatchJob {_code(exc)}"] += 1
        uploads = []
        for i in range(idle_uploads):
            upload = stubs[i % CHANNELS].Upload(metadata=metadata, timeout=600)
            await upload.write(pb.UploadRequest(header=pb.UploadHeader(filename="idle.bin")))
            uploads.append(upload)
        held.extend(uploads)
        await asyncio.sleep(0.5)  # the uploads reach the broker
        out["get_job_with_streams"] = await _concurrently(10, 100, lambda i: call(i, get(i)))
        out["get_job_with_streams"]["watch_streams_open"] = watched
        out["get_job_with_streams"]["idle_uploads_open"] = sum(1 for u in uploads if not u.done())
    finally:
        for stream in held:
            stream.cancel()
        for channel in channels:
            await channel.close()
    out["errors"] = dict(errors)
    return out


async def _concurrently(clients: int, calls: int, one: Callable[[int], Any]) -> dict:
    """`calls` calls from `clients` concurrent clients, each making its next call as soon as
    its last one is answered (a closed loop)."""
    import asyncio

    times: list[float] = []
    following = iter(range(calls))

    async def client() -> None:
        for i in following:
            took = await one(i)
            if took is not None:
                times.append(took)

    # The load generator's own garbage-collector pauses would stall every call in flight
    # and be counted as the broker's latency.
    gc.disable()
    try:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(min(clients, calls))))
        wall = time.perf_counter() - started
    finally:
        gc.enable()
    times.sort()
    return {
        "calls": calls, "ok": len(times), "concurrency": clients,
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
