"""The broker end to end, on real parts: a private Redis, moto's S3 server behind the MinIO
client, the four stage applications of services/serve_config.yaml on local Ray Serve (tiny
models), the broker's gRPC API, and workers in this process or as `talkingface worker`
processes. Submit -> SUCCEEDED -> an mp4 whose video lasts as long as the audio and whose
audio stream is the input; a worker SIGKILLed mid-job; idempotency; corrupt audio;
cancellation and the janitor; tenant isolation; the submit and avatar commands. Avatars
through the broker: test_fleet_avatars.py. The fleet: conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import grpc
import numpy as np
import pytest

from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.client import BrokerClient
from talkingface.broker.janitor import sweep_scratch
from talkingface.broker.jobs import events_key, idempotency_key_name
from talkingface.broker.render_job import result_key
from talkingface.broker.service import worker_pool
from talkingface.errors import TalkingFaceError, error_from_rpc
from talkingface.media import probe, read_wav
from talkingface.v1 import broker_pb2 as pb
from tests.audio._media import mp4_audio_correlation
from tests.broker.fleet_support import (
    AVATAR,
    NO_MESSAGES,
    SHARD_FRAMES,
    TENANT,
    drained,
    speech,
    swept,
)

pytestmark = pytest.mark.slow


def test_submit_renders_an_mp4_of_the_input_audio(fleet, workers, tiny_avatar, tmp_path):
    audio_path = tmp_path / "speech.wav"
    audio_path.write_bytes(speech(tiny_avatar, 2.6))
    samples, rate = read_wav(audio_path)
    job = fleet.api.submit_render(AVATAR, audio=audio_path, idempotency_key="render-1")
    assert job.state == pb.JOB_STATE_QUEUED
    seen = []
    final = fleet.api.wait(job.job_id, seen.append, timeout_s=300)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    stages = [u.stage for u in seen if u.state == pb.JOB_STATE_RUNNING]
    for stage in (pb.STAGE_AUDIO_FEATURES, pb.STAGE_MOTION, pb.STAGE_LANDMARK_PROJECTION,
                  pb.STAGE_RENDER, pb.STAGE_MUX):  # fmt: skip
        assert stage in stages
    progress = [u.progress for u in seen]
    assert progress == sorted(progress) and final.progress == 1.0

    out = fleet.api.download(final, tmp_path / "out.mp4")  # the presigned URL, over HTTP
    assert final.render.download_url.startswith("http://")
    info = probe(out)
    duration = len(samples) / rate
    assert info["video"]["codec"] == "h264" and info["audio"]["codec"] == "aac"
    assert abs(info["video"]["duration"] - duration) <= 0.04
    assert final.render.frames == round(duration * 25)
    assert mp4_audio_correlation(out, samples) > 0.9
    frames = -(-final.render.frames // SHARD_FRAMES)
    assert final.render.metrics["shards"] == frames and final.render.metrics["remuxed"] == 1.0
    # One result object, nothing left in scratch space, nothing pending.
    results = fleet.store.list(f"results/{TENANT}/{final.job_id}")
    assert [r.key for r in results] == [final.render.video.key]
    assert final.render.video.key.startswith(f"results/{TENANT}/{final.job_id}/a1-")
    assert fleet.store.list(f"work/{final.job_id}") == []
    drained(fleet, final.job_id)


def test_the_same_idempotency_key_gives_one_job(fleet, tiny_avatar):
    audio = speech(tiny_avatar, 1.0)
    key = f"same-key-{uuid.uuid4().hex[:8]}"
    # The avatar is the tenant's (one avatar id has one owner), so the test's own upload is
    # told apart from others in the tenant's uploads/ by the job record's audio key.
    uploads_before = {i.key for i in fleet.store.list(f"uploads/{TENANT}")}
    first = fleet.api.submit_render(AVATAR, audio=audio, idempotency_key=key)
    second = fleet.api.submit_render(AVATAR, audio=audio, idempotency_key=key)
    assert first.job_id == second.job_id
    # One work message, no workers running.
    assert fleet.render_queue.messages_of(first.job_id) == {**NO_MESSAGES, "queued": 1}
    own_upload = fleet.jobs.get(first.job_id).request["audio_key"]
    uploads_after = {i.key for i in fleet.store.list(f"uploads/{TENANT}")}
    assert uploads_after - uploads_before == {own_upload}  # the second copy was dropped
    # Another tenant's identical key is another job (and it cannot see this one).
    other = BrokerClient(fleet.address, "globex")
    with pytest.raises(TalkingFaceError) as caught:
        other.get_job(first.job_id)
    assert caught.value.code == "JOB_NOT_FOUND"
    cancelled = fleet.api.cancel_job(first.job_id)
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    pool = worker_pool(fleet.settings, fleet.redis, render_threads=1, train_threads=0)
    pool.start()  # acks the cancelled job's message without running it
    try:
        drained(fleet, first.job_id)
    finally:
        pool.stop(10.0)
    assert fleet.api.get_job(first.job_id).state == pb.JOB_STATE_CANCELLED


def test_corrupt_audio_fails_fast_with_its_code(fleet, workers):
    started = time.monotonic()
    job = fleet.api.submit_render(AVATAR, audio=b"RIFF" + bytes(range(256)) * 8)
    final = fleet.api.wait(job.job_id, timeout_s=60)
    assert final.state == pb.JOB_STATE_FAILED
    code = final.error.code
    from talkingface.v1 import common_pb2

    assert common_pb2.ErrorCode.Name(code).startswith("AUDIO_"), final.error
    assert final.attempt == 1  # an input error is not retried
    assert time.monotonic() - started < 30
    assert fleet.store.list(f"results/{TENANT}/{job.job_id}") == []
    drained(fleet, job.job_id)


def test_the_eight_channel_file_that_killed_replicas_renders(fleet, workers):
    # Issue 14: this 1-second 8-channel 96 kHz 16-bit WAV segfaulted the audio_features
    # replica on each of 5 deliveries. Now it decodes, on the first delivery.
    from tests.audio._layouts import plain_wav

    job = fleet.api.submit_render(AVATAR, audio=plain_wav(8, 96000, seconds=1.0))
    final = fleet.api.wait(job.job_id, timeout_s=120)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    assert (final.attempt, final.render.frames) == (1, 25)
    drained(fleet, job.job_id)


def test_bad_requests_get_their_codes(fleet, tiny_avatar):
    audio = speech(tiny_avatar, 0.5)
    cases = [
        (dict(avatar_id="nobody", audio=audio), "AVATAR_NOT_FOUND"),
        (dict(avatar_id=AVATAR, audio=b""), "AUDIO_EMPTY"),
        (dict(avatar_id=AVATAR, upload_id="0123456789abcdef"), "NOT_FOUND"),
        (dict(avatar_id=AVATAR, audio=audio, options=pb.RenderOptions(k=-1)),
         "PROJECTION_INVALID_OPTIONS"),
        (dict(avatar_id=AVATAR, audio=audio, options=pb.RenderOptions(alpha=1.5)),
         "PROJECTION_INVALID_OPTIONS"),
        (dict(avatar_id=AVATAR, audio=audio, options=pb.RenderOptions(resolution=33)),
         "INVALID_REQUEST"),
        (dict(avatar_id=AVATAR, avatar_version="v-none", audio=audio),
         "AVATAR_VERSION_NOT_FOUND"),
    ]  # fmt: skip
    keys = [f"bad-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(cases))]
    for (kwargs, code), key in zip(cases, keys, strict=True):
        with pytest.raises(TalkingFaceError) as caught:
            fleet.api.submit_render(**kwargs, idempotency_key=key)
        assert caught.value.code == code, kwargs
    # Another tenant can neither see the avatar nor use this tenant's uploads.
    upload = fleet.api.upload(audio)
    other = BrokerClient(fleet.address, "globex")
    for call in (lambda: other.submit_render(AVATAR, audio=audio),
                 lambda: other.get_avatar(AVATAR)):  # fmt: skip
        with pytest.raises(TalkingFaceError) as caught:
            call()
        assert caught.value.code == "AVATAR_NOT_FOUND"
    AvatarRegistry(fleet.redis).claim("globex", avatar_id="bob")
    with pytest.raises(TalkingFaceError) as caught:
        other.submit_render("bob", upload_id=upload.upload_id)
    assert caught.value.code == "NOT_FOUND"  # the upload is acme's
    with pytest.raises(TalkingFaceError) as caught:
        BrokerClient(fleet.address, "not a tenant!").get_job("x")
    assert caught.value.code == "INVALID_REQUEST"
    # No job was made for any of the refused submissions (looked up by their own keys).
    assert not any(fleet.redis.exists(idempotency_key_name(TENANT, key)) for key in keys)


def test_a_running_job_can_be_cancelled(fleet, workers, tiny_avatar):
    job = fleet.api.submit_render(AVATAR, audio=speech(tiny_avatar, 3.8))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = fleet.api.get_job(job.job_id)
        if current.state == pb.JOB_STATE_RUNNING and current.stage == pb.STAGE_RENDER:
            break
        time.sleep(0.05)
    assert current.stage == pb.STAGE_RENDER, current
    cancelled_at = time.monotonic()
    fleet.api.cancel_job(job.job_id)
    final = fleet.api.wait(job.job_id, timeout_s=60)
    assert final.state == pb.JOB_STATE_CANCELLED
    assert time.monotonic() - cancelled_at < 20
    drained(fleet, job.job_id)  # the worker acks after cleaning up
    assert fleet.store.list(f"results/{TENANT}/{job.job_id}") == []
    # A shard in flight at the cancel may land after the job's own cleanup; the janitor
    # removes the scratch space of ended jobs.
    swept(fleet, job.job_id)


def test_a_shard_that_lands_after_the_cancel_is_swept_by_the_janitor(fleet, workers, tiny_avatar):
    """The race the janitor is for, provoked on purpose: the renderer does not know whether a
    job still runs (its capability only says where the job may write), so a shard it was asked
    for before the cancel is stored after the worker has cleared the job's scratch space."""
    from talkingface.broker.stages import StageClients, job_issuer
    from talkingface.tensors import to_tensor
    from talkingface.v1 import common_pb2, renderer_pb2

    job_id = fleet.api.submit_render(AVATAR, audio=speech(tiny_avatar, 2.0)).job_id
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = fleet.api.get_job(job_id)
        if current.state == pb.JOB_STATE_RUNNING and current.stage == pb.STAGE_RENDER:
            break
        time.sleep(0.05)
    assert current.stage == pb.STAGE_RENDER, current
    fleet.api.cancel_job(job_id)
    assert fleet.api.wait(job_id, timeout_s=60).state == pb.JOB_STATE_CANCELLED
    drained(fleet, job_id)  # acked, so the worker's cleanup has run
    # All the cleanup may have missed is a shard of the job's own that was still in flight.
    for info in fleet.store.list(f"work/{job_id}"):
        attempt = info.key.split("/")[2]  # work/<job_id>/<attempt>/segments/...
        assert info.key.startswith(f"work/{job_id}/{attempt}/segments/"), info.key

    # The straggler: a shard of this job's scratch space stored by the renderer now.
    lm3d = np.load(tiny_avatar / "landmarks.npz")["lm3d"][:8].astype(np.float32)
    request = renderer_pb2.RenderRequest(
        avatar=common_pb2.AvatarRef(avatar_id=AVATAR),
        lm3d=common_pb2.TensorPayload(inline=to_tensor(lm3d)),
        segment_prefix=f"work/{job_id}/segments",
        start_frame=0,
        end_frame=8,
    )
    issue = job_issuer(fleet.settings, tenant=TENANT, job_id=job_id, avatar_id=AVATAR)
    stages = StageClients.from_settings(fleet.settings).with_capability(issue)
    try:
        _, result = stages.render_segment(request)
        segment = result()
    finally:
        stages.close()
    assert segment.key.startswith(f"work/{job_id}/segments/") and segment.size > 0
    assert segment.key in {i.key for i in fleet.store.list(f"work/{job_id}")}

    deleted = sweep_scratch(fleet.store, fleet.jobs, min_age_s=0)
    assert job_id in deleted
    # Nothing of the job is left (a shard of its own in flight at the cancel may still land:
    # the janitor takes that too).
    swept(fleet, job_id)
    assert fleet.store.list(f"results/{TENANT}/{job_id}") == []
    drained(fleet, job_id)


