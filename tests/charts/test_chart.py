"""Offline checks of the Helm chart (charts/talkingface) and the kustomize tree (k8s/).

No cluster can run here, so each check goes as far as an offline tool allows: Helm's own lint
and renderer (helm-python-sdk, the Helm v4 SDK), kubernetes-validate's strict schemas for core
objects, the upstream CRDs' openAPIV3Schema (unknown fields rejected) for custom resources,
the project's own serve-config loader and Settings parser, and `kubectl kustomize`.
Each values file is rendered once per module.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from talkingface.broker import queue as broker_queue
from talkingface.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "talkingface"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRDS = ROOT.parent / "shared" / "k8s" / "crds"
# The Kubernetes version core objects are validated against (kubernetes-validate's schemas).
KUBE_VERSION = "1.31.0"
CUSTOM_KINDS = {"RayService", "ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
SETTINGS = {f.name: f for f in dataclasses.fields(Settings)}
OVERLAYS = ("kind", "gpu")

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")


def _load_script():
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts/render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_k8s = _load_script()


def _values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    """Every ci/*-values.yaml rendered once: {file stem: objects}."""
    assert {p.name for p in CI_VALUES} >= {
        "default-values.yaml", "cpu-only-values.yaml", "gpu-values.yaml",
        "external-deps-values.yaml"}  # fmt: skip
    return {p.stem: render_k8s.render(_values(p)) for p in CI_VALUES}


def _all_objects(renders) -> list[tuple[str, dict[str, Any]]]:
    return [(name, obj) for name, objects in renders.items() for obj in objects]


def _one(objects, kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(found) == 1, f"{kind} *{name_suffix}: {len(found)} rendered"
    return found[0]


def _pod_templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, pod template) of every pod an object makes, RayService groups included."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [(f"{kind}/{name}", obj["spec"]["template"])]
    if kind == "RayService":
        cluster = obj["spec"]["rayClusterConfig"]
        templates = [(f"{name}/head", cluster["headGroupSpec"]["template"])]
        for group in cluster.get("workerGroupSpecs", []):
            templates.append((f"{name}/{group['groupName']}", group["template"]))
        return templates
    return []


def _pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(where, template["spec"]) for where, template in _pod_templates(obj)]


def _containers(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(where, spec, c) for where, spec in _pod_specs(obj)
            for c in spec.get("initContainers", []) + spec["containers"]]  # fmt: skip


# --- Helm: lint and schema ----------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_chart_lints_strictly(values_file):
    report = helm_python.lint(CHART, _values(values_file), strict=True,
                              kube_version=f"v{KUBE_VERSION}")  # fmt: skip
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_chart_has_no_dependencies():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert "dependencies" not in chart
    assert not (CHART / "charts").exists()


def test_versions_follow_the_project():
    """The image tag (appVersion) is the package's version; rayVersion is the pinned Ray."""
    import tomllib

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line)  # fmt: skip
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["ray"]["rayVersion"] == pins["ray"]


def test_values_schema_rejects_typos_and_secret_settings():
    chart = helm_python.Chart.load(CHART)
    chart.validate_schema(chart.merge_values({}))
    for bad in ({"api": {"replicsa": 2}}, {"redis": {"appendfsync": "sometimes"}},
                {"settings": {"redis_url": "redis://x"}}, {"ray": {"gpuWorker": {}}},
                {"renderWorker": {"autoscaling": {"minReplicaCount": -1}}}):  # fmt: skip
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema(chart.merge_values(bad))


# --- Core objects and custom resources against their schemas -------------------------------


def test_core_objects_validate_strictly(renders):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for values, obj in _all_objects(renders):
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{values}: {obj['kind']}/{obj['metadata']['name']}: {exc.message} "
                        f"at {list(exc.path)}")  # fmt: skip
        checked += 1
    assert checked > 40


def _strict(schema: Any) -> Any:
    """additionalProperties: false on every object schema that lists its properties and does
    not preserve unknown fields, so a misspelt field fails (the API server would prune it)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def _crd_validators() -> dict[tuple[str, str], Any]:
    import jsonschema

    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the Ray CRDs are 1 MB each
        for crd in yaml.load_all(path.read_text(), Loader=loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(
                    schema
                )
    return validators


def _check_custom(obj: dict[str, Any]) -> list[str]:
    validator = _crd_validators().get((obj["apiVersion"], obj["kind"]))
    if validator is None:
        return [f"no CRD for {obj['apiVersion']} {obj['kind']} in {CRDS}"]
    return [f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.absolute_path)}"
            for e in validator.iter_errors(obj)]  # fmt: skip


@pytest.fixture(scope="module")
def crds():
    if not CRDS.is_dir():
        pytest.skip(f"the upstream CRDs are not here ({CRDS} is absent)")
    return _crd_validators()


def test_custom_resources_validate_against_crds(renders, crds):
    seen = set()
    for values, obj in _all_objects(renders):
        if obj["kind"] in CUSTOM_KINDS:
            assert not _check_custom(obj), (values, _check_custom(obj))
            seen.add(obj["kind"])
    assert seen >= {"RayService", "ScaledObject", "ServiceMonitor", "PodMonitor"}


def test_crd_check_rejects_unknown_fields(renders, crds):
    """The strict CRD check can fail: a misspelt field deep in the RayService is caught."""
    rayservice = copy.deepcopy(_one(renders["default-values"], "RayService"))
    rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParms"] = {}
    assert any("rayStartParms" in p for p in _check_custom(rayservice))


# --- The stages: serveConfigV2 ---------------------------------------------------------------


def _serve_config(objects) -> dict[str, Any]:
    return yaml.safe_load(_one(objects, "RayService")["spec"]["serveConfigV2"])


def _gpus(config: dict[str, Any]) -> list[float]:
    return [d.get("ray_actor_options", {}).get("num_gpus", 0)
            for app in config["applications"] for d in app["deployments"]]  # fmt: skip


def test_serve_config_is_the_projects_and_loads(renders, tmp_path):
    from talkingface.serving.fleet import DEFAULT_PATH, load_serve_config

    source = load_serve_config(DEFAULT_PATH)
    assert (CHART / "files/serve_config.yaml").resolve() == DEFAULT_PATH.resolve()
    assert any(_gpus(source.raw)), "the source config reserves no GPU: zeroing is untested"
    checked = {}
    for values, objects in renders.items():
        config = _serve_config(objects)
        gpu = any(o["kind"] == "RayService" and any(
            g["groupName"] == "gpu-workers"
            for g in o["spec"]["rayClusterConfig"].get("workerGroupSpecs", []))
            for o in objects)  # fmt: skip
        expected = source.raw if gpu else source.without_gpus().raw
        assert config == expected, values
        key = json.dumps(config, sort_keys=True)
        if key not in checked:
            path = tmp_path / f"{values}.yaml"
            path.write_text(yaml.safe_dump(config))
            checked[key] = load_serve_config(path)
        assert checked[key].grpc_port == 9000
    assert not any(_gpus(_serve_config(renders["cpu-only-values"])))
    assert "nvidia.com/gpu" not in json.dumps(renders["cpu-only-values"])
    assert any(_gpus(_serve_config(renders["gpu-values"])))


def test_ray_cluster_shape(renders):
    for values, objects in renders.items():
        spec = _one(objects, "RayService")["spec"]
        cluster = spec["rayClusterConfig"]
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        # KubeRay keeps only the port named "serve" (the head container's): Serve's gRPC proxy.
        ports = {p["name"]: p for p in spec["serveService"]["spec"]["ports"]}
        assert list(ports) == ["serve"] and ports["serve"]["port"] == 9000
        assert ports["serve"]["appProtocol"] == "kubernetes.io/h2c"
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == 9000
        groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
        for where, _, container in _containers(_one(objects, "RayService")):
            names = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert names["metrics"] == 8080 and names["tf-metrics"] == 9464, where
            assert names["serve"] == 9000, where
            probe = container["readinessProbe"]["exec"]["command"]
            assert probe[0] == "python" and "wget" not in " ".join(probe), where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/dev/shm", "/var/cache/talkingface"} <= mounts, where
        if "gpu-workers" in groups:
            gpu = groups["gpu-workers"]["template"]["spec"]
            resources = gpu["containers"][0]["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
            assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
        else:
            assert "cpu-workers" in groups, values
            assert "nvidia.com/gpu" not in json.dumps(groups), values


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if str(quantity).endswith(suffix):
            return float(str(quantity)[: -len(suffix)]) * factor
    return float(quantity)


def test_ray_shared_memory_holds_the_object_store(renders):
    """Ray's object store takes 30% of the memory limit; /dev/shm must hold it (else Ray
    falls back to /tmp, slower and counted against the scratch volume)."""
    for values, objects in renders.items():
        for where, spec in _pod_specs(_one(objects, "RayService")):
            shm = {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]
            assert shm["medium"] == "Memory"
            limit = _bytes(spec["containers"][0]["resources"]["limits"]["memory"])
            assert _bytes(shm["sizeLimit"]) >= 0.3 * limit, (values, where)


def test_ray_probe_script_runs(renders, tmp_path):
    """The exec probe is real Python: it fails on an unreachable endpoint."""
    command = _one(renders["default-values"], "RayService")["spec"]["rayClusterConfig"][
        "headGroupSpec"
    ]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    import sys

    script = command[2]
    bad = subprocess.run([sys.executable, "-c", script, "http://127.0.0.1:9/x"],
                         capture_output=True, timeout=30)  # fmt: skip
    assert bad.returncode != 0
    ok = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr


# --- Settings --------------------------------------------------------------------------------


def _settings_env(objects, container: dict[str, Any]) -> dict[str, str]:
    """The TALKINGFACE_* environment a container sees (secrets as placeholders)."""
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].endswith("-settings")]  # fmt: skip
    env = dict(configmap["data"])
    for var in container.get("env", []):
        if var["name"].startswith("TALKINGFACE_"):
            env[var["name"]] = var.get("value", "secret-placeholder").replace(
                "$(REDIS_PASSWORD)", "pw"
            )
    return env


def test_settings_are_real_and_parse(renders):
    for values, objects in renders.items():
        (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"
                        and o["metadata"]["name"].endswith("-settings")]  # fmt: skip
        for key in configmap["data"]:
            assert key.startswith("TALKINGFACE_"), key
            field = SETTINGS.get(key.removeprefix("TALKINGFACE_").lower())
            assert field is not None, f"{values}: {key} is not a Settings field"
            assert not field.metadata["secret"], f"{values}: secret {key} in a ConfigMap"
        for obj in objects:
            for where, _, container in _containers(obj):
                if not container["image"].startswith("talkingface/"):
                    continue
                env = _settings_env(objects, container)
                unknown = [k for k in env if k.removeprefix("TALKINGFACE_").lower() not in SETTINGS]
                assert not unknown, (values, where, unknown)
                try:
                    settings = Settings.from_env(env)
                except ConfigError as exc:
                    pytest.fail(f"{values}: {where}: {exc}")
                assert settings.store == "minio" and settings.redis_url.startswith("redis")
                assert settings.motion_checkpoint.startswith("store:"), (values, where)


def test_default_values_list_only_real_settings():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    maps = [values["settings"]] + [values[c]["settings"]
                                   for c in ("api", "renderWorker", "trainWorker")]  # fmt: skip
    for mapping in maps:
        for key in mapping:
            assert key in SETTINGS, f"values.yaml: {key} is not a Settings field"
    for path in CI_VALUES:
        for key in _values(path).get("settings") or {}:
            assert key in SETTINGS, f"{path.name}: {key} is not a Settings field"


def test_api_runs_no_inprocess_workers(renders):
    for objects in renders.values():
        api = _one(objects, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
        env = _settings_env(objects, api)
        settings = Settings.from_env(env)
        assert settings.broker_workers == 0 and settings.broker_train_workers == 0


# --- Security --------------------------------------------------------------------------------


def test_every_pod_is_locked_down(renders):
    pods = 0
    for values, obj in _all_objects(renders):
        for where, spec in _pod_specs(obj):
            grace = None
            pods += 1
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True, (values, where)
            assert pod["seccompProfile"]["type"] == "RuntimeDefault", (values, where)
            for container in spec.get("initContainers", []) + spec["containers"]:
                sc = container["securityContext"]
                label = (values, where, container["name"])
                assert sc["allowPrivilegeEscalation"] is False, label
                assert sc["readOnlyRootFilesystem"] is True, label
                assert sc["capabilities"]["drop"] == ["ALL"], label
                assert sc.get("runAsUser", pod.get("runAsUser")) == 10001, label
                assert container["resources"]["requests"] and container["resources"]["limits"]
                if container["image"].startswith("talkingface/"):
                    mounts = {m["mountPath"] for m in container["volumeMounts"]}
                    assert {"/tmp", "/var/cache/talkingface"} <= mounts, label
                    env = _settings_env(renders[values], container)
                    grace = Settings.from_env(env).shutdown_grace_s
            if grace is not None and obj["kind"] != "Job":
                # The API drains its in-process pool and then its RPCs, each within the grace.
                assert spec["terminationGracePeriodSeconds"] > 2 * grace, (values, where)
    assert pods >= 8


def test_api_probes_are_native_grpc(renders):
    api = _one(renders["default-values"], "Deployment", "-api")["spec"]["template"]["spec"]
    container = api["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 50051, "metrics": 9464}  # fmt: skip
    env = _settings_env(renders["default-values"], container)
    assert not Settings.from_env(env).tls_cert_file


def test_api_tls_from_a_secret_with_probes_on_the_health_port(renders):
    objects = renders["external-deps-values"]
    api = _one(objects, "Deployment", "-api")["spec"]["template"]["spec"]
    container = api["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50052
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 50051, "metrics": 9464, "health": 50052}  # fmt: skip
    (volume,) = [v for v in api["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "talkingface-api-tls"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] is True
    settings = Settings.from_env(_settings_env(objects, container))
    assert settings.tls_cert_file == f"{mount['mountPath']}/tls.crt"
    assert settings.tls_key_file == f"{mount['mountPath']}/tls.key"
    assert settings.grpc_health_port == 50052 and settings.grpc_port == 50051
    assert settings.broker_auth == "keys"  # the API's own settings are kept


def _policies(objects):
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def test_network_policies(renders):
    for objects in renders.values():
        policies = _policies(objects)
        deny = [p for p in policies if p["metadata"]["name"].endswith("-default-deny")]
        assert deny and not deny[0]["spec"].get("ingress") and not deny[0]["spec"].get("egress")
        assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        text = json.dumps(policies)
        assert '"port": 53, "protocol": "UDP"' in text and '"port": 53, "protocol": "TCP"' in text
        api = _one(objects, "NetworkPolicy", "-api")
        assert api["spec"]["ingress"][0]["ports"] == [{"port": 50051, "protocol": "TCP"}]
        ray = _one(objects, "NetworkPolicy", "-ray")
        ray_selector = ray["spec"]["podSelector"]["matchLabels"]
        assert any("ports" not in rule and rule["from"][0]["podSelector"]["matchLabels"]
                   == ray_selector for rule in ray["spec"]["ingress"])  # fmt: skip
        scrape = _one(objects, "NetworkPolicy", "-dns-and-metrics")["spec"]["ingress"][0]
        assert {p["port"] for p in scrape["ports"]} == {9464, 8080}
        # Webhooks: the API pods reach public addresses on 443, never the private ranges or
        # the cloud metadata endpoint.
        hooks = _one(objects, "NetworkPolicy", "-api-webhooks")["spec"]
        assert hooks["podSelector"] == api["spec"]["podSelector"]
        (rule,) = hooks["egress"]
        block = rule["to"][0]["ipBlock"]
        assert block["cidr"] == "0.0.0.0/0" and rule["ports"] == [{"port": 443, "protocol": "TCP"}]
        for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                        "127.0.0.0/8"):  # fmt: skip
            assert private in block["except"]
        # Every pod of the release falls under the deny-all (Ray pods by labels KubeRay
        # leaves alone), and the Ray policy reaches every Ray pod.
        for obj in objects:
            for where, template in _pod_templates(obj):
                labels = template["metadata"]["labels"]
                assert deny[0]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
                if obj["kind"] == "RayService":
                    assert ray_selector.items() <= labels.items(), where
                    assert "app.kubernetes.io/name" not in ray_selector
    external = _policies(renders["external-deps-values"])
    assert not [p for p in external if p["metadata"]["name"].endswith(("-redis", "-objectstore"))]


def test_gpu_workers_can_hold_every_stage_at_max(renders):
    """Sizing: the GPU fractions at max_replicas fit the GPU worker group at its max."""
    for values in ("default-values", "gpu-values"):
        objects = renders[values]
        config = _serve_config(objects)
        deployments = [d for app in config["applications"] for d in app["deployments"]]
        need = sum(
            d["ray_actor_options"].get("num_gpus", 0) * d["autoscaling_config"]["max_replicas"]
            for d in deployments
        )
        (group,) = [g for g in _one(objects, "RayService")["spec"]["rayClusterConfig"][
            "workerGroupSpecs"] if g["groupName"] == "gpu-workers"]  # fmt: skip
        per_pod = group["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        assert need <= group["maxReplicas"] * per_pod, (values, need)


def test_pod_disruption_budgets(renders):
    pdbs = {o["metadata"]["name"] for o in renders["default-values"]
            if o["kind"] == "PodDisruptionBudget"}  # fmt: skip
    assert {f"talkingface-{c}" for c in ("api", "render-worker", "train-worker",
                                            "ray-workers")} <= pdbs  # fmt: skip


# --- Queues, state ---------------------------------------------------------------------------


def test_keda_scales_workers_on_their_streams(renders):
    for objects in renders.values():
        for queue in ("render", "train"):
            scaled = _one(objects, "ScaledObject", f"-{queue}-worker")
            spec = scaled["spec"]
            assert spec["scaleTargetRef"]["name"] == scaled["metadata"]["name"]
            behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
            assert {t["type"] for t in spec["triggers"]} == {"redis-streams", "redis"}
            for trigger in spec["triggers"]:
                meta = trigger["metadata"]
                if trigger["type"] == "redis":  # the fair-share backlog of every tenant
                    assert meta["listName"] == f"tf:backlog:{queue}"
                    assert int(meta["listLength"]) >= 1
                    continue
                assert meta["stream"] == f"tf:queue:{queue}"
                assert meta["consumerGroup"] == broker_queue.GROUP
                assert "lagCount" in meta or "pendingEntriesCount" in meta
            worker = _one(objects, "Deployment", f"-{queue}-worker")["spec"]
            assert "replicas" not in worker  # KEDA owns the count
            command = worker["template"]["spec"]["containers"][0]["command"]
            assert command[:4] == ["talkingface", "worker", "--queues", queue]
    cpu = _one(renders["cpu-only-values"], "ScaledObject", "-render-worker")
    assert cpu["spec"]["minReplicaCount"] == 0


def test_stream_names_match_the_queue_code():
    import inspect

    assert 'f"tf:queue:{name}"' in inspect.getsource(broker_queue)
    assert 'f"tf:backlog:{name}"' in inspect.getsource(broker_queue)


def test_state_services(renders):
    default = renders["default-values"]
    redis = _one(default, "StatefulSet", "-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--maxmemory-policy"] == "noeviction"
    assert flags["--appendfsync"] == "everysec"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    _one(default, "StatefulSet", "-objectstore")
    hook = _one(default, "Job", "-bucket-init")
    assert "post-install" in hook["metadata"]["annotations"]["helm.sh/hook"]
    external = renders["external-deps-values"]
    assert not [o for o in external if o["kind"] == "StatefulSet"]
    api = _one(external, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v for v in api["env"]}
    assert env["TALKINGFACE_REDIS_URL"]["value"] == (
        "rediss://:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
    )
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "talkingface-redis", "key": "password"}  # fmt: skip
    assert env["TALKINGFACE_MINIO_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "talkingface-s3"
    )
    assert env["TALKINGFACE_STAGE_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "talkingface-stage", "key": "secret"}  # fmt: skip
    assert not [o for o in external if o["kind"] == "Secret"]
    # Every container that calls or serves the stages holds the stage-plane secret; the
    # bucket-init hook does not.
    for kind, suffix in [("Deployment", "-api"), ("Job", "-bucket-init")]:
        spec = _one(default, kind, suffix)["spec"]["template"]["spec"]
        names = {v["name"] for v in spec["containers"][0]["env"]}
        assert ("TALKINGFACE_STAGE_SECRET" in names) == (kind == "Deployment"), suffix


# --- Monitoring ------------------------------------------------------------------------------


def test_monitoring_objects(renders):
    objects = renders["default-values"]
    monitor = _one(objects, "PodMonitor")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                "targetLabel": "ray_io_cluster"} in endpoint["relabelings"]  # fmt: skip
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"metrics", "tf-metrics"}
    service_monitor = _one(objects, "ServiceMonitor")
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    external = renders["external-deps-values"]
    for kind in ("ServiceMonitor", "PodMonitor"):  # labels follow monitoring.labels
        assert _one(external, kind)["metadata"]["labels"]["release"] == "prometheus"
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    scraped = [o for o in objects if o["kind"] == "Service"
               and selector.items() <= o["metadata"]["labels"].items()]  # fmt: skip
    assert {o["metadata"]["name"].removeprefix("talkingface-") for o in scraped} == {
        "api-metrics", "render-worker-metrics", "train-worker-metrics"}  # fmt: skip
    rules_file = CHART / "files/monitoring/rules.yaml"
    if rules_file.is_file() and yaml.safe_load(rules_file.read_text()).get("groups"):
        rule = _one(objects, "PrometheusRule")
        assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    dashboards = sorted((CHART / "files/monitoring/dashboards").glob("*.json"))
    maps = [o for o in objects if o["kind"] == "ConfigMap"
            and o["metadata"]["labels"].get("grafana_dashboard") == "1"]  # fmt: skip
    assert len(maps) == len(dashboards)
    for path, configmap in zip(dashboards, sorted(maps, key=lambda m: next(iter(m["data"]))),
                               strict=True):  # fmt: skip
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def test_monitoring_switches_off():
    objects = render_k8s.render({"monitoring": {
        "serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": False},
        "prometheusRule": {"enabled": False}, "dashboards": {"enabled": False}}})  # fmt: skip
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not [o for o in objects if "grafana_dashboard" in o["metadata"].get("labels", {})]


def test_renders_without_monitoring_files(tmp_path):
    """The wrappers guard their files: the chart renders before the dashboards exist."""
    chart = tmp_path / "talkingface"
    shutil.copytree(CHART, chart, symlinks=False, ignore=shutil.ignore_patterns("monitoring"))
    objects = []
    loaded = helm_python.Chart.load(chart)
    for template, text in loaded.render({}, name="tf", namespace="ns").items():
        if template.endswith("NOTES.txt"):
            continue
        objects += [d for d in yaml.safe_load_all(text) if d]
    assert "PrometheusRule" not in {o["kind"] for o in objects}
    assert "RayService" in {o["kind"] for o in objects}


# --- k8s/ ----------------------------------------------------------------------------------


def test_k8s_tree_is_in_sync_with_the_chart():
    stale = render_k8s.stale()
    assert not stale, f"out of date: {stale}; run .venv/bin/python scripts/render_k8s.py"


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot build the overlays")
    built = {}
    for overlay in OVERLAYS:
        result = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s/overlays" / overlay)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        built[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return built


def test_overlays_build_and_validate(overlays):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for overlay, objects in overlays.items():
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                if CRDS.is_dir():
                    assert not _check_custom(obj), (overlay, _check_custom(obj))
                continue
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
        if overlay == "kind":
            assert secrets == {
                "talkingface-redis",
                "talkingface-objectstore",
                "talkingface-stage-plane",
            }
        assert {o["metadata"].get("namespace") for o in objects} == {"talkingface"}


def test_kind_overlay_is_cpu_only_and_small(overlays):
    objects = overlays["kind"]
    assert "nvidia.com/gpu" not in json.dumps(objects)
    assert not any(_gpus(_serve_config(objects)))
    assert _serve_config(objects) == _serve_config(overlays["gpu"]) | {
        "applications": _serve_config(objects)["applications"]}  # fmt: skip
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert obj["spec"].get("replicas", 1) == 1, obj["metadata"]["name"]
        if obj["kind"] == "StatefulSet":
            assert "volumeClaimTemplates" not in obj["spec"]
            volumes = {v["name"]: v for v in obj["spec"]["template"]["spec"]["volumes"]}
            assert "emptyDir" in volumes["data"]
        if obj["kind"] == "ScaledObject":
            assert obj["spec"]["maxReplicaCount"] == 1
    groups = _one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [(g["groupName"], g["maxReplicas"]) for g in groups] == [("cpu-workers", 1)]


def test_gpu_overlay_keeps_gpus(overlays):
    objects = overlays["gpu"]
    assert any(_gpus(_serve_config(objects)))
    groups = _one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert groups[0]["groupName"] == "gpu-workers"
    assert groups[0]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    train = _one(objects, "Deployment", "-train-worker")["spec"]["template"]["spec"]
    assert train["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
