"""The chart's monitoring files checked offline: the rule file with `promtool check rules` and
its unit tests with `promtool test rules` (every alert fires in one case and stays quiet in
another); every alert's severity, `for:` and runbook link; the dashboards' PromQL parsed by
promtool (written as recording rules), rate windows of $__rate_interval, a unit on every
panel, and every metric name either exported by the code or an allow-listed external one.
The same queries run on a real Prometheus in test_prometheus_live.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.live import (
    DASHBOARDS,
    EXTERNAL_PANELS,
    RULES,
    RULES_TEST,
    Prometheus,
    PrometheusError,
    concrete,
    exported_names,
    load_dashboard,
    metric_names,
    panels,
    prometheus_binary,
    recorded_names,
    rule_list,
    targets,
)

# Metrics of other exporters, not of our code, that panels and alerts may use:
EXTERNAL_PREFIXES = (
    "kube_",  # kube-state-metrics (restarts, available replicas, pod labels)
    "DCGM_",  # NVIDIA's DCGM exporter (GPU utilisation)
    "ray_",  # Ray's own metrics export (port 8080 of the Ray pods): Serve replicas
)
EXTERNAL_NAMES = {"up"}  # Prometheus's own scrape health series
CONTRACT_RECORDS = {
    f"talkingface:{family}:{q}"
    for family in ("job_e2e_seconds", "stage_seconds")
    for q in ("p50", "p95", "p99")
} | {"talkingface:grpc_handling_seconds:p99"}
UIDS = {"jobs-latency": "talkingface-jobs-latency", "fleet": "talkingface-fleet"}
ALL_TARGETS = [t for name in DASHBOARDS for t in targets(name)]


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make setup`)")
    return binary


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rule_file(promtool):
    done = run([promtool, "check", "rules", RULES.name], RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_pass(promtool):
    done = run([promtool, "test", "rules", RULES_TEST.name], RULES_TEST.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    alerts = {rule["alert"] for rule in rule_list() if "alert" in rule}
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert len(alerts) >= 7
    assert alerts - fires == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_severity_for_summary_and_a_runbook_anchor():
    alerts = [rule for rule in rule_list() if "alert" in rule]
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), f"{name}: no for:"
        notes = alert["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        # One runbook section per alert: docs/kubernetes.md's heading is the alert's name.
        assert notes["runbook_url"] == f"docs/kubernetes.md#{name.lower()}", name


def test_the_contract_recording_rules_exist():
    assert recorded_names() >= CONTRACT_RECORDS


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_model(name):
    """Grafana's model: a stable uid, schema 39, a Prometheus data-source variable that every
    panel and query uses, and unique panel ids."""
    dashboard = load_dashboard(name)
    assert dashboard["uid"] == UIDS[name]
    assert dashboard["title"].startswith("talkingface — ")
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    drawn = list(panels(dashboard))
    assert len(drawn) >= 6
    for panel in drawn:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_panels_allowed_empty_exist_and_use_only_external_metrics():
    """The live check excuses these panels from returning data: each must exist, and select
    only metrics of other exporters (never one of ours)."""
    for (name, title), why in EXTERNAL_PANELS.items():
        mine = [t for t in targets(name) if t.panel == title]
        assert mine and why, (name, title)
        for target in mine:
            names = metric_names(target.expr)
            assert names and all(n.startswith(EXTERNAL_PREFIXES) for n in names), target.expr


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_has_a_unit(name):
    for panel in panels(load_dashboard(name)):
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), panel["title"]


def test_rate_windows_are_the_rate_interval():
    """Every range selector (rate, increase, deriv, ..._over_time) is [$__rate_interval]:
    a fixed window shows nothing when it is shorter than two scrapes."""
    windows = 0
    for target in ALL_TARGETS:
        for window in re.findall(r"\[([^\]]*)\]", target.expr):
            assert window == "$__rate_interval", (target.panel, target.expr)
            windows += 1
        functions = re.findall(r"\b(rate|irate|increase)\s*\(", target.expr)
        assert target.expr.count("[$__rate_interval]") >= len(functions), target.panel
    assert windows >= 10


def test_every_dashboard_query_parses(promtool, tmp_path):
    """promtool parses the PromQL of each query, written as a recording rule; a typo in any
    one fails the whole file, with the rule's name naming the panel."""
    rules = [{"record": f"dashboard:{t.dashboard.replace('-', '_')}:q{i}", "expr": concrete(t.expr)}
             for i, t in enumerate(ALL_TARGETS)]  # fmt: skip
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = run([promtool, "check", "rules", path.name], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_a_query_that_does_not_parse_is_caught(promtool, tmp_path):
    """The parse check above can fail: a broken query is refused."""
    path = tmp_path / "broken.rules.yaml"
    broken = "sum by (queue (talkingface_queue_depth)"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "dashboard:broken", "expr": broken}]}]}))  # fmt: skip
    assert run([promtool, "check", "rules", path.name], tmp_path).returncode != 0


def test_metric_names_are_exported_by_the_code_or_external():
    """Each metric a panel or rule selects is one the code registers (talkingface.serving.
    metrics), a recording rule of rules.yaml, or an allow-listed external metric."""
    exported = exported_names()
    recorded = recorded_names()
    expressions = [(f"{t.dashboard}: {t.panel}", t.expr) for t in ALL_TARGETS]
    expressions += [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rule_list()]
    unknown = {}
    used = set()
    for where, expr in expressions:
        for name in metric_names(expr):
            used.add(name)
            if name in exported or name in recorded or name in EXTERNAL_NAMES:
                continue
            if name.startswith(EXTERNAL_PREFIXES):
                continue
            unknown.setdefault(name, []).append(where)
    assert unknown == {}, "metrics neither exported nor allow-listed"
    # The extraction finds what the dashboards are about (it is not vacuous).
    assert {"talkingface_job_e2e_seconds_bucket", "talkingface_queue_depth",
            "talkingface_grpc_server_in_flight", "DCGM_FI_DEV_GPU_UTIL"} <= used  # fmt: skip


def test_metric_names_of_an_expression():
    expr = (
        'sum by (kind, le) (rate(talkingface_job_e2e_seconds_bucket{namespace=~"$ns"}[5m]))'
        " / on (kind) group_left (x) max by (kind) (foo_total offset 15m) > bool 0.5e3"
    )
    assert metric_names(expr) == {"talkingface_job_e2e_seconds_bucket", "foo_total"}
    assert concrete('rate(x{a=~"$namespace"}[$__rate_interval])') == 'rate(x{a=~".*"}[5m])'


def test_the_live_checks_prometheus_reports_errors_and_loads_the_rules(tmp_path):
    """The helper of test_prometheus_live.py on a real prometheus with no targets: it loads
    every rule of rules.yaml, answers a good query, and raises on one that does not parse
    (so the live check cannot pass over an error)."""
    if prometheus_binary() is None:
        pytest.skip("no prometheus binary at /usr/bin/prometheus (`make setup` installs it)")
    with Prometheus(tmp_path, {}) as prom:
        assert len(prom.rule_health()) == len(rule_list())
        assert prom.query("vector(1)")[0]["value"][1] == "1"
        with pytest.raises(PrometheusError, match="bad_data"):
            prom.query("sum by (queue (talkingface_queue_depth)")
        assert prom.proc.poll() is None
    assert prom.proc is None
