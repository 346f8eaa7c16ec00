"""The Motion service: through Ray Serve's gRPC ingress (inline and store in/out, avatar
postnets, seeds, stable error codes, 2 minutes of input), plus the servicer's input checks,
postnet cache and checkpoint loading in-process."""

import io
import json
import shutil
import threading

import grpc
import numpy as np
import pytest

from talkingface.config import ConfigError, Settings
from talkingface.errors import TalkingFaceError, error_from_rpc
from talkingface.motion.bundle import publish_postnet
from talkingface.motion.infer import MotionModel
from talkingface.motion.servicer import MotionServicer, app, load_motion_model
from talkingface.serving.ray_app import deploy
from talkingface.storage import LocalStore
from talkingface.storage.fetch import fetch_prefix
from talkingface.tensors import assemble, to_tensor
from talkingface.v1 import common_pb2, motion_pb2_grpc
from talkingface.v1 import motion_pb2 as pb

APP = "motion"
METADATA = (("application", APP),)


def _settings(ckpt, tmp, **extra) -> Settings:
    return Settings.from_env(
        {
            "TALKINGFACE_MOTION_CHECKPOINT": str(ckpt / "motion"),
            "TALKINGFACE_STORE_DIR": str(tmp / "store"),
            "TALKINGFACE_CACHE_DIR": str(tmp / "cache"),
            "TALKINGFACE_DEVICE": "cpu",
            **extra,
        }
    )


def _utterance(tiny_data):
    utts, _ = tiny_data
    return max((u for u in utts if u.split == "test"), key=lambda u: u.frames)


def _request(features, bins, **kwargs) -> pb.GenerateMotionRequest:
    return pb.GenerateMotionRequest(
        features=common_pb2.TensorPayload(inline=to_tensor(np.asarray(features, np.float32))),
        f0_bins=common_pb2.TensorPayload(inline=to_tensor(np.asarray(bins, np.int32))),
        **kwargs,
    )


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --- through Ray Serve ------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(serve_grpc_port, tiny_ckpt, tiny_postnet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("motion-service")
    settings = _settings(tiny_ckpt, tmp)
    store = LocalStore(settings.store_dir)
    version = publish_postnet(store, "avatar-1", tiny_postnet)
    deploy(app(settings), APP)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{serve_grpc_port}",
        options=[("grpc.max_receive_message_length", 8 << 20)],
    )
    return motion_pb2_grpc.MotionStub(channel), store, version


def _generate(stub, request):
    responses = list(stub.Generate(request, metadata=METADATA, timeout=300))
    summary = responses[0].summary
    return summary, assemble(r.chunk for r in responses[1:])["lm3d"]


def _rpc_error(stub, request) -> tuple[grpc.StatusCode, TalkingFaceError]:
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Generate(request, metadata=METADATA, timeout=120))
    return failed.value.code(), error_from_rpc(failed.value)


@pytest.mark.slow
def test_generate_from_inline_tensors(service, tiny_data, tiny_ckpt):
    stub, _, _ = service
    u = _utterance(tiny_data)
    summary, lm3d = _generate(stub, _request(u.features, u.f0_bins, seed=7))
    assert summary.frames == u.frames and summary.fps == 25.0
    assert not summary.postnet_applied
    model = MotionModel.load(tiny_ckpt / "motion", device="cpu")
    assert summary.model_version == model.version
    assert lm3d.shape == (u.frames, 68, 3) and lm3d.dtype == np.float32
    assert np.isfinite(lm3d).all()
    local = model.generate(u.features, u.f0_bins, seed=7)
    np.testing.assert_allclose(lm3d, local, atol=1e-4)


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(service, tiny_data):
    stub, _, _ = service
    u = _utterance(tiny_data)
    _, first = _generate(stub, _request(u.features, u.f0_bins, seed=11))
    _, again = _generate(stub, _request(u.features, u.f0_bins, seed=11))
    _, other = _generate(stub, _request(u.features, u.f0_bins, seed=12))
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)
    _, hot = _generate(stub, _request(u.features, u.f0_bins, seed=11, temperature=3.0))
    assert not np.array_equal(first, hot)


