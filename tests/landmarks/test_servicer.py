"""The LandmarkProjection service through Ray Serve's gRPC ingress: two avatars, per-request
K and alpha, the byte-bounded index cache (hits and eviction seen from outside), stable error
codes, store in/out; plus the bundle round trip and the servicer's cache in-process."""

import io

import grpc
import numpy as np
import pytest

from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, error_from_rpc
from talkingface.landmarks.bundle import (
    PROJECTION_INDEX,
    load_projection,
    projection_files,
    publish_projection,
)
from talkingface.landmarks.projection import ProjectionIndex
from talkingface.landmarks.servicer import LandmarkProjectionServicer, app
from talkingface.serving.ray_app import deploy
from talkingface.storage import LocalStore
from talkingface.tensors import assemble, to_tensor
from talkingface.v1 import common_pb2, landmark_projection_pb2_grpc
from talkingface.v1 import landmark_projection_pb2 as pb

APP = "landmark_projection"
METADATA = (("application", APP),)
FRAMES = 900  # ~0.75 MiB per index: two do not fit the 1 MiB cache of this module


def person(seed: int, n: int = FRAMES) -> np.ndarray:
    """One person's training landmarks: a face plus a few smooth motion modes."""
    rng = np.random.default_rng(seed)
    face = rng.normal(0, 0.5, (68, 3))
    modes = rng.normal(0, 0.02, (5, 68, 3))
    t = np.linspace(0, 40, n)[:, None]
    coeff = np.sin(t * rng.uniform(0.5, 3.0, 5) + rng.uniform(0, 6, 5))
    coeff = coeff + rng.normal(0, 0.05, (n, 5))
    return (face + np.einsum("nm,mpc->npc", coeff, modes)).astype(np.float32)


def predicted(frames: np.ndarray, seed: int = 9) -> np.ndarray:
    """Prediction-like queries: training frames with off-manifold noise, some far off."""
    rng = np.random.default_rng(seed)
    x = frames[::7][:60]
    x = x + rng.normal(0, 0.004, x.shape).astype(np.float32)
    x[::10] += 0.05  # 5 mm off in every coordinate: bad cases before projection
    return x.astype(np.float32)


def _request(lm3d, avatar="alice", version="", **kwargs) -> pb.ProjectRequest:
    return pb.ProjectRequest(
        avatar=common_pb2.AvatarRef(avatar_id=avatar, version=version),
        lm3d=common_pb2.TensorPayload(inline=to_tensor(np.asarray(lm3d))),
        **kwargs,
    )


@pytest.fixture(scope="module")
def service(serve_grpc_port, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("projection-service")
    settings = Settings.from_env(
        {
            "TALKINGFACE_STORE_DIR": str(tmp / "store"),
            "TALKINGFACE_PROJECTION_CACHE_MB": "1",
        }
    )
    store = LocalStore(settings.store_dir)
    indexes = {}
    for seed, name in enumerate(("alice", "bob", "carol", "dave")):
        indexes[name] = ProjectionIndex.build(person(seed))
        publish_projection(store, name, indexes[name])
    assert all(FRAMES * 204 * 4 < i.nbytes < (1 << 20) < 2 * i.nbytes for i in indexes.values())
    deploy(app(settings), APP)
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_grpc_port}")
    return landmark_projection_pb2_grpc.LandmarkProjectionStub(channel), store, indexes


def _project(stub, request):
    responses = list(stub.Project(request, metadata=METADATA, timeout=120))
    return responses[0].summary, assemble(r.chunk for r in responses[1:])


def _rpc_error(stub, request) -> tuple[grpc.StatusCode, TalkingFaceError]:
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Project(request, metadata=METADATA, timeout=120))
    return failed.value.code(), error_from_rpc(failed.value)


