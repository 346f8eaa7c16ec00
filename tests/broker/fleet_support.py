"""Helpers of the broker's end-to-end tests (tests/broker/test_fleet*.py), which share one
fleet per module (the `fleet` fixture, tests/broker/conftest.py): the tenant and avatar it is
set up with, speech to submit, and checks that look only at a test's own jobs and keys."""

from __future__ import annotations

import time

from talkingface.broker.janitor import sweep_until_quiet
from talkingface.media import read_wav

TENANT = "acme"
AVATAR = "ann"
SHARD_FRAMES = 16


def speech(tiny_avatar, seconds: float) -> bytes:
    """The first `seconds` of the avatar's own speech, as a 16-bit WAV file."""
    samples, rate = read_wav(tiny_avatar / "audio.wav")
    return speech_of(samples, seconds, rate)


def speech_of(samples, seconds: float, rate: int = 16000) -> bytes:
    """The first `seconds` of `samples` as a 16-bit WAV file."""
    import io

    from talkingface.media import write_wav

    buffer = io.BytesIO()
    write_wav(buffer, samples[: int(seconds * rate)], rate)
    return buffer.getvalue()


NO_MESSAGES = {"queued": 0, "pending": 0, "delayed": 0, "dead": 0}


def drained(fleet, *job_ids: str, timeout_s: float = 30.0) -> None:
    """No message of these jobs left in either queue: the fleet is shared by the module's
    tests, so only the test's own jobs are looked at, never the queues' totals. A worker
    writes a job's outcome before it acks the message (so that nothing is lost), so a job
    seen final may still hold its message for a moment: wait for the ack, then assert."""
    assert job_ids, "name the test's own jobs"
    queues = (fleet.render_queue, fleet.train_queue)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(q.messages_of(j) == NO_MESSAGES for q in queues for j in job_ids):
            break
        time.sleep(0.1)
    for queue in queues:
        for job_id in job_ids:
            assert queue.messages_of(job_id) == NO_MESSAGES, (queue.name, job_id)


def swept(fleet, job_id: str, quiet_s: float = 2.0, timeout_s: float = 30.0) -> None:
    """Sweep until the job's scratch space has stayed empty for `quiet_s`.

    A shard the renderer was encoding at the cancel lands after the job's cleanup (here
    within about half a second of the ack); nothing tells when the last one has landed, so
    the janitor runs until none has come for `quiet_s`, and the job's `work/` must be empty.
    """
    left = sweep_until_quiet(fleet.store, fleet.jobs, f"work/{job_id}", quiet_s=quiet_s,
                             timeout_s=timeout_s, interval_s=0.2)  # fmt: skip
    assert left == 0, fleet.store.list(f"work/{job_id}")
