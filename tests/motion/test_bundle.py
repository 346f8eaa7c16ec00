"""Postnets in avatar bundles: publish/load round trip, latest resolution, stable error codes."""

import json

import pytest
import torch

from talkingface.errors import TalkingFaceError
from talkingface.motion import bundle
from talkingface.motion.infer import PostnetModel
from talkingface.storage import LocalStore


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def _code(call) -> str:
    with pytest.raises(TalkingFaceError) as failed:
        call()
    return failed.value.code


def test_postnet_files_are_the_two_inference_files(tiny_postnet):
    files = bundle.postnet_files(tiny_postnet)
    assert files == {
        "postnet/model.safetensors": tiny_postnet / "model.safetensors",
        "postnet/config.json": tiny_postnet / "config.json",
    }
    assert bundle.avatar_prefix("alice-1") == "avatars/alice-1"


def test_publish_then_load_round_trip(store, tiny_postnet, tmp_path):
    version = bundle.publish_postnet(store, "alice", tiny_postnet, {"notes.txt": b"hello"})
    manifest = store.read_manifest("avatars/alice", version)
    assert set(manifest["files"]) == {
        "postnet/model.safetensors",
        "postnet/config.json",
        "notes.txt",
    }
    direct = PostnetModel.load(tiny_postnet)
    assert manifest["metadata"]["postnet"]["version"] == direct.version
    assert manifest["metadata"]["postnet"]["motion_version"] == direct.meta["motion_version"]

    cache = tmp_path / "cache"
    for asked in ("", version):
        loaded, got = bundle.load_postnet(store, "alice", asked, cache, "cpu")
        assert got == version
        assert loaded.version == direct.version
        assert loaded.meta["motion_version"] == direct.meta["motion_version"]
        assert (loaded.mean_face == direct.mean_face).all()
        for key, value in direct.net.state_dict().items():
            assert torch.equal(loaded.net.state_dict()[key], value), key
    cached = cache / "avatars" / "alice" / version / "postnet"
    assert sorted(p.name for p in cached.iterdir()) == ["config.json", "model.safetensors"]

    # A damaged cache copy is noticed (checked against the manifest) and fetched again.
    (cached / "model.safetensors").write_bytes(b"garbage")
    loaded, _ = bundle.load_postnet(store, "alice", version, cache, "cpu")
    assert loaded.version == direct.version


def test_latest_is_the_newest_publish(store, tiny_postnet, tmp_path):
    first = bundle.publish_postnet(store, "bob", tiny_postnet)
    second = bundle.publish_postnet(store, "bob", tiny_postnet)
    assert first != second
    assert bundle.resolve_version(store, "bob") == second
    assert bundle.load_postnet(store, "bob", "", tmp_path / "cache", "cpu")[1] == second
    assert bundle.load_postnet(store, "bob", first, tmp_path / "cache", "cpu")[1] == first


def test_error_codes(store, tiny_postnet, tmp_path):
    cache = tmp_path / "cache"
    bundle.publish_postnet(store, "carol", tiny_postnet)

    def load(avatar, version=""):
        return lambda: bundle.load_postnet(store, avatar, version, cache, "cpu")

    assert _code(load("../etc")) == "INVALID_REQUEST"
    assert _code(load("a/b")) == "INVALID_REQUEST"
    assert _code(load("carol", "../v1")) == "INVALID_REQUEST"
    assert _code(lambda: bundle.avatar_prefix("")) == "INVALID_REQUEST"
    assert _code(load("nobody")) == "AVATAR_NOT_FOUND"
    assert _code(load("nobody", "v1")) == "AVATAR_NOT_FOUND"
    assert _code(load("carol", "v19990101T000000Z-000000")) == "AVATAR_VERSION_NOT_FOUND"

    # A version without a postnet (e.g. only other bundle files so far).
    store.publish_version("avatars/dave", {"renderer.safetensors": b"x"}, version="v1")
    assert _code(load("dave")) == "AVATAR_NOT_READY"

    # Files that match their manifest but do not load.
    config = (tiny_postnet / "config.json").read_bytes()
    store.publish_version(
        "avatars/erin",
        {"postnet/model.safetensors": b"not safetensors", "postnet/config.json": config},
        version="v1",
    )
    assert _code(load("erin")) == "AVATAR_BUNDLE_CORRUPT"
    motion_config = json.dumps({**json.loads(config), "kind": "motion"}).encode()
    store.publish_version(
        "avatars/erin",
        {
            "postnet/model.safetensors": tiny_postnet / "model.safetensors",
            "postnet/config.json": motion_config,
        },
        version="v2",
    )
    assert _code(load("erin", "v2")) == "AVATAR_BUNDLE_CORRUPT"

    # Stored bytes changed behind the manifest's back.
    version = bundle.publish_postnet(store, "frank", tiny_postnet)
    store.put(f"avatars/frank/{version}/postnet/config.json", b"{}")
    with pytest.raises(TalkingFaceError) as error:
        load("frank")()
    assert error.value.code == "AVATAR_BUNDLE_CORRUPT"
    assert "manifest" in error.value.message


def test_publish_refuses_what_is_not_a_postnet(store, tiny_ckpt, tiny_postnet, tmp_path):
    with pytest.raises(FileNotFoundError):
        bundle.publish_postnet(store, "gina", tmp_path / "empty")
    with pytest.raises(ValueError, match="not a postnet"):
        bundle.publish_postnet(store, "gina", tiny_ckpt / "motion")
    with pytest.raises(ValueError, match="replace"):
        bundle.publish_postnet(store, "gina", tiny_postnet, {"postnet/config.json": b"{}"})
    with pytest.raises(TalkingFaceError) as failed:
        bundle.publish_postnet(store, "bad id", tiny_postnet)
    assert failed.value.code == "INVALID_REQUEST"
    assert store.list_versions("avatars/gina") == []