def test_the_janitor_keeps_the_scratch_space_of_running_jobs(fleet):
    running, _ = fleet.jobs.create(TENANT, "render", {"x": 1})
    fleet.jobs.update(running.job_id, state="RUNNING")
    ended, _ = fleet.jobs.create(TENANT, "render", {"x": 2})
    fleet.jobs.update(ended.job_id, state="FAILED", error_code="INTERNAL")
    recordless = uuid.uuid4().hex  # a job id without a record
    own = (running.job_id, ended.job_id, recordless)
    for job_id in own:
        fleet.store.put(f"work/{job_id}/segments/a.mp4", b"x")

    def scratch(job_id: str) -> list[str]:
        return [i.key for i in fleet.store.list(f"work/{job_id}")]

    # Other tests' jobs may have scratch space too (a straggler shard): only this test's own
    # job ids are looked at.
    deleted = sweep_scratch(fleet.store, fleet.jobs, min_age_s=3600)
    assert deleted == sorted(deleted)
    assert recordless in deleted  # only the recordless one: the ended one is too recent
    assert running.job_id not in deleted and ended.job_id not in deleted
    assert scratch(recordless) == [] and scratch(ended.job_id) != []
    deleted = sweep_scratch(fleet.store, fleet.jobs, min_age_s=0)
    assert ended.job_id in deleted  # now the ended one too
    assert running.job_id not in deleted and recordless not in deleted
    assert scratch(ended.job_id) == []
    assert scratch(running.job_id) == [f"work/{running.job_id}/segments/a.mp4"]
    fleet.jobs.update(running.job_id, state="CANCELLED")
    deleted = sweep_scratch(fleet.store, fleet.jobs, min_age_s=0)
    assert running.job_id in deleted and ended.job_id not in deleted
    assert all(scratch(job_id) == [] for job_id in own)


