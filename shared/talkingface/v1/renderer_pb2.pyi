from talkingface.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoseMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POSE_MODE_UNSPECIFIED: _ClassVar[PoseMode]
    POSE_MODE_LOOP: _ClassVar[PoseMode]
    POSE_MODE_PING_PONG: _ClassVar[PoseMode]
    POSE_MODE_EXPLICIT: _ClassVar[PoseMode]

class FrameEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_ENCODING_UNSPECIFIED: _ClassVar[FrameEncoding]
    FRAME_ENCODING_RGB8: _ClassVar[FrameEncoding]
    FRAME_ENCODING_PNG: _ClassVar[FrameEncoding]
    FRAME_ENCODING_JPEG: _ClassVar[FrameEncoding]
POSE_MODE_UNSPECIFIED: PoseMode
POSE_MODE_LOOP: PoseMode
POSE_MODE_PING_PONG: PoseMode
POSE_MODE_EXPLICIT: PoseMode
FRAME_ENCODING_UNSPECIFIED: FrameEncoding
FRAME_ENCODING_RGB8: FrameEncoding
FRAME_ENCODING_PNG: FrameEncoding
FRAME_ENCODING_JPEG: FrameEncoding

class RenderRequest(_message.Message):
    __slots__ = ("avatar", "lm3d", "start_frame", "end_frame", "pose_mode", "pose_indices", "resolution", "encoding", "output", "segment_prefix", "pose_start")
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    LM3D_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FRAME_FIELD_NUMBER: _ClassVar[int]
    POSE_MODE_FIELD_NUMBER: _ClassVar[int]
    POSE_INDICES_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    POSE_START_FIELD_NUMBER: _ClassVar[int]
    avatar: _common_pb2.AvatarRef
    lm3d: _common_pb2.TensorPayload
    start_frame: int
    end_frame: int
    pose_mode: PoseMode
    pose_indices: _containers.RepeatedScalarFieldContainer[int]
    resolution: int
    encoding: FrameEncoding
    output: _common_pb2.OutputMode
    segment_prefix: str
    pose_start: int
    def __init__(self, avatar: _Optional[_Union[_common_pb2.AvatarRef, _Mapping]] = ..., lm3d: _Optional[_Union[_common_pb2.TensorPayload, _Mapping]] = ..., start_frame: _Optional[int] = ..., end_frame: _Optional[int] = ..., pose_mode: _Optional[_Union[PoseMode, str]] = ..., pose_indices: _Optional[_Iterable[int]] = ..., resolution: _Optional[int] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., output: _Optional[_Union[_common_pb2.OutputMode, str]] = ..., segment_prefix: _Optional[str] = ..., pose_start: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("index", "width", "height", "encoding", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    width: int
    height: int
    encoding: FrameEncoding
    data: bytes
    def __init__(self, index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RenderSummary(_message.Message):
    __slots__ = ("frames", "width", "height", "fps", "backend", "device")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    frames: int
    width: int
    height: int
    fps: float
    backend: str
    device: str
    def __init__(self, frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class RenderResponse(_message.Message):
    __slots__ = ("summary", "frame", "segment")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    summary: RenderSummary
    frame: Frame
    segment: _common_pb2.ObjectRef
    def __init__(self, summary: _Optional[_Union[RenderSummary, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., segment: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...
