"""Generated protobuf code matches protos/ and the contracts the brief fixes."""

import importlib
import subprocess
import sys
from pathlib import Path

from talkingface.v1 import broker_pb2, common_pb2, renderer_pb2

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_not_stale():
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_proto_file_has_generated_modules():
    generated = ROOT / "shared" / "talkingface" / "v1"
    for proto in (ROOT / "protos" / "talkingface" / "v1").glob("*.proto"):
        assert (generated / f"{proto.stem}_pb2.py").exists(), proto.name
        assert (generated / f"{proto.stem}_pb2_grpc.py").exists(), proto.name


def test_job_states_follow_the_brief():
    names = [n.removeprefix("JOB_STATE_") for n in broker_pb2.JobState.keys()]  # noqa: SIM118
    assert names == ["UNSPECIFIED", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


def test_stage_services_exist():
    modules = ("audio_features", "motion", "landmark_projection", "renderer", "broker")
    services = {
        service.full_name
        for m in modules
        for service in importlib.import_module(
            f"talkingface.v1.{m}_pb2"
        ).DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "talkingface.v1.AudioFeatures",
        "talkingface.v1.Motion",
        "talkingface.v1.LandmarkProjection",
        "talkingface.v1.Renderer",
        "talkingface.v1.Broker",
    }
    assert renderer_pb2.DESCRIPTOR.services_by_name["Renderer"].methods_by_name["Render"]


def test_error_code_values_are_unique():
    values = list(common_pb2.ErrorCode.values())
    assert len(values) == len(set(values))