def _worker_process(fleet, tmp_path, name: str) -> subprocess.Popen:
    env = {**os.environ, **fleet.env, "TALKINGFACE_RENDER_PARALLEL_SHARDS": "1",
           "TALKINGFACE_RENDER_SHARD_FRAMES": "8"}  # fmt: skip
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "talkingface.cli", "worker", "--queues", "render"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes(fleet, tiny_avatar, tmp_path):
    job = fleet.api.submit_render(AVATAR, audio=speech(tiny_avatar, 3.0))
    first = _worker_process(fleet, tmp_path, "first")
    second = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # wait until it is rendering, a shard done
            current = fleet.api.get_job(job.job_id)
            if current.stage == pb.STAGE_RENDER and current.progress > 0.15:
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        assert current.stage == pb.STAGE_RENDER, current
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # The killed worker's claim is still there.
        assert fleet.render_queue.messages_of(job.job_id) == {**NO_MESSAGES, "pending": 1}
        second = _worker_process(fleet, tmp_path, "second")
        final = fleet.api.wait(job.job_id, timeout_s=240)
        assert final.state == pb.JOB_STATE_SUCCEEDED, (tmp_path / "second.log").read_text()
        assert final.attempt == 2  # taken over once its lease ran out
        results = fleet.store.list(f"results/{TENANT}/{job.job_id}")
        assert [r.key for r in results] == [final.render.video.key]
        assert final.render.video.key == result_key(TENANT, job.job_id, "x").replace(
            "/x/", f"/{final.render.video.key.split('/')[3]}/"
        )
        assert final.render.video.key.split("/")[3].startswith("a2-")  # the second attempt's
        assert final.render.frames == 75
        # Resumed (issue 19): the second attempt verified and reused the shards the first had
        # finished (its checkpoint), instead of starting over from the audio features.
        assert final.render.metrics["resumed"] == 1.0
        assert final.render.metrics["reused_shards"] >= 1
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    drained(fleet, job.job_id)


