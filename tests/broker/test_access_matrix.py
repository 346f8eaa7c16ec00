"""The access matrix of issue 18: 2 tenants x every talkingface.v1.Broker RPC x {own resource,
another tenant's resource, no key, revoked key, expired key, wrong scope}, against one real
broker (TALKINGFACE_BROKER_AUTH=keys, no key cache) over loopback gRPC, on the session Redis
and a moto S3 bucket of this module's own. No workers run: finished jobs are written through
JobStore, avatars are registered in the registry with a placeholder published version.

Each cell is its own test (`GetJob-other_tenant`, ...). Every denial is checked for its gRPC
status and the stable ErrorCode the server sends in its trailing metadata, and every cell that
is not the caller's own checks that neither tenant's jobs, avatars or objects changed. Another
tenant's job, avatar or upload must read exactly as one that does not exist (the same code and
the same message, the id aside). The last test checks that every fixture resource of both
tenants is intact after all cells and prints the matrix.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.jobs import JobStore
from talkingface.broker.keys import KeyStore, api_key_key
from talkingface.broker.purge import TenantPurge
from talkingface.broker.servicer import TENANT_METADATA
from talkingface.broker.uploads import upload_key
from talkingface.config import Settings
from talkingface.errors import ERROR_CODE_METADATA_KEY, GRPC_STATUS, TalkingFaceError
from talkingface.landmarks.bundle import PROJECTION_FILES
from talkingface.render.bundle import RENDERER_FILES
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import common_pb2
from tests.broker.conftest import minio_store, serving_broker

RPCS = ("Upload", "SubmitRender", "GetJob", "WatchJob", "CancelJob", "DeleteJob", "ListJobs",
        "CreateAvatar", "ListAvatars", "GetAvatar", "DeleteAvatar")  # fmt: skip
CONDITIONS = ("own", "other_tenant", "no_key", "revoked_key", "expired_key", "wrong_scope")

# The scope policy of docs/security.md, written out here (not read from broker.auth) so that a
# change to it fails this module: the key that lacks each RPC's scope. Upload and the job RPCs
# accept either render or avatars, so no real scope lacks them: for those the wrong-scope key
# is one whose record holds no scope at all.
WRONG_SCOPE_KEY = {
    "SubmitRender": "avatars", "DeleteJob": "avatars",
    "CreateAvatar": "render", "ListAvatars": "render", "GetAvatar": "render",
    "DeleteAvatar": "render",
    "Upload": "scopeless", "GetJob": "scopeless", "WatchJob": "scopeless",
    "CancelJob": "scopeless", "ListJobs": "scopeless",
}  # fmt: skip

# Denials: (gRPC status, stable code, words the message must hold).
DENIALS = {
    "no_key": (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "no API key"),
    "revoked_key": (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "revoked"),
    "expired_key": (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "expired"),
    "wrong_scope": (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", "lacks the scope"),
}

AUDIO = b"RIFF" + bytes(2000)
TIMEOUT = 10
MATRIX: dict[tuple[str, str], str] = {}  # (rpc, condition) -> the outcome, for the summary


@dataclass
class Tenant:
    name: str
    keys: dict[str, str] = field(default_factory=dict)  # kind -> API key
    upload_id: str = ""
    finished_job: str = ""  # SUCCEEDED, with a result object
    queued_job: str = ""
    avatar_id: str = ""  # registered, one published version

    def md(self, kind: str = "admin", claim: str | None = None) -> tuple[tuple[str, str], ...]:
        """Bearer metadata of one of its keys (plus a tenant header claiming `claim`)."""
        out = [("authorization", f"Bearer {self.keys[kind]}")] if kind else []
        out.append((TENANT_METADATA, claim or self.name))
        return tuple(out)


@pytest.fixture(scope="module")
def world(redis_server, s3_server):
    env = {
        "TALKINGFACE_STORE": "minio",
        "TALKINGFACE_MINIO_ENDPOINT": s3_server.endpoint,
        "TALKINGFACE_MINIO_ACCESS_KEY": s3_server.access_key,
        "TALKINGFACE_MINIO_SECRET_KEY": s3_server.secret_key,
        "TALKINGFACE_MINIO_REGION": s3_server.region,
        "TALKINGFACE_MINIO_BUCKET": f"tf-acl-{uuid.uuid4().hex[:12]}",
        "TALKINGFACE_REDIS_URL": redis_server.url,
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_JANITOR_INTERVAL_SECONDS": "0",
        "TALKINGFACE_LOG_FORMAT": "text",
        "TALKINGFACE_BROKER_AUTH": "keys",
        "TALKINGFACE_BROKER_AUTH_CACHE_SECONDS": "0",  # revocation and expiry at once
    }
    settings = Settings.from_env(env)
    store = minio_store(env, settings)
    with serving_broker(settings, store) as (client, stub):
        jobs = JobStore.from_settings(client, settings)
        w = SimpleNamespace(
            settings=settings, store=store, redis=client, jobs=jobs, keystore=KeyStore(client),
            avatars=AvatarRegistry(client), stub=stub,
        )  # fmt: skip
        w.a, w.b = make_tenant(w, "acl-a"), make_tenant(w, "acl-b")
        yield w
        purge = TenantPurge(client, store)
        for tenant in (w.a, w.b):  # nothing of theirs left for other modules' workers
            for job in all_jobs(w, tenant.name):
                if job.state in ("QUEUED", "RUNNING"):
                    jobs.request_cancel(job.job_id, tenant.name)
            purge.purge(tenant.name)


def make_tenant(w, prefix: str) -> Tenant:
    t = Tenant(f"{prefix}-{uuid.uuid4().hex[:8]}")
    w.keystore.create_tenant(t.name)
    for kind, scopes in (("admin", "admin"), ("render", "render"), ("avatars", "avatars"),
                         ("revoked", "render,avatars"), ("expired", "render,avatars"),
                         ("scopeless", "render,avatars")):  # fmt: skip
        t.keys[kind], info = w.keystore.create_key(t.name, scopes, expires_in_s=3600, name=kind)
        if kind == "revoked":
            w.keystore.revoke_key(info.key_id)
        elif kind == "expired":  # no API sets an expiry in the past: write the field
            w.redis.hset(api_key_key(info.key_id), "expires_at", repr(time.time() - 60))
        elif kind == "scopeless":  # an edited record (or a scope this broker does not know)
            w.redis.hset(api_key_key(info.key_id), "scopes", "")
        if kind in ("revoked", "expired"):
            assert w.keystore.get_key(info.key_id).status() == kind
    t.upload_id = upload(w, t.md()).upload_id
    t.finished_job = finished_job(w, t.name)
    t.queued_job = w.jobs.create(t.name, "render", {"audio_key": "x"})[0].job_id
    t.avatar_id = ready_avatar(w, t.name)
    return t


def finished_job(w, tenant: str) -> str:
    job, _ = w.jobs.create(tenant, "render", {"audio_key": "x"})
    w.jobs.update(job.job_id, state="RUNNING")
    key = f"results/{tenant}/{job.job_id}/video.mp4"
    w.store.put(key, b"mp4")
    video = {"key": key, "size": 3, "content_type": "video/mp4"}
    w.jobs.update(job.job_id, state="SUCCEEDED", result={"video": video, "frames": 1})
    return job.job_id


def ready_avatar(w, tenant: str) -> str:
    avatar_id = f"av-{uuid.uuid4().hex[:12]}"
    w.avatars.claim(tenant, "Ann", avatar_id=avatar_id)
    files = {name: b"placeholder" for name in RENDERER_FILES + PROJECTION_FILES}
    w.store.publish_version(f"avatars/{avatar_id}", files)
    return avatar_id


def upload(w, md) -> pb.UploadResponse:
    def requests() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=pb.UploadHeader(filename="a.wav", total_bytes=len(AUDIO)))
        yield pb.UploadRequest(chunk=common_pb2.ByteChunk(offset=0, data=AUDIO))

    return w.stub.Upload(requests(), metadata=md, timeout=TIMEOUT)


def all_jobs(w, tenant: str) -> list:
    out, token = [], ""
    while True:
        page, token = w.jobs.list(tenant, page_size=100, page_token=token)
        out.extend(page)
        if not token:
            return out


def snapshot(w, t: Tenant) -> dict[str, Any]:
    """Everything of the tenant's that a cross-tenant write could change."""
    avatars, token = [], ""
    while True:
        page, token = w.avatars.list(t.name, 100, token)
        avatars.extend(r.avatar_id for r in page)
        if not token:
            break
    objects = set()
    for prefix in (f"uploads/{t.name}", f"results/{t.name}", *(f"avatars/{a}" for a in avatars)):
        objects |= {info.key for info in w.store.list(prefix)}
    return {
        "jobs": {j.job_id: (j.state, j.cancel_requested) for j in all_jobs(w, t.name)},
        "avatars": sorted(avatars),
        "objects": objects,
    }


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def sent_code(error: grpc.RpcError) -> str:
    """The stable ErrorCode the server put in the trailing metadata ('' when none)."""
    codes = [v for k, v in (error.trailing_metadata() or ()) if k == ERROR_CODE_METADATA_KEY]
    return codes[0] if codes else ""


