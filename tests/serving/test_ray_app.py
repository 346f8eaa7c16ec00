"""Servicer classes served through Ray Serve's gRPC ingress in a local Ray, over loopback."""

import grpc
import numpy as np
import pytest

from talkingface.errors import TalkingFaceError, abort, error_from_rpc
from talkingface.serving.info import InfoServicer
from talkingface.serving.ray_app import build_app, deploy
from talkingface.tensors import assemble, to_chunks
from talkingface.v1 import (
    audio_features_pb2,
    audio_features_pb2_grpc,
    common_pb2,
    info_pb2,
    info_pb2_grpc,
)

pytestmark = pytest.mark.slow


def _byte_tensor_servicer():
    """A servicer defined here (so Ray ships it by value) that exercises every RPC shape the
    adapter supports: it returns the audio bytes it received as a uint8 tensor."""

    class ByteEcho(audio_features_pb2_grpc.AudioFeaturesServicer):
        def _reply(self, data: bytes, context):
            if not data:
                abort(context, TalkingFaceError("AUDIO_EMPTY", "no audio bytes"))
            array = np.frombuffer(data, dtype=np.uint8)
            yield audio_features_pb2.ExtractFeaturesResponse(
                summary=audio_features_pb2.FeaturesSummary(frames=len(data))
            )
            for chunk in to_chunks("bytes", array, chunk_bytes=64 * 1024):
                yield audio_features_pb2.ExtractFeaturesResponse(chunk=chunk)

        def Extract(self, request, context):
            yield from self._reply(request.audio.data, context)

        def ExtractUpload(self, request_iterator, context):
            parts = [r.chunk.data for r in request_iterator if r.HasField("chunk")]
            yield from self._reply(b"".join(parts), context)

    return ByteEcho


@pytest.fixture(scope="module")
def serve_port(serve_grpc_port):
    deploy(build_app(InfoServicer, info_pb2, "Info", "trivial", device="cpu"), "info")
    deploy(build_app(_byte_tensor_servicer(), audio_features_pb2, "AudioFeatures"), "echo")
    return serve_grpc_port


def test_unary_call_routed_by_application_metadata(serve_port):
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_port}")
    stub = info_pb2_grpc.InfoStub(channel)
    reply = stub.GetInfo(info_pb2.GetInfoRequest(), metadata=(("application", "info"),), timeout=60)
    assert reply.service == "trivial" and reply.ready
    with pytest.raises(grpc.RpcError) as unknown:
        stub.GetInfo(info_pb2.GetInfoRequest(), metadata=(("application", "nope"),), timeout=60)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_streaming_chunks_larger_than_one_message(serve_port):
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_port}")
    stub = audio_features_pb2_grpc.AudioFeaturesStub(channel)
    payload = np.random.default_rng(0).integers(0, 255, 300_000, dtype=np.uint8).tobytes()
    request = audio_features_pb2.ExtractFeaturesRequest(
        audio=audio_features_pb2.AudioInput(data=payload)
    )
    responses = list(stub.Extract(request, metadata=(("application", "echo"),), timeout=60))
    assert responses[0].summary.frames == len(payload)
    chunks = [r.chunk for r in responses[1:]]
    assert len(chunks) == 5  # 300 000 bytes in 64 KiB pieces
    assert assemble(chunks)["bytes"].tobytes() == payload


def test_bidi_streaming_upload(serve_port):
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_port}")
    stub = audio_features_pb2_grpc.AudioFeaturesStub(channel)
    pieces = [bytes([i]) * 1000 for i in range(7)]

    def upload():
        yield audio_features_pb2.ExtractFeaturesUpload(
            header=audio_features_pb2.AudioUploadHeader(total_bytes=7000)
        )
        offset = 0
        for i, piece in enumerate(pieces):
            yield audio_features_pb2.ExtractFeaturesUpload(
                chunk=common_pb2.ByteChunk(offset=offset, data=piece, last=i == len(pieces) - 1)
            )
            offset += len(piece)

    responses = list(stub.ExtractUpload(upload(), metadata=(("application", "echo"),), timeout=60))
    assert responses[0].summary.frames == 7000
    assert assemble([r.chunk for r in responses[1:]])["bytes"].tobytes() == b"".join(pieces)


def test_abort_keeps_status_and_error_code(serve_port):
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_port}")
    stub = audio_features_pb2_grpc.AudioFeaturesStub(channel)
    request = audio_features_pb2.ExtractFeaturesRequest(audio=audio_features_pb2.AudioInput())
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Extract(request, metadata=(("application", "echo"),), timeout=60))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_from_rpc(failed.value).code == "AUDIO_EMPTY"
