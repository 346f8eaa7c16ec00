from talkingface.v1 import audio_features_pb2 as _audio_features_pb2
from talkingface.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProjectRequest(_message.Message):
    __slots__ = ("avatar", "lm3d", "k", "alpha", "output")
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    LM3D_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    avatar: _common_pb2.AvatarRef
    lm3d: _common_pb2.TensorPayload
    k: int
    alpha: float
    output: _common_pb2.OutputMode
    def __init__(self, avatar: _Optional[_Union[_common_pb2.AvatarRef, _Mapping]] = ..., lm3d: _Optional[_Union[_common_pb2.TensorPayload, _Mapping]] = ..., k: _Optional[int] = ..., alpha: _Optional[float] = ..., output: _Optional[_Union[_common_pb2.OutputMode, str]] = ...) -> None: ...

class ProjectionSummary(_message.Message):
    __slots__ = ("frames", "k", "alpha", "bad_case_rate", "bad_case_threshold", "bad_case_rate_before", "avatar_version")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BAD_CASE_RATE_FIELD_NUMBER: _ClassVar[int]
    BAD_CASE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BAD_CASE_RATE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    AVATAR_VERSION_FIELD_NUMBER: _ClassVar[int]
    frames: int
    k: int
    alpha: float
    bad_case_rate: float
    bad_case_threshold: float
    bad_case_rate_before: float
    avatar_version: str
    def __init__(self, frames: _Optional[int] = ..., k: _Optional[int] = ..., alpha: _Optional[float] = ..., bad_case_rate: _Optional[float] = ..., bad_case_threshold: _Optional[float] = ..., bad_case_rate_before: _Optional[float] = ..., avatar_version: _Optional[str] = ...) -> None: ...

class ProjectResponse(_message.Message):
    __slots__ = ("summary", "chunk", "stored")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    summary: ProjectionSummary
    chunk: _common_pb2.TensorChunk
    stored: _audio_features_pb2.StoredTensors
    def __init__(self, summary: _Optional[_Union[ProjectionSummary, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ..., stored: _Optional[_Union[_audio_features_pb2.StoredTensors, _Mapping]] = ...) -> None: ...
