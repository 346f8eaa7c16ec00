"""How a failed stage call is classified: the stage's own code, or retried when the stage
could not be reached (Ray Serve's exact answer for an application not deployed)."""

import grpc

from talkingface.broker.stages import stage_error

# What Ray Serve 2.60's gRPC proxy answers for an application that is not (yet) deployed.
RAY_NO_APP = (
    "Application 'motion' not found. Ping /ray.serve.RayServeAPIService/ListApplications "
    "for available applications."
)


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()


def test_an_application_not_deployed_is_retried():
    assert stage_error("motion", _Failed(grpc.StatusCode.NOT_FOUND, RAY_NO_APP)).code == (
        "UNAVAILABLE"
    )


def test_the_stages_own_codes_are_kept():
    error = stage_error("motion", _Failed(grpc.StatusCode.NOT_FOUND, "AVATAR_NOT_FOUND: no ann"))
    assert error.code == "AVATAR_NOT_FOUND"
    error = stage_error("audio_features", _Failed(grpc.StatusCode.INVALID_ARGUMENT,
                                                  "AUDIO_CORRUPT: not audio"))  # fmt: skip
    assert error.code == "AUDIO_CORRUPT"
    assert stage_error("renderer", _Failed(grpc.StatusCode.UNAVAILABLE, "")).code == "UNAVAILABLE"
