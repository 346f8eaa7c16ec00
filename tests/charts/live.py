"""What the monitoring checks share (tests/charts/test_monitoring.py, test_prometheus_live.py
and scripts/render_dashboards.py): the rule file and dashboards of the chart, the PromQL of
each panel made concrete (Grafana's variables replaced), the metric names an expression
uses, a real `prometheus` process on a free loopback port with its HTTP API, and the broker
fleet of the live check (the stages on Ray Serve, the broker with workers, tiny jobs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "charts" / "talkingface" / "files" / "monitoring"
RULES = MONITORING / "rules.yaml"
RULES_TEST = MONITORING / "rules_test.yaml"
DASHBOARDS = {
    "jobs-latency": MONITORING / "dashboards" / "jobs-latency.json",
    "fleet": MONITORING / "dashboards" / "fleet.json",
}
PROMETHEUS = "/usr/bin/prometheus"
# Panels of metrics no local exporter has, and why: they may come back empty here (the live
# test still runs their queries); every other panel must return data.
EXTERNAL_PANELS = {
    ("fleet", "Deployments: available replicas"): "kube-state-metrics: no cluster here",
    ("fleet", "GPU utilisation"): "NVIDIA's DCGM exporter: no GPU exporter here",
}
TENANT = "acme"
AVATAR = "ann"

# ---- dashboards and rules --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One query of a dashboard panel."""

    dashboard: str
    panel: str
    unit: str
    ref: str
    expr: str
    legend: str


