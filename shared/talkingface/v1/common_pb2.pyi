from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]

class OutputMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_MODE_UNSPECIFIED: _ClassVar[OutputMode]
    OUTPUT_MODE_STREAM: _ClassVar[OutputMode]
    OUTPUT_MODE_STORE: _ClassVar[OutputMode]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    INVALID_REQUEST: _ClassVar[ErrorCode]
    PAYLOAD_TOO_LARGE: _ClassVar[ErrorCode]
    NOT_FOUND: _ClassVar[ErrorCode]
    ALREADY_EXISTS: _ClassVar[ErrorCode]
    PERMISSION_DENIED: _ClassVar[ErrorCode]
    UNAUTHENTICATED: _ClassVar[ErrorCode]
    CANCELLED: _ClassVar[ErrorCode]
    DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    UNAVAILABLE: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    NOT_AVAILABLE_YET: _ClassVar[ErrorCode]
    OVERLOADED: _ClassVar[ErrorCode]
    QUOTA_EXCEEDED: _ClassVar[ErrorCode]
    RATE_LIMITED: _ClassVar[ErrorCode]
    AUDIO_EMPTY: _ClassVar[ErrorCode]
    AUDIO_CORRUPT: _ClassVar[ErrorCode]
    AUDIO_UNSUPPORTED_CODEC: _ClassVar[ErrorCode]
    AUDIO_TOO_LONG: _ClassVar[ErrorCode]
    AUDIO_NON_FINITE: _ClassVar[ErrorCode]
    LANDMARKS_INVALID_SHAPE: _ClassVar[ErrorCode]
    LANDMARKS_NON_FINITE: _ClassVar[ErrorCode]
    PROJECTION_INVALID_OPTIONS: _ClassVar[ErrorCode]
    AVATAR_NOT_FOUND: _ClassVar[ErrorCode]
    AVATAR_VERSION_NOT_FOUND: _ClassVar[ErrorCode]
    AVATAR_BUNDLE_CORRUPT: _ClassVar[ErrorCode]
    AVATAR_NOT_READY: _ClassVar[ErrorCode]
    RENDER_INVALID_RANGE: _ClassVar[ErrorCode]
    VIDEO_NO_FACE: _ClassVar[ErrorCode]
    VIDEO_CORRUPT: _ClassVar[ErrorCode]
    VIDEO_NO_VIDEO_STREAM: _ClassVar[ErrorCode]
    VIDEO_TOO_LONG: _ClassVar[ErrorCode]
    VIDEO_NO_AUDIO: _ClassVar[ErrorCode]
    VIDEO_TOO_SHORT: _ClassVar[ErrorCode]
    VIDEO_MULTIPLE_FACES: _ClassVar[ErrorCode]
    VIDEO_FACE_TOO_SMALL: _ClassVar[ErrorCode]
    VIDEO_EXTREME_POSE: _ClassVar[ErrorCode]
    VIDEO_FROZEN: _ClassVar[ErrorCode]
    JOB_NOT_FOUND: _ClassVar[ErrorCode]
    JOB_ALREADY_FINISHED: _ClassVar[ErrorCode]
    JOB_RETRIES_EXHAUSTED: _ClassVar[ErrorCode]
    JOB_INPUT_CRASHED: _ClassVar[ErrorCode]
    STORE_KEY_INVALID: _ClassVar[ErrorCode]
    STORE_OBJECT_NOT_FOUND: _ClassVar[ErrorCode]
    STORE_INTEGRITY: _ClassVar[ErrorCode]
    STORE_UNAVAILABLE: _ClassVar[ErrorCode]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_UINT8: DType
DTYPE_BOOL: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT64: DType
OUTPUT_MODE_UNSPECIFIED: OutputMode
OUTPUT_MODE_STREAM: OutputMode
OUTPUT_MODE_STORE: OutputMode
ERROR_CODE_UNSPECIFIED: ErrorCode
INVALID_REQUEST: ErrorCode
PAYLOAD_TOO_LARGE: ErrorCode
NOT_FOUND: ErrorCode
ALREADY_EXISTS: ErrorCode
PERMISSION_DENIED: ErrorCode
UNAUTHENTICATED: ErrorCode
CANCELLED: ErrorCode
DEADLINE_EXCEEDED: ErrorCode
UNAVAILABLE: ErrorCode
INTERNAL: ErrorCode
NOT_AVAILABLE_YET: ErrorCode
OVERLOADED: ErrorCode
QUOTA_EXCEEDED: ErrorCode
RATE_LIMITED: ErrorCode
AUDIO_EMPTY: ErrorCode
AUDIO_CORRUPT: ErrorCode
AUDIO_UNSUPPORTED_CODEC: ErrorCode
AUDIO_TOO_LONG: ErrorCode
AUDIO_NON_FINITE: ErrorCode
LANDMARKS_INVALID_SHAPE: ErrorCode
LANDMARKS_NON_FINITE: ErrorCode
PROJECTION_INVALID_OPTIONS: ErrorCode
AVATAR_NOT_FOUND: ErrorCode
AVATAR_VERSION_NOT_FOUND: ErrorCode
AVATAR_BUNDLE_CORRUPT: ErrorCode
AVATAR_NOT_READY: ErrorCode
RENDER_INVALID_RANGE: ErrorCode
VIDEO_NO_FACE: ErrorCode
VIDEO_CORRUPT: ErrorCode
VIDEO_NO_VIDEO_STREAM: ErrorCode
VIDEO_TOO_LONG: ErrorCode
VIDEO_NO_AUDIO: ErrorCode
VIDEO_TOO_SHORT: ErrorCode
VIDEO_MULTIPLE_FACES: ErrorCode
VIDEO_FACE_TOO_SMALL: ErrorCode
VIDEO_EXTREME_POSE: ErrorCode
VIDEO_FROZEN: ErrorCode
JOB_NOT_FOUND: ErrorCode
JOB_ALREADY_FINISHED: ErrorCode
JOB_RETRIES_EXHAUSTED: ErrorCode
JOB_INPUT_CRASHED: ErrorCode
STORE_KEY_INVALID: ErrorCode
STORE_OBJECT_NOT_FOUND: ErrorCode
STORE_INTEGRITY: ErrorCode
STORE_UNAVAILABLE: ErrorCode

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorHeader(_message.Message):
    __slots__ = ("name", "dtype", "shape", "total_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    total_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "header", "offset", "data", "last")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    name: str
    header: TensorHeader
    offset: int
    data: bytes
    last: bool
    def __init__(self, name: _Optional[str] = ..., header: _Optional[_Union[TensorHeader, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class ByteChunk(_message.Message):
    __slots__ = ("offset", "data", "last")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    last: bool
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("key", "size", "sha256", "content_type")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    sha256: str
    content_type: str
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class TensorPayload(_message.Message):
    __slots__ = ("inline", "ref")
    INLINE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    inline: Tensor
    ref: ObjectRef
    def __init__(self, inline: _Optional[_Union[Tensor, _Mapping]] = ..., ref: _Optional[_Union[ObjectRef, _Mapping]] = ...) -> None: ...

class AvatarRef(_message.Message):
    __slots__ = ("avatar_id", "version")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    version: str
    def __init__(self, avatar_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
