"""Avatars through the broker end to end, on real parts (the module's fleet, conftest.py):
trained from an uploaded SynthTalk directory, ingested and trained from an uploaded video,
imported as a bundle trained elsewhere, and uploads that are none of these failing their jobs
with their codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from talkingface.broker.client import BrokerClient
from talkingface.errors import TalkingFaceError
from talkingface.v1 import broker_pb2 as pb
from tests.broker.fleet_support import TENANT, drained, speech_of

pytestmark = pytest.mark.slow


def test_an_avatar_trained_through_the_broker(fleet, workers, tiny_avatar):
    job = fleet.api.create_avatar(tiny_avatar, preset="tiny", display_name="Tiny")
    assert job.kind == pb.JOB_KIND_TRAIN_AVATAR and job.avatar_id
    assert fleet.api.get_avatar(job.avatar_id).state == pb.AVATAR_STATE_TRAINING
    final = fleet.api.wait(job.job_id, timeout_s=300)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    avatar = fleet.api.get_avatar(job.avatar_id)
    assert avatar.state == pb.AVATAR_STATE_READY and avatar.display_name == "Tiny"
    assert [v.version for v in avatar.versions] == [final.avatar.version]
    assert avatar.versions[0].metrics["renderer.val_psnr"] > 0
    manifest = fleet.store.read_manifest(f"avatars/{job.avatar_id}", final.avatar.version)
    assert {"renderer/model.safetensors", "projection/index.safetensors",
            "postnet/model.safetensors"} <= set(manifest["files"])  # fmt: skip
    listed = fleet.redis.zrange(f"tf:tenantavatars:{TENANT}", 0, -1)
    assert job.avatar_id.encode() in listed
    with pytest.raises(TalkingFaceError) as caught:
        BrokerClient(fleet.address, "globex").get_avatar(job.avatar_id)
    assert caught.value.code == "AVATAR_NOT_FOUND"
    deleted = fleet.api.stub.DeleteAvatar(
        pb.DeleteAvatarRequest(avatar_id=job.avatar_id), metadata=fleet.api.metadata
    )
    assert deleted.versions_deleted == 1
    assert fleet.store.list(f"avatars/{job.avatar_id}") == []
    with pytest.raises(TalkingFaceError) as caught:
        fleet.api.get_avatar(job.avatar_id)
    assert caught.value.code == "AVATAR_NOT_FOUND"
    drained(fleet, job.job_id)


def test_an_upload_that_is_not_an_avatar_fails_its_training_job(fleet, workers):
    upload = fleet.api.upload(np.arange(1000, dtype=np.uint8).tobytes())
    created = fleet.api.stub.CreateAvatar(
        pb.CreateAvatarRequest(synthtalk_upload_id=upload.upload_id, preset="tiny"),
        metadata=fleet.api.metadata,
    )
    final = fleet.api.wait(created.job_id, timeout_s=60)
    assert final.state == pb.JOB_STATE_FAILED
    from talkingface.v1 import common_pb2

    assert common_pb2.ErrorCode.Name(final.error.code) == "INVALID_REQUEST"
    assert fleet.api.get_avatar(created.avatar_id).state == pb.AVATAR_STATE_FAILED
    as_video = fleet.api.stub.CreateAvatar(  # the same bytes as a video: not one
        pb.CreateAvatarRequest(video_upload_id=upload.upload_id, preset="tiny"),
        metadata=fleet.api.metadata,
    )
    final = fleet.api.wait(as_video.job_id, timeout_s=60)
    assert common_pb2.ErrorCode.Name(final.error.code) == "VIDEO_CORRUPT"
    assert final.attempt == 1  # an input error is not retried
    drained(fleet, created.job_id, as_video.job_id)


def test_an_avatar_from_a_person_video_through_the_broker(fleet, workers, tmp_path):
    # Issue 15: an uploaded mp4 (a SynthTalk person, encoded; 6 s) is ingested, trained and
    # published by the train worker, and a render job on the new avatar succeeds.
    from talkingface.data.synthtalk.avatar import build_avatar
    from talkingface.data.synthtalk.fileformat import read_avatar
    from talkingface.media import write_mp4

    build_avatar(tmp_path / "person", seconds=6.0, seed=5, size=256, progress=False)
    person = read_avatar(tmp_path / "person")
    video = tmp_path / "person.mp4"
    write_mp4(video, person["frames"], 25, person["audio"], 16000, crf=18)
    job = fleet.api.create_avatar_from_video(video, preset="tiny", display_name="Video")
    seen = []
    final = fleet.api.wait(job.job_id, seen.append, timeout_s=300)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    stages = {u.stage for u in seen}
    assert {pb.STAGE_PREPROCESS, pb.STAGE_TRAIN} <= stages
    avatar = fleet.api.get_avatar(job.avatar_id)
    assert avatar.state == pb.AVATAR_STATE_READY and avatar.display_name == "Video"
    render = fleet.api.submit_render(job.avatar_id, audio=speech_of(person["audio"], 1.0))
    rendered = fleet.api.wait(render.job_id, timeout_s=300)
    assert rendered.state == pb.JOB_STATE_SUCCEEDED, rendered.error
    assert rendered.render.frames == 25
    drained(fleet, job.job_id, render.job_id)


def test_a_bundle_trained_elsewhere_is_imported(fleet, workers, bundle, tmp_path, capsys):
    # Issue 15: `avatar import --bundle`: checked, published as is (no training), renders.
    import shutil

    from talkingface.cli import main
    from talkingface.v1 import common_pb2

    client = ["--broker", fleet.address, "--tenant", TENANT, "--json"]
    assert main(["avatar", "import", "--bundle", str(bundle), "--name", "Imported", *client]) == 0
    imported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert imported["state"] == "SUCCEEDED"
    avatar = fleet.api.get_avatar(imported["avatar_id"])
    assert avatar.state == pb.AVATAR_STATE_READY and avatar.display_name == "Imported"
    render = fleet.api.submit_render(avatar.avatar_id, audio=speech_of(np.zeros(16000), 1.0))
    rendered = fleet.api.wait(render.job_id, timeout_s=300)
    assert rendered.state == pb.JOB_STATE_SUCCEEDED, rendered.error
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    model = broken / "renderer" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])  # cut short
    job = fleet.api.import_avatar(broken, display_name="Broken")
    final = fleet.api.wait(job.job_id, timeout_s=60)
    assert common_pb2.ErrorCode.Name(final.error.code) == "AVATAR_BUNDLE_CORRUPT"
    assert final.attempt == 1
    assert fleet.api.get_avatar(job.avatar_id).state == pb.AVATAR_STATE_FAILED
    assert fleet.store.list(f"avatars/{job.avatar_id}") == []
    drained(fleet, imported["job_id"], render.job_id, job.job_id)
