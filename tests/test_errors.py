"""Stable error codes: every code maps to a gRPC status and survives a round trip."""

import grpc
import pytest

from talkingface.errors import GRPC_STATUS, ErrorCode, NotAvailableYet, TalkingFaceError


def test_every_proto_error_code_has_a_grpc_status():
    assert set(ErrorCode.keys()) == set(GRPC_STATUS)


def test_codes_map_to_expected_statuses():
    assert TalkingFaceError("AUDIO_CORRUPT", "x").status == grpc.StatusCode.INVALID_ARGUMENT
    assert TalkingFaceError("AVATAR_NOT_FOUND", "x").status == grpc.StatusCode.NOT_FOUND
    assert TalkingFaceError("UNAVAILABLE", "x").transient
    assert not TalkingFaceError("AUDIO_EMPTY", "x").transient
    assert NotAvailableYet("synth", 3).status == grpc.StatusCode.UNIMPLEMENTED


def test_quota_refusals_are_not_transient_though_resource_exhausted():
    """A client that retries what `transient` says would hammer a quota forever; a rate limit
    and an overloaded server are worth waiting out."""
    for code in ("QUOTA_EXCEEDED", "PAYLOAD_TOO_LARGE", "RATE_LIMITED", "OVERLOADED"):
        assert TalkingFaceError(code, "x").status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not TalkingFaceError("QUOTA_EXCEEDED", "x").transient
    assert not TalkingFaceError("PAYLOAD_TOO_LARGE", "x").transient
    assert TalkingFaceError("RATE_LIMITED", "x").transient
    assert TalkingFaceError("OVERLOADED", "x").transient


def test_unknown_code_is_refused():
    with pytest.raises(ValueError):
        TalkingFaceError("NO_SUCH_CODE", "x")


def test_proto_round_trip():
    error = TalkingFaceError("AUDIO_TOO_LONG", "too long", seconds="901")
    again = TalkingFaceError.from_proto(error.to_proto())
    assert (again.code, again.message, again.metadata) == (
        "AUDIO_TOO_LONG",
        "too long",
        error.metadata,
    )
