"""`talkingface train avatar` end to end (tiny preset), and the avatar bundle's round trip
through both store implementations (LocalStore, and MinioStore on moto's S3 server)."""

import contextlib
import io
import json
import uuid

import numpy as np
import pytest
import torch

from talkingface.cli import main
from talkingface.landmarks.bundle import load_projection
from talkingface.render import checkpoint as rck
from talkingface.render.commands import bundle_files
from talkingface.render.data import load_avatar
from talkingface.storage import LocalStore, MinioStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_avatar, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train-avatar")
    mp = pytest.MonkeyPatch()
    mp.setenv("TALKINGFACE_STORE", "local")
    mp.setenv("TALKINGFACE_STORE_DIR", str(tmp / "store"))
    mp.setenv("TALKINGFACE_CACHE_DIR", str(tmp / "cache"))
    out = tmp / "bundle"
    argv = ["train", "avatar", "--data", str(tiny_avatar), "--out", str(out), "--preset", "tiny",
            "--quiet", "--json", "--publish", "zoe"]  # fmt: skip
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            code = main(argv)
    finally:
        mp.undo()
    assert code == 0
    report = json.loads(buffer.getvalue())  # stdout holds the report alone: logs go to stderr
    return out, report, LocalStore(tmp / "store")


def test_train_avatar_writes_and_publishes_a_bundle(trained, tiny_avatar):
    out, report, store = trained
    metrics = report["renderer"]
    assert metrics["size"] == 32 and metrics["backend"] == "torch" and metrics["steps"] == 80
    assert np.isfinite(metrics["val_psnr"]) and 0 < metrics["val_ssim"] <= 1
    assert (out / "curves.png").stat().st_size > 0
    previews = sorted((out / "previews").glob("val_*.png"))
    assert len(previews) == 2
    published = report["published"]
    assert published["avatar_id"] == "zoe"
    assert set(published["files"]) == {
        "renderer/model.safetensors", "renderer/track.safetensors", "renderer/config.json",
        "projection/index.safetensors", "projection/config.json",
    }  # fmt: skip
    manifest = store.read_manifest("avatars/zoe", published["version"])
    assert manifest["metadata"]["renderer"]["val_psnr"] == metrics["val_psnr"]
    index, _ = load_projection(store, "zoe")
    video = load_avatar(tiny_avatar)
    assert len(index.frames) == video.train[1] - video.train[0]


@pytest.mark.parametrize("kind", ["local", "minio"])
def test_bundle_round_trip_through_both_stores(trained, tiny_avatar, kind, tmp_path, request):
    out, _, _ = trained
    if kind == "local":
        store = LocalStore(tmp_path / "store")
    else:
        s3 = request.getfixturevalue("s3_server")
        store = MinioStore(s3.endpoint, s3.access_key, s3.secret_key,
                           bucket=f"tf-test-{uuid.uuid4().hex[:16]}", region=s3.region)  # fmt: skip
    files = bundle_files(out)
    version = store.publish_version("avatars/round-trip", files).version
    fetched = tmp_path / "fetched"
    for name, path in files.items():
        data = store.read_version_file("avatars/round-trip", version, name)
        assert data == path.read_bytes(), name
        (fetched / name).parent.mkdir(parents=True, exist_ok=True)
        (fetched / name).write_bytes(data)
    original, _ = rck.load_renderer(out / "renderer")
    loaded, track = rck.load_renderer(fetched / "renderer")
    video = load_avatar(tiny_avatar, 32)
    f = [video.val[0], video.val[1] - 1]
    a, _ = original.render(video.lm3d[f], video.R[f], video.t[f], video.background)
    b, _ = loaded.render(video.lm3d[f], track["R"][f], track["t"][f], track["background"])
    assert torch.equal(a, b)


def test_train_avatar_rejects_a_bad_avatar_id_before_training(tiny_avatar, tmp_path, capsys):
    argv = ["train", "avatar", "--data", str(tiny_avatar), "--out", str(tmp_path / "o"),
            "--preset", "tiny", "--quiet", "--publish", "../evil"]  # fmt: skip
    assert main(argv) == 2
    assert "invalid avatar id" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_avatar_and_table5(trained, tiny_avatar, capsys):
    out, report, _ = trained
    argv = ["eval", "avatar", "--data", str(tiny_avatar), "--bundle", str(out), "--json"]
    assert main([*argv, "--ablation", "--preset", "tiny", "--steps", "4", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)  # the result alone: logs go to stderr
    video = load_avatar(tiny_avatar, 32)
    assert result["frames"] == video.val[1] - video.val[0] and result["size"] == 32
    for key in ("psnr", "psnr_head", "psnr_lip", "fps", "mouth_open_r_truth"):
        assert np.isfinite(result[key]), key
    assert result["psnr_head"] < result["psnr"]  # the plate pixels are exact
    assert result["trained"]["val_psnr"] == report["renderer"]["val_psnr"]
    assert [row["ambient_dim"] for row in result["table5"]] == [2, 3, 4]
    assert all(row["fps"] > 0 and np.isfinite(row["psnr"]) for row in result["table5"])
    assert main([*argv, "--align-poses", "--max-frames", "3"]) == 0
    aligned = json.loads(capsys.readouterr().out)
    assert aligned["frames"] == 3 and "aligned" not in result
    for key in ("psnr", "psnr_head", "psnr_lip", "ssim", "rotation_deg_median", "shift_median"):
        assert np.isfinite(aligned["aligned"][key]), key
    assert aligned["aligned"]["steps"] > 0
    assert main(["eval", "avatar", "--data", str(tiny_avatar), "--json"]) == 2
    assert "--bundle" in capsys.readouterr().err
