"""The Renderer service through Ray Serve's gRPC ingress, on a tiny renderer trained once per
module and published to a local store: ranges that concatenate byte for byte, pose modes,
resizing, PNG/JPEG frames, an H.264 segment in the store, stable error codes; plus the
bundle loader in-process."""

import copy
import dataclasses
import io

import av
import grpc
import numpy as np
import pytest
import torch

from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, error_from_rpc
from talkingface.landmarks.bundle import avatar_index, projection_files
from talkingface.render import checkpoint as rck
from talkingface.render.bundle import RENDERER_FILES, load_renderer_bundle
from talkingface.render.condition import smooth_landmarks
from talkingface.render.config import preset
from talkingface.render.data import load_avatar
from talkingface.render.renderer import new_renderer
from talkingface.render.servicer import app
from talkingface.render.train import train
from talkingface.serving.ray_app import deploy
from talkingface.storage import LocalStore
from talkingface.tensors import to_tensor
from talkingface.v1 import common_pb2, renderer_pb2_grpc
from talkingface.v1 import renderer_pb2 as pb

pytestmark = pytest.mark.slow

APP = "renderer"
METADATA = (("application", APP),)
SIZE = 32
FRAMES = 12  # the test sequence: three batches of 4


@pytest.fixture(scope="module")
def avatar(tiny_avatar, tmp_path_factory):
    """(video, trained renderer, bundle files) of a `tiny` renderer trained for 10 steps."""
    torch.manual_seed(0)
    video = load_avatar(tiny_avatar, SIZE)
    config = preset("tiny", steps=10, batch_rays=256).with_backend("torch")
    renderer = new_renderer(config, video)
    train(renderer, video)
    directory = tmp_path_factory.mktemp("renderer") / rck.RENDERER_DIR
    rck.save_renderer(directory, renderer, video.R, video.t, video.background)
    files = {f"{rck.RENDERER_DIR}/{name}": directory / name for name in rck.FILES}
    files.update(projection_files(avatar_index(tiny_avatar)))
    return video, renderer, files


@pytest.fixture(scope="module")
def smoothing(avatar, tmp_path_factory):
    """(bundle files, renderer) of the same renderer with its landmark smoothing on
    (lm_smooth 1.5 frames) and its landmarks made louder (the condition x30, the landmark
    grid x1000): ten training steps leave a field that hardly sees its landmarks, and the
    test must see what smoothing does."""
    video, renderer, files = avatar
    field = copy.deepcopy(renderer.field)
    with torch.no_grad():
        field.condition[-1].weight.mul_(30.0)
        field.landmark_grid.table.mul_(1000.0)
    smoothed = dataclasses.replace(
        renderer, field=field, config=dataclasses.replace(renderer.config, lm_smooth=1.5)
    )
    directory = tmp_path_factory.mktemp("smoothed") / rck.RENDERER_DIR
    rck.save_renderer(directory, smoothed, video.R, video.t, video.background)
    out = {k: v for k, v in files.items() if not k.startswith(f"{rck.RENDERER_DIR}/")}
    out.update({f"{rck.RENDERER_DIR}/{name}": directory / name for name in rck.FILES})
    return out, smoothed


@pytest.fixture(scope="module")
def service(serve_grpc_port, avatar, smoothing, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render-service")
    settings = Settings.from_env(
        {
            "TALKINGFACE_STORE_DIR": str(tmp / "store"),
            "TALKINGFACE_CACHE_DIR": str(tmp / "cache"),
            "TALKINGFACE_DEVICE": "cpu",
            "TALKINGFACE_RENDERER_BATCH_FRAMES": "4",
        }
    )
    store = LocalStore(settings.store_dir)
    _, _, files = avatar
    store.publish_version("avatars/ann", files)
    store.publish_version("avatars/smooth", smoothing[0])
    # A version without a renderer: only the projection index.
    store.publish_version("avatars/bo", {k: v for k, v in files.items() if "projection/" in k})
    deploy(app(settings), APP)
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_grpc_port}")
    return renderer_pb2_grpc.RendererStub(channel), store


@pytest.fixture(scope="module")
def sequence(avatar):
    """A 12-frame lm3d sequence: the avatar's own val landmarks, slightly perturbed."""
    video, _, _ = avatar
    rng = np.random.default_rng(0)
    lm3d = video.lm3d[88 : 88 + FRAMES] + rng.normal(0, 0.002, (FRAMES, 68, 3))
    return lm3d.astype(np.float32)


