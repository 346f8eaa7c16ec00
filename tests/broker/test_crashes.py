"""A job whose input kills a stage replica ends on the crash that repeats, with a clean code,
and no client reads Ray's internal text: the stage errors as the broker maps them, and the
worker protocol on a real Redis."""

from __future__ import annotations

import grpc
import pytest

from talkingface.broker.stages import stage_error
from talkingface.broker.worker import run_once
from talkingface.errors import TalkingFaceError
from tests.broker.conftest import assert_drained
from tests.broker.test_worker import drive, submit

# What Ray Serve's gRPC proxy sends when the replica's process dies under a request
# (ray.serve._private.grpc_util: INTERNAL with str(RayActorError)).
RAY_ACTOR_DIED = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: "
    "ServeReplica:audio_features:AudioFeatures\n\tactor_id: 8f3a2c9e01\n\tpid: 48213\n\t"
    "namespace: serve\n\tip: 10.0.3.7\nThe actor is dead because its worker process has died. "
    "Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a "
    "connection error code 2. End of file. Consider increasing the memory of the replica."
)


class _Status(grpc.RpcError):
    """An RpcError as a grpc call raises it: a status, details and trailing metadata."""

    def __init__(self, code, details, metadata=()):
        self._code, self._details, self._metadata = code, details, metadata

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._metadata


def test_a_dead_replica_is_a_marked_transient_error_without_internal_text():
    error = stage_error("audio_features", _Status(grpc.StatusCode.INTERNAL, RAY_ACTOR_DIED))
    assert error.code == "UNAVAILABLE" and error.transient
    assert error.metadata == {"stage_crash": "audio_features"}
    for internal in ("actor_id", "48213", "10.0.3.7", "memory", "ServeReplica"):
        assert internal not in error.message


def test_bare_statuses_are_plain_and_our_own_errors_keep_their_text():
    refused = stage_error("motion", _Status(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: ipv4:10.1.2.3:9000: refused",
    ))  # fmt: skip
    assert refused.code == "UNAVAILABLE" and "10.1.2.3" not in refused.message
    assert refused.metadata == {}
    missing = stage_error("renderer", _Status(
        grpc.StatusCode.NOT_FOUND, "Application 'renderer' not found. Ping /-/routes."
    ))  # fmt: skip
    assert missing.code == "UNAVAILABLE" and "not deployed" in missing.message
    own = stage_error("audio_features", _Status(
        grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_CORRUPT: the decoder crashed on this file",
        (("talkingface-error-code", "AUDIO_CORRUPT"),),
    ))  # fmt: skip
    assert (own.code, own.message) == ("AUDIO_CORRUPT", "the decoder crashed on this file")
    bug = stage_error("motion", _Status(grpc.StatusCode.INTERNAL, "Traceback ... /srv/x.py"))
    assert bug.code == "INTERNAL" and "Traceback" not in bug.message


def _crash(stage: str = "audio_features") -> TalkingFaceError:
    return stage_error(stage, _Status(grpc.StatusCode.INTERNAL, RAY_ACTOR_DIED))


def test_the_second_crash_of_a_stage_fails_the_job_with_input_crashed(jobs, make_queue):
    queue = make_queue(max_deliveries=5, retry_base_s=0.01, retry_max_s=0.05)
    job = submit(jobs, queue)
    other = submit(jobs, queue)  # another tenant's job in the same queue is untouched
    calls = []

    def handler(job_, delivery, heartbeat):
        if job_.job_id != job.job_id:
            return {"ok": True}
        calls.append(delivery.deliveries)
        raise _crash()

    done = drive(queue, jobs, job.job_id, handler)
    assert calls == [1, 2]  # one retry, then never again (not 5 deliveries)
    assert (done.state, done.error_code) == ("FAILED", "JOB_INPUT_CRASHED")
    assert "audio_features" in done.error_message and "actor" not in done.error_message
    dead = [d for d in queue.dead_letters() if d["job_id"] == job.job_id]
    assert len(dead) == 1 and dead[0]["reason"].startswith("JOB_INPUT_CRASHED")
    assert '"crashes": {"audio_features": 2}' in dead[0]["payload"]
    while run_once(queue, jobs, "w1", handler, block_ms=50):
        pass
    assert jobs.get(other.job_id).state == "SUCCEEDED"
    assert_drained(queue)


def test_a_crash_then_success_succeeds_and_crashes_of_different_stages_are_counted_apart(
    jobs, make_queue
):
    queue = make_queue(max_deliveries=5, retry_base_s=0.01, retry_max_s=0.05)
    job = submit(jobs, queue)
    plan = [_crash("audio_features"), _crash("renderer"), None]

    def handler(job_, delivery, heartbeat):
        step = plan[delivery.deliveries - 1]
        if step is not None:
            raise step
        return {"frames": 1}

    done = drive(queue, jobs, job.job_id, handler)
    assert (done.state, done.attempt) == ("SUCCEEDED", 3)
    assert_drained(queue)


@pytest.mark.parametrize("exc", [RuntimeError("at /srv/secret/path.py line 3"), KeyError("k")])
def test_unexpected_errors_reach_clients_as_their_type_only(jobs, make_queue, exc):
    queue = make_queue(max_deliveries=1)
    job = submit(jobs, queue)

    def handler(job_, delivery, heartbeat):
        raise exc

    done = drive(queue, jobs, job.job_id, handler)
    assert done.error_code == "JOB_RETRIES_EXHAUSTED"
    assert type(exc).__name__ in done.error_message and "secret" not in done.error_message
