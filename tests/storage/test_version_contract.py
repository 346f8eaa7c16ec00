"""The versioned-publish contract, run against LocalStore and MinioStore (on moto).

A version is `{prefix}/{version}/` plus `manifest.json` written last; readers see only
versions whose manifest exists, and file reads are checked against the manifest digests.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from talkingface.storage import (
    InvalidKey,
    ObjectStore,
    StoreIntegrityError,
    StoreObjectNotFound,
    VersionExists,
)
from tests.storage.support import MiB, sha256


def test_publish_version_writes_files_and_manifest(store: ObjectStore, tmp_path: Path) -> None:
    weights = os.urandom(2 * MiB + 1)
    weights_path = tmp_path / "renderer.safetensors"
    weights_path.write_bytes(weights)
    files = {"renderer.safetensors": weights_path, "pose/track.npy": b"pose", "empty": b""}
    published = store.publish_version("avatars/t1/alice", files, metadata={"psnr": 31.2})

    assert published.prefix == "avatars/t1/alice"
    assert published.key == f"avatars/t1/alice/{published.version}"
    manifest = store.read_manifest("avatars/t1/alice", published.version)
    assert manifest == published.manifest
    assert manifest["schema_version"] == 1
    assert manifest["version"] == published.version
    assert manifest["metadata"] == {"psnr": 31.2}
    created = datetime.fromisoformat(manifest["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert manifest["files"] == {
        "empty": {"size": 0, "sha256": sha256(b"")},
        "pose/track.npy": {"size": 4, "sha256": sha256(b"pose")},
        "renderer.safetensors": {"size": len(weights), "sha256": sha256(weights)},
    }
    for name, source in files.items():
        expected = source.read_bytes() if isinstance(source, Path) else source
        assert store.read_version_file("avatars/t1/alice", published.version, name) == expected
    assert sorted(i.key[len(published.key) + 1 :] for i in store.list(published.key)) == [
        "empty",
        "manifest.json",
        "pose/track.npy",
        "renderer.safetensors",
    ]
    raw = store.get(f"{published.key}/manifest.json")
    assert json.loads(raw) == manifest
    assert store.stat(f"{published.key}/manifest.json").content_type == "application/json"


def test_default_version_ids_are_sortable_timestamps(store: ObjectStore) -> None:
    version = store.publish_version("ids", {"f": b"x"}).version
    stamp, suffix = version[1:].split("-")
    assert version[0] == "v" and len(suffix) == 6 and int(suffix, 16) >= 0
    assert datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")


def test_versions_are_listed_oldest_first(store: ObjectStore) -> None:
    assert store.list_versions("av") == []
    assert store.latest_version("av") is None
    first = store.publish_version("av", {"w": b"1"}).version
    second = store.publish_version("av", {"w": b"2"}).version
    assert store.list_versions("av") == [first, second]
    assert store.latest_version("av") == second
    # Order comes from created_at, not from the names: "v10" is published after "v2".
    store.publish_version("named", {"w": b"a"}, version="v2")
    store.publish_version("named", {"w": b"b"}, version="v10")
    assert store.list_versions("named") == ["v2", "v10"]
    assert store.latest_version("named") == "v10"
    # Versions of a longer sibling prefix are not mixed in.
    store.publish_version("av2", {"w": b"3"})
    assert store.list_versions("av") == [first, second]


def test_published_versions_are_immutable(store: ObjectStore) -> None:
    store.publish_version("imm", {"w": b"original"}, version="v1")
    with pytest.raises(VersionExists):
        store.publish_version("imm", {"w": b"replacement", "extra": b"x"}, version="v1")
    assert store.read_version_file("imm", "v1", "w") == b"original"
    assert not store.exists("imm/v1/extra")


def test_a_crashed_publish_is_invisible(store: ObjectStore) -> None:
    complete = store.publish_version("crash", {"w": b"good"}).version
    # What a publisher that died before writing the manifest leaves behind:
    store.put("crash/v29991231T235959Z-dead00/w", b"half")
    assert store.list_versions("crash") == [complete]
    assert store.latest_version("crash") == complete
    with pytest.raises(StoreObjectNotFound):
        store.read_manifest("crash", "v29991231T235959Z-dead00")
    with pytest.raises(StoreObjectNotFound):
        store.read_version_file("crash", "v29991231T235959Z-dead00", "w")
    # Retrying the same version id completes it.
    store.publish_version("crash", {"w": b"retried"}, version="v29991231T235959Z-dead00")
    assert store.read_version_file("crash", "v29991231T235959Z-dead00", "w") == b"retried"


def test_read_version_file_detects_tampering(store: ObjectStore) -> None:
    version = store.publish_version("tamper", {"w": b"trusted", "x": b"12345"}).version
    store.put(f"tamper/{version}/w", b"evil!!!")  # same size, different bytes
    store.put(f"tamper/{version}/x", b"123456")  # different size
    for name in ("w", "x"):
        with pytest.raises(StoreIntegrityError, match="does not match the manifest"):
            store.read_version_file("tamper", version, name)
    assert store.read_version_file("tamper", version, "w", verify=False) == b"evil!!!"


def test_read_version_file_only_serves_manifest_files(store: ObjectStore) -> None:
    version = store.publish_version("only", {"w": b"1"}).version
    store.put(f"only/{version}/smuggled", b"2")
    with pytest.raises(StoreObjectNotFound, match="not a file of version"):
        store.read_version_file("only", version, "smuggled")


def test_a_corrupt_manifest_is_skipped_and_reported(store: ObjectStore) -> None:
    good = store.publish_version("corrupt", {"w": b"1"}).version
    store.put("corrupt/vbad/manifest.json", b"{not json")
    store.put_json("corrupt/vwrong/manifest.json", {"schema_version": 99})
    assert store.list_versions("corrupt") == [good]
    for version in ("vbad", "vwrong"):
        with pytest.raises(StoreIntegrityError):
            store.read_manifest("corrupt", version)


def test_publish_validates_everything_before_writing(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidKey, match="reserved"):
        store.publish_version("val", {"w": b"1", "manifest.json": b"{}"})
    with pytest.raises(ValueError, match="not plain JSON"):
        store.publish_version("val", {"w": b"1"}, metadata={"loss": float("inf")})
    with pytest.raises(FileNotFoundError):
        store.publish_version("val", {"w": b"1", "z": tmp_path / "missing.bin"})
    with pytest.raises(TypeError):
        store.publish_version("val", {"w": "text is not bytes"})  # type: ignore[dict-item]
    assert store.list("") == []