def test_projects_with_the_avatars_own_index(service):
    stub, store, indexes = service
    for name, seed in (("alice", 0), ("bob", 1)):
        x = predicted(person(seed))
        summary, out = _project(stub, _request(x, avatar=name))
        local = indexes[name].project(x)  # defaults: K = 20, alpha = 0.5
        assert (summary.frames, summary.k, summary.alpha) == (len(x), 20, 0.5)
        assert summary.avatar_version == store.latest_version(f"avatars/{name}")
        assert summary.bad_case_threshold == pytest.approx(indexes[name].threshold, rel=1e-6)
        assert set(out) == {"lm3d", "dist_before", "dist_after", "bad"}
        assert out["lm3d"].dtype == np.float32 and out["bad"].dtype == bool
        np.testing.assert_allclose(out["lm3d"], local.lm3d, atol=1e-6)
        np.testing.assert_allclose(out["dist_before"], local.dist_before, rtol=1e-5)
        np.testing.assert_allclose(out["dist_after"], local.dist_after, rtol=1e-5)
        np.testing.assert_array_equal(out["bad"], out["dist_after"] > summary.bad_case_threshold)
        assert summary.bad_case_rate == pytest.approx(out["bad"].mean())
        before = (out["dist_before"] > summary.bad_case_threshold).mean()
        assert summary.bad_case_rate_before == pytest.approx(before)
        assert summary.bad_case_rate_before > 0  # the far frames were bad before
        assert np.all(out["dist_after"] <= out["dist_before"] + 1e-4)
    # The two avatars' indexes differ: alice's queries land elsewhere through bob's.
    x = predicted(person(0))
    _, through_bob = _project(stub, _request(x, avatar="bob"))
    assert through_bob["dist_before"].min() > 10 * indexes["alice"].threshold


def test_k_and_alpha_are_per_request(service):
    stub, _, indexes = service
    x = predicted(person(0))
    summary, out = _project(stub, _request(x, k=5, alpha=0.0))
    assert (summary.k, summary.alpha) == (5, 0.0)
    np.testing.assert_array_equal(out["lm3d"], x)  # alpha = 0: unchanged
    summary, out = _project(stub, _request(x, k=7, alpha=1.0))
    np.testing.assert_allclose(out["lm3d"], indexes["alice"].project(x, 7, 1.0).lm3d, atol=1e-6)
    _, half = _project(stub, _request(x, k=7, alpha=0.5))
    np.testing.assert_allclose(half["lm3d"], 0.5 * (x + out["lm3d"]), atol=1e-5)


def test_index_cache_hits_and_evicts_under_the_byte_bound(service):
    """Seen from outside: once carol's index is loaded, breaking its file in the store does
    not matter (a cache hit); loading dave evicts carol (two do not fit in 1 MiB), so the
    next carol request reads the broken file again and fails."""
    stub, store, _ = service
    carol = predicted(person(2))
    first, _ = _project(stub, _request(carol, avatar="carol"))
    key = f"avatars/carol/{first.avatar_version}/{PROJECTION_INDEX}"
    good = store.get(key)
    store.put(key, b"not the published bytes")
    try:
        again, _ = _project(stub, _request(carol, avatar="carol"))  # hit
        assert again.frames == first.frames
        _project(stub, _request(predicted(person(3)), avatar="dave"))  # evicts carol
        status, error = _rpc_error(stub, _request(carol, avatar="carol"))
        assert status == grpc.StatusCode.FAILED_PRECONDITION
        assert error.code == "AVATAR_BUNDLE_CORRUPT"
    finally:
        store.put(key, good)
    again, _ = _project(stub, _request(carol, avatar="carol"))
    assert again.avatar_version == first.avatar_version


def test_unknown_avatar_and_version_are_not_found(service):
    stub, store, _ = service
    x = predicted(person(0))
    status, error = _rpc_error(stub, _request(x, avatar="nobody"))
    assert status == grpc.StatusCode.NOT_FOUND and error.code == "AVATAR_NOT_FOUND"
    request = _request(x, version="v19990101T000000Z-000000")
    status, error = _rpc_error(stub, request)
    assert status == grpc.StatusCode.NOT_FOUND and error.code == "AVATAR_VERSION_NOT_FOUND"
    status, error = _rpc_error(stub, _request(x, avatar=""))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.code == "INVALID_REQUEST"
    # A version published without a projection index is not ready.
    store.publish_version("avatars/erin", {"postnet/config.json": b"{}"})
    status, error = _rpc_error(stub, _request(x, avatar="erin"))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and error.code == "AVATAR_NOT_READY"