@pytest.mark.slow
def test_avatar_postnet_is_applied(service, tiny_data, tiny_postnet):
    stub, _, version = service
    u = _utterance(tiny_data)
    _, plain = _generate(stub, _request(u.features, u.f0_bins, seed=3))
    for pinned in ("", version):
        avatar = common_pb2.AvatarRef(avatar_id="avatar-1", version=pinned)
        summary, adapted = _generate(stub, _request(u.features, u.f0_bins, seed=3, avatar=avatar))
        assert summary.postnet_applied
        assert adapted.shape == plain.shape
        assert not np.allclose(adapted, plain)
    # Around the avatar's own mean face, not the generic one.
    from talkingface.motion.infer import PostnetModel

    face = PostnetModel.load(tiny_postnet).mean_face
    assert np.abs(adapted.mean(0) - face).mean() < np.abs(plain.mean(0) - face).mean()


@pytest.mark.slow
def test_unknown_avatar_is_not_found(service, tiny_data):
    stub, _, _ = service
    u = _utterance(tiny_data)
    avatar = common_pb2.AvatarRef(avatar_id="nobody")
    status, error = _rpc_error(stub, _request(u.features, u.f0_bins, avatar=avatar))
    assert status == grpc.StatusCode.NOT_FOUND and error.code == "AVATAR_NOT_FOUND"
    avatar = common_pb2.AvatarRef(avatar_id="avatar-1", version="v19990101T000000Z-000000")
    status, error = _rpc_error(stub, _request(u.features, u.f0_bins, avatar=avatar))
    assert status == grpc.StatusCode.NOT_FOUND and error.code == "AVATAR_VERSION_NOT_FOUND"


@pytest.mark.slow
def test_wrong_feature_width_is_invalid_argument(service, tiny_data):
    stub, _, _ = service
    u = _utterance(tiny_data)
    wide = np.zeros((u.frames, 1024), np.float32)
    status, error = _rpc_error(stub, _request(wide, u.f0_bins))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.code == "INVALID_REQUEST"
    assert "1024-wide" in error.message and "[T, 80]" in error.message
    assert "logmel" in error.message


@pytest.mark.slow
def test_store_references_in_and_stored_tensors_out(service, tiny_data):
    stub, store, _ = service
    u = _utterance(tiny_data)
    features = store.put("features/test/features.npy", _npy(u.features.astype(np.float32)))
    bins = store.put("features/test/f0_bins.npy", _npy(u.f0_bins.astype(np.int32)))
    request = pb.GenerateMotionRequest(
        features=common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key=features.key)),
        f0_bins=common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key=bins.key)),
        seed=5,
        output=common_pb2.OUTPUT_MODE_STORE,
    )
    summary, stored = list(stub.Generate(request, metadata=METADATA, timeout=120))
    ref = stored.stored.tensors["lm3d"]
    assert set(stored.stored.tensors) == {"lm3d"} and ref.content_type == "application/x-npy"
    assert store.stat(ref.key).sha256 == ref.sha256
    lm3d = np.load(io.BytesIO(store.get(ref.key)))
    assert lm3d.shape == (summary.summary.frames, 68, 3) == (u.frames, 68, 3)
    _, streamed = _generate(stub, _request(u.features, u.f0_bins, seed=5))
    assert lm3d.tobytes() == streamed.tobytes()


@pytest.mark.slow
def test_missing_reference_is_not_found(service, tiny_data):
    stub, _, _ = service
    u = _utterance(tiny_data)
    request = _request(u.features, u.f0_bins)
    request.features.ref.CopyFrom(common_pb2.ObjectRef(key="features/none/features.npy"))
    status, error = _rpc_error(stub, request)
    assert status == grpc.StatusCode.NOT_FOUND and error.code == "STORE_OBJECT_NOT_FOUND"