def load_dashboard(name: str) -> dict:
    return json.loads(DASHBOARDS[name].read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel that draws data (rows are only headings), nested rows included."""
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            yield from panels({"panels": panel.get("panels", [])})
        else:
            yield panel


def targets(name: str) -> list[Target]:
    found = []
    for panel in panels(load_dashboard(name)):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for target in panel.get("targets", []):
            found.append(Target(name, panel["title"], unit, target["refId"], target["expr"],
                                target.get("legendFormat", "")))  # fmt: skip
    return found


def concrete(expr: str, rate_interval: str = "5m") -> str:
    """The PromQL Grafana would send: its interval variables given durations and every other
    template variable `.*` (all of ours sit in regex matchers, where `.*` matches all,
    including series without the label, as a local Prometheus has them)."""
    expr = re.sub(r"\$\{?__rate_interval\}?", rate_interval, expr)
    expr = re.sub(r"\$\{?__interval\}?", "1m", expr)
    expr = re.sub(r"\$\{?__range\}?", "1h", expr)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


def rule_list() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rule_list() if "record" in rule}


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan", "atan2"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are neither functions
    (followed by a parenthesis), keywords, label names (in matchers and grouping clauses),
    strings nor durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def exported_names() -> set[str]:
    """Sample names the running code exports: every collector in prometheus_client's default
    registry once talkingface.serving.metrics is imported, with the suffixes it writes
    (counters _total, histograms _bucket/_sum/_count)."""
    from prometheus_client import REGISTRY

    import talkingface.serving.metrics  # noqa: F401  (registers the collectors)

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "info": ("_info",)}  # fmt: skip
    names = set()
    for family in REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


# ---- a real Prometheus -----------------------------------------------------------------------


class PrometheusError(RuntimeError):
    """The HTTP API answered with an error (a query that does not parse or cannot run)."""


class Prometheus:
    """A `prometheus` child process on a free loopback port, scraping `scrapes` (job name ->
    metrics URL) every second and evaluating `rule_files` every second; storage in `workdir`.
    A context manager: the process is stopped on exit (only this one)."""

    def __init__(self, workdir: Path, scrapes: dict[str, str], rule_files=(RULES,)) -> None:
        self.workdir = Path(workdir)
        self.scrapes = scrapes
        self.rule_files = [str(p) for p in rule_files]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        jobs = []
        for job, url in self.scrapes.items():
            parts = urllib.parse.urlsplit(url)
            jobs.append({"job_name": job, "metrics_path": parts.path or "/metrics",
                         "static_configs": [{"targets": [parts.netloc]}]})  # fmt: skip
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": self.rule_files,
            "scrape_configs": jobs,
        }  # fmt: skip

    def start(self) -> Prometheus:
        from tests.fixtures.servers import start_process

        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))

        def argv(port: int) -> list[str]:
            return [PROMETHEUS, f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip

        def ready(port: int) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        self.proc, self.port = start_process("prometheus", argv, ready,
                                             self.workdir / "prometheus.log")  # fmt: skip
        return self

    def stop(self) -> None:
        from tests.fixtures.servers import stop_process

        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the `data` of a success, PrometheusError with the API's error
        otherwise (a bad query answers 400 with a JSON body)."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} ({params})")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        return self.api("query", query=expr, time=at)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def targets_health(self) -> dict[str, str]:
        """Job name -> health of its (single) target: up, down or unknown."""
        active = self.api("targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}

    def rule_health(self) -> list[dict]:
        """Every rule of the loaded groups with its health and last error."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def wait_for(self, expr: str, timeout_s: float = 30.0) -> list[dict]:
        """Poll until `expr` returns a non-empty result; that result."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


def prometheus_binary() -> str | None:
    return PROMETHEUS if Path(PROMETHEUS).exists() else shutil.which("prometheus")


# ---- the fleet -------------------------------------------------------------------------------


def fleet_env(*, redis_url: str, s3: Any, stages_port: int, ckpt: Path, cache: Path) -> dict:
    """The environment of the broker (API, one render and one training worker thread in its
    process, metrics on a free port) in front of stages on Ray Serve at `stages_port`."""
    return {
        "TALKINGFACE_STORE": "minio",
        "TALKINGFACE_MINIO_ENDPOINT": s3.endpoint,
        "TALKINGFACE_MINIO_ACCESS_KEY": s3.access_key,
        "TALKINGFACE_MINIO_SECRET_KEY": s3.secret_key,
        "TALKINGFACE_MINIO_REGION": s3.region,
        "TALKINGFACE_MINIO_BUCKET": f"tf-prom-{uuid.uuid4().hex[:12]}",
        "TALKINGFACE_REDIS_URL": redis_url,
        "TALKINGFACE_STAGES_ADDRESS": f"127.0.0.1:{stages_port}",
        "TALKINGFACE_MOTION_CHECKPOINT": str(ckpt / "motion"),
        "TALKINGFACE_DEVICE": "cpu",
        "TALKINGFACE_CACHE_DIR": str(cache),
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_HOST": "127.0.0.1",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_QUEUE_LEASE_SECONDS": "3",
        "TALKINGFACE_QUEUE_RETRY_BASE_SECONDS": "0.2",
        "TALKINGFACE_RENDER_SHARD_FRAMES": "16",
        "TALKINGFACE_RENDER_PARALLEL_SHARDS": "2",
        "TALKINGFACE_BROKER_WORKERS": "1",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "1",
        "TALKINGFACE_LOG_FORMAT": "text",
    }


@contextmanager
def broker_fleet(env: dict, bundle: Path) -> Iterator[SimpleNamespace]:
    """The four stage applications deployed on the running Serve, the avatar published and
    claimed by the tenant, and the broker (API + workers) started; stopped on exit."""
    import redis

    from talkingface.broker.avatars import AvatarRegistry
    from talkingface.broker.client import BrokerClient
    from talkingface.broker.service import broker_server
    from talkingface.config import Settings
    from talkingface.render.commands import bundle_files
    from talkingface.serving.fleet import deploy_fleet, load_serve_config
    from talkingface.storage import store_from_settings

    settings = Settings.from_env(env)
    deploy_fleet(load_serve_config().without_gpus(), settings, start=False)
    store = store_from_settings(settings)
    store.publish_version(f"avatars/{AVATAR}", bundle_files(bundle))
    client = redis.Redis.from_url(settings.redis_url)
    AvatarRegistry(client).claim(TENANT, "Ann", avatar_id=AVATAR)
    broker = broker_server(settings)
    broker.start()
    broker.warm_up()
    address = f"127.0.0.1:{broker.port}"
    try:
        yield SimpleNamespace(
            settings=settings, address=address, api=BrokerClient(address, TENANT),
            metrics_url=f"http://127.0.0.1:{broker.metrics_port}/metrics",
        )  # fmt: skip
    finally:
        broker.stop(grace=5.0)
        client.close()


def speech(avatar_dir: Path, seconds: float) -> bytes:
    """The first `seconds` of the avatar's own speech as a 16-bit WAV file."""
    from tests.broker.fleet_support import speech as broker_speech

    return broker_speech(avatar_dir, seconds)


def run_jobs(api, audio: list[bytes], timeout_s: float = 120.0) -> list[Any]:
    """Submit every clip at once (so the queue holds work for a moment), then follow each to
    its final state; the final jobs."""
    jobs = [api.submit_render(AVATAR, audio=clip) for clip in audio]
    return [api.wait(job.job_id, timeout_s=timeout_s) for job in jobs]


def corrupt_audio() -> bytes:
    """A WAV header over noise: the job fails fast with an AUDIO_* error code (not retried)."""
    return b"RIFF" + bytes(range(256)) * 8
