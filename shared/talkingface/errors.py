"""Stable error codes (talkingface.v1.ErrorCode) and their mapping to gRPC status codes.

A TalkingFaceError carries a code and a human message. Servers turn it into a gRPC status
whose details read "<CODE_NAME>: <message>" and whose trailing metadata carries the code name
under `talkingface-error-code`; clients turn an RpcError back into a TalkingFaceError with
`error_from_rpc`. The table below must name every ErrorCode (a test enforces it).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from talkingface.v1 import common_pb2

ErrorCode = common_pb2.ErrorCode
ERROR_CODE_METADATA_KEY = "talkingface-error-code"
RETRY_AFTER_METADATA_KEY = "retry-after-ms"

_S = grpc.StatusCode
GRPC_STATUS: dict[str, grpc.StatusCode] = {
    "ERROR_CODE_UNSPECIFIED": _S.UNKNOWN,
    "INVALID_REQUEST": _S.INVALID_ARGUMENT,
    "PAYLOAD_TOO_LARGE": _S.RESOURCE_EXHAUSTED,
    "NOT_FOUND": _S.NOT_FOUND,
    "ALREADY_EXISTS": _S.ALREADY_EXISTS,
    "PERMISSION_DENIED": _S.PERMISSION_DENIED,
    "UNAUTHENTICATED": _S.UNAUTHENTICATED,
    "CANCELLED": _S.CANCELLED,
    "DEADLINE_EXCEEDED": _S.DEADLINE_EXCEEDED,
    "UNAVAILABLE": _S.UNAVAILABLE,
    "INTERNAL": _S.INTERNAL,
    "NOT_AVAILABLE_YET": _S.UNIMPLEMENTED,
    "OVERLOADED": _S.RESOURCE_EXHAUSTED,
    "QUOTA_EXCEEDED": _S.RESOURCE_EXHAUSTED,
    "RATE_LIMITED": _S.RESOURCE_EXHAUSTED,
    "AUDIO_EMPTY": _S.INVALID_ARGUMENT,
    "AUDIO_CORRUPT": _S.INVALID_ARGUMENT,
    "AUDIO_UNSUPPORTED_CODEC": _S.INVALID_ARGUMENT,
    "AUDIO_TOO_LONG": _S.INVALID_ARGUMENT,
    "AUDIO_NON_FINITE": _S.INVALID_ARGUMENT,
    "LANDMARKS_INVALID_SHAPE": _S.INVALID_ARGUMENT,
    "LANDMARKS_NON_FINITE": _S.INVALID_ARGUMENT,
    "PROJECTION_INVALID_OPTIONS": _S.INVALID_ARGUMENT,
    "AVATAR_NOT_FOUND": _S.NOT_FOUND,
    "AVATAR_VERSION_NOT_FOUND": _S.NOT_FOUND,
    "AVATAR_BUNDLE_CORRUPT": _S.FAILED_PRECONDITION,
    "AVATAR_NOT_READY": _S.FAILED_PRECONDITION,
    "RENDER_INVALID_RANGE": _S.INVALID_ARGUMENT,
    "VIDEO_NO_FACE": _S.INVALID_ARGUMENT,
    "VIDEO_CORRUPT": _S.INVALID_ARGUMENT,
    "VIDEO_NO_VIDEO_STREAM": _S.INVALID_ARGUMENT,
    "VIDEO_TOO_LONG": _S.INVALID_ARGUMENT,
    "VIDEO_NO_AUDIO": _S.INVALID_ARGUMENT,
    "VIDEO_TOO_SHORT": _S.INVALID_ARGUMENT,
    "VIDEO_MULTIPLE_FACES": _S.INVALID_ARGUMENT,
    "VIDEO_FACE_TOO_SMALL": _S.INVALID_ARGUMENT,
    "VIDEO_EXTREME_POSE": _S.INVALID_ARGUMENT,
    "VIDEO_FROZEN": _S.INVALID_ARGUMENT,
    "JOB_NOT_FOUND": _S.NOT_FOUND,
    "JOB_ALREADY_FINISHED": _S.FAILED_PRECONDITION,
    "JOB_RETRIES_EXHAUSTED": _S.ABORTED,
    "JOB_INPUT_CRASHED": _S.ABORTED,
    "STORE_KEY_INVALID": _S.INVALID_ARGUMENT,
    "STORE_OBJECT_NOT_FOUND": _S.NOT_FOUND,
    "STORE_INTEGRITY": _S.DATA_LOSS,
    "STORE_UNAVAILABLE": _S.UNAVAILABLE,
}

# Statuses worth retrying with backoff; everything else is the caller's input or a bug.
TRANSIENT_STATUSES = frozenset({_S.UNAVAILABLE, _S.DEADLINE_EXCEEDED, _S.RESOURCE_EXHAUSTED})
# Codes of those statuses that the same request meets again however long it waits: the input
# is too large, or the tenant is at a quota (a job must end first, or an operator raise it).
# RESOURCE_EXHAUSTED stays their status (the gRPC convention for quotas); clients tell them
# from RATE_LIMITED and OVERLOADED by the code (and only RATE_LIMITED says when to retry).
PERMANENT_CODES = frozenset({"PAYLOAD_TOO_LARGE", "QUOTA_EXCEEDED"})

# Used when a peer returns a bare status without one of our codes.
_CODE_FOR_STATUS = {
    _S.INVALID_ARGUMENT: "INVALID_REQUEST",
    _S.NOT_FOUND: "NOT_FOUND",
    _S.ALREADY_EXISTS: "ALREADY_EXISTS",
    _S.PERMISSION_DENIED: "PERMISSION_DENIED",
    _S.UNAUTHENTICATED: "UNAUTHENTICATED",
    _S.CANCELLED: "CANCELLED",
    _S.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    _S.UNAVAILABLE: "UNAVAILABLE",
    _S.UNIMPLEMENTED: "NOT_AVAILABLE_YET",
    _S.RESOURCE_EXHAUSTED: "OVERLOADED",
}


class TalkingFaceError(Exception):
    """An error with a stable code; `code` is the ErrorCode name, e.g. "AUDIO_CORRUPT"."""

    def __init__(self, code: str, message: str, **metadata: str) -> None:
        if code not in GRPC_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}

    @property
    def status(self) -> grpc.StatusCode:
        return GRPC_STATUS[self.code]

    @property
    def transient(self) -> bool:
        """Worth retrying the same request later (with backoff, or after `retry-after-ms`)."""
        return self.status in TRANSIENT_STATUSES and self.code not in PERMANENT_CODES

    def to_proto(self) -> common_pb2.ErrorDetail:
        return common_pb2.ErrorDetail(
            code=ErrorCode.Value(self.code), message=self.message, metadata=self.metadata
        )

    @classmethod
    def from_proto(cls, detail: common_pb2.ErrorDetail) -> TalkingFaceError:
        return cls(ErrorCode.Name(detail.code), detail.message, **dict(detail.metadata))


class NotAvailableYet(TalkingFaceError):
    """A capability that a later release builds; never a silent success."""

    def __init__(self, what: str, issue: int | None = None) -> None:
        where = f" (tracked in issue #{issue})" if issue else ""
        super().__init__("NOT_AVAILABLE_YET", f"{what} is not available yet{where}")


def abort(context: grpc.ServicerContext, error: TalkingFaceError) -> NoReturn:
    """End the current RPC with the error's status, details and code metadata (and
    `retry-after-ms` when the error says when to retry, as RATE_LIMITED does)."""
    context.set_trailing_metadata(_trailing(error))
    context.abort(error.status, f"{error.code}: {error.message}")
    raise AssertionError("context.abort returned")  # abort always raises


async def abort_async(context: Any, error: TalkingFaceError) -> NoReturn:
    """`abort` for a method served as a coroutine (a grpc.aio context, whose abort is one)."""
    context.set_trailing_metadata(_trailing(error))
    await context.abort(error.status, f"{error.code}: {error.message}")
    raise AssertionError("context.abort returned")  # abort always raises


def _trailing(error: TalkingFaceError) -> tuple[tuple[str, str], ...]:
    trailing = [(ERROR_CODE_METADATA_KEY, error.code)]
    if RETRY_AFTER_METADATA_KEY in error.metadata:
        trailing.append((RETRY_AFTER_METADATA_KEY, error.metadata[RETRY_AFTER_METADATA_KEY]))
    return tuple(trailing)


def own_error_from_rpc(exc: grpc.RpcError) -> TalkingFaceError | None:
    """The TalkingFaceError a server of ours sent, or None for a bare status (one whose text
    is not ours: gRPC's own, or a proxy's such as Ray Serve's)."""
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    trailing = (exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ()) or ()
    extra = {k: v for k, v in trailing if k == RETRY_AFTER_METADATA_KEY}  # a RATE_LIMITED's
    name, sep, message = details.partition(": ")
    if sep and name in GRPC_STATUS:
        return TalkingFaceError(name, message, **extra)
    for key, value in trailing:
        if key == ERROR_CODE_METADATA_KEY and value in GRPC_STATUS:
            return TalkingFaceError(value, details, **extra)
    return None


def error_from_rpc(exc: grpc.RpcError) -> TalkingFaceError:
    """Recover the TalkingFaceError a server sent (or a generic one for a bare status)."""
    own = own_error_from_rpc(exc)
    if own is not None:
        return own
    status = exc.code() if hasattr(exc, "code") else _S.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return TalkingFaceError(_CODE_FOR_STATUS.get(status, "INTERNAL"), details or str(status))
