"""Per-tenant quotas, rate limits and the training tar's caps (broker/limits.py,
broker/train_job.py): a real broker over loopback on the session Redis and a local store.

The broker's defaults here are small (2 active jobs, 3 uploads a day, 2 MiB per upload, 1 MiB
of audio for the features stage) and its rates high, so only a test that lowers a rate for its
own tenant meets one. Every test uses tenants of its own and looks only at their keys."""

from __future__ import annotations

import contextlib
import gzip
import io
import tarfile
import threading
import time
import uuid
import zlib
from pathlib import Path

import grpc
import pytest
import redis

from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.jobs import Job, JobStore, tenant_index_key
from talkingface.broker.limits import Limits, uploads_key
from talkingface.broker.servicer import TENANT_METADATA
from talkingface.broker.train_job import TrainAvatarHandler, unpack_tar
from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, error_from_rpc
from talkingface.landmarks.bundle import PROJECTION_FILES
from talkingface.render.bundle import RENDERER_FILES
from talkingface.storage import LocalStore
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import common_pb2
from tests.broker.conftest import serving_broker

MiB = 1024 * 1024
AUDIO = b"RIFF" + bytes(2000)  # never decoded here: no worker runs


@pytest.fixture(scope="module")
def broker(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    env = {
        "TALKINGFACE_STORE": "local",
        "TALKINGFACE_STORE_DIR": str(tmp / "store"),
        "TALKINGFACE_REDIS_URL": redis_server.url,
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_JANITOR_INTERVAL_SECONDS": "0",
        "TALKINGFACE_LOG_FORMAT": "text",
        "TALKINGFACE_QUOTA_ACTIVE_JOBS": "2",
        "TALKINGFACE_QUOTA_UPLOADS_PER_DAY": "3",
        "TALKINGFACE_UPLOAD_MAX_MB": "2",
        "TALKINGFACE_AUDIO_MAX_UPLOAD_MB": "1",
        "TALKINGFACE_RATE_SUBMIT_PER_SECOND": "1000",
        "TALKINGFACE_RATE_SUBMIT_BURST": "1000",
        "TALKINGFACE_RATE_UPLOAD_PER_SECOND": "1000",
        "TALKINGFACE_RATE_UPLOAD_BURST": "1000",
    }
    settings = Settings.from_env(env)
    store = LocalStore(settings.store_dir)
    with serving_broker(settings, store) as (client, stub):
        yield type("Broker", (), {
            "settings": settings, "store": store, "redis": client,
            "stub": stub, "limits": Limits(client, settings),
        })  # fmt: skip


def new_tenant() -> str:
    return f"lim-{uuid.uuid4().hex[:10]}"


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return ((TENANT_METADATA, tenant),)


def refused(call, *args, tenant: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, metadata=md(tenant), timeout=30)
    return info.value


def upload(broker, tenant: str, data: bytes) -> pb.UploadResponse:
    return broker.stub.Upload(_upload_requests(data), metadata=md(tenant), timeout=30)


def _upload_requests(data: bytes):
    yield pb.UploadRequest(header=pb.UploadHeader(filename="a.bin", total_bytes=len(data)))
    for offset in range(0, len(data), MiB):
        chunk = common_pb2.ByteChunk(offset=offset, data=data[offset : offset + MiB])
        yield pb.UploadRequest(chunk=chunk)


def stored_uploads(broker, tenant: str) -> list[str]:
    return [info.key for info in broker.store.list(f"uploads/{tenant}")]


def job_count(broker, tenant: str) -> int:
    return broker.redis.zcard(tenant_index_key(tenant))


def ready_avatar(broker, tenant: str) -> str:
    """A registered avatar with a published version that SubmitRender accepts (its files are
    placeholders: no worker renders here)."""
    avatar_id = f"av-{uuid.uuid4().hex[:12]}"
    AvatarRegistry(broker.redis).claim(tenant, "Ann", avatar_id=avatar_id)
    files = {name: b"placeholder" for name in RENDERER_FILES + PROJECTION_FILES}
    broker.store.publish_version(f"avatars/{avatar_id}", files)
    return avatar_id


def submit(broker, tenant: str, avatar_id: str, **fields) -> pb.Job:
    request = pb.SubmitRenderRequest(avatar_id=avatar_id, inline_audio=AUDIO, **fields)
    return broker.stub.SubmitRender(request, metadata=md(tenant), timeout=30)


def create_avatar(broker, tenant: str, upload_id: str, preset: str = "", **fields) -> pb.Job:
    request = pb.CreateAvatarRequest(synthtalk_upload_id=upload_id, preset=preset, **fields)
    return broker.stub.CreateAvatar(request, metadata=md(tenant), timeout=30)


def assert_code(error: grpc.RpcError, status: grpc.StatusCode, code: str, *words: str) -> None:
    assert error.code() == status, error.details()
    assert error.details().startswith(f"{code}: "), error.details()
    for word in words:
        assert word in error.details(), (word, error.details())


# --- active jobs ---------------------------------------------------------------------------


def test_active_jobs_quota_refuses_the_job_over_it_and_leaves_nothing(broker):
    tenant = new_tenant()
    avatar = ready_avatar(broker, tenant)
    first = submit(broker, tenant, avatar, idempotency_key="one")
    submit(broker, tenant, avatar)
    error = refused(
        broker.stub.SubmitRender,
        pb.SubmitRenderRequest(avatar_id=avatar, inline_audio=AUDIO),
        tenant=tenant,
    )
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED",
                "2 active jobs", "active_jobs limit is 2", "TALKINGFACE_QUOTA_ACTIVE_JOBS",
                f"HSET tf:limits:{tenant} active_jobs")  # fmt: skip
    assert job_count(broker, tenant) == 2
    assert len(stored_uploads(broker, tenant)) == 2  # the refused call's inline audio is gone
    # A retry of an accepted submission is answered whatever the count.
    assert submit(broker, tenant, avatar, idempotency_key="one").job_id == first.job_id
    # CreateAvatar counts against the same limit, and registers nothing when refused.
    data = upload(broker, tenant, b"not even a tar")
    error = refused(
        broker.stub.CreateAvatar,
        pb.CreateAvatarRequest(synthtalk_upload_id=data.upload_id),
        tenant=tenant,
    )
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED", "active_jobs")
    assert job_count(broker, tenant) == 2
    assert AvatarRegistry(broker.redis).list(tenant, 100, "")[0][0].avatar_id == avatar
    # An ended job frees its place.
    broker.stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id), metadata=md(tenant))
    assert create_avatar(broker, tenant, data.upload_id).state == pb.JOB_STATE_QUEUED
    assert job_count(broker, tenant) == 3