def assert_denied(error: grpc.RpcError, code: str, *words: str) -> None:
    assert error.code() == GRPC_STATUS[code], (error.code(), error.details())
    assert sent_code(error) == code, error.details()
    assert error.details().startswith(f"{code}: "), error.details()
    for word in words:
        assert word in error.details(), (word, error.details())


def assert_reads_as_missing(call: Callable[[str], Any], real_id: str, code: str) -> None:
    """`call(real_id)` fails exactly as for an id that does not exist: code, status and
    message (the id aside)."""
    fake_id = real_id[:-6] + "ffffff" if not real_id.endswith("ffffff") else real_id[:-6] + "0"
    real, fake = rpc_error(lambda: call(real_id)), rpc_error(lambda: call(fake_id))
    assert_denied(real, code)
    assert_denied(fake, code)
    assert real.details().replace(real_id, "<id>") == fake.details().replace(fake_id, "<id>")


def listed_jobs(w, md) -> list[str]:
    out, token = [], ""
    while True:
        reply = w.stub.ListJobs(pb.ListJobsRequest(page_size=100, page_token=token),
                                metadata=md, timeout=TIMEOUT)  # fmt: skip
        out.extend(j.job_id for j in reply.jobs)
        if not (token := reply.next_page_token):
            return out


def listed_avatars(w, md) -> list[str]:
    out, token = [], ""
    while True:
        reply = w.stub.ListAvatars(pb.ListAvatarsRequest(page_size=100, page_token=token),
                                   metadata=md, timeout=TIMEOUT)  # fmt: skip
        out.extend(a.avatar_id for a in reply.avatars)
        if not (token := reply.next_page_token):
            return out


