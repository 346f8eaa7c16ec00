"""A tiny `talkingface bench api` run against its own broker (private Redis, S3 stand-in, no
workers): every call answered, the report's shape. Speed is the benchmark's business, never
asserted here."""

from __future__ import annotations

import json

import pytest

from talkingface.bench import api

pytestmark = pytest.mark.slow


def test_a_small_api_bench_answers_every_call():
    report = api.run(clients=4, calls_per_client=2, watch_streams=2, idle_uploads=1)
    print(json.dumps(report, sort_keys=True))  # shown when an assertion fails
    assert report["errors"] == {}
    for phase, calls in (("submit_render", 8), ("get_job", 8), ("get_job_with_streams", 100)):
        figures = report[phase]
        assert figures["calls"] == figures["ok"] == calls, phase
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"], phase
    streams = report["get_job_with_streams"]
    assert streams["watch_streams_open"] == 2
    assert streams["idle_uploads_open"] == 1
    load = report["machine"]["load_average"]
    assert set(load) == {"before", "after"}
    assert load["before"] is None or len(load["before"]) == 3