def _request(lm3d, avatar="ann", start=0, end=0, **kwargs) -> pb.RenderRequest:
    return pb.RenderRequest(
        avatar=common_pb2.AvatarRef(avatar_id=avatar),
        lm3d=common_pb2.TensorPayload(inline=to_tensor(np.asarray(lm3d))),
        start_frame=start,
        end_frame=end,
        **kwargs,
    )


def _render(stub, request):
    responses = list(stub.Render(request, metadata=METADATA, timeout=300))
    assert responses[0].WhichOneof("item") == "summary"
    return responses[0].summary, [r.frame for r in responses[1:]]


def _rgb(frames) -> np.ndarray:
    return np.stack([np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3) for f in frames])


def _rpc_error(stub, request) -> tuple[grpc.StatusCode, TalkingFaceError]:
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Render(request, metadata=METADATA, timeout=300))
    return failed.value.code(), error_from_rpc(failed.value)


@pytest.fixture(scope="module")
def full(service, sequence):
    """The whole sequence in one request: (summary, RGB8 frames [12, 32, 32, 3])."""
    stub, _ = service
    summary, frames = _render(stub, _request(sequence))
    assert [f.index for f in frames] == list(range(FRAMES))
    return summary, _rgb(frames)


def test_ranges_rendered_apart_concatenate_to_the_whole(service, sequence, full):
    stub, _ = service
    _, whole = full
    parts = []
    for start, end in ((0, 5), (5, 12)):
        summary, frames = _render(stub, _request(sequence, start=start, end=end))
        assert summary.frames == end - start
        assert [f.index for f in frames] == list(range(start, end))
        parts.append(_rgb(frames))
    assert np.concatenate(parts).tobytes() == whole.tobytes()


def test_summary_and_frames_match_a_local_render(avatar, sequence, full):
    video, renderer, _ = avatar
    summary, whole = full
    assert (summary.frames, summary.width, summary.height) == (FRAMES, SIZE, SIZE)
    assert summary.fps == 25.0
    assert (summary.backend, summary.device) == ("torch", "cpu")
    poses = rck.pose_indices(FRAMES, len(video.R), "pingpong")
    local, _ = renderer.render(sequence, video.R[poses], video.t[poses], video.background)
    local = (local * 255).round().to(torch.uint8).numpy()
    assert np.abs(local.astype(int) - whole).max() <= 1
    assert whole.std() > 5  # a picture, not a flat colour


def test_a_smoothing_avatar_smooths_the_whole_sequence_before_its_batches(
    service, avatar, smoothing, sequence
):
    """An avatar with `lm_smooth` renders the request's landmarks smoothed over the whole
    sequence: frames equal a local render of the smoothed sequence, whatever range asks for
    them (batches of 4 cut the sequence; a frame's neighbours lie in the next batch)."""
    stub, _ = service
    video, _, _ = avatar
    _, renderer = smoothing
    _, frames = _render(stub, _request(sequence, avatar="smooth"))
    whole = _rgb(frames)
    poses = rck.pose_indices(FRAMES, len(video.R), "pingpong")

    def local(lm3d):
        out, _ = renderer.render(lm3d, video.R[poses], video.t[poses], video.background)
        return (out * 255).round().to(torch.uint8).numpy().astype(int)

    assert np.abs(local(smooth_landmarks(sequence, 1.5)) - whole).max() <= 1
    assert np.abs(local(sequence) - whole).max() > 1  # smoothing changed something
    parts = [_rgb(_render(stub, _request(sequence, avatar="smooth", start=a, end=b))[1])
             for a, b in ((0, 3), (3, 9), (9, 12))]  # fmt: skip
    assert np.concatenate(parts).tobytes() == whole.tobytes()


def test_pose_modes_replay_the_track_from_frame_zero(service, avatar, sequence):
    """Frames 100..103 of a 110-frame sequence over the 100-frame track: loop restarts at
    pose 0, ping-pong turns back at 99; both equal the same poses given explicitly."""
    video, _, _ = avatar
    assert len(video.R) == 100
    stub, _ = service
    lm3d = np.concatenate([sequence] * 10)[:110]
    explicit = {pb.POSE_MODE_LOOP: [0, 1, 2, 3], pb.POSE_MODE_PING_PONG: [98, 97, 96, 95]}
    rendered = {}
    for mode, poses in explicit.items():
        _, frames = _render(stub, _request(lm3d, start=100, end=104, pose_mode=mode))
        rendered[mode] = _rgb(frames)
        request = _request(lm3d, start=100, end=104, pose_mode=pb.POSE_MODE_EXPLICIT,
                           pose_indices=poses)  # fmt: skip
        _, frames = _render(stub, request)
        assert _rgb(frames).tobytes() == rendered[mode].tobytes()
    loop, pingpong = rendered[pb.POSE_MODE_LOOP], rendered[pb.POSE_MODE_PING_PONG]
    assert np.abs(loop.astype(int) - pingpong).max() > 10