def test_the_submit_and_avatar_commands(fleet, workers, tiny_avatar, tmp_path, capsys):
    from talkingface.cli import main

    audio = tmp_path / "speech.wav"
    audio.write_bytes(speech(tiny_avatar, 1.2))
    client = ["--broker", fleet.address, "--tenant", TENANT, "--json"]
    out = tmp_path / "cli.mp4"
    argv = ["submit", "--avatar", AVATAR, "--audio", str(audio), "--out", str(out), "-k", "8"]
    assert main([*argv, *client]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["state"] == "SUCCEEDED" and report["out"] == str(out)
    assert abs(probe(out)["video"]["duration"] - 1.2) <= 0.04
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + bytes(300))
    assert main(["submit", "--avatar", AVATAR, "--audio", str(bad), "--out",
                 str(tmp_path / "bad.mp4"), *client]) == 1  # fmt: skip
    captured = capsys.readouterr()
    failed = json.loads(captured.out.strip().splitlines()[-1])
    assert failed["state"] == "FAILED"
    assert "AUDIO_" in captured.err and not (tmp_path / "bad.mp4").exists()
    assert main(["submit", "--avatar", "nobody", "--audio", str(audio), "--out",
                 str(tmp_path / "n.mp4"), *client]) == 2  # fmt: skip
    assert "AVATAR_NOT_FOUND" in capsys.readouterr().err
    assert main(["avatar", "show", AVATAR, *client]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["avatar_id"] == AVATAR and shown["state"] == "AVATAR_STATE_READY"
    drained(fleet, report["job_id"], failed["job_id"])


def test_bad_uploads_are_refused_and_leave_nothing(fleet):
    from talkingface.v1 import common_pb2

    tenant = f"uploads-{uuid.uuid4().hex[:8]}"  # its uploads/ prefix is this test's alone
    api = BrokerClient(fleet.address, tenant)

    def upload(*items):
        try:
            api.stub.Upload(iter(items), metadata=api.metadata, timeout=30)
        except grpc.RpcError as exc:
            return error_from_rpc(exc).code
        return "OK"

    def header(total=0, content_type=""):
        return pb.UploadRequest(header=pb.UploadHeader(total_bytes=total,
                                                       content_type=content_type))  # fmt: skip

    def chunk(offset, data):
        return pb.UploadRequest(chunk=common_pb2.ByteChunk(offset=offset, data=data))

    assert fleet.store.list(f"uploads/{tenant}") == []
    assert upload(chunk(0, b"abc")) == "INVALID_REQUEST"  # no header first
    assert upload(header()) == "INVALID_REQUEST"  # nothing in it
    assert upload(header(), chunk(0, b"abc"), chunk(5, b"def")) == "INVALID_REQUEST"  # a gap
    assert upload(header(10), chunk(0, b"abc")) == "INVALID_REQUEST"  # shorter than announced
    assert upload(header(), chunk(0, b"a"), header()) == "INVALID_REQUEST"  # a second header
    assert upload(header(total=2**40)) == "PAYLOAD_TOO_LARGE"
    assert fleet.store.list(f"uploads/{tenant}") == []
    reply = api.stub.Upload(
        iter([header(3, "text/plain\r\nX-Evil: 1"), chunk(0, b"abc")]), metadata=api.metadata
    )
    info = fleet.store.stat(f"uploads/{tenant}/{reply.upload_id}/data")
    assert info.size == 3 and info.content_type == "application/octet-stream"
    assert [i.key for i in fleet.store.list(f"uploads/{tenant}")] == [info.key]


def test_the_stage_plane_is_closed(fleet, tiny_avatar):
    """TALKINGFACE_STAGE_SECRET is set (conftest): a call without the worker's capability is
    UNAUTHENTICATED on every app; with a valid one, a key or avatar outside it is
    PERMISSION_DENIED, and one inside it passes the guard (here: an absent object)."""
    from talkingface.broker.stages import job_issuer
    from talkingface.serving.capability import METADATA_KEY
    from talkingface.serving.server import grpc_message_options
    from talkingface.tensors import to_tensor
    from talkingface.v1 import (
        audio_features_pb2,
        audio_features_pb2_grpc,
        common_pb2,
        landmark_projection_pb2,
        landmark_projection_pb2_grpc,
        motion_pb2,
        motion_pb2_grpc,
        renderer_pb2,
        renderer_pb2_grpc,
    )

    job_id = f"job-{uuid.uuid4().hex[:12]}"
    upload = f"uploads/{TENANT}/up-{uuid.uuid4().hex[:8]}/audio.wav"
    other = f"uploads/another-tenant/up-{uuid.uuid4().hex[:8]}/audio.wav"
    issue = job_issuer(fleet.settings, tenant=TENANT, job_id=job_id, audio_key=upload,
                       avatar_id=AVATAR)  # fmt: skip
    lm3d = np.load(tiny_avatar / "landmarks.npz")["lm3d"][:8].astype(np.float32)
    inline = common_pb2.TensorPayload(inline=to_tensor(lm3d))
    channel = grpc.insecure_channel(fleet.settings.stages_address, options=grpc_message_options(8))

    def ref(key: str) -> common_pb2.TensorPayload:
        return common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key=key))

    def audio(key: str):
        return audio_features_pb2.ExtractFeaturesRequest(
            audio=audio_features_pb2.AudioInput(ref=common_pb2.ObjectRef(key=key))
        )

    features = to_tensor(np.zeros((8, 80), np.float32))
    bins = to_tensor(np.zeros(8, np.int32))
    calls = {
        "audio_features": (audio_features_pb2_grpc.AudioFeaturesStub(channel).Extract,
                           audio(upload), audio(other)),
        "motion": (motion_pb2_grpc.MotionStub(channel).Generate,
                   motion_pb2.GenerateMotionRequest(
                       features=ref(f"work/{job_id}/features.npy"),
                       f0_bins=common_pb2.TensorPayload(inline=bins)),
                   motion_pb2.GenerateMotionRequest(
                       features=common_pb2.TensorPayload(inline=features),
                       f0_bins=common_pb2.TensorPayload(inline=bins),
                       avatar=common_pb2.AvatarRef(avatar_id="someone-elses-avatar"))),
        "landmark_projection": (
                                landmark_projection_pb2_grpc.LandmarkProjectionStub(channel).Project,
                                landmark_projection_pb2.ProjectRequest(
                                    avatar=common_pb2.AvatarRef(avatar_id=AVATAR),
                                    lm3d=ref(f"work/{job_id}/lm3d.npy")),
                                landmark_projection_pb2.ProjectRequest(
                                    avatar=common_pb2.AvatarRef(avatar_id=AVATAR),
                                    lm3d=ref("work/another-job/lm3d.npy"))),
        "renderer": (renderer_pb2_grpc.RendererStub(channel).Render,
                     renderer_pb2.RenderRequest(
                         avatar=common_pb2.AvatarRef(avatar_id=AVATAR),
                         lm3d=ref(f"work/{job_id}/lm3d.npy")),
                     renderer_pb2.RenderRequest(
                         avatar=common_pb2.AvatarRef(avatar_id=AVATAR), lm3d=inline,
                         output=common_pb2.OUTPUT_MODE_STORE,
                         segment_prefix="work/another-job/segments")),
    }  # fmt: skip

    def code(method, request, metadata) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            list(method(request, metadata=metadata, timeout=60))
        return caught.value.code(), error_from_rpc(caught.value).code

    try:
        for app, (method, inside, outside) in calls.items():
            bare = (("application", app),)
            forged = (*bare, (METADATA_KEY, issue()[:-4] + "AAAA"))
            signed = (*bare, (METADATA_KEY, issue()))
            assert code(method, inside, bare) == (grpc.StatusCode.UNAUTHENTICATED,
                                                  "UNAUTHENTICATED"), app  # fmt: skip
            assert code(method, inside, forged)[1] == "UNAUTHENTICATED", app
            status, name = code(method, outside, signed)
            assert (status, name) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), app
            # Inside the capability the guard lets it through: the object is simply absent.
            assert code(method, inside, signed)[1] in {"NOT_FOUND", "STORE_OBJECT_NOT_FOUND"}, app
    finally:
        channel.close()
    assert not list(fleet.store.list(f"work/{job_id}"))