# --- the calls, one per RPC, on the target tenant's fixture resources -------------------------


def call_rpc(w, rpc: str, md, t: Tenant) -> Any:
    """One call of `rpc` with metadata `md` on tenant `t`'s resources (the fixture ones:
    denied calls must leave them as they are)."""
    s = w.stub
    if rpc == "Upload":
        return upload(w, md)
    if rpc == "SubmitRender":
        request = pb.SubmitRenderRequest(avatar_id=t.avatar_id, upload_id=t.upload_id)
        return s.SubmitRender(request, metadata=md, timeout=TIMEOUT)
    if rpc == "GetJob":
        return s.GetJob(pb.GetJobRequest(job_id=t.finished_job), metadata=md, timeout=TIMEOUT)
    if rpc == "WatchJob":
        request = pb.WatchJobRequest(job_id=t.finished_job)
        return list(s.WatchJob(request, metadata=md, timeout=TIMEOUT))
    if rpc == "CancelJob":
        request = pb.CancelJobRequest(job_id=t.queued_job)
        return s.CancelJob(request, metadata=md, timeout=TIMEOUT)
    if rpc == "DeleteJob":
        request = pb.DeleteJobRequest(job_id=t.finished_job)
        return s.DeleteJob(request, metadata=md, timeout=TIMEOUT)
    if rpc == "ListJobs":
        return listed_jobs(w, md)
    if rpc == "CreateAvatar":
        request = pb.CreateAvatarRequest(synthtalk_upload_id=t.upload_id, preset="tiny")
        return s.CreateAvatar(request, metadata=md, timeout=TIMEOUT)
    if rpc == "ListAvatars":
        return listed_avatars(w, md)
    if rpc == "GetAvatar":
        return s.GetAvatar(pb.GetAvatarRequest(avatar_id=t.avatar_id), metadata=md,
                           timeout=TIMEOUT)  # fmt: skip
    if rpc == "DeleteAvatar":
        request = pb.DeleteAvatarRequest(avatar_id=t.avatar_id)
        return s.DeleteAvatar(request, metadata=md, timeout=TIMEOUT)
    raise AssertionError(f"no call for {rpc}")