def test_pose_start_moves_the_replay_along_the_track(service, sequence):
    """pose_start 90: frames 0..11 take poses 90..99, then 98, 97 (ping-pong turns back)."""
    stub, _ = service
    _, frames = _render(stub, _request(sequence, pose_start=90))
    poses = [*range(90, 100), 98, 97]
    request = _request(sequence, pose_mode=pb.POSE_MODE_EXPLICIT, pose_indices=poses)
    _, explicit = _render(stub, request)
    assert _rgb(frames).tobytes() == _rgb(explicit).tobytes()


def test_resolution_resizes(service, sequence, full):
    stub, _ = service
    _, whole = full
    summary, frames = _render(stub, _request(sequence, start=8, end=12, resolution=16))
    small = _rgb(frames)
    assert (summary.width, summary.height) == (16, 16) and small.shape == (4, 16, 16, 3)
    area = whole[8:12].reshape(4, 16, 2, 16, 2, 3).astype(float).mean((2, 4))
    assert np.abs(small - area).max() <= 1.5  # averaged before rounding, not after
    summary, frames = _render(stub, _request(sequence, start=8, end=12, resolution=48))
    assert (summary.width, frames[0].width, frames[0].height) == (48, 48, 48)
    assert _rgb(frames).shape == (4, 48, 48, 3)


def _decode(codec: str, data: bytes) -> np.ndarray:
    context = av.CodecContext.create(codec, "r")
    (frame,) = context.decode(av.Packet(data))
    return frame.to_ndarray(format="rgb24")


def test_png_is_lossless_and_jpeg_close(service, sequence, full):
    stub, _ = service
    _, whole = full
    _, frames = _render(stub, _request(sequence, end=4, encoding=pb.FRAME_ENCODING_PNG))
    assert all(f.encoding == pb.FRAME_ENCODING_PNG and f.data[:4] == b"\x89PNG" for f in frames)
    png = np.stack([_decode("png", f.data) for f in frames])
    assert png.tobytes() == whole[:4].tobytes()
    _, frames = _render(stub, _request(sequence, end=4, encoding=pb.FRAME_ENCODING_JPEG))
    assert all(f.data[:2] == b"\xff\xd8" for f in frames)
    jpeg = np.stack([_decode("mjpeg", f.data) for f in frames])
    assert np.abs(jpeg.astype(int) - whole[:4]).mean() < 6


def test_store_mode_writes_an_h264_segment(service, sequence, full):
    stub, store = service
    _, whole = full
    request = _request(sequence, start=4, end=12, output=common_pb2.OUTPUT_MODE_STORE)
    summary, segment = list(stub.Render(request, metadata=METADATA, timeout=300))
    assert summary.summary.frames == 8
    ref = segment.segment
    assert ref.key.startswith("render/") and ref.key.endswith("/segment_4_12.mp4")
    assert ref.content_type == "video/mp4" and ref.size == store.stat(ref.key).size
    with av.open(io.BytesIO(store.get(ref.key))) as container:
        (stream,) = container.streams
        assert stream.codec_context.name == "h264" and stream.average_rate == 25
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert decoded.shape == (8, SIZE, SIZE, 3)
    assert np.abs(decoded.astype(int) - whole[4:12]).mean() < 12
    # A caller's scratch prefix (the broker's work/<job_id>/segments).
    request.segment_prefix = "work/job1/segments"
    _, segment = list(stub.Render(request, metadata=METADATA, timeout=300))
    assert segment.segment.key.startswith("work/job1/segments/")
    assert segment.segment.key.endswith("-segment_4_12.mp4")
    assert store.get(segment.segment.key) == store.get(ref.key)  # the same frames, same bytes


