"""Every dashboard query and every rule of the chart, proved on a real Prometheus: the test
starts `prometheus` (scrape and rule evaluation every second) against the broker's /metrics,
the stage replicas' node exporter and Ray's own metrics export, runs a few tiny render jobs
through the broker (two that succeed, one whose audio is corrupt), then evaluates each panel
query, instant and over the test's time range, and each rule through the HTTP API. All must
run without error; the latency, throughput and queue panels must return data. Panels of
metrics no local exporter has (kube-state-metrics, DCGM) are listed, with why, in
live.EXTERNAL_PANELS.
"""

from __future__ import annotations

import time

import pytest

from tests.charts.live import (
    DASHBOARDS,
    EXTERNAL_PANELS,
    Prometheus,
    broker_fleet,
    concrete,
    corrupt_audio,
    fleet_env,
    prometheus_binary,
    recorded_names,
    rule_list,
    run_jobs,
    speech,
    targets,
)

pytestmark = pytest.mark.slow

# Recording rules that must have a value after the jobs (the others: objectives, constant).
RULES_WITH_DATA = {
    "talkingface:job_e2e_seconds:p50", "talkingface:job_e2e_seconds:p95",
    "talkingface:job_e2e_seconds:p99", "talkingface:stage_seconds:p50",
    "talkingface:stage_seconds:p95", "talkingface:stage_seconds:p99",
    "talkingface:grpc_handling_seconds:p99", "talkingface:stage_seconds:p99_objective",
}  # fmt: skip
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval at a 1 s scrape interval and a short range


def stage_scrapes() -> dict[str, str]:
    """The stage replicas' node exporter and Ray's metrics export, as far as the code has
    them (talkingface.serving.exporter; ray_app.ray_metrics_port when this Ray was started
    by start_local_serve)."""
    from talkingface.serving import ray_app
    from talkingface.serving.exporter import node_metrics_url

    scrapes = {"stages": node_metrics_url(timeout_s=60)}
    if ray_app.ray_metrics_port:
        scrapes["ray"] = f"http://127.0.0.1:{ray_app.ray_metrics_port}/metrics"
    return scrapes


def test_every_query_and_rule_runs_on_prometheus_scraping_the_fleet(
    serve_grpc_port, redis_server, s3_server, tiny_ckpt, tiny_bundle, tiny_avatar, tmp_path
):
    if prometheus_binary() is None:
        pytest.skip("no prometheus binary at /usr/bin/prometheus (`make setup` installs it)")
    env = fleet_env(redis_url=redis_server.url, s3=s3_server, stages_port=serve_grpc_port,
                    ckpt=tiny_ckpt, cache=tmp_path / "cache")  # fmt: skip
    with broker_fleet(env, tiny_bundle) as fleet:
        scrapes = {"broker": fleet.metrics_url, **stage_scrapes()}
        print(f"scraping {scrapes}")
        with Prometheus(tmp_path / "prometheus", scrapes) as prom:
            # Wait for the first scrape of every target before the jobs start, so that the
            # counters' first increase is seen.
            assert prom.wait_for(f"count(up == 1) == {len(scrapes)}", 30), prom.targets_health()
            if "ray" in scrapes:  # Ray's metrics agent reports every few seconds
                assert prom.wait_for("ray_serve_deployment_replica_healthy", 30)
            start = time.time()
            before = finals_by_outcome(prom, start)
            clip = speech(tiny_avatar, 1.0)
            finals = run_jobs(fleet.api, [clip, clip, corrupt_audio()])
            states = [job.state for job in finals]
            from talkingface.v1 import broker_pb2 as pb

            assert states == [pb.JOB_STATE_SUCCEEDED] * 2 + [pb.JOB_STATE_FAILED], finals
            # Two more scrapes after the last job, and one more rule evaluation.
            time.sleep(3.0)
            end = time.time()
            assert prom.targets_health() == dict.fromkeys(scrapes, "up")
            # Each job is counted once, at its final state, by the end-to-end histogram.
            after = finals_by_outcome(prom, end)
            counted = {k: after[k] - before.get(k, 0.0) for k in after}
            assert {k: v for k, v in counted.items() if v} == {"succeeded": 2, "failed": 1}
            check_dashboards(prom, start, end)
            check_rules(prom)


def finals_by_outcome(prom: Prometheus, at: float) -> dict[str, float]:
    """Render jobs counted by talkingface_job_e2e_seconds, by outcome, at time `at` (the
    broker's counters live as long as the test process: other tests count there too)."""
    expr = 'sum by (outcome) (talkingface_job_e2e_seconds_count{kind="render"})'
    return {r["metric"]["outcome"]: float(r["value"][1]) for r in prom.query(expr, at=at)}


def check_dashboards(prom: Prometheus, start: float, end: float) -> None:
    empty, errors = [], []
    for name in DASHBOARDS:
        for target in targets(name):
            expr = concrete(target.expr, RATE_INTERVAL)
            try:
                instant = prom.query(expr, at=end)
                ranged = prom.query_range(expr, start - 5, end, step=1.0)
            except Exception as exc:
                errors.append((name, target.panel, target.ref, str(exc)))
                continue
            if not (instant or ranged):
                empty.append((name, target.panel))
    print(f"{len(empty)} panel queries without data: {empty}")
    assert errors == []
    must_have_data = [panel for panel in empty if panel not in EXTERNAL_PANELS]
    assert must_have_data == [], "panels without data"


def check_rules(prom: Prometheus) -> None:
    rules = prom.rule_health()
    assert len(rules) == len(rule_list())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    for record in recorded_names():
        result = prom.query(record)
        assert result or record not in RULES_WITH_DATA, f"{record} has no value"
    # Every stage the workers time has an objective, and every objective is a stage's.
    stages = {r["metric"]["stage"] for r in prom.query("talkingface:stage_seconds:p99")}
    objectives = prom.query("talkingface:stage_seconds:p99_objective")
    assert stages == {r["metric"]["stage"] for r in objectives}
    (p50,) = prom.query('talkingface:job_e2e_seconds:p50{kind="render"}')
    assert 0 < float(p50["value"][1]) < 120, p50
    # The rules' own expressions run too (alerts: their conditions, mostly empty here).
    for rule in rule_list():
        prom.query(rule["expr"])