# --- own: the RPC's normal answer -----------------------------------------------------------


def own_cell(w, rpc: str) -> str:
    a, s = w.a, w.stub
    if rpc == "Upload":
        reply = upload(w, a.md("render"))
        assert reply.size == len(AUDIO)
        assert w.store.exists(upload_key(a.name, reply.upload_id))
    elif rpc == "SubmitRender":
        job = call_rpc(w, rpc, a.md("render"), a)
        assert job.state == pb.JOB_STATE_QUEUED and job.avatar_id == a.avatar_id
        assert w.jobs.get(job.job_id, a.name).request["audio_key"] == upload_key(
            a.name, a.upload_id
        )
    elif rpc == "GetJob":
        job = call_rpc(w, rpc, a.md("render"), a)
        assert job.job_id == a.finished_job and job.state == pb.JOB_STATE_SUCCEEDED
        assert job.render.video.key.startswith(f"results/{a.name}/") and job.render.download_url
    elif rpc == "WatchJob":
        seen = call_rpc(w, rpc, a.md("avatars"), a)
        assert [j.job_id for j in seen] == [a.finished_job]
        assert seen[-1].state == pb.JOB_STATE_SUCCEEDED
    elif rpc == "CancelJob":
        job_id = w.jobs.create(a.name, "render", {"audio_key": "x"})[0].job_id
        job = s.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=a.md("render"),
                          timeout=TIMEOUT)  # fmt: skip
        assert job.state == pb.JOB_STATE_CANCELLED
    elif rpc == "DeleteJob":
        job_id = finished_job(w, a.name)
        reply = s.DeleteJob(pb.DeleteJobRequest(job_id=job_id), metadata=a.md("render"),
                            timeout=TIMEOUT)  # fmt: skip
        assert reply.job_id == job_id and reply.objects_deleted >= 1
        with pytest.raises(TalkingFaceError, match="JOB_NOT_FOUND"):
            w.jobs.get(job_id, a.name)
        assert w.store.list(f"results/{a.name}/{job_id}") == []
        assert job_id not in {j.job_id for j in all_jobs(w, a.name)}
    elif rpc == "ListJobs":
        listed = call_rpc(w, rpc, a.md("render"), a)
        assert {a.finished_job, a.queued_job} <= set(listed)
        assert set(listed) <= set(snapshot(w, a)["jobs"])  # only its own jobs
    elif rpc == "CreateAvatar":
        job = call_rpc(w, rpc, a.md("avatars"), a)
        assert job.kind == pb.JOB_KIND_TRAIN_AVATAR and job.state == pb.JOB_STATE_QUEUED
        assert w.avatars.get(a.name, job.avatar_id).job_id == job.job_id
    elif rpc == "ListAvatars":
        listed = call_rpc(w, rpc, a.md("avatars"), a)
        assert a.avatar_id in listed
        assert set(listed) <= set(snapshot(w, a)["avatars"])
    elif rpc == "GetAvatar":
        avatar = call_rpc(w, rpc, a.md("avatars"), a)
        assert avatar.avatar_id == a.avatar_id and avatar.state == pb.AVATAR_STATE_READY
    elif rpc == "DeleteAvatar":
        avatar_id = ready_avatar(w, a.name)
        reply = s.DeleteAvatar(pb.DeleteAvatarRequest(avatar_id=avatar_id),
                               metadata=a.md("avatars"), timeout=TIMEOUT)  # fmt: skip
        assert reply.avatar_id == avatar_id and reply.versions_deleted == 1
        assert avatar_id not in snapshot(w, a)["avatars"]
        assert w.store.list(f"avatars/{avatar_id}") == []
    return "OK"


