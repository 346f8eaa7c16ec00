"""A decode that crashes in native code costs one request a clean AUDIO_CORRUPT, never the
service: an AudioFeatures server whose decode task segfaults on a marked file (a stand-in for
a codec bug) answers that request with the code and goes on serving, over real gRPC."""

from __future__ import annotations

import io
import wave

import grpc
import numpy as np
import pytest

from talkingface.audio.servicer import AudioFeaturesServicer
from talkingface.config import Settings
from talkingface.errors import error_from_rpc
from talkingface.serving.server import ServiceServer, binding_for
from talkingface.v1 import audio_features_pb2 as pb
from talkingface.v1 import audio_features_pb2_grpc


class CrashProne(AudioFeaturesServicer):
    decode_task = "tests._sandbox_tasks:crash_on_marker"


@pytest.fixture
def server(tmp_path):
    settings = Settings.from_env({
        "TALKINGFACE_GRPC_HOST": "127.0.0.1", "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_HOST": "127.0.0.1", "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_STORE_DIR": str(tmp_path / "store"),
    })  # fmt: skip
    servicer = CrashProne(settings, lazy=True)
    binding = binding_for(
        servicer, audio_features_pb2_grpc.add_AudioFeaturesServicer_to_server, pb, "AudioFeatures"
    )
    srv = ServiceServer("audio_features_crash_test", [binding], settings, warmup=servicer.warm_up)
    srv.start()
    srv.warm_up()
    yield srv
    srv.stop(grace=1)


def _wav(seconds: float) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    pcm = np.round(0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()


def _extract(stub, data: bytes):
    request = pb.ExtractFeaturesRequest(audio=pb.AudioInput(data=data))
    return list(stub.Extract(request, timeout=60))


def test_a_crashing_decode_is_one_clean_error_and_the_service_goes_on(server):
    stub = audio_features_pb2_grpc.AudioFeaturesStub(
        grpc.insecure_channel(f"127.0.0.1:{server.port}")
    )
    assert _extract(stub, _wav(0.4))[0].summary.frames == 10
    for _ in range(2):  # the same poison twice: each time one clean error
        with pytest.raises(grpc.RpcError) as failed:
            _extract(stub, b"CRASH" + _wav(0.4))
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = error_from_rpc(failed.value)
        assert error.code == "AUDIO_CORRUPT" and "crashed" in error.message
        assert "SIGSEGV" in error.message and "Traceback" not in error.message
    assert _extract(stub, _wav(0.8))[0].summary.frames == 20  # still serving
