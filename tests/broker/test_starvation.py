"""No starvation of the broker API (broker/streams.py): WatchJob and Upload streams are capped
and refused beyond with OVERLOADED, the short calls still find a thread with every stream slot
taken, an idle upload is ended and leaves nothing, a WatchJob ends at its maximum time, and
only a single-job read mints a download URL.

A real broker over loopback on the session Redis and the moto S3 server; each test starts a
broker with the settings it needs and uses a tenant of its own."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import grpc
import pytest
import redis

from talkingface.broker.client import BrokerClient
from talkingface.broker.jobs import JobStore
from talkingface.broker.service import broker_server
from talkingface.broker.servicer import TENANT_METADATA
from talkingface.config import Settings
from talkingface.errors import error_from_rpc
from talkingface.storage import MinioStore
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import broker_pb2_grpc, common_pb2

WATCH_CAP = 6
UPLOAD_CAP = 3


@contextlib.contextmanager
def running_broker(redis_server, s3_server, **overrides: str) -> Iterator[SimpleNamespace]:
    env = {
        "TALKINGFACE_STORE": "minio",
        "TALKINGFACE_MINIO_ENDPOINT": s3_server.endpoint,
        "TALKINGFACE_MINIO_ACCESS_KEY": s3_server.access_key,
        "TALKINGFACE_MINIO_SECRET_KEY": s3_server.secret_key,
        "TALKINGFACE_MINIO_REGION": s3_server.region,
        "TALKINGFACE_MINIO_BUCKET": f"tf-starve-{uuid.uuid4().hex[:12]}",
        "TALKINGFACE_REDIS_URL": redis_server.url,
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_GRPC_WORKERS": "4",
        "TALKINGFACE_BROKER_MAX_WATCH_STREAMS": str(WATCH_CAP),
        "TALKINGFACE_BROKER_MAX_UPLOAD_STREAMS": str(UPLOAD_CAP),
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_JANITOR_INTERVAL_SECONDS": "0",
        "TALKINGFACE_LOG_FORMAT": "text",
        **{f"TALKINGFACE_{k.upper()}": v for k, v in overrides.items()},
    }
    settings = Settings.from_env(env)
    store = MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key,
                       bucket=settings.minio_bucket, region=s3_server.region)  # fmt: skip
    server = broker_server(settings, store=store)
    server.start()
    client = redis.Redis.from_url(redis_server.url)
    address = f"127.0.0.1:{server.port}"
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    tenant = f"st-{uuid.uuid4().hex[:10]}"
    try:
        yield SimpleNamespace(
            settings=settings, store=store, jobs=JobStore(client), tenant=tenant,
            md=((TENANT_METADATA, tenant),), stub=broker_pb2_grpc.BrokerStub(channel),
            address=address,
        )  # fmt: skip
    finally:
        channel.close()
        server.stop(grace=1.0)
        client.close()


def queued_job(broker) -> str:
    job, _ = broker.jobs.create(broker.tenant, "render", {"avatar_id": "a"})
    return job.job_id


def idle_upload(broker, release: threading.Event, data: bytes = b"x" * 1000):
    """An Upload that sends its header and one chunk, then nothing until `release`."""

    def requests():
        yield pb.UploadRequest(header=pb.UploadHeader(filename="a.bin"))
        yield pb.UploadRequest(chunk=common_pb2.ByteChunk(offset=0, data=data))
        release.wait(60)

    return broker.stub.Upload.future(requests(), metadata=broker.md, timeout=60)


def code_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return exc.code(), error_from_rpc(exc).code


def test_short_calls_succeed_with_every_stream_slot_taken(redis_server, s3_server):
    with running_broker(redis_server, s3_server) as broker:
        job_id = queued_job(broker)
        release = threading.Event()
        watches, uploads = [], []
        try:
            for _ in range(WATCH_CAP):
                call = broker.stub.WatchJob(pb.WatchJobRequest(job_id=job_id),
                                            metadata=broker.md, timeout=60)  # fmt: skip
                assert next(call).job_id == job_id  # admitted: its thread is held
                watches.append(call)
            uploads = [idle_upload(broker, release) for _ in range(UPLOAD_CAP)]
            time.sleep(0.5)  # the uploads reach the servicer and wait for more chunks

            with pytest.raises(grpc.RpcError) as info:
                next(broker.stub.WatchJob(pb.WatchJobRequest(job_id=job_id),
                                          metadata=broker.md, timeout=30))  # fmt: skip
            assert code_of(info.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
            assert "BROKER_MAX_WATCH_STREAMS" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                idle_upload(broker, release).result(timeout=30)
            assert code_of(info.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
            assert "BROKER_MAX_UPLOAD_STREAMS" in info.value.details()

            def get(_):
                started = time.monotonic()
                job = broker.stub.GetJob(pb.GetJobRequest(job_id=job_id),
                                         metadata=broker.md, timeout=10)  # fmt: skip
                return job.job_id, time.monotonic() - started

            with ThreadPoolExecutor(16) as pool:
                results = list(pool.map(get, range(64)))
            assert all(found == job_id for found, _ in results)
            assert max(seconds for _, seconds in results) < 5.0  # generous: 2 shared cores
            listed = broker.stub.ListJobs(pb.ListJobsRequest(), metadata=broker.md, timeout=10)
            assert [j.job_id for j in listed.jobs] == [job_id]
            for upload in uploads:
                assert not upload.done()  # still held, not refused
        finally:
            release.set()
            for call in watches:
                call.cancel()


def test_a_freed_slot_is_given_again(redis_server, s3_server):
    with running_broker(redis_server, s3_server, broker_max_watch_streams="1") as broker:
        job_id = queued_job(broker)
        first = broker.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=broker.md)
        next(first)
        first.cancel()  # the client goes away: its slot comes back
        deadline = time.monotonic() + 10
        while True:
            try:
                call = broker.stub.WatchJob(pb.WatchJobRequest(job_id=job_id),
                                            metadata=broker.md, timeout=30)  # fmt: skip
                assert next(call).job_id == job_id
                call.cancel()
                break
            except grpc.RpcError as exc:
                assert code_of(exc)[1] == "OVERLOADED"
                assert time.monotonic() < deadline, "the cancelled stream's slot never came back"
                time.sleep(0.2)


def test_an_idle_upload_is_ended_and_leaves_nothing(redis_server, s3_server):
    with running_broker(redis_server, s3_server, broker_upload_idle_seconds="1",
                        broker_max_upload_streams="1") as broker:  # fmt: skip
        release = threading.Event()
        started = time.monotonic()
        try:
            with pytest.raises(grpc.RpcError) as info:
                idle_upload(broker, release).result(timeout=30)
        finally:
            release.set()
        assert code_of(info.value) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
        assert "BROKER_UPLOAD_IDLE_SECONDS" in info.value.details()
        assert 0.9 < time.monotonic() - started < 15
        assert list(broker.store.list(f"uploads/{broker.tenant}")) == []
        # its slot (the only one) is free again: a brisk upload is stored
        reply = BrokerClient(broker.address, broker.tenant).upload(b"y" * 5000)
        assert reply.size == 5000
        keys = [info.key for info in broker.store.list(f"uploads/{broker.tenant}")]
        assert keys == [f"uploads/{broker.tenant}/{reply.upload_id}/data"]


def test_a_watch_ends_at_its_maximum_time_and_the_client_watches_again(redis_server, s3_server):
    with running_broker(redis_server, s3_server, broker_watch_max_seconds="1") as broker:
        job_id = queued_job(broker)
        started = time.monotonic()
        seen = list(broker.stub.WatchJob(pb.WatchJobRequest(job_id=job_id),
                                         metadata=broker.md, timeout=30))  # fmt: skip
        took = time.monotonic() - started
        assert [j.job_id for j in seen] == [job_id]  # one message, then a normal end (OK)
        assert 0.9 < took < 10
        assert seen[0].state == pb.JOB_STATE_QUEUED

        def finish():
            time.sleep(2.5)  # past two watch spans
            broker.jobs.update(job_id, state="RUNNING")
            broker.jobs.update(job_id, state="SUCCEEDED", progress=1.0, result={})

        threading.Thread(target=finish, daemon=True).start()
        final = BrokerClient(broker.address, broker.tenant).wait(job_id, timeout_s=30)
        assert final.state == pb.JOB_STATE_SUCCEEDED


def test_download_urls_only_where_one_job_is_read(redis_server, s3_server):
    with running_broker(redis_server, s3_server) as broker:
        job_id = queued_job(broker)
        key = f"results/{broker.tenant}/{job_id}/video.mp4"
        info = broker.store.put(key, b"\x00" * 100, content_type="video/mp4")
        video = {"key": key, "size": info.size, "sha256": info.sha256 or ""}
        broker.jobs.update(job_id, state="RUNNING")
        broker.jobs.update(job_id, state="SUCCEEDED", progress=1.0,
                           result={"video": video, "frames": 3})  # fmt: skip

        listed = broker.stub.ListJobs(pb.ListJobsRequest(), metadata=broker.md, timeout=10)
        assert [j.job_id for j in listed.jobs] == [job_id]
        assert listed.jobs[0].render.video.key == key
        assert listed.jobs[0].render.download_url == ""

        got = broker.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=broker.md, timeout=10)
        url = got.render.download_url
        assert url and key in url
        assert parse_qs(urlparse(url).query)["X-Amz-Expires"] == ["900"]  # 15 min by default

        watched = list(broker.stub.WatchJob(pb.WatchJobRequest(job_id=job_id),
                                            metadata=broker.md, timeout=10))  # fmt: skip
        assert watched[-1].render.download_url
