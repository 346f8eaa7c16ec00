"""The AudioFeatures service through Ray Serve's gRPC ingress: chunked 2-minute upload,
object-store in/out, and a corrupt file failing with its stable code."""

import io
import wave

import grpc
import numpy as np
import pytest
from scipy.signal import resample_poly

from talkingface.audio.servicer import app
from talkingface.config import Settings
from talkingface.data.synthtalk.sentences import sentence
from talkingface.data.synthtalk.speech import random_voice, synthesize
from talkingface.errors import error_from_rpc
from talkingface.serving.ray_app import deploy
from talkingface.storage import LocalStore
from talkingface.tensors import assemble
from talkingface.v1 import audio_features_pb2 as pb
from talkingface.v1 import audio_features_pb2_grpc, common_pb2

pytestmark = pytest.mark.slow
APP = "audio_features"
METADATA = (("application", APP),)
CHUNK = 1 << 20


def _two_minutes_of_speech() -> np.ndarray:
    rng = np.random.default_rng(0)
    voice = random_voice(rng, "en-us", "female")
    pieces, total = [], 0
    while total < 120 * 16000:
        audio = synthesize(sentence(rng, "en-us"), voice).audio
        pieces.append(audio)
        total += len(audio)
    return np.concatenate(pieces)[: 120 * 16000]


def _wav_44k_stereo(audio16k: np.ndarray) -> bytes:
    audio = resample_poly(audio16k, 441, 160)
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(44100)
        handle.writeframes(np.repeat(pcm, 2).tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(serve_grpc_port, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("store")
    settings = Settings.from_env({"TALKINGFACE_STORE_DIR": str(store_dir)})
    deploy(app(settings), APP)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{serve_grpc_port}",
        options=[("grpc.max_receive_message_length", 8 << 20)],
    )
    return audio_features_pb2_grpc.AudioFeaturesStub(channel), LocalStore(store_dir)


def _upload(data: bytes):
    yield pb.ExtractFeaturesUpload(
        header=pb.AudioUploadHeader(filename_hint="speech.wav", total_bytes=len(data))
    )
    for offset in range(0, len(data), CHUNK):
        piece = data[offset : offset + CHUNK]
        yield pb.ExtractFeaturesUpload(
            chunk=common_pb2.ByteChunk(offset=offset, data=piece, last=offset + CHUNK >= len(data))
        )


def test_two_minute_upload_in_chunks(service):
    stub, _ = service
    data = _wav_44k_stereo(_two_minutes_of_speech())
    assert len(data) > 5 * CHUNK  # more than one message could carry
    responses = list(stub.ExtractUpload(_upload(data), metadata=METADATA, timeout=300))
    summary = responses[0].summary
    assert abs(summary.frames - 120 * 25) <= 1
    assert summary.feature_kind == pb.FEATURE_KIND_LOGMEL and not summary.silent
    arrays = assemble(r.chunk for r in responses[1:])
    assert arrays["features"].shape == (summary.frames, summary.feature_dim)
    for name in ("f0", "f0_bins", "voiced", "loudness_db"):
        assert arrays[name].shape == (summary.frames,)
    assert 150 < np.median(arrays["f0"][arrays["voiced"]]) < 400  # a female espeak voice
    assert 0.2 < summary.voiced_fraction < 0.95


def test_store_reference_in_and_stored_tensors_out(service):
    stub, store = service
    audio = synthesize("a papa bob", random_voice(np.random.default_rng(1), "de")).audio
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(np.round(audio * 32767).astype("<i2").tobytes())
    info = store.put("uploads/test/speech.wav", buffer.getvalue())
    request = pb.ExtractFeaturesRequest(
        audio=pb.AudioInput(ref=common_pb2.ObjectRef(key=info.key)),
        options=pb.FeatureOptions(output=common_pb2.OUTPUT_MODE_STORE),
    )
    summary, stored = list(stub.Extract(request, metadata=METADATA, timeout=120))
    refs = stored.stored.tensors
    assert set(refs) == {"features", "f0", "f0_bins", "voiced", "loudness_db"}
    features = np.load(io.BytesIO(store.get(refs["features"].key)))
    assert features.shape[0] == summary.summary.frames == round(len(audio) / 640)


def test_corrupt_audio_is_invalid_argument_with_its_code(service):
    stub, _ = service
    junk = np.random.default_rng(2).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    request = pb.ExtractFeaturesRequest(audio=pb.AudioInput(data=junk))
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Extract(request, metadata=METADATA, timeout=60))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_from_rpc(failed.value).code == "AUDIO_CORRUPT"


def test_missing_reference_is_not_found(service):
    stub, _ = service
    request = pb.ExtractFeaturesRequest(
        audio=pb.AudioInput(ref=common_pb2.ObjectRef(key="uploads/none/missing.wav"))
    )
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Extract(request, metadata=METADATA, timeout=60))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_from_rpc(failed.value).code == "STORE_OBJECT_NOT_FOUND"


def test_a_many_channel_file_and_the_next_request_on_the_same_replica(service):
    # An 8-channel 96 kHz 16-bit WAV once killed the replica (issue 14); now it is features,
    # and the replica answers the next request.
    from tests.audio._layouts import plain_wav

    stub, _ = service
    for channels in (8, 16, 1):
        request = pb.ExtractFeaturesRequest(audio=pb.AudioInput(data=plain_wav(channels, 96000)))
        summary = next(iter(stub.Extract(request, metadata=METADATA, timeout=120))).summary
        assert summary.frames == 6 and summary.duration_seconds == pytest.approx(0.25)
