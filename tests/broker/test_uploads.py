"""Finding an upload through an object-store outage, and the keys of a job's attempts (scratch
space, result) (issue 19):
real stores only (the MinIO client against a port where nothing listens is an outage)."""

from __future__ import annotations

import socket
import time

import pytest
import urllib3

from talkingface.broker.stages import Scratch
from talkingface.broker.uploads import find_upload, upload_key
from talkingface.errors import TalkingFaceError
from talkingface.storage import LocalStore, MinioStore


def _dead_endpoint() -> str:
    with socket.socket() as probe:  # bound then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_an_unreachable_store_is_unavailable_not_a_missing_upload():
    """Before, find_upload swallowed every StoreError: SubmitRender(upload_id) answered
    NOT_FOUND during an S3 outage, an error clients do not retry."""
    client = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=1),
                                 retries=urllib3.Retry(total=0))  # fmt: skip
    store = MinioStore(_dead_endpoint(), "key", "secret", bucket="tf-outage", region="us-east-1",
                       create_bucket=False, http_client=client)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(TalkingFaceError) as caught:
        find_upload(store, "acme", "0123456789abcdef")
    assert caught.value.code == "STORE_UNAVAILABLE" and caught.value.transient
    assert time.monotonic() - started < 30


def test_a_missing_or_malformed_upload_is_still_not_found(tmp_path):
    store = LocalStore(tmp_path)
    store.put(upload_key("acme", "u1"), b"audio")
    assert find_upload(store, "acme", "u1") == upload_key("acme", "u1")
    for upload_id in ("u2", "a/b", ""):
        with pytest.raises(TalkingFaceError) as caught:
            find_upload(store, "acme", upload_id)
        assert caught.value.code == "NOT_FOUND"
    with pytest.raises(TalkingFaceError):
        find_upload(store, "globex", "u1")  # another tenant's


def test_an_attempt_clearing_its_scratch_leaves_its_successors(tmp_path):
    """Before, every attempt of a job shared `work/<job_id>/`: a stalled attempt's cleanup
    deleted what the attempt that took the job over was using."""
    store = LocalStore(tmp_path)
    stale, owner = Scratch("j1", "a1-1-0"), Scratch("j1", "a2-1-0")
    assert stale.job_prefix == owner.job_prefix == "work/j1"
    assert stale.prefix != owner.prefix and stale.prefix.startswith("work/j1/")
    store.put(f"{stale.prefix}/segments/0.mp4", b"old")
    store.put(f"{owner.prefix}/segments/0.mp4", b"new")
    stale.clear(store)
    assert [i.key for i in store.list("work/j1")] == [f"{owner.prefix}/segments/0.mp4"]


def test_a_refused_outcome_deletes_only_its_own_result(tmp_path):
    """Before, every attempt wrote `results/<tenant>/<job>/video.mp4`: a stalled attempt (the
    mux waited for with `settle`) overwrote the winner's result after the winner had recorded
    its sha256. Now each attempt has its own key, and the worker hands a refused outcome's
    result to the handler's `discard`, which deletes that one object only."""
    from talkingface.broker.queue import Delivery
    from talkingface.broker.render_job import RenderHandler, result_key
    from talkingface.config import Settings

    store = LocalStore(tmp_path)
    winner = Delivery("render", "j1", {}, "1700000000000-0", 2, "w2")
    zombie = Delivery("render", "j1", {}, "1700000000000-0", 1, "w1")  # taken over from it
    keys = [result_key("acme", "j1", d.attempt_tag) for d in (winner, zombie)]
    assert keys[0] != keys[1] and all(k.startswith("results/acme/j1/") for k in keys)
    for key in keys:
        store.put(key, key.encode())
    handler = RenderHandler(None, store, Settings())  # type: ignore[arg-type]
    handler.discard({"video": {"key": keys[1]}})
    assert [i.key for i in store.list("results/acme/j1")] == [keys[0]]
    assert store.get(keys[0]) == keys[0].encode()
    handler.cleanup(_final("j1", "acme", keys[0]))  # nothing under work/: fine
    assert [i.key for i in store.list("results/acme/j1")] == [keys[0]]  # the recorded one stays


def test_cleaning_up_a_final_job_keeps_only_its_recorded_result(tmp_path):
    """An attempt killed after storing its mp4 and before recording it never reached its
    `discard`: once another attempt's outcome is recorded, `cleanup` removes every result
    object of the job but the recorded one (all of them when the job did not succeed), and
    nothing of another job or tenant."""
    import dataclasses

    from talkingface.broker.render_job import RenderHandler, result_key
    from talkingface.config import Settings

    store = LocalStore(tmp_path)
    killed, winner = result_key("acme", "j1", "a1-1-0"), result_key("acme", "j1", "a2-1-0")
    others = [result_key("acme", "j2", "a1-1-0"), result_key("globex", "j1", "a1-1-0")]
    for key in (killed, winner, *others):
        store.put(key, key.encode())
    handler = RenderHandler(None, store, Settings())  # type: ignore[arg-type]
    job = _final("j1", "acme", winner)
    handler.cleanup(job)
    assert [i.key for i in store.list("results/acme/j1")] == [winner]
    handler.cleanup(dataclasses.replace(job, state="FAILED", result=None))
    assert store.list("results/acme/j1") == []
    assert sorted(i.key for i in store.list("results")) == sorted(others)


def _final(job_id: str, tenant: str, video_key: str):
    """A SUCCEEDED render job record whose result names `video_key`."""
    from talkingface.broker.jobs import Job

    return Job(job_id, tenant, "render", "SUCCEEDED", "MUX", 1.0, 2, "", "", 0, 0, "", "", {},
               {"video": {"key": video_key}}, False)  # fmt: skip
