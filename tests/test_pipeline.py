"""`talkingface render`: audio + avatar bundle -> mp4 in one process (tiny models)."""

import json

import pytest

from talkingface.cli import main
from talkingface.media import probe, read_wav
from tests.audio._media import mp4_audio_correlation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


def test_render_command_writes_an_mp4_of_the_audio(
    bundle, tiny_ckpt, tiny_avatar, tmp_path, capsys
):
    out = tmp_path / "out.mp4"
    audio = tiny_avatar / "audio.wav"
    argv = ["render", "--avatar", str(bundle), "--audio", str(audio), "--out", str(out),
            "--ckpt", str(tiny_ckpt), "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    info = probe(out)
    samples, rate = read_wav(audio)
    duration = len(samples) / rate
    assert info["video"]["codec"] == "h264" and info["audio"]["codec"] == "aac"
    assert (info["video"]["width"], info["video"]["height"]) == (32, 32)
    assert abs(report["frames"] / 25 - duration) <= 0.04
    assert abs(info["video"]["duration"] - duration) <= 0.04
    # The audio stream carries the input audio.
    assert mp4_audio_correlation(out, samples) > 0.9


def test_render_refuses_corrupt_audio(bundle, tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + bytes(range(200)))
    argv = ["render", "--avatar", str(bundle), "--audio", str(bad), "--out",
            str(tmp_path / "o.mp4"), "--ckpt", str(tiny_ckpt)]  # fmt: skip
    assert main(argv) == 2
    assert "AUDIO_" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_render_an_avatar_published_in_the_store(
    bundle, tiny_ckpt, tiny_avatar, tmp_path, capsys, monkeypatch
):
    from talkingface.render.commands import bundle_files
    from talkingface.storage import LocalStore

    monkeypatch.setenv("TALKINGFACE_STORE", "local")
    monkeypatch.setenv("TALKINGFACE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("TALKINGFACE_CACHE_DIR", str(tmp_path / "cache"))
    store = LocalStore(tmp_path / "store")
    version = store.publish_version("avatars/yara", bundle_files(bundle)).version
    common = ["--audio", str(tiny_avatar / "audio.wav"), "--ckpt", str(tiny_ckpt), "--json"]
    out = tmp_path / "by-id.mp4"
    assert main(["render", "--avatar", "yara", "--out", str(out), *common]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        tmp_path / "cache" / "avatars" / "yara" / version / "renderer" / "config.json"
    ).is_file()
    # The same bundle rendered from the directory gives the same frames count and video.
    direct = tmp_path / "direct.mp4"
    assert main(["render", "--avatar", str(bundle), "--out", str(direct), *common]) == 0
    assert (
        report["frames"] == json.loads(capsys.readouterr().out.strip().splitlines()[-1])["frames"]
    )
    assert out.read_bytes() == direct.read_bytes()
    assert main(["render", "--avatar", "nobody", "--out", str(tmp_path / "x.mp4"), *common]) == 2
    assert "AVATAR_NOT_FOUND" in capsys.readouterr().err
