from talkingface.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_KIND_UNSPECIFIED: _ClassVar[FeatureKind]
    FEATURE_KIND_HUBERT: _ClassVar[FeatureKind]
    FEATURE_KIND_LOGMEL: _ClassVar[FeatureKind]

class PitchMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PITCH_METHOD_UNSPECIFIED: _ClassVar[PitchMethod]
    PITCH_METHOD_DIO: _ClassVar[PitchMethod]
    PITCH_METHOD_HARVEST: _ClassVar[PitchMethod]
FEATURE_KIND_UNSPECIFIED: FeatureKind
FEATURE_KIND_HUBERT: FeatureKind
FEATURE_KIND_LOGMEL: FeatureKind
PITCH_METHOD_UNSPECIFIED: PitchMethod
PITCH_METHOD_DIO: PitchMethod
PITCH_METHOD_HARVEST: PitchMethod

class FeatureOptions(_message.Message):
    __slots__ = ("kind", "pitch_method", "output")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PITCH_METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    kind: FeatureKind
    pitch_method: PitchMethod
    output: _common_pb2.OutputMode
    def __init__(self, kind: _Optional[_Union[FeatureKind, str]] = ..., pitch_method: _Optional[_Union[PitchMethod, str]] = ..., output: _Optional[_Union[_common_pb2.OutputMode, str]] = ...) -> None: ...

class AudioInput(_message.Message):
    __slots__ = ("data", "ref", "filename_hint")
    DATA_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    FILENAME_HINT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    ref: _common_pb2.ObjectRef
    filename_hint: str
    def __init__(self, data: _Optional[bytes] = ..., ref: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., filename_hint: _Optional[str] = ...) -> None: ...

class ExtractFeaturesRequest(_message.Message):
    __slots__ = ("audio", "options")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    audio: AudioInput
    options: FeatureOptions
    def __init__(self, audio: _Optional[_Union[AudioInput, _Mapping]] = ..., options: _Optional[_Union[FeatureOptions, _Mapping]] = ...) -> None: ...

class AudioUploadHeader(_message.Message):
    __slots__ = ("options", "filename_hint", "total_bytes")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FILENAME_HINT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    options: FeatureOptions
    filename_hint: str
    total_bytes: int
    def __init__(self, options: _Optional[_Union[FeatureOptions, _Mapping]] = ..., filename_hint: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ExtractFeaturesUpload(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AudioUploadHeader
    chunk: _common_pb2.ByteChunk
    def __init__(self, header: _Optional[_Union[AudioUploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.ByteChunk, _Mapping]] = ...) -> None: ...

class FeaturesSummary(_message.Message):
    __slots__ = ("frames", "fps", "feature_dim", "feature_kind", "duration_seconds", "silent", "voiced_fraction")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    FEATURE_KIND_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SILENT_FIELD_NUMBER: _ClassVar[int]
    VOICED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    frames: int
    fps: float
    feature_dim: int
    feature_kind: FeatureKind
    duration_seconds: float
    silent: bool
    voiced_fraction: float
    def __init__(self, frames: _Optional[int] = ..., fps: _Optional[float] = ..., feature_dim: _Optional[int] = ..., feature_kind: _Optional[_Union[FeatureKind, str]] = ..., duration_seconds: _Optional[float] = ..., silent: _Optional[bool] = ..., voiced_fraction: _Optional[float] = ...) -> None: ...

class StoredTensors(_message.Message):
    __slots__ = ("tensors",)
    class TensorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.ObjectRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.MessageMap[str, _common_pb2.ObjectRef]
    def __init__(self, tensors: _Optional[_Mapping[str, _common_pb2.ObjectRef]] = ...) -> None: ...

class ExtractFeaturesResponse(_message.Message):
    __slots__ = ("summary", "chunk", "stored")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    summary: FeaturesSummary
    chunk: _common_pb2.TensorChunk
    stored: StoredTensors
    def __init__(self, summary: _Optional[_Union[FeaturesSummary, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ..., stored: _Optional[_Union[StoredTensors, _Mapping]] = ...) -> None: ...
