import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from talkingface.v1 import common_pb2 as _common_pb2
from talkingface.v1 import renderer_pb2 as _renderer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_RENDER: _ClassVar[JobKind]
    JOB_KIND_TRAIN_AVATAR: _ClassVar[JobKind]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_AUDIO_FEATURES: _ClassVar[Stage]
    STAGE_MOTION: _ClassVar[Stage]
    STAGE_LANDMARK_PROJECTION: _ClassVar[Stage]
    STAGE_RENDER: _ClassVar[Stage]
    STAGE_MUX: _ClassVar[Stage]
    STAGE_PREPROCESS: _ClassVar[Stage]
    STAGE_TRAIN: _ClassVar[Stage]
    STAGE_PUBLISH: _ClassVar[Stage]

class AvatarState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AVATAR_STATE_UNSPECIFIED: _ClassVar[AvatarState]
    AVATAR_STATE_TRAINING: _ClassVar[AvatarState]
    AVATAR_STATE_READY: _ClassVar[AvatarState]
    AVATAR_STATE_FAILED: _ClassVar[AvatarState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_RENDER: JobKind
JOB_KIND_TRAIN_AVATAR: JobKind
STAGE_UNSPECIFIED: Stage
STAGE_AUDIO_FEATURES: Stage
STAGE_MOTION: Stage
STAGE_LANDMARK_PROJECTION: Stage
STAGE_RENDER: Stage
STAGE_MUX: Stage
STAGE_PREPROCESS: Stage
STAGE_TRAIN: Stage
STAGE_PUBLISH: Stage
AVATAR_STATE_UNSPECIFIED: AvatarState
AVATAR_STATE_TRAINING: AvatarState
AVATAR_STATE_READY: AvatarState
AVATAR_STATE_FAILED: AvatarState

class UploadHeader(_message.Message):
    __slots__ = ("filename", "content_type", "total_bytes")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    filename: str
    content_type: str
    total_bytes: int
    def __init__(self, filename: _Optional[str] = ..., content_type: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: _common_pb2.ByteChunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.ByteChunk, _Mapping]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("upload_id", "size", "sha256")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    size: int
    sha256: str
    def __init__(self, upload_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class RenderOptions(_message.Message):
    __slots__ = ("k", "alpha", "temperature", "seed", "pose_mode", "resolution", "pose_start")
    K_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POSE_MODE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    POSE_START_FIELD_NUMBER: _ClassVar[int]
    k: int
    alpha: float
    temperature: float
    seed: int
    pose_mode: _renderer_pb2.PoseMode
    resolution: int
    pose_start: int
    def __init__(self, k: _Optional[int] = ..., alpha: _Optional[float] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., pose_mode: _Optional[_Union[_renderer_pb2.PoseMode, str]] = ..., resolution: _Optional[int] = ..., pose_start: _Optional[int] = ...) -> None: ...

class SubmitRenderRequest(_message.Message):
    __slots__ = ("avatar_id", "avatar_version", "inline_audio", "upload_id", "options", "idempotency_key", "callback_url")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    AVATAR_VERSION_FIELD_NUMBER: _ClassVar[int]
    INLINE_AUDIO_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    avatar_version: str
    inline_audio: bytes
    upload_id: str
    options: RenderOptions
    idempotency_key: str
    callback_url: str
    def __init__(self, avatar_id: _Optional[str] = ..., avatar_version: _Optional[str] = ..., inline_audio: _Optional[bytes] = ..., upload_id: _Optional[str] = ..., options: _Optional[_Union[RenderOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., callback_url: _Optional[str] = ...) -> None: ...

class RenderResult(_message.Message):
    __slots__ = ("video", "download_url", "duration_seconds", "frames", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_URL_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    video: _common_pb2.ObjectRef
    download_url: str
    duration_seconds: float
    frames: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, video: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., download_url: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., frames: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AvatarResult(_message.Message):
    __slots__ = ("avatar_id", "version", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    version: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, avatar_id: _Optional[str] = ..., version: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "stage", "progress", "error", "created_at", "updated_at", "idempotency_key", "attempt", "avatar_id", "render", "avatar", "callback_url", "webhook")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    RENDER_FIELD_NUMBER: _ClassVar[int]
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    state: JobState
    stage: Stage
    progress: float
    error: _common_pb2.ErrorDetail
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    attempt: int
    avatar_id: str
    render: RenderResult
    avatar: AvatarResult
    callback_url: str
    webhook: WebhookDelivery
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., progress: _Optional[float] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., attempt: _Optional[int] = ..., avatar_id: _Optional[str] = ..., render: _Optional[_Union[RenderResult, _Mapping]] = ..., avatar: _Optional[_Union[AvatarResult, _Mapping]] = ..., callback_url: _Optional[str] = ..., webhook: _Optional[_Union[WebhookDelivery, _Mapping]] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("state", "attempts", "last_status", "last_attempt_at", "delivered_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    state: str
    attempts: int
    last_status: str
    last_attempt_at: _timestamp_pb2.Timestamp
    delivered_at: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[str] = ..., attempts: _Optional[int] = ..., last_status: _Optional[str] = ..., last_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("job_id", "state", "cancelled", "objects_deleted")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    cancelled: bool
    objects_deleted: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., cancelled: _Optional[bool] = ..., objects_deleted: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AvatarVersion(_message.Message):
    __slots__ = ("version", "created_at", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    version: str
    created_at: _timestamp_pb2.Timestamp
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Avatar(_message.Message):
    __slots__ = ("avatar_id", "display_name", "state", "latest_version", "versions", "created_at")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    display_name: str
    state: AvatarState
    latest_version: str
    versions: _containers.RepeatedCompositeFieldContainer[AvatarVersion]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, avatar_id: _Optional[str] = ..., display_name: _Optional[str] = ..., state: _Optional[_Union[AvatarState, str]] = ..., latest_version: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[AvatarVersion, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAvatarRequest(_message.Message):
    __slots__ = ("display_name", "video_upload_id", "synthtalk_upload_id", "bundle_upload_id", "preset", "idempotency_key", "callback_url")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    VIDEO_UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SYNTHTALK_UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    video_upload_id: str
    synthtalk_upload_id: str
    bundle_upload_id: str
    preset: str
    idempotency_key: str
    callback_url: str
    def __init__(self, display_name: _Optional[str] = ..., video_upload_id: _Optional[str] = ..., synthtalk_upload_id: _Optional[str] = ..., bundle_upload_id: _Optional[str] = ..., preset: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., callback_url: _Optional[str] = ...) -> None: ...

class ListAvatarsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAvatarsResponse(_message.Message):
    __slots__ = ("avatars", "next_page_token")
    AVATARS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    avatars: _containers.RepeatedCompositeFieldContainer[Avatar]
    next_page_token: str
    def __init__(self, avatars: _Optional[_Iterable[_Union[Avatar, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class DeleteAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class DeleteAvatarResponse(_message.Message):
    __slots__ = ("avatar_id", "versions_deleted")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    versions_deleted: int
    def __init__(self, avatar_id: _Optional[str] = ..., versions_deleted: _Optional[int] = ...) -> None: ...