@pytest.mark.slow
def test_two_minutes_of_input(service, tiny_data):
    """3000 frames: longer than one inference window, so the model windows internally."""
    stub, _, _ = service
    utts, _ = tiny_data
    reps = -(-3000 // sum(u.frames for u in utts))
    features = np.concatenate([u.features for u in utts] * reps)[:3000]
    bins = np.concatenate([u.f0_bins for u in utts] * reps)[:3000]
    summary, lm3d = _generate(stub, _request(features, bins, seed=1))
    assert summary.frames == 3000
    assert lm3d.shape == (3000, 68, 3) and np.isfinite(lm3d).all()
    # No seams: frame-to-frame motion at window boundaries is like anywhere else.
    step = np.linalg.norm(np.diff(lm3d, axis=0), axis=-1).mean(axis=-1)
    assert step.max() < 10 * np.median(step) + 1e-6


# --- in-process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servicer(tiny_ckpt, tmp_path_factory):
    return MotionServicer(_settings(tiny_ckpt, tmp_path_factory.mktemp("motion-servicer")))


def _fails(servicer, request) -> TalkingFaceError:
    with pytest.raises(TalkingFaceError) as failed:
        list(servicer._generate(request))
    return failed.value


@pytest.mark.slow
def test_bad_inputs_are_invalid_requests(servicer, tiny_data):
    u = _utterance(tiny_data)
    f, b = u.features, u.f0_bins
    nan = f.copy()
    nan[3, 4] = np.nan
    cases = {
        "f0_bins has": _request(f, b[:-1]),
        "NaN": _request(nan, b),
        "0..299": _request(f, np.full_like(b, 300)),
        "[T, 80]": _request(f[None], b),
        "no frames": _request(f[:0], b[:0]),
        "finite": _request(f, b, temperature=float("inf")),
        "no f0_bins": pb.GenerateMotionRequest(features=_request(f, b).features),
        "without an avatar id": _request(f, b, avatar=common_pb2.AvatarRef(version="v1")),
        "dtype": pb.GenerateMotionRequest(
            features=common_pb2.TensorPayload(inline=to_tensor(f.astype(np.int32))),
            f0_bins=_request(f, b).f0_bins,
        ),
    }
    for text, request in cases.items():
        error = _fails(servicer, request)
        assert error.code == "INVALID_REQUEST", (text, error)
        assert text in error.message, (text, error.message)
    assert _fails(servicer, _request(f, b, avatar=common_pb2.AvatarRef(avatar_id="../x"))).code == (
        "INVALID_REQUEST"
    )
    key = servicer.store.put("features/junk/features.npy", b"not an npy file").key
    request = _request(f, b)
    request.features.ref.CopyFrom(common_pb2.ObjectRef(key=key))
    assert "not a .npy" in _fails(servicer, request).message
    long = np.zeros((servicer.max_frames + 1, 80), np.float32)
    key = servicer.store.put("features/long/features.npy", _npy(long)).key
    request = _request(f, b)
    request.features.ref.CopyFrom(common_pb2.ObjectRef(key=key))
    assert _fails(servicer, request).code == "AUDIO_TOO_LONG"


@pytest.mark.slow
def test_concurrent_requests_are_deterministic(servicer, tiny_data):
    u = _utterance(tiny_data)
    results: dict[int, bytes] = {}

    def run(i: int) -> None:
        responses = list(servicer._generate(_request(u.features, u.f0_bins, seed=i % 2)))
        results[i] = assemble(r.chunk for r in responses[1:])["lm3d"].tobytes()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert len({results[i] for i in (0, 2, 4)}) == 1 and len({results[i] for i in (1, 3, 5)}) == 1
    assert results[0] != results[1]


@pytest.mark.slow
def test_postnet_cache_and_a_postnet_for_another_model(servicer, tiny_data, tiny_postnet, tmp_path):
    u = _utterance(tiny_data)
    version = publish_postnet(servicer.store, "cached", tiny_postnet)
    request = _request(u.features, u.f0_bins, avatar=common_pb2.AvatarRef(avatar_id="cached"))
    assert next(servicer._generate(request)).summary.postnet_applied
    assert ("cached", version) in servicer.postnets
    assert 0 < servicer.postnets.nbytes <= servicer.postnets.max_bytes

    stale = tmp_path / "stale"
    shutil.copytree(tiny_postnet, stale)
    meta = json.loads((stale / "config.json").read_text())
    (stale / "config.json").write_text(json.dumps({**meta, "motion_version": "0123456789ab"}))
    publish_postnet(servicer.store, "stale", stale)
    request = _request(u.features, u.f0_bins, avatar=common_pb2.AvatarRef(avatar_id="stale"))
    error = _fails(servicer, request)
    assert error.code == "AVATAR_NOT_READY" and "retrain the postnet" in error.message


def test_missing_checkpoint_is_a_clear_startup_error(tmp_path):
    settings = Settings.from_env({"TALKINGFACE_STORE_DIR": str(tmp_path)})
    for start in (lambda: MotionServicer(settings, lazy=True), lambda: app(settings)):
        with pytest.raises(ConfigError) as failed:
            start()
        assert "TALKINGFACE_MOTION_CHECKPOINT" in str(failed.value)
        assert "talkingface train motion" in str(failed.value)
    bad = Settings.from_env({"TALKINGFACE_MOTION_CHECKPOINT": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match="TALKINGFACE_MOTION_CHECKPOINT"):
        load_motion_model(bad)
    with pytest.raises(ConfigError, match="MOTION_POSTNET_CACHE_MB"):
        Settings.from_env({"TALKINGFACE_MOTION_POSTNET_CACHE_MB": "-1"})


@pytest.mark.slow
def test_checkpoint_from_the_store(tiny_ckpt, tmp_path):
    store = LocalStore(tmp_path / "store")
    for file in (tiny_ckpt / "motion").iterdir():
        if file.is_file():
            store.put(f"models/motion/{file.name}", file.read_bytes())
    settings = _settings(tiny_ckpt, tmp_path, TALKINGFACE_MOTION_CHECKPOINT="store:models/motion")
    model = load_motion_model(settings)
    assert model.version == MotionModel.load(tiny_ckpt / "motion", device="cpu").version
    assert (tmp_path / "cache" / "checkpoints" / "models_motion" / "model.safetensors").is_file()


def test_fetch_prefix_refreshes_changed_and_removed_files(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put("models/m/a.bin", b"one")
    store.put("models/m/sub/b.bin", b"two")
    target = tmp_path / "cache"
    fetch_prefix(store, "models/m", target)
    assert (target / "a.bin").read_bytes() == b"one"
    assert (target / "sub" / "b.bin").read_bytes() == b"two"
    store.put("models/m/a.bin", b"uno")  # same size, new content
    store.delete("models/m/sub/b.bin")
    fetch_prefix(store, "models/m", target)
    assert (target / "a.bin").read_bytes() == b"uno"
    assert not (target / "sub" / "b.bin").exists()
    with pytest.raises(Exception, match="no checkpoint files"):
        fetch_prefix(store, "models/none", tmp_path / "none")


@pytest.mark.slow
def test_an_avatar_without_a_postnet_gets_its_own_face(servicer, tiny_data, tiny_avatar):
    from talkingface.landmarks.bundle import avatar_index, projection_files

    u = _utterance(tiny_data)
    index = avatar_index(tiny_avatar)
    servicer.store.publish_version("avatars/faceonly", projection_files(index))
    request = _request(u.features, u.f0_bins, avatar=common_pb2.AvatarRef(avatar_id="faceonly"))
    responses = list(servicer._generate(request))
    assert not responses[0].summary.postnet_applied
    own = assemble(r.chunk for r in responses[1:])["lm3d"]
    generic = list(servicer._generate(_request(u.features, u.f0_bins)))
    generic = assemble(r.chunk for r in generic[1:])["lm3d"]
    face = index.frames.mean(axis=0).reshape(68, 3)
    # The same motion, placed around the avatar's mean face instead of the generic one.
    np.testing.assert_allclose(own - face, generic - servicer.model.stats.mean_face, atol=1e-4)
    assert np.abs(own - generic).max() > 1e-3
    # A version with neither a postnet nor an index is still not ready.
    servicer.store.publish_version("avatars/empty", {"notes.txt": b"nothing"})
    request = _request(u.features, u.f0_bins, avatar=common_pb2.AvatarRef(avatar_id="empty"))
    assert _fails(servicer, request).code == "AVATAR_NOT_READY"
