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
