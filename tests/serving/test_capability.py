"""The closed stage plane (talkingface.serving.capability): signed per-job capabilities, their
checks on every request a stage gets, and the four stages behind a real standalone gRPC
server (`talkingface serve <stage>`'s ServiceServer) over loopback."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import numpy as np
import pytest

from talkingface.broker.stages import StageClients, job_issuer
from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, error_from_rpc
from talkingface.serving import capability as cap
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

SECRET = "unit-test-stage-secret"


def _token(now: float | None = None, ttl: float = 60.0, secret: str = SECRET) -> str:
    return cap.job_capability(
        secret,
        tenant="acme",
        job_id="j1",
        reads=["uploads/acme/u1/", "work/j1/", "avatars/av1/"],
        writes=["work/j1/", "results/acme/j1/"],
        avatar="av1",
        ttl_s=ttl,
        now=now,
    )


def _code(fn) -> str:
    with pytest.raises(TalkingFaceError) as caught:
        fn()
    return caught.value.code


# --- the token ---------------------------------------------------------------------------


def test_a_signed_capability_verifies_with_its_claims():
    c = cap.verify(_token(), SECRET)
    assert (c.tenant, c.job_id, c.avatar) == ("acme", "j1", "av1")
    assert c.reads == ("uploads/acme/u1/", "work/j1/", "avatars/av1/")
    assert c.writes == ("work/j1/", "results/acme/j1/")
    assert c.expires > time.time()


def test_tampered_forged_or_malformed_tokens_are_unauthenticated():
    token = _token()
    version, body, mac = token.split(".")
    claims = json.loads(cap._unb64(body))
    claims["reads"].append("uploads/")  # widen the grant, keep the old signature
    widened = f"{version}.{cap._b64(json.dumps(claims).encode())}.{mac}"
    for bad in (
        widened,
        _token(secret="another-secret"),
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "",
        "v1.only-two",
        "v2." + token[3:],
        "x" * (cap.MAX_TOKEN_BYTES + 1),
    ):
        assert _code(lambda t=bad: cap.verify(t, SECRET)) == "UNAUTHENTICATED", bad[:40]


def test_an_expired_capability_is_unauthenticated():
    token = _token(now=time.time() - 120, ttl=60)
    with pytest.raises(TalkingFaceError) as caught:
        cap.verify(token, SECRET)
    assert caught.value.code == "UNAUTHENTICATED" and "expired" in caught.value.message
    assert cap.verify(token, SECRET, now=time.time() - 100).job_id == "j1"


def test_reads_writes_and_the_avatar_are_checked_by_prefix():
    c = cap.verify(_token(), SECRET)
    c.check_read("uploads/acme/u1/audio.wav")
    c.check_read("work/j1/features.npy")
    c.check_read("avatars/av1/v3/renderer/model.pt")
    c.check_write("work/j1/segments")
    c.check_avatar("av1")
    denied = [
        lambda: c.check_read("uploads/acme/u2/audio.wav"),  # another upload of the tenant
        lambda: c.check_read("uploads/other/u1/audio.wav"),  # another tenant's
        lambda: c.check_read("work/j10/features.npy"),  # a job whose id starts alike
        lambda: c.check_read("avatars/av10/v1/x"),
        lambda: c.check_write("features"),  # the stage's default output prefix
        lambda: c.check_write("results/acme/j2"),
        lambda: c.check_avatar("av2"),
        lambda: c.check_avatar(""),
    ]
    for fn in denied:
        assert _code(fn) == "PERMISSION_DENIED"
    with pytest.raises(TalkingFaceError) as caught:
        c.check_read("uploads/other/u1/audio.wav")
    assert "uploads/other/u1/audio.wav" in caught.value.message and "j1" in caught.value.message
    # A key that climbs out of its prefix is refused before any prefix test.
    assert _code(lambda: c.check_read("work/j1/../../uploads/other/x")) == "STORE_KEY_INVALID"


def test_check_request_finds_every_key_avatar_and_store_output():
    c = cap.verify(_token(), SECRET)
    assert cap._OUTPUT_MODE_STORE == common_pb2.OUTPUT_MODE_STORE
    ref = common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key="work/j1/lm3d.npy"))
    ok = renderer_pb2.RenderRequest(
        avatar=common_pb2.AvatarRef(avatar_id="av1"), lm3d=ref,
        output=common_pb2.OUTPUT_MODE_STORE, segment_prefix="work/j1/segments",
    )  # fmt: skip
    cap.check_request(c, ok, "render")
    outside_prefix = renderer_pb2.RenderRequest()
    outside_prefix.CopyFrom(ok)
    outside_prefix.segment_prefix = "work/j2/segments"
    default_prefix = renderer_pb2.RenderRequest()
    default_prefix.CopyFrom(ok)
    default_prefix.ClearField("segment_prefix")
    other_avatar = renderer_pb2.RenderRequest()
    other_avatar.CopyFrom(ok)
    other_avatar.avatar.avatar_id = "av2"
    features_to_store = audio_features_pb2.ExtractFeaturesRequest(
        audio=audio_features_pb2.AudioInput(ref=common_pb2.ObjectRef(key="uploads/acme/u1/a")),
        options=audio_features_pb2.FeatureOptions(output=common_pb2.OUTPUT_MODE_STORE),
    )
    nested = motion_pb2.GenerateMotionRequest(
        features=ref,
        f0_bins=common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key="uploads/other/u/b.npy")),
    )
    for request, default in [
        (outside_prefix, "render"),
        (default_prefix, "render"),
        (other_avatar, "render"),
        (features_to_store, "features"),
        (nested, "motion"),
    ]:
        assert _code(lambda r=request, d=default: cap.check_request(c, r, d)) == (
            "PERMISSION_DENIED"
        ), request
    # Streamed, not stored: reading the own upload is all it does.
    features_to_store.options.output = common_pb2.OUTPUT_MODE_STREAM
    cap.check_request(c, features_to_store, "features")


def test_the_broker_issues_a_capability_for_the_job_it_runs():
    settings = Settings.from_env({"TALKINGFACE_STAGE_SECRET": SECRET})
    issue = job_issuer(settings, tenant="acme", job_id="j7", audio_key="uploads/acme/u9/a.wav",
                       avatar_id="av1", writes=("results/acme/j7/",))  # fmt: skip
    c = cap.verify(issue(), SECRET)
    assert c.reads == ("work/j7/", "uploads/acme/u9/", "avatars/av1/")
    assert c.writes == ("work/j7/", "results/acme/j7/")
    assert c.expires >= time.time() + settings.stage_timeout_seconds - 5
    assert job_issuer(Settings.from_env({}), tenant="acme", job_id="j7") is None
    clients = StageClients("127.0.0.1:1", 1.0)
    try:
        assert clients._metadata("motion") == (("application", "motion"),)
        md = dict(clients.with_capability(issue)._metadata("motion"))
        assert md["application"] == "motion" and cap.verify(md[cap.METADATA_KEY], SECRET)
    finally:
        clients.close()


# --- the four stages behind a standalone server --------------------------------------------


@pytest.fixture(scope="module")
def closed_stages(tmp_path_factory):
    """The four stage servicers (no model loaded: the guard comes first) in one standalone
    ServiceServer on loopback, with TALKINGFACE_STAGE_SECRET set and a local store."""
    from talkingface.audio.servicer import AudioFeaturesServicer
    from talkingface.landmarks.servicer import LandmarkProjectionServicer
    from talkingface.motion.servicer import MotionServicer
    from talkingface.render.servicer import RendererServicer
    from talkingface.serving.server import ServiceServer, binding_for

    tmp = tmp_path_factory.mktemp("closed-stages")
    settings = Settings.from_env(
        {
            "TALKINGFACE_GRPC_HOST": "127.0.0.1",
            "TALKINGFACE_GRPC_PORT": "0",
            "TALKINGFACE_METRICS_HOST": "127.0.0.1",
            "TALKINGFACE_METRICS_PORT": "0",
            "TALKINGFACE_STORE_DIR": str(tmp / "store"),
            "TALKINGFACE_CACHE_DIR": str(tmp / "cache"),
            "TALKINGFACE_MOTION_CHECKPOINT": str(tmp / "no-model-needed"),
            "TALKINGFACE_DEVICE": "cpu",
            "TALKINGFACE_STAGE_SECRET": SECRET,
        }
    )
    bindings = [
        binding_for(AudioFeaturesServicer(settings, lazy=True),
                    audio_features_pb2_grpc.add_AudioFeaturesServicer_to_server,
                    audio_features_pb2, "AudioFeatures"),
        binding_for(MotionServicer(settings, lazy=True),
                    motion_pb2_grpc.add_MotionServicer_to_server, motion_pb2, "Motion"),
        binding_for(LandmarkProjectionServicer(settings, lazy=True),
                    landmark_projection_pb2_grpc.add_LandmarkProjectionServicer_to_server,
                    landmark_projection_pb2, "LandmarkProjection"),
        binding_for(RendererServicer(settings, lazy=True),
                    renderer_pb2_grpc.add_RendererServicer_to_server, renderer_pb2, "Renderer"),
    ]  # fmt: skip
    server = ServiceServer("closed_stages_test", bindings, settings)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield channel
    channel.close()
    server.stop(grace=1)


def _rpc_code(method, request, metadata=()) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        list(method(request, metadata=metadata, timeout=30))
    error = error_from_rpc(caught.value)
    return caught.value.code(), error.code, error.message


def test_every_stage_needs_the_capability_and_keeps_to_it(closed_stages):
    job = f"j-{uuid.uuid4().hex[:10]}"
    token = cap.job_capability(SECRET, tenant="acme", job_id=job,
                               reads=[f"work/{job}/", "uploads/acme/u1/", "avatars/av1/"],
                               writes=[f"work/{job}/"], avatar="av1", ttl_s=60)  # fmt: skip
    expired = cap.job_capability(
        SECRET,
        tenant="acme",
        job_id=job,
        reads=[f"work/{job}/"],
        writes=[],
        avatar="av1",
        ttl_s=1,
        now=time.time() - 10,
    )
    mine = common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key=f"work/{job}/x.npy"))
    theirs = common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key="work/their-job/x.npy"))
    bins = common_pb2.TensorPayload(inline=to_tensor(np.zeros(4, np.int32)))
    av1, av2 = common_pb2.AvatarRef(avatar_id="av1"), common_pb2.AvatarRef(avatar_id="av2")
    audio = audio_features_pb2_grpc.AudioFeaturesStub(closed_stages)

    def upload(output=common_pb2.OUTPUT_MODE_STREAM):
        options = audio_features_pb2.FeatureOptions(output=output)
        yield audio_features_pb2.ExtractFeaturesUpload(
            header=audio_features_pb2.AudioUploadHeader(
                filename_hint="a.wav", total_bytes=4, options=options
            )
        )
        yield audio_features_pb2.ExtractFeaturesUpload(
            chunk=common_pb2.ByteChunk(offset=0, data=b"RIFF", last=True)
        )

    def audio_request(key: str):
        return audio_features_pb2.ExtractFeaturesRequest(
            audio=audio_features_pb2.AudioInput(ref=common_pb2.ObjectRef(key=key))
        )

    # (method, a request inside the capability, one outside it)
    stages = {
        "AudioFeatures.Extract": (audio.Extract, audio_request("uploads/acme/u1/a.wav"),
                                  audio_request("uploads/other/u1/a.wav")),
        "Motion.Generate": (motion_pb2_grpc.MotionStub(closed_stages).Generate,
                            motion_pb2.GenerateMotionRequest(features=mine, f0_bins=bins),
                            motion_pb2.GenerateMotionRequest(features=theirs, f0_bins=bins)),
        "LandmarkProjection.Project": (
            landmark_projection_pb2_grpc.LandmarkProjectionStub(closed_stages).Project,
            landmark_projection_pb2.ProjectRequest(avatar=av1, lm3d=mine),
            landmark_projection_pb2.ProjectRequest(avatar=av2, lm3d=mine)),
        "Renderer.Render": (renderer_pb2_grpc.RendererStub(closed_stages).Render,
                            renderer_pb2.RenderRequest(avatar=av1, lm3d=mine),
                            renderer_pb2.RenderRequest(
                                avatar=av1, lm3d=mine, output=common_pb2.OUTPUT_MODE_STORE,
                                segment_prefix="work/their-job/segments")),
    }  # fmt: skip
    signed = ((cap.METADATA_KEY, token),)
    for name, (method, inside, outside) in stages.items():
        status, code, message = _rpc_code(method, inside)
        assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"), name
        assert cap.METADATA_KEY in message, name
        assert _rpc_code(method, inside, ((cap.METADATA_KEY, expired),))[1] == (
            "UNAUTHENTICATED"
        ), name
        status, code, message = _rpc_code(method, outside, signed)
        assert (status, code) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), name
        assert job in message, name
        # Inside the capability the guard lets the call through to the stage itself.
        assert _rpc_code(method, inside, signed)[1] not in {
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
        }, name
    # The streamed upload: no capability, no service; with one, storing under `features/`
    # (outside the job's writes) is refused once the header is read.
    assert _rpc_code(audio.ExtractUpload, upload())[1] == "UNAUTHENTICATED"
    stored = upload(common_pb2.OUTPUT_MODE_STORE)
    status, code, message = _rpc_code(audio.ExtractUpload, stored, signed)
    assert code == "PERMISSION_DENIED" and "'features'" in message
