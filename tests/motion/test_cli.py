"""`talkingface train syncnet|motion|postnet` and `talkingface eval motion` end to end (tiny)."""

import json

import pytest

from talkingface.cli import main
from talkingface.landmarks.bundle import load_projection
from talkingface.motion import checkpoint as ck
from talkingface.storage import LocalStore

pytestmark = pytest.mark.slow


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TALKINGFACE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_train_and_eval_commands(tiny_corpus, tmp_path, cache, capsys):
    ckpt = tmp_path / "ckpt"
    common = [
        "--data",
        str(tiny_corpus),
        "--out",
        str(ckpt),
        "--preset",
        "tiny",
        "--quiet",
        "--json",
    ]
    assert main(["train", "syncnet", *common, "--steps", "4"]) == 0
    report = _last_json(capsys)
    assert report["model_dir"] == str(ckpt / "syncnet") and "val_acc" in report["validation"]
    assert main(["train", "motion", *common, "--steps", "4", "--variant", "no_pitch"]) == 0
    report = _last_json(capsys)
    assert set(report["variants"]) == {"no_pitch"}
    assert (ckpt / "motion-no_pitch" / ck.CONFIG).is_file()
    # eval needs the full model
    assert main(["eval", "motion", "--data", str(tiny_corpus), "--ckpt", str(ckpt), "--json"]) == 2
    assert "train motion" in capsys.readouterr().err
    assert main(["train", "motion", *common, "--steps", "4"]) == 0
    capsys.readouterr()
    argv = [
        "eval",
        "motion",
        "--data",
        str(tiny_corpus),
        "--ckpt",
        str(ckpt),
        "--json",
        "--postnet-steps",
        "2",
        "--quiet",
    ]
    assert main(argv) == 0
    result = _last_json(capsys)
    rows = {r["name"]: r for r in result["rows"]}
    assert {"mean_face", "ridge", "vae[full]", "vae[no_pitch]"} <= set(rows)
    assert rows["ground truth (sync reference)"]["l2_mm"] == 0.0
    assert rows["mean_face"]["mouth_open_r"] == 0.0 and rows["mean_face"]["l2_mm"] > 0
    assert set(result["margins"]) == {"vae[full] vs mean_face", "vae[full] vs ridge"}
    assert result["eval_set"]["utterances"] > 0 and "it" in result["eval_set"]["languages"]
    table = result["table3"]
    names = {r["name"] for r in table["rows"]}
    for name in ("GeneFace++", "w/o P-VAE", "w/o P-Postnet", "GeneFace (no pitch)", "ridge"):
        assert name in names, name
    assert "no_temporal" in result["missing"] and "w/o temporal loss" in result["missing"]
    assert set(table["margins"]) == {"GeneFace++ vs mean_face", "GeneFace++ vs ridge"}
    assert len(table["eval_set"]["speakers"]) <= 4
    assert set(table["eval_set"]["speakers"]) <= set(result["eval_set"]["speakers"])


def test_train_postnet_on_an_avatar(tiny_ckpt, tiny_avatar, tmp_path, cache, capsys, monkeypatch):
    avatar = tiny_avatar
    monkeypatch.setenv("TALKINGFACE_STORE", "local")
    monkeypatch.setenv("TALKINGFACE_STORE_DIR", str(tmp_path / "store"))
    out = tmp_path / "postnet"
    argv = [
        "train",
        "postnet",
        "--data",
        str(avatar),
        "--ckpt",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--quiet",
        "--json",
        "--publish",
        "alice",
    ]
    assert main(argv) == 0
    report = _last_json(capsys)
    assert (out / ck.WEIGHTS).is_file() and (out / ck.CURVES).is_file()
    assert report["published"]["avatar_id"] == "alice"
    # The published version carries the avatar's projection index too.
    store = LocalStore(tmp_path / "store")
    index, version = load_projection(store, "alice")
    assert version == report["published"]["version"]
    lo, hi = json.loads((avatar / "synthtalk.json").read_text())["splits"]["train"]
    assert len(index.frames) == hi - lo
    assert "l2_mm" in report["validation_without_postnet"]
    # the calibration was tried, and its effect on the validation frames reported
    assert "val_l2_mm" in report["validation"]["calibration"]["before"]


def test_bad_training_data_is_a_clear_error(tmp_path, cache, capsys):
    argv = ["train", "syncnet", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    assert "synthtalk.json" in capsys.readouterr().err