def test_unknown_and_unready_avatars(service, sequence):
    stub, _ = service
    status, error = _rpc_error(stub, _request(sequence, avatar="nobody"))
    assert status == grpc.StatusCode.NOT_FOUND and error.code == "AVATAR_NOT_FOUND"
    status, error = _rpc_error(stub, _request(sequence, avatar="bo"))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and error.code == "AVATAR_NOT_READY"
    assert "renderer/model.safetensors" in error.message
    status, error = _rpc_error(stub, _request(sequence, avatar=""))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.code == "INVALID_REQUEST"


@pytest.mark.parametrize(("start", "end"), [(-1, 0), (0, 13), (5, 5), (6, 3), (12, 0)])
def test_invalid_ranges(service, sequence, start, end):
    stub, _ = service
    status, error = _rpc_error(stub, _request(sequence, start=start, end=end))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.code == "RENDER_INVALID_RANGE"


@pytest.mark.parametrize(
    ("lm3d", "options", "code"),
    [
        (np.zeros((10, 68, 2), np.float32), {}, "LANDMARKS_INVALID_SHAPE"),
        (np.zeros((0, 68, 3), np.float32), {}, "LANDMARKS_INVALID_SHAPE"),
        (np.zeros((10, 68, 3), np.int32), {}, "LANDMARKS_INVALID_SHAPE"),
        (np.full((10, 68, 3), np.nan, np.float32), {}, "LANDMARKS_NON_FINITE"),
        (None, {"resolution": 2048}, "INVALID_REQUEST"),
        (None, {"resolution": -1}, "INVALID_REQUEST"),
        (None, {"pose_mode": pb.POSE_MODE_EXPLICIT, "pose_indices": [0, 1]}, "INVALID_REQUEST"),
        (
            None,
            {"end": 2, "pose_mode": pb.POSE_MODE_EXPLICIT, "pose_indices": [0, 100]},
            "INVALID_REQUEST",
        ),
        (None, {"pose_indices": [0]}, "INVALID_REQUEST"),
        (None, {"pose_start": 100}, "INVALID_REQUEST"),  # the track has 100 frames
        (None, {"pose_start": -1}, "INVALID_REQUEST"),
        (
            None,
            {"pose_start": 1, "pose_mode": pb.POSE_MODE_EXPLICIT, "pose_indices": [0] * 12},
            "INVALID_REQUEST",
        ),
        (None, {"resolution": 33, "output": common_pb2.OUTPUT_MODE_STORE}, "INVALID_REQUEST"),
        (None, {"segment_prefix": "work/x"}, "INVALID_REQUEST"),  # frames are streamed
        (
            None,
            {"segment_prefix": "avatars/x", "output": common_pb2.OUTPUT_MODE_STORE},
            "STORE_KEY_INVALID",
        ),
        (
            None,
            {"segment_prefix": "work/../x", "output": common_pb2.OUTPUT_MODE_STORE},
            "STORE_KEY_INVALID",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(service, sequence, lm3d, options, code):
    stub, _ = service
    status, error = _rpc_error(stub, _request(sequence if lm3d is None else lm3d, **options))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and error.code == code


# --- in-process ---------------------------------------------------------------------------


def test_bundle_loader_fetches_checks_and_maps_corruption(avatar, tmp_path):
    video, renderer, files = avatar
    store = LocalStore(tmp_path / "store")
    version = store.publish_version("avatars/cy", files).version
    loaded, track, got = load_renderer_bundle(store, "cy", "", tmp_path / "cache", "cpu")
    assert got == version and loaded.field.backend == "torch"
    np.testing.assert_array_equal(track["R"], video.R)
    cached = tmp_path / "cache" / "avatars" / "cy" / version / "renderer"
    assert sorted(p.name for p in cached.iterdir()) == sorted(rck.FILES)
    for name, value in renderer.field.state_dict().items():
        assert torch.equal(loaded.field.state_dict()[name], value), name
    # A damaged cached copy is fetched again; a damaged published file is corrupt.
    (cached / rck.WEIGHTS).write_bytes(b"garbage")
    load_renderer_bundle(store, "cy", version, tmp_path / "cache", "cpu")
    assert (cached / rck.WEIGHTS).read_bytes() == files[RENDERER_FILES[0]].read_bytes()
    store.put(f"avatars/cy/{version}/{RENDERER_FILES[0]}", b"not the published bytes")
    (cached / rck.WEIGHTS).unlink()
    with pytest.raises(TalkingFaceError) as failed:
        load_renderer_bundle(store, "cy", version, tmp_path / "cache", "cpu")
    assert failed.value.code == "AVATAR_BUNDLE_CORRUPT"
