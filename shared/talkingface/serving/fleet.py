"""The fleet's serve config (`services/serve_config.yaml`, Ray Serve's serveConfigV2 format)
and deploying it on a Ray cluster.

`load_serve_config(path)` reads the file and checks it twice: against Ray's own
`ServeDeploySchema` (what `serve deploy` and KubeRay accept) and against this product's
rules (each application is a known stage, its builder imports, autoscaling bounds make sense,
GPU fractions lie in [0, 1]). `deploy_fleet(config, settings)` starts Serve with the file's
gRPC options and runs every application with its deployment options, the way Ray applies the
file itself (`talkingface up` uses it; `serve deploy services/serve_config.yaml` works too).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkingface.config import ConfigError, Settings

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "services" / "serve_config.yaml"
STAGES = {
    "audio_features": ("talkingface.audio.servicer:app", "AudioFeatures"),
    "motion": ("talkingface.motion.servicer:app", "Motion"),
    "landmark_projection": ("talkingface.landmarks.servicer:app", "LandmarkProjection"),
    "renderer": ("talkingface.render.servicer:app", "Renderer"),
}
DEPLOYMENT_OPTIONS = ("num_replicas", "max_ongoing_requests", "autoscaling_config",
                      "ray_actor_options", "graceful_shutdown_timeout_s")  # fmt: skip


@dataclass
class ServeConfig:
    path: Path
    raw: dict[str, Any]

    @property
    def grpc_port(self) -> int:
        return int(self.raw.get("grpc_options", {}).get("port", 9000))

    @property
    def servicer_functions(self) -> list[str]:
        return list(self.raw.get("grpc_options", {}).get("grpc_servicer_functions", []))

    @property
    def applications(self) -> list[dict[str, Any]]:
        return list(self.raw["applications"])

    def application(self, name: str) -> dict[str, Any]:
        for app in self.applications:
            if app["name"] == name:
                return app
        raise KeyError(f"{self.path}: no application {name!r}")

    def without_gpus(self) -> ServeConfig:
        """The same fleet with every GPU fraction set to 0 (for machines without a GPU)."""
        raw = copy.deepcopy(self.raw)
        for app in raw["applications"]:
            for deployment in app.get("deployments", []):
                deployment.get("ray_actor_options", {})["num_gpus"] = 0
        return ServeConfig(self.path, raw)

    def with_max_replicas(self, limit: int) -> ServeConfig:
        """The same fleet with every application's max_replicas at most `limit` (never
        below its min_replicas): on one machine, a replica that cannot get a core only slows
        the others down."""
        raw = copy.deepcopy(self.raw)
        for app in raw["applications"]:
            for deployment in app.get("deployments", []):
                scaling = deployment.get("autoscaling_config")
                if scaling:
                    low = scaling.get("min_replicas", 1)
                    scaling["max_replicas"] = max(low, min(scaling.get("max_replicas", 1), limit))
        return ServeConfig(self.path, raw)

    def with_grpc_port(self, port: int) -> ServeConfig:
        """The same fleet with the Serve gRPC proxy on `port`."""
        raw = copy.deepcopy(self.raw)
        raw.setdefault("grpc_options", {})["port"] = int(port)
        return ServeConfig(self.path, raw)


def load_serve_config(path: Path | str | None = None) -> ServeConfig:
    """Read and check a serve config file (default: services/serve_config.yaml)."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the serve config {path}: {exc}") from None
    problems = _check(raw)
    if problems:
        raise ConfigError(f"{path} is not a usable serve config:\n  " + "\n  ".join(problems))
    return ServeConfig(path, raw)


def _check(raw: Any) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(raw, dict):
        return ["the file does not hold a mapping"]
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        return [f"Ray Serve rejects it: {e['loc']}: {e['msg']}" for e in exc.errors()]
    problems = []
    for app in raw.get("applications", []):
        name = app.get("name")
        if name not in STAGES:
            problems.append(f"application {name!r} is not a stage ({', '.join(STAGES)})")
            continue
        module, _, attr = app.get("import_path", "").partition(":")
        try:
            if not callable(getattr(importlib.import_module(module), attr)):
                raise AttributeError(attr)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{name}: import_path {app.get('import_path')!r} fails: {exc}")
        for key in app.get("args") or {}:
            if not str(key).startswith("TALKINGFACE_"):
                problems.append(f"{name}: args key {key!r} is not a TALKINGFACE_* setting")
        for deployment in app.get("deployments", []):
            where = f"{name}/{deployment.get('name')}"
            if deployment.get("name") != STAGES[name][1]:
                problems.append(f"{where}: the deployment of {name} is {STAGES[name][1]!r}")
            scaling = deployment.get("autoscaling_config") or {}
            lo, hi = scaling.get("min_replicas", 1), scaling.get("max_replicas", 1)
            if lo > hi:
                problems.append(f"{where}: min_replicas {lo} > max_replicas {hi}")
            gpus = (deployment.get("ray_actor_options") or {}).get("num_gpus", 0)
            if not 0 <= gpus <= 1:
                problems.append(f"{where}: num_gpus {gpus} is not a fraction in [0, 1]")
    return problems


def settings_for(args: dict[str, Any] | None, base: Settings | None = None) -> Settings:
    """Settings for an application: the environment (or `base`'s) overridden by `args`."""
    import os

    if not args:
        return base or Settings.from_env()
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in args.items()})
    return Settings.from_env(env)


def build_application(app: dict[str, Any], settings: Settings | None = None):
    """The Serve application of one config entry, with its deployment options applied."""
    from talkingface.serving import ray_app

    module, _, _ = app["import_path"].partition(":")
    stage = importlib.import_module(module)
    options = {}
    for deployment in app.get("deployments", []):
        options = {k: v for k, v in deployment.items() if k in DEPLOYMENT_OPTIONS}
    app_settings = settings_for(app.get("args"), settings)
    with ray_app.deployment_options(options):
        return stage.app(app_settings)


def deploy_fleet(
    config: ServeConfig,
    settings: Settings | None = None,
    names: list[str] | None = None,
    start: bool = True,
    num_cpus: int | None = None,
) -> list[str]:
    """Start Serve with the config's gRPC options (unless `start` is False: Serve already
    runs) and run the applications (`names`, default all); the names deployed."""
    from talkingface.serving.ray_app import deploy_many, start_local_serve

    if start:
        start_local_serve(config.grpc_port, config.servicer_functions, num_cpus=num_cpus,
                          ray_address=(settings.ray_address if settings else ""))  # fmt: skip
    apps = [(build_application(app, settings), app["name"]) for app in config.applications
            if names is None or app["name"] in names]  # fmt: skip
    deploy_many(apps)
    return [name for _, name in apps]
