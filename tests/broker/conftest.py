"""Fixtures for the broker tests: a JobStore and short-lease WorkQueues on the private Redis;
for the end-to-end modules (test_fleet*.py) one fleet per module (the stages on Ray Serve, the
broker's API, its store and Redis) and workers for the length of a test."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import grpc
import pytest
import redis

from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.client import BrokerClient
from talkingface.broker.jobs import Job, JobStore
from talkingface.broker.queue import WorkQueue
from talkingface.broker.service import broker_server, worker_pool
from talkingface.broker.worker import run_once
from talkingface.config import Settings
from talkingface.serving.fleet import deploy_fleet, load_serve_config
from talkingface.storage import MinioStore
from talkingface.v1 import broker_pb2_grpc
from tests.broker.fleet_support import AVATAR, SHARD_FRAMES, TENANT

LEASE_MS = 200


def minio_store(env: dict[str, str], settings: Settings) -> MinioStore:
    """The S3 store a test's TALKINGFACE_MINIO_* environment names."""
    return MinioStore(env["TALKINGFACE_MINIO_ENDPOINT"], env["TALKINGFACE_MINIO_ACCESS_KEY"],
                      env["TALKINGFACE_MINIO_SECRET_KEY"], bucket=settings.minio_bucket,
                      region=env["TALKINGFACE_MINIO_REGION"])  # fmt: skip


@contextlib.contextmanager
def serving_broker(settings: Settings, store) -> Iterator[tuple[redis.Redis, object]]:
    """The broker API of `settings` on loopback (workers as the settings say): its Redis
    client and a Broker stub, for a test module; stopped on the way out."""
    server = broker_server(settings, store=store)
    server.start()
    client = redis.Redis.from_url(settings.redis_url)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield client, broker_pb2_grpc.BrokerStub(channel)
    finally:
        channel.close()
        server.stop(grace=1.0)
        client.close()


@pytest.fixture
def jobs(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, ttl_s=3600)


@pytest.fixture
def make_queue(redis_client: redis.Redis) -> Callable[..., WorkQueue]:
    """WorkQueue factory with test-sized timings (200 ms lease, 20 ms retry base). By default
    each queue has a name of its own: tests that share the Redis (a broker's `render` queue in
    another module) must never read each other's messages."""

    def make(name: str | None = None, **overrides: float) -> WorkQueue:
        name = name or f"render-{uuid.uuid4().hex[:8]}"
        options = {"lease_ms": LEASE_MS, "retry_base_s": 0.02, "retry_max_s": 0.2}
        options.update(overrides)
        return WorkQueue(redis_client, name, **options)

    return make


def submit(jobs: JobStore, queue: WorkQueue, tenant: str = "acme") -> Job:
    job, _ = jobs.create(tenant, "render", {"upload_id": "u1"})
    queue.enqueue(job.job_id, {"upload_id": "u1"})
    return job


def drive(queue, jobs, job_id, handler, consumer="w1", limit_s=15.0) -> Job:
    """Run the worker until the job is final and its queue is empty."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        run_once(queue, jobs, consumer, handler, block_ms=50)
        job = jobs.get(job_id)
        if job.terminal and queue.depth() == 0:
            return job
    raise AssertionError(f"job {job_id} did not finish: {jobs.get(job_id)}")


def assert_drained(queue: WorkQueue) -> None:
    """Nothing pending, undelivered or waiting out a backoff."""
    assert queue.pending() == 0
    assert queue.depth() == 0


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def fleet(serve_grpc_port, redis_server, s3_server, tiny_ckpt, bundle, tmp_path_factory):
    """The stages on Ray Serve, a broker API without workers, and the environment that
    configures both (for `talkingface worker` subprocesses too)."""
    from talkingface.render.commands import bundle_files

    tmp = tmp_path_factory.mktemp("fleet")
    env = {
        "TALKINGFACE_STORE": "minio",
        "TALKINGFACE_MINIO_ENDPOINT": s3_server.endpoint,
        "TALKINGFACE_MINIO_ACCESS_KEY": s3_server.access_key,
        "TALKINGFACE_MINIO_SECRET_KEY": s3_server.secret_key,
        "TALKINGFACE_MINIO_REGION": s3_server.region,
        "TALKINGFACE_MINIO_BUCKET": f"tf-fleet-{uuid.uuid4().hex[:12]}",
        "TALKINGFACE_REDIS_URL": redis_server.url,
        "TALKINGFACE_STAGES_ADDRESS": f"127.0.0.1:{serve_grpc_port}",
        "TALKINGFACE_MOTION_CHECKPOINT": str(tiny_ckpt / "motion"),
        "TALKINGFACE_DEVICE": "cpu",
        "TALKINGFACE_CACHE_DIR": str(tmp / "cache"),
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_QUEUE_LEASE_SECONDS": "3",
        "TALKINGFACE_QUEUE_RETRY_BASE_SECONDS": "0.2",
        "TALKINGFACE_RENDER_SHARD_FRAMES": str(SHARD_FRAMES),
        "TALKINGFACE_RENDER_PARALLEL_SHARDS": "2",
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_LOG_FORMAT": "text",
        "TALKINGFACE_VIDEO_MIN_SECONDS": "5",
        # The closed stage plane: every stage call carries the worker's signed capability.
        "TALKINGFACE_STAGE_SECRET": f"stage-secret-{uuid.uuid4().hex}",
    }
    settings = Settings.from_env(env)
    store = MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key,
                       bucket=settings.minio_bucket, region=s3_server.region)  # fmt: skip
    deploy_fleet(load_serve_config().without_gpus(), settings, start=False)
    store.publish_version(f"avatars/{AVATAR}", bundle_files(bundle))
    client = redis.Redis.from_url(redis_server.url)
    AvatarRegistry(client).claim(TENANT, "Ann", avatar_id=AVATAR)
    broker = broker_server(settings)
    broker.start()
    broker.warm_up()
    address = f"127.0.0.1:{broker.port}"
    yield SimpleNamespace(
        env=env, settings=settings, store=store, redis=client, address=address,
        api=BrokerClient(address, TENANT), jobs=JobStore(client),
        render_queue=WorkQueue.from_settings(client, "render", settings),
        train_queue=WorkQueue.from_settings(client, "train", settings),
    )  # fmt: skip
    broker.stop(grace=1.0)


@pytest.fixture
def workers(fleet):
    """One render and one training worker in this process, for the length of a test."""
    pool = worker_pool(fleet.settings, fleet.redis, render_threads=1, train_threads=1)
    pool.start()
    yield pool
    pool.stop(30.0)
