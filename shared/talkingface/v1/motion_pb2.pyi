from talkingface.v1 import audio_features_pb2 as _audio_features_pb2
from talkingface.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateMotionRequest(_message.Message):
    __slots__ = ("features", "f0_bins", "avatar", "temperature", "seed", "output")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    F0_BINS_FIELD_NUMBER: _ClassVar[int]
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    features: _common_pb2.TensorPayload
    f0_bins: _common_pb2.TensorPayload
    avatar: _common_pb2.AvatarRef
    temperature: float
    seed: int
    output: _common_pb2.OutputMode
    def __init__(self, features: _Optional[_Union[_common_pb2.TensorPayload, _Mapping]] = ..., f0_bins: _Optional[_Union[_common_pb2.TensorPayload, _Mapping]] = ..., avatar: _Optional[_Union[_common_pb2.AvatarRef, _Mapping]] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., output: _Optional[_Union[_common_pb2.OutputMode, str]] = ...) -> None: ...

class MotionSummary(_message.Message):
    __slots__ = ("frames", "fps", "postnet_applied", "model_version")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    POSTNET_APPLIED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    frames: int
    fps: float
    postnet_applied: bool
    model_version: str
    def __init__(self, frames: _Optional[int] = ..., fps: _Optional[float] = ..., postnet_applied: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class GenerateMotionResponse(_message.Message):
    __slots__ = ("summary", "chunk", "stored")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    summary: MotionSummary
    chunk: _common_pb2.TensorChunk
    stored: _audio_features_pb2.StoredTensors
    def __init__(self, summary: _Optional[_Union[MotionSummary, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ..., stored: _Optional[_Union[_audio_features_pb2.StoredTensors, _Mapping]] = ...) -> None: ...