def test_an_override_raises_a_limit_for_that_tenant_only(broker):
    raised, other = new_tenant(), new_tenant()
    broker.limits.set_override(raised, "active_jobs", 4)
    for tenant, accepted in ((raised, 4), (other, 2)):
        avatar = ready_avatar(broker, tenant)
        for _ in range(accepted):
            submit(broker, tenant, avatar)
        error = refused(broker.stub.SubmitRender,
                        pb.SubmitRenderRequest(avatar_id=avatar, inline_audio=AUDIO),
                        tenant=tenant)  # fmt: skip
        assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED",
                    f"active_jobs limit is {accepted}")  # fmt: skip
        assert job_count(broker, tenant) == accepted


def test_concurrent_submissions_never_pass_the_active_jobs_limit(broker):
    from concurrent.futures import ThreadPoolExecutor

    tenant = new_tenant()
    broker.limits.set_override(tenant, "active_jobs", 3)
    jobs = JobStore(broker.redis)

    def one(i: int) -> bool:
        try:
            jobs.create(tenant, "render", {"i": i}, active_limit=3)
            return True
        except TalkingFaceError as exc:
            assert exc.code == "QUOTA_EXCEEDED"
            return False

    with ThreadPoolExecutor(8) as pool:
        accepted = sum(pool.map(one, range(24)))
    assert accepted == 3
    assert job_count(broker, tenant) == 3


# --- presets -------------------------------------------------------------------------------


def test_the_full_preset_is_refused_unless_allowed(broker):
    tenant = new_tenant()
    data = upload(broker, tenant, b"a tar, as far as this test goes")
    error = refused(broker.stub.CreateAvatar,
                    pb.CreateAvatarRequest(synthtalk_upload_id=data.upload_id, preset="full"),
                    tenant=tenant)  # fmt: skip
    assert_code(
        error,
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        "'full'",
        "train_presets = tiny,cpu",
        "TALKINGFACE_QUOTA_TRAIN_PRESETS",
    )
    assert job_count(broker, tenant) == 0
    assert AvatarRegistry(broker.redis).list(tenant, 100, "")[0] == []
    assert create_avatar(broker, tenant, data.upload_id, "tiny").state == pb.JOB_STATE_QUEUED
    broker.limits.set_override(tenant, "train_presets", "tiny,cpu,full")
    job = create_avatar(broker, tenant, data.upload_id, "full")
    assert broker.redis.hget(f"tf:job:{job.job_id}", "request").decode().count('"full"') == 1


