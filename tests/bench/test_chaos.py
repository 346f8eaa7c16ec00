"""A small chaos run (talkingface.bench.chaos): 20 jobs from three tenants on a real fleet (a
private Redis with its AOF, moto's S3 server behind the bench's proxy, the stages on the
session's Ray Serve, worker processes) while every fault kind is injected once, with short
outages. Nothing may be lost, nothing done twice, no scratch left, and every failure must
carry a code that names an injected fault."""

from __future__ import annotations

import json

import pytest

from talkingface.bench import chaos

pytestmark = pytest.mark.slow

JOBS = 20


def test_a_chaos_run_loses_no_job_and_does_none_twice(
    serve_grpc_port, tiny_ckpt, tiny_avatar, tiny_bundle, tmp_path
):
    report = chaos.run(
        JOBS, tenants=3, workers=2, seed=1, s3_outage_s=4.0, redis_down_s=1.0, gap_s=3.0,
        lease_s=3.0, stage_timeout_s=8.0, drain_timeout_s=240.0,
        models=(tiny_ckpt, tiny_avatar, tiny_bundle), serve_port=serve_grpc_port,
        workdir=tmp_path / "chaos",
    )  # fmt: skip
    print(json.dumps(report, sort_keys=True))  # shown when an assertion fails
    summary = {k: report[k] for k in ("submitted", "succeeded", "failed_by_code", "lost",
                                      "duplicated", "scratch_left", "attempts", "queue_left",
                                      "refused_by_code", "lost_jobs", "duplicates")}  # fmt: skip

    # The report's shape.
    for key in ("submitted", "succeeded", "cancelled", "failed_by_code", "lost", "duplicated",
                "results_of_unsucceeded", "attempts", "latency_s", "scratch_left", "faults",
                "durations", "settings", "unexplained_failures", "queue_left",
                "refused_by_code", "allowed_failures"):  # fmt: skip
        assert key in report, key
    assert set(report["latency_s"]) == {"p50", "p99", "max"}
    assert {"models_s", "fleet_start_s", "submit_s", "faults_s", "drain_s", "total_s"} <= set(
        report["durations"]
    )
    # Every fault kind was injected, each logged with its time.
    assert [f["fault"] for f in report["faults"]] == list(chaos.FAULTS)
    for fault in report["faults"]:
        assert "error" not in fault, fault
        assert 0 <= fault["t_s"] <= fault["end_s"], fault

    # Every job was accepted (refused submissions are retried like a client would)...
    assert report["refused_by_code"] == {}, summary
    assert report["submitted"] == JOBS, summary
    # ... none lost, none done twice, no scratch left ...
    assert report["lost"] == 0, summary
    assert report["duplicated"] == 0, summary
    assert report["scratch_left"] == 0, summary
    # ... and every failure names an injected fault.
    assert set(report["failed_by_code"]) <= set(chaos.ALLOWED_FAILURES), summary
    assert report["unexplained_failures"] == {}, summary
    finals = report["succeeded"] + report["cancelled"] + sum(report["failed_by_code"].values())
    assert finals == JOBS, summary
    assert sum(report["attempts"].values()) == JOBS, summary