def _started(client, job_id: str) -> tuple[int, int] | None:
    """When the job first went RUNNING: the id of that event in its event stream (Redis clock,
    so the order of two jobs' starts is exact), or None if it never did."""
    for entry_id, fields in client.xrange(events_key(job_id)):
        if fields.get(b"state") == b"RUNNING":
            ms, _, seq = entry_id.decode().partition("-")
            return int(ms), int(seq)
    return None


def test_one_worker_serves_two_tenants_fairly(fleet, bundle, tiny_avatar):
    """Fair share (issue 18): one worker; tenant A submits 20 jobs, then tenant B submits one:
    B's job starts before A's third. The worker starts once all 21 are queued, so how fast
    the submissions go cannot decide the order (the case of A's first job already running when
    the rest arrive is tests/broker/test_queue.py's)."""
    from talkingface.render.commands import bundle_files

    suffix = uuid.uuid4().hex[:8]
    tenants = {}
    for name in ("a", "b"):
        tenant, avatar = f"fair-{name}-{suffix}", f"fair{name}{suffix}"
        fleet.store.publish_version(f"avatars/{avatar}", bundle_files(bundle))
        AvatarRegistry(fleet.redis).claim(tenant, name, avatar_id=avatar)
        tenants[name] = (BrokerClient(fleet.address, tenant), avatar)
    (a, a_avatar), (b, b_avatar) = tenants["a"], tenants["b"]
    audio = speech(tiny_avatar, 0.5)
    a_jobs = [a.submit_render(a_avatar, audio=audio).job_id for _ in range(20)]
    b_job = b.submit_render(b_avatar, audio=audio).job_id
    pool = worker_pool(fleet.settings, fleet.redis, render_threads=1, train_threads=0)
    pool.start()
    try:
        deadline = time.monotonic() + 180
        while _started(fleet.redis, b_job) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        b_started = _started(fleet.redis, b_job)
        assert b_started is not None, "B's job never started"
        for job_id in a_jobs:  # the rest of A's work is not needed
            with contextlib.suppress(TalkingFaceError):
                a.cancel_job(job_id)
        assert b.wait(b_job, timeout_s=120).state == pb.JOB_STATE_SUCCEEDED
        drained(fleet, *a_jobs, b_job, timeout_s=120)
    finally:
        pool.stop(30.0)
    a_started = sorted(s for j in a_jobs if (s := _started(fleet.redis, j)) is not None)
    assert len(a_started) >= 1  # A's first job ran
    assert len(a_started) < 3 or b_started < a_started[2], (b_started, a_started[:3])