# --- uploads -------------------------------------------------------------------------------


def test_uploads_per_day_counts_stored_uploads_only(broker):
    tenant = new_tenant()
    error = refused(broker.stub.Upload, _upload_requests(bytes(2 * MiB + 1)), tenant=tenant)
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE",
                "2 MiB", "upload_max_mb = 2", "TALKINGFACE_UPLOAD_MAX_MB")  # fmt: skip
    ids = [upload(broker, tenant, b"x" * 10).upload_id for _ in range(3)]
    error = refused(broker.stub.Upload, _upload_requests(b"y" * 10), tenant=tenant)
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED",
                "made 3 uploads today", "uploads_per_day limit is 3",
                "TALKINGFACE_QUOTA_UPLOADS_PER_DAY")  # fmt: skip
    assert sorted(stored_uploads(broker, tenant)) == sorted(
        f"uploads/{tenant}/{i}/data" for i in ids
    )
    day = time.strftime("%Y%m%d", time.gmtime())
    assert int(broker.redis.get(uploads_key(tenant, day))) == 3


def test_a_larger_upload_override_applies_to_its_tenant(broker):
    raised, other = new_tenant(), new_tenant()
    broker.limits.set_override(raised, "upload_max_mb", 3)
    data = bytes(2 * MiB + 1)
    assert upload(broker, raised, data).size == len(data)
    error = refused(broker.stub.Upload, _upload_requests(data), tenant=other)
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE")
    assert stored_uploads(broker, other) == []


def test_submit_refuses_audio_larger_than_the_features_stage_takes(broker):
    tenant = new_tenant()
    avatar = ready_avatar(broker, tenant)
    big = upload(broker, tenant, bytes(MiB + 1))  # under upload_max_mb, over the stage's 1 MiB
    error = refused(broker.stub.SubmitRender,
                    pb.SubmitRenderRequest(avatar_id=avatar, upload_id=big.upload_id),
                    tenant=tenant)  # fmt: skip
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE",
                "1 MiB", "TALKINGFACE_AUDIO_MAX_UPLOAD_MB")  # fmt: skip
    assert job_count(broker, tenant) == 0
    small = upload(broker, tenant, bytes(MiB))
    request = pb.SubmitRenderRequest(avatar_id=avatar, upload_id=small.upload_id)
    assert broker.stub.SubmitRender(request, metadata=md(tenant)).state == pb.JOB_STATE_QUEUED


# --- rates ---------------------------------------------------------------------------------


def retry_after_ms(error: grpc.RpcError) -> int:
    values = [v for k, v in error.trailing_metadata() or () if k == "retry-after-ms"]
    assert len(values) == 1, error.trailing_metadata()
    return int(values[0])