# --- another tenant's resource ------------------------------------------------------------------


def other_cell(w, rpc: str, attacker: Tenant, victim: Tenant) -> str:
    """`attacker`'s admin key (with a tenant header naming the victim, which auth ignores)
    on `victim`'s resources: they read as not existing, lists never show them."""
    s, md = w.stub, attacker.md("admin", claim=victim.name)
    before = snapshot(w, attacker)
    if rpc == "Upload":
        reply = upload(w, md)  # lands with the attacker, never under the victim's prefix
        assert w.store.exists(upload_key(attacker.name, reply.upload_id))
        assert not w.store.exists(upload_key(victim.name, reply.upload_id))
        after = snapshot(w, attacker)
        assert after["objects"] - before["objects"] == {upload_key(attacker.name,
                                                                   reply.upload_id)}  # fmt: skip
        before["objects"] = after["objects"]
        # ... and the victim cannot use it as theirs
        request = pb.SubmitRenderRequest(avatar_id=victim.avatar_id, upload_id=reply.upload_id)
        error = rpc_error(lambda: s.SubmitRender(request, metadata=victim.md(), timeout=TIMEOUT))
        assert_denied(error, "NOT_FOUND", "upload")
        outcome = "OK (stored as the caller's)"
    elif rpc == "SubmitRender":

        def with_avatar(avatar_id: str):
            request = pb.SubmitRenderRequest(avatar_id=avatar_id, inline_audio=AUDIO)
            return s.SubmitRender(request, metadata=md, timeout=TIMEOUT)

        def with_upload(upload_id: str):
            request = pb.SubmitRenderRequest(avatar_id=attacker.avatar_id, upload_id=upload_id)
            return s.SubmitRender(request, metadata=md, timeout=TIMEOUT)

        assert_reads_as_missing(with_avatar, victim.avatar_id, "AVATAR_NOT_FOUND")
        assert_reads_as_missing(with_upload, victim.upload_id, "NOT_FOUND")
        outcome = "AVATAR_NOT_FOUND / NOT_FOUND (upload)"
    elif rpc in ("GetJob", "WatchJob", "CancelJob", "DeleteJob"):
        request_type = getattr(pb, f"{rpc}Request")

        def on_job(job_id: str):
            reply = getattr(s, rpc)(request_type(job_id=job_id), metadata=md, timeout=TIMEOUT)
            return list(reply) if rpc == "WatchJob" else reply

        for job_id in (victim.finished_job, victim.queued_job):
            assert_reads_as_missing(on_job, job_id, "JOB_NOT_FOUND")
        outcome = "JOB_NOT_FOUND"
    elif rpc == "ListJobs":
        listed = set(listed_jobs(w, md))
        assert {attacker.finished_job, attacker.queued_job} <= listed
        assert not listed & set(snapshot(w, victim)["jobs"])
        outcome = "OK (own jobs only)"
    elif rpc == "CreateAvatar":

        def create(upload_id: str):
            request = pb.CreateAvatarRequest(synthtalk_upload_id=upload_id, preset="tiny")
            return s.CreateAvatar(request, metadata=md, timeout=TIMEOUT)

        assert_reads_as_missing(create, victim.upload_id, "NOT_FOUND")
        outcome = "NOT_FOUND (upload)"
    elif rpc == "ListAvatars":
        listed = set(listed_avatars(w, md))
        assert attacker.avatar_id in listed
        assert not listed & set(snapshot(w, victim)["avatars"])
        outcome = "OK (own avatars only)"
    elif rpc in ("GetAvatar", "DeleteAvatar"):
        request_type = getattr(pb, f"{rpc}Request")

        def on_avatar(avatar_id: str):
            return getattr(s, rpc)(request_type(avatar_id=avatar_id), metadata=md,
                                   timeout=TIMEOUT)  # fmt: skip

        assert_reads_as_missing(on_avatar, victim.avatar_id, "AVATAR_NOT_FOUND")
        outcome = "AVATAR_NOT_FOUND"
    else:
        raise AssertionError(f"no cell for {rpc}")
    assert snapshot(w, attacker) == before  # a refused call leaves nothing behind
    return outcome