@pytest.mark.parametrize(
    "options",
    [{"k": 0}, {"k": -3}, {"k": 100000}, {"alpha": 1.5}, {"alpha": -0.1}, {"alpha": float("nan")}],
)
def test_bad_options_are_invalid_argument(service, options):
    stub, _, _ = service
    status, error = _rpc_error(stub, _request(predicted(person(0)), **options))
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert error.code == "PROJECTION_INVALID_OPTIONS"
    assert ("k must" if "k" in options else "alpha must") in error.message


@pytest.mark.parametrize(
    ("lm3d", "code"),
    [
        (np.zeros((10, 68, 2), np.float32), "LANDMARKS_INVALID_SHAPE"),
        (np.zeros((10, 204), np.float32), "LANDMARKS_INVALID_SHAPE"),
        (np.zeros((0, 68, 3), np.float32), "LANDMARKS_INVALID_SHAPE"),
        (np.zeros((10, 68, 3), np.int32), "LANDMARKS_INVALID_SHAPE"),
        (np.full((10, 68, 3), np.nan, np.float32), "LANDMARKS_NON_FINITE"),
    ],
)
def test_badly_shaped_sequences_are_invalid_argument(service, lm3d, code):
    stub, _, _ = service
    status, error = _rpc_error(stub, _request(lm3d))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.code == code


def test_store_reference_in_and_stored_tensors_out(service):
    stub, store, _ = service
    x = predicted(person(1))
    buffer = io.BytesIO()
    np.save(buffer, x)
    ref = store.put("motion/test/lm3d.npy", buffer.getvalue())
    request = pb.ProjectRequest(
        avatar=common_pb2.AvatarRef(avatar_id="bob"),
        lm3d=common_pb2.TensorPayload(ref=common_pb2.ObjectRef(key=ref.key)),
        output=common_pb2.OUTPUT_MODE_STORE,
    )
    summary, stored = list(stub.Project(request, metadata=METADATA, timeout=120))
    refs = stored.stored.tensors
    assert set(refs) == {"lm3d", "dist_before", "dist_after", "bad"}
    saved = {name: np.load(io.BytesIO(store.get(r.key))) for name, r in refs.items()}
    _, streamed = _project(stub, _request(x, avatar="bob"))
    for name, array in streamed.items():
        assert saved[name].tobytes() == array.tobytes(), name
    assert summary.summary.frames == len(x)
    missing = _request(x, avatar="bob")
    missing.lm3d.ref.CopyFrom(common_pb2.ObjectRef(key="motion/none/lm3d.npy"))
    status, error = _rpc_error(stub, missing)
    assert status == grpc.StatusCode.NOT_FOUND and error.code == "STORE_OBJECT_NOT_FOUND"


# --- in-process ---------------------------------------------------------------------------


def test_bundle_round_trip(tmp_path):
    store = LocalStore(tmp_path / "store")
    index = ProjectionIndex.build(person(5, 300))
    version = publish_projection(store, "frank", index)
    loaded, got = load_projection(store, "frank")
    assert got == version
    for name, array in index.arrays().items():
        np.testing.assert_array_equal(loaded.arrays()[name], array)
    x = predicted(person(5, 300))
    np.testing.assert_array_equal(loaded.project(x).lm3d, index.project(x).lm3d)
    assert set(projection_files(index)) == {
        "projection/index.safetensors",
        "projection/config.json",
    }


def test_servicer_cache_counts_and_bound(tmp_path):
    settings = Settings.from_env(
        {"TALKINGFACE_STORE_DIR": str(tmp_path / "store"), "TALKINGFACE_PROJECTION_CACHE_MB": "1"}
    )
    servicer = LandmarkProjectionServicer(settings)
    for seed, name in enumerate(("a1", "a2")):
        publish_projection(servicer.store, name, ProjectionIndex.build(person(seed)))
    x = predicted(person(0))
    for avatar in ("a1", "a1", "a2", "a1"):
        list(servicer._project(_request(x, avatar=avatar)))
    cache = servicer.indexes
    assert (cache.hits, cache.misses, cache.evictions) == (1, 3, 2)
    cached = cache.keys()
    assert [key[0] for key in cached] == ["a1"]
    assert 0 < cache.nbytes <= cache.max_bytes