def test_the_submit_bucket_refuses_a_burst_and_refills_with_time(broker):
    tenant = new_tenant()
    broker.limits.set_override(tenant, "submit_per_second", 2)
    broker.limits.set_override(tenant, "submit_burst", 3)
    empty = pb.SubmitRenderRequest(avatar_id="nobody")  # each call takes its token first

    def call() -> grpc.RpcError:
        return refused(broker.stub.SubmitRender, empty, tenant=tenant)

    for _ in range(3):
        assert_code(call(), grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_EMPTY")
    error = call()
    assert_code(
        error,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        "submit_per_second = 2",
        "submit_burst = 3",
        "retry after",
        "TALKINGFACE_RATE_SUBMIT_PER_SECOND",
    )
    wait = retry_after_ms(error)
    assert 0 < wait <= 500
    assert f"retry after {wait} ms" in error.details()
    # CreateAvatar takes from the same bucket.
    error = refused(broker.stub.CreateAvatar, pb.CreateAvatarRequest(), tenant=tenant)
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    time.sleep(wait / 1000 + 0.01)
    assert_code(call(), grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_EMPTY")
    time.sleep(3 / 2 + 0.05)  # the whole burst is back, and no more
    for _ in range(3):
        assert_code(call(), grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_EMPTY")
    assert_code(call(), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    # Another tenant's bucket is untouched.
    assert_code(refused(broker.stub.SubmitRender, empty, tenant=new_tenant()),
                grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_EMPTY")  # fmt: skip


def test_the_upload_bucket_refuses_and_stores_nothing(broker):
    tenant = new_tenant()
    broker.limits.set_override(tenant, "upload_per_second", 1)
    broker.limits.set_override(tenant, "upload_burst", 2)
    for _ in range(2):
        upload(broker, tenant, b"z")
    error = refused(broker.stub.Upload, _upload_requests(b"z"), tenant=tenant)
    assert_code(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "upload_burst = 2")
    assert 0 < retry_after_ms(error) <= 1000
    assert error_from_rpc(error).metadata["retry-after-ms"] == str(retry_after_ms(error))
    assert len(stored_uploads(broker, tenant)) == 2
    day = time.strftime("%Y%m%d", time.gmtime())
    assert int(broker.redis.get(uploads_key(tenant, day))) == 2


def test_a_bad_override_is_refused_or_ignored(broker):
    tenant = new_tenant()
    with pytest.raises(ValueError, match="unknown limit"):
        broker.limits.set_override(tenant, "jobs", 3)
    with pytest.raises(ValueError, match="unknown presets"):
        broker.limits.set_override(tenant, "train_presets", "huge")
    broker.redis.hset(f"tf:limits:{tenant}", "active_jobs", "lots")  # written by hand
    limits = broker.limits.for_tenant(tenant)
    assert limits["active_jobs"] == 2 and "active_jobs" not in limits.overridden


# --- ListJobs ------------------------------------------------------------------------------


def test_list_jobs_pages_hold_at_most_100(broker):
    tenant = new_tenant()
    jobs = JobStore(broker.redis)
    for i in range(101):
        jobs.create(tenant, "render", {"i": i})
    request = pb.ListJobsRequest(page_size=1000)
    page = broker.stub.ListJobs(request, metadata=md(tenant))
    assert len(page.jobs) == 100 and page.next_page_token
    rest = broker.stub.ListJobs(
        pb.ListJobsRequest(page_size=1000, page_token=page.next_page_token), metadata=md(tenant)
    )
    assert len(rest.jobs) == 1 and not rest.next_page_token


# --- the training tar ----------------------------------------------------------------------


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def gzip_bomb(path: Path, members: dict[str, int]) -> Path:
    """A .tar.gz whose members are runs of zeros of the given sizes (made, never held)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(_Zeros(size), 1 << 20))
    return path


def test_a_gzip_bomb_is_refused_before_anything_is_unpacked(tmp_path):
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", {"avatar/frames.bin": 200 * MiB})
    assert bomb.stat().st_size < 2 * MiB
    target = tmp_path / "out"
    target.mkdir()
    started = time.monotonic()
    with pytest.raises(TalkingFaceError) as info:
        unpack_tar(bomb, target, 64 * MiB, 100)
    assert info.value.code == "INVALID_REQUEST"
    assert (
        "over 64 MiB" in info.value.message and "TALKINGFACE_TRAIN_TAR_MAX_MB" in info.value.message
    )
    assert list(target.iterdir()) == []
    assert time.monotonic() - started < 30
    # Many members each under the cap, over it together: refused before the first is written.
    spread = gzip_bomb(tmp_path / "spread.tar.gz", {f"m{i}": 20 * MiB for i in range(5)})
    with pytest.raises(TalkingFaceError, match="over 64 MiB"):
        unpack_tar(spread, target, 64 * MiB, 100)
    assert list(target.iterdir()) == []
    # Within both caps it unpacks.
    unpack_tar(spread, target, 128 * MiB, 100)
    assert sorted(p.name for p in target.iterdir()) == [f"m{i}" for i in range(5)]


def test_a_tar_with_too_many_members_is_refused(tmp_path):
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(11):
            info = tarfile.TarInfo(f"f{i}")
            tar.addfile(info, io.BytesIO(b""))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(TalkingFaceError) as info:
        unpack_tar(path, target, MiB, 10)
    assert info.value.code == "INVALID_REQUEST"
    assert "over 10 entries" in info.value.message
    assert "TALKINGFACE_TRAIN_TAR_MAX_MEMBERS" in info.value.message
    assert list(target.iterdir()) == []
    unpack_tar(path, target, MiB, 11)
    assert len(list(target.iterdir())) == 11


def test_the_training_job_fails_on_a_bomb_and_leaves_nothing_on_disk(
    tmp_path, redis_server, monkeypatch
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    store = LocalStore(tmp_path / "store")
    tenant = new_tenant()
    key = f"uploads/{tenant}/{uuid.uuid4().hex}/data"
    store.put(key, gzip_bomb(tmp_path / "bomb.tar.gz", {"a/b": 300 * MiB}).read_bytes())
    settings = Settings(store="local", store_dir=tmp_path / "store", train_tar_max_mb=64)
    client = redis.Redis.from_url(redis_server.url)
    handler = TrainAvatarHandler(store, settings, AvatarRegistry(client))
    avatar_id = f"av-{uuid.uuid4().hex[:12]}"
    job = Job(job_id=uuid.uuid4().hex, tenant=tenant, kind="train_avatar", state="RUNNING",
              stage="", progress=0.0, attempt=1, error_code="", error_message="",
              created_at=0, updated_at=0, idempotency_key="", avatar_id=avatar_id,
              request={"avatar_id": avatar_id, "data_key": key, "source": "synthtalk"},
              result=None, cancel_requested=False)  # fmt: skip
    beats = []
    with pytest.raises(TalkingFaceError) as info:
        handler(job, None, lambda **beat: beats.append(beat))
    client.close()
    assert info.value.code == "INVALID_REQUEST" and "over 64 MiB" in info.value.message
    assert beats and beats[0]["stage"] == "PREPROCESS"
    assert list(scratch.iterdir()) == []


def big_bomb(path: Path, sizes: list[int]) -> Path:
    """A .tar.gz of members of zeros of the given sizes (multiples of 64 MiB) in about 1/1000
    of that: gzip members concatenated (a header's, then one 64 MiB run of zeros repeated)."""
    run = 64 * MiB
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"".join(squeeze.compress(bytes(MiB)) for _ in range(run // MiB)) + squeeze.flush()
    with path.open("wb") as out:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"avatar/part{i}.bin")
            info.size = size
            out.write(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
            for _ in range(size // run):
                out.write(zeros)
        out.write(gzip.compress(bytes(1024)))
    return path


def test_a_10_gib_bomb_fails_the_training_job_fast_with_little_disk(
    tmp_path, redis_server, monkeypatch
):
    """The acceptance case: a ~10 MiB .tar.gz expanding to 10 GiB fails INVALID_REQUEST within
    30 s while the worker's scratch space stays under 100 MiB (sampled while it runs), with
    the default caps; then ten 1 GiB members, each under the cap, refused on their sum."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    store = LocalStore(tmp_path / "store")
    client = redis.Redis.from_url(redis_server.url)
    tenant = new_tenant()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            used = 0
            try:
                paths = list(scratch.rglob("*"))
            except OSError:  # a folder removed while being walked: sample again
                continue
            for path in paths:
                with contextlib.suppress(OSError):  # removed while being summed
                    used += path.stat().st_size if path.is_file() else 0
            peak[0] = max(peak[0], used)
            time.sleep(0.01)

    for sizes, cap_mb in (([10 * 1024 * MiB], 4096), ([1024 * MiB] * 10, 256)):
        bomb = big_bomb(tmp_path / "bomb.tar.gz", sizes)
        assert bomb.stat().st_size < 12 * MiB
        key = f"uploads/{tenant}/{uuid.uuid4().hex}/data"
        store.put(key, bomb.read_bytes())
        settings = Settings(store="local", store_dir=tmp_path / "store", train_tar_max_mb=cap_mb)
        handler = TrainAvatarHandler(store, settings, AvatarRegistry(client))
        avatar_id = f"av-{uuid.uuid4().hex[:12]}"
        job = Job(job_id=uuid.uuid4().hex, tenant=tenant, kind="train_avatar", state="RUNNING",
                  stage="", progress=0.0, attempt=1, error_code="", error_message="",
                  created_at=0, updated_at=0, idempotency_key="", avatar_id=avatar_id,
                  request={"avatar_id": avatar_id, "data_key": key, "source": "synthtalk"},
                  result=None, cancel_requested=False)  # fmt: skip
        done.clear()
        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        try:
            with pytest.raises(TalkingFaceError) as info:
                handler(job, None, lambda **beat: None)
        finally:
            done.set()
            sampler.join()
        assert time.monotonic() - started < 30
        assert info.value.code == "INVALID_REQUEST"
        assert f"over {cap_mb} MiB" in info.value.message
        assert peak[0] < 100 * MiB
        assert list(scratch.iterdir()) == []
    client.close()