# --- the matrix -------------------------------------------------------------------------------


def test_the_matrix_names_every_broker_rpc():
    methods = pb.DESCRIPTOR.services_by_name["Broker"].methods_by_name
    assert set(methods) == set(RPCS), "a Broker RPC is missing from the access matrix"
    assert set(WRONG_SCOPE_KEY) == set(RPCS)


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("rpc", RPCS)
def test_access(world, rpc: str, condition: str):
    w = world
    victims = {t.name: snapshot(w, t) for t in (w.a, w.b)}
    if condition == "own":
        MATRIX[rpc, condition] = own_cell(w, rpc)
        victims.pop(w.a.name)  # the caller's own calls may change its own things
    elif condition == "other_tenant":
        outcomes = {other_cell(w, rpc, w.b, w.a), other_cell(w, rpc, w.a, w.b)}
        MATRIX[rpc, condition] = " ".join(sorted(outcomes))
        if rpc == "Upload":  # each gained only its own new upload (checked in the cell)
            victims = {}
    else:
        status, code, words = DENIALS[condition]
        kind = {"no_key": "", "revoked_key": "revoked", "expired_key": "expired",
                "wrong_scope": WRONG_SCOPE_KEY[rpc]}[condition]  # fmt: skip
        error = rpc_error(lambda: call_rpc(w, rpc, w.a.md(kind), w.a))
        assert error.code() == status
        assert_denied(error, code, words)
        MATRIX[rpc, condition] = code
    for t in (w.a, w.b):  # neither tenant's jobs, avatars or objects changed
        if t.name in victims:
            assert snapshot(w, t) == victims[t.name], t.name


def test_zz_no_cross_tenant_read_or_write_and_the_fixtures_are_intact(world):
    """After every cell: each tenant's fixture job, upload and avatar are as they were made
    (none read by, cancelled or deleted through, the other tenant); prints the matrix."""
    w = world
    for t in (w.a, w.b):
        finished = w.jobs.get(t.finished_job, t.name)
        assert finished.state == "SUCCEEDED" and not finished.cancel_requested
        assert w.store.exists(f"results/{t.name}/{t.finished_job}/video.mp4")
        queued = w.jobs.get(t.queued_job, t.name)
        assert queued.state == "QUEUED" and not queued.cancel_requested
        assert w.store.exists(upload_key(t.name, t.upload_id))
        assert w.avatars.get(t.name, t.avatar_id).avatar_id == t.avatar_id
        assert w.store.list_versions(f"avatars/{t.avatar_id}")
    # no job or avatar of one tenant is listed as the other's
    a, b = snapshot(w, w.a), snapshot(w, w.b)
    assert not set(a["jobs"]) & set(b["jobs"]) and not set(a["avatars"]) & set(b["avatars"])
    missing = [f"{r}-{c}" for r in RPCS for c in CONDITIONS if (r, c) not in MATRIX]
    if missing:
        pytest.skip(f"only part of the matrix ran (e.g. -k): {len(missing)} cells not run")
    width = max(len(r) for r in RPCS)
    print("\n" + " | ".join(["RPC".ljust(width), *CONDITIONS]))
    for r in RPCS:
        print(" | ".join([r.ljust(width), *(MATRIX[r, c] for c in CONDITIONS)]))
