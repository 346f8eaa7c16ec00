"""Errors and streaming RPCs through a standalone ServiceServer, in process, over loopback."""

import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from talkingface.config import Settings
from talkingface.errors import ERROR_CODE_METADATA_KEY, TalkingFaceError, abort, error_from_rpc
from talkingface.serving.server import ServiceServer, binding_for
from talkingface.tensors import assemble, to_chunks
from talkingface.v1 import audio_features_pb2, audio_features_pb2_grpc


class RejectsEmptyAudio(audio_features_pb2_grpc.AudioFeaturesServicer):
    """Streams the audio bytes back as a uint8 tensor; empty audio is AUDIO_EMPTY."""

    def Extract(self, request, context):
        if not request.audio.data:
            abort(context, TalkingFaceError("AUDIO_EMPTY", "the upload has no bytes"))
        for chunk in to_chunks("bytes", np.frombuffer(request.audio.data, np.uint8), 1000):
            yield audio_features_pb2.ExtractFeaturesResponse(chunk=chunk)


@pytest.fixture
def server():
    settings = Settings.from_env(
        {
            "TALKINGFACE_GRPC_HOST": "127.0.0.1",
            "TALKINGFACE_GRPC_PORT": "0",
            "TALKINGFACE_METRICS_HOST": "127.0.0.1",
            "TALKINGFACE_METRICS_PORT": "0",
        }
    )
    binding = binding_for(
        RejectsEmptyAudio(),
        audio_features_pb2_grpc.add_AudioFeaturesServicer_to_server,
        audio_features_pb2,
        "AudioFeatures",
    )
    srv = ServiceServer("audio_features_test", [binding], settings)
    srv.start()
    srv.warm_up()
    yield srv
    srv.stop(grace=1)


def _handled(metrics_port: int, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    return sum(
        s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == "talkingface_grpc_server_handled_total" and labels.items() <= s.labels.items()
    )


def test_streamed_chunks_and_error_codes(server):
    stub = audio_features_pb2_grpc.AudioFeaturesStub(
        grpc.insecure_channel(f"127.0.0.1:{server.port}")
    )
    labels = {"grpc_service": "talkingface.v1.AudioFeatures", "grpc_method": "Extract"}
    ok_before = _handled(server.metrics_port, grpc_code="OK", **labels)
    bad_before = _handled(server.metrics_port, grpc_code="INVALID_ARGUMENT", **labels)

    payload = bytes(range(256)) * 10
    request = audio_features_pb2.ExtractFeaturesRequest(
        audio=audio_features_pb2.AudioInput(data=payload)
    )
    responses = list(stub.Extract(request, timeout=10))
    assert len(responses) == 3
    assert assemble(r.chunk for r in responses)["bytes"].tobytes() == payload

    empty = audio_features_pb2.ExtractFeaturesRequest(audio=audio_features_pb2.AudioInput())
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Extract(empty, timeout=10))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details() == "AUDIO_EMPTY: the upload has no bytes"
    assert (ERROR_CODE_METADATA_KEY, "AUDIO_EMPTY") in tuple(failed.value.trailing_metadata())
    recovered = error_from_rpc(failed.value)
    assert (recovered.code, recovered.message) == ("AUDIO_EMPTY", "the upload has no bytes")

    stream_labels = {**labels, "grpc_type": "server_stream"}
    assert _handled(server.metrics_port, grpc_code="OK", **stream_labels) == ok_before + 1
    assert (
        _handled(server.metrics_port, grpc_code="INVALID_ARGUMENT", **stream_labels)
        == bad_before + 1
    )


def test_unimplemented_methods_answer_unimplemented(server):
    stub = audio_features_pb2_grpc.AudioFeaturesStub(
        grpc.insecure_channel(f"127.0.0.1:{server.port}")
    )
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.ExtractUpload(iter([]), timeout=10))
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_method_handler_is_wrapped_once_and_rebuilt_when_it_changes():
    from talkingface.serving.interceptors import Rewrapper

    built = []

    def wrap(behaviour):
        built.append(behaviour)
        return lambda request, context: ("wrapped", behaviour(request, context))

    rewrap = Rewrapper()
    first = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    a = rewrap("/s/M", first, wrap)
    assert rewrap("/s/M", first, wrap) is a and len(built) == 1
    assert a.unary_unary("x", None) == ("wrapped", "x")
    other = grpc.unary_unary_rpc_method_handler(lambda request, context: request * 2)
    b = rewrap("/s/M", other, wrap)  # a new inner handler: wrapped anew
    assert b is not a and b.unary_unary("x", None) == ("wrapped", "xx") and len(built) == 2
    assert rewrap("/s/N", first, wrap) is not a  # per method
