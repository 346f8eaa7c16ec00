"""The fleet's serve config: the shipped file passes Ray's schema and ours, bad files are
refused with clear messages, and an application deployed from it carries its options and
answers through Ray Serve's gRPC ingress."""

import copy

import grpc
import numpy as np
import pytest
import yaml

from talkingface.config import ConfigError, Settings
from talkingface.landmarks.bundle import publish_projection
from talkingface.landmarks.projection import ProjectionIndex
from talkingface.serving.fleet import (
    DEFAULT_PATH,
    STAGES,
    build_application,
    deploy_fleet,
    load_serve_config,
)
from talkingface.storage import LocalStore
from talkingface.tensors import assemble, to_tensor
from talkingface.v1 import common_pb2, landmark_projection_pb2_grpc
from talkingface.v1 import landmark_projection_pb2 as pb


def test_the_shipped_config_is_valid_for_ray_and_for_us():
    config = load_serve_config()
    assert [app["name"] for app in config.applications] == list(STAGES)
    assert config.grpc_port > 0 and len(config.servicer_functions) == 5
    renderer = config.application("renderer")["deployments"][0]
    assert 0 < renderer["ray_actor_options"]["num_gpus"] <= 1
    assert all(
        d["ray_actor_options"]["num_gpus"] == 0
        for app in config.without_gpus().applications
        for d in app["deployments"]
    )
    assert renderer["ray_actor_options"]["num_gpus"] > 0  # without_gpus copies


def test_a_config_for_one_machine():
    config = load_serve_config()
    small = config.with_max_replicas(2).with_grpc_port(9123)
    assert small.grpc_port == 9123 and config.grpc_port != 9123
    for app, original in zip(small.applications, config.applications, strict=True):
        scaling = app["deployments"][0]["autoscaling_config"]
        before = original["deployments"][0]["autoscaling_config"]
        expected = max(before["min_replicas"], min(2, before["max_replicas"]))
        assert scaling["max_replicas"] == expected
    renderer = config.application("renderer")["deployments"][0]["autoscaling_config"]
    assert renderer["max_replicas"] > 2  # with_max_replicas copies


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["applications"][0].update(name="mixer"), "not a stage"),
        (lambda c: c["applications"][1].update(import_path="talkingface.nope:app"), "fails"),
        (lambda c: c["applications"][2]["args"].update(K="20"), "TALKINGFACE_"),
        (
            lambda c: c["applications"][3]["deployments"][0]["autoscaling_config"].update(
                min_replicas=5, max_replicas=2
            ),
            "min_replicas",
        ),
        (
            lambda c: c["applications"][3]["deployments"][0]["ray_actor_options"].update(
                num_gpus=2
            ),
            "not a fraction",
        ),
        (lambda c: c["applications"][0]["deployments"][0].update(name="Other"), "AudioFeatures"),
        (lambda c: c.update(applications="all"), "Ray Serve rejects"),
    ],
)
def test_bad_configs_are_refused(tmp_path, edit, message):
    raw = yaml.safe_load(DEFAULT_PATH.read_text())
    bad = copy.deepcopy(raw)
    edit(bad)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=message):
        load_serve_config(path)


def test_deployment_options_come_from_the_file():
    app = build_application(load_serve_config().without_gpus().application("renderer"))
    deployment = app._bound_deployment
    scaling = deployment._deployment_config.autoscaling_config
    assert deployment.name == "Renderer" and deployment.max_ongoing_requests == 2
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (
        1,
        8,
        1.0,
    )
    assert deployment.ray_actor_options["num_gpus"] == 0


def test_an_application_deployed_from_the_file_serves(serve_grpc_port, tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    monkeypatch.setenv("TALKINGFACE_STORE_DIR", str(store_dir))
    frames = np.random.default_rng(0).normal(0, 0.3, (200, 68, 3)).astype(np.float32)
    publish_projection(LocalStore(store_dir), "fleet-avatar", ProjectionIndex.build(frames))
    config = load_serve_config().without_gpus()
    settings = Settings.from_env({"TALKINGFACE_STORE_DIR": str(store_dir)})
    assert deploy_fleet(config, settings, names=["landmark_projection"], start=False) == [
        "landmark_projection"
    ]
    stub = landmark_projection_pb2_grpc.LandmarkProjectionStub(
        grpc.insecure_channel(f"127.0.0.1:{serve_grpc_port}")
    )
    request = pb.ProjectRequest(
        avatar=common_pb2.AvatarRef(avatar_id="fleet-avatar"),
        lm3d=common_pb2.TensorPayload(inline=to_tensor(frames[:5])),
    )
    responses = list(
        stub.Project(request, metadata=(("application", "landmark_projection"),), timeout=60)
    )
    out = assemble(r.chunk for r in responses[1:])
    np.testing.assert_array_equal(out["lm3d"], frames[:5])  # training frames: themselves
