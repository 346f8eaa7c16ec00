"""The ObjectStore contract: one set of tests run against LocalStore and MinioStore (on moto).

The `store` fixture (tests/storage/conftest.py) gives each test both implementations. Missing
keys: get/stream/stat/presigned_get raise StoreObjectNotFound; delete and delete_prefix of
something absent are no-ops (S3 semantics). Versioned publish: test_version_contract.py.
"""

from __future__ import annotations

import io
import os
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from talkingface.storage import (
    InvalidKey,
    LocalStore,
    ObjectStore,
    StoreIntegrityError,
    StoreObjectNotFound,
)
from tests.storage.support import MiB, TrickleStream, sha256

# ---- objects -----------------------------------------------------------------------------


def test_put_get_bytes_round_trip(store: ObjectStore) -> None:
    info = store.put("docs/a.txt", b"hello", content_type="text/plain")
    assert (info.key, info.size, info.sha256, info.content_type) == (
        "docs/a.txt",
        5,
        sha256(b"hello"),
        "text/plain",
    )
    assert store.get("docs/a.txt") == b"hello"


def test_put_empty_object(store: ObjectStore) -> None:
    info = store.put("empty.bin", b"")
    assert info.size == 0 and info.sha256 == sha256(b"")
    assert store.get("empty.bin") == b""
    assert list(store.stream("empty.bin")) == []


def test_put_stream_larger_than_chunk(store: ObjectStore) -> None:
    data = os.urandom(3 * MiB + 17)
    info = store.put("big/file.bin", io.BytesIO(data), content_type="application/x-test")
    assert info.size == len(data) and info.sha256 == sha256(data)
    assert store.get("big/file.bin") == data
    stat = store.stat("big/file.bin")
    assert (stat.size, stat.sha256, stat.content_type) == (
        len(data),
        sha256(data),
        "application/x-test",
    )


def test_put_unseekable_stream_of_unknown_length(store: ObjectStore) -> None:
    data = os.urandom(6 * MiB + 5)
    info = store.put("up/stream.bin", TrickleStream(data))  # type: ignore[arg-type]
    assert info.size == len(data) and info.sha256 == sha256(data)
    assert store.stat("up/stream.bin").sha256 == sha256(data)
    assert store.get("up/stream.bin") == data


def test_put_replaces_existing_object(store: ObjectStore) -> None:
    store.put("k/v", b"old", content_type="text/plain")
    store.put("k/v", b"newer", content_type="application/json")
    assert store.get("k/v") == b"newer"
    stat = store.stat("k/v")
    assert (stat.size, stat.sha256, stat.content_type) == (5, sha256(b"newer"), "application/json")


@pytest.mark.parametrize("chunk_size", [MiB, 1000])
def test_stream_yields_bounded_chunks(store: ObjectStore, chunk_size: int) -> None:
    data = os.urandom(3 * MiB + 123)
    store.put("s/data.bin", data)
    chunks = list(store.stream("s/data.bin", chunk_size=chunk_size))
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    assert len(chunks) >= len(data) // chunk_size
    assert b"".join(chunks) == data


def test_stream_closed_early_releases_and_store_still_works(store: ObjectStore) -> None:
    store.put("s/a", os.urandom(2 * MiB))
    chunks = store.stream("s/a", chunk_size=1024)
    assert len(next(chunks)) == 1024
    chunks.close()
    assert list(chunks) == []
    store.delete("s/a")
    assert not store.exists("s/a")


def test_stream_as_context_manager(store: ObjectStore) -> None:
    store.put("s/a", b"abc")
    with store.stream("s/a", chunk_size=2) as chunks:
        assert next(chunks) == b"ab"
    assert list(chunks) == []


def test_download_streams_into_a_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    store.put("a/big.bin", data)
    target = tmp_path / "big.bin"
    target.write_bytes(b"an older, longer file" * 1000000)
    store.download("a/big.bin", target, chunk_size=MiB)
    assert target.read_bytes() == data
    with pytest.raises(StoreObjectNotFound):
        store.download("a/missing.bin", tmp_path / "missing.bin")


def test_put_rejects_text(store: ObjectStore) -> None:
    with pytest.raises(TypeError):
        store.put("t/a", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.put("t/a", io.StringIO("text"))  # type: ignore[arg-type]
    assert not store.exists("t/a")


def test_stream_rejects_bad_chunk_size(store: ObjectStore) -> None:
    store.put("s/a", b"x")
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            store.stream("s/a", chunk_size=bad)  # type: ignore[arg-type]


def test_stat_and_exists(store: ObjectStore) -> None:
    store.put("x/y/z.json", b"{}", content_type="application/json")
    assert store.exists("x/y/z.json")
    assert not store.exists("x/y/other")
    assert not store.exists("x/y")  # a prefix is not an object
    stat = store.stat("x/y/z.json")
    assert (stat.key, stat.size, stat.sha256) == ("x/y/z.json", 2, sha256(b"{}"))
    assert stat.content_type == "application/json"


def test_list_by_prefix_is_sorted_recursive_and_exact(store: ObjectStore) -> None:
    for key in ["p/b", "pq/x", "p/c/d", "other/p/x", "p/a", "p/c/a"]:
        store.put(key, key.encode())
    listed = store.list("p")
    assert [info.key for info in listed] == ["p/a", "p/b", "p/c/a", "p/c/d"]
    assert [info.size for info in listed] == [3, 3, 5, 5]
    assert [info.key for info in store.list("p/c")] == ["p/c/a", "p/c/d"]
    assert [info.key for info in store.list("")] == sorted(
        ["p/b", "pq/x", "p/c/d", "other/p/x", "p/a", "p/c/a"]
    )
    assert store.list("nothing/here") == []
    assert store.list("p/a") == []  # an object is not a prefix


def test_list_detailed_fills_digests(store: ObjectStore) -> None:
    store.put("d/one", b"1", content_type="text/plain")
    store.put("d/two", io.BytesIO(b"22"))
    detailed = store.list("d", detailed=True)
    assert [(i.key, i.size, i.sha256, i.content_type) for i in detailed] == [
        ("d/one", 1, sha256(b"1"), "text/plain"),
        ("d/two", 2, sha256(b"22"), "application/octet-stream"),
    ]


def test_delete(store: ObjectStore) -> None:
    store.put("del/a", b"a")
    store.put("del/b", b"b")
    store.delete("del/a")
    assert not store.exists("del/a")
    assert [i.key for i in store.list("del")] == ["del/b"]
    store.delete("del/a")  # idempotent
    store.delete("never/existed")


def test_delete_prefix_removes_only_that_prefix(store: ObjectStore) -> None:
    for key in ["t/1", "t/sub/2", "t/sub/deeper/3", "tt/keep", "keep/t/x"]:
        store.put(key, b"x")
    store.delete_prefix("t")
    assert [i.key for i in store.list("")] == ["keep/t/x", "tt/keep"]
    store.delete_prefix("t")  # idempotent
    store.delete_prefix("no/such/prefix")
    with pytest.raises(InvalidKey):
        store.delete_prefix("")  # never "delete everything"


def test_a_deleted_key_can_be_written_again(store: ObjectStore) -> None:
    store.put("r/a/b", b"1")
    store.delete("r/a/b")
    store.put("r/a", b"2")  # on LocalStore this needs the emptied directory pruned
    assert store.get("r/a") == b"2"


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.get("missing/key"),
        lambda s: s.stat("missing/key"),
        lambda s: s.stream("missing/key"),
        lambda s: s.presigned_get("missing/key"),
        lambda s: s.get_json("missing/key"),
    ],
    ids=["get", "stat", "stream", "presigned_get", "get_json"],
)
def test_missing_key_raises_not_found(
    store: ObjectStore, operation: Callable[[ObjectStore], Any]
) -> None:
    store.put("missing/other", b"x")
    with pytest.raises(StoreObjectNotFound) as info:
        operation(store)
    assert info.value.key == "missing/key"


def test_missing_key_is_not_an_error_for_exists_and_delete(store: ObjectStore) -> None:
    assert store.exists("missing/key") is False
    store.delete("missing/key")


def test_presigned_get_downloads_the_object(store: ObjectStore) -> None:
    data = os.urandom(100_000)
    store.put("share/clip.mp4", data, content_type="video/mp4")
    url = store.presigned_get("share/clip.mp4", expires=timedelta(minutes=5))
    if isinstance(store, LocalStore):
        assert url.startswith("file:///") and url.endswith("/share/clip.mp4")
    else:
        assert url.startswith("http://") and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data


def test_presigned_get_expiry_is_bounded(store: ObjectStore) -> None:
    store.put("share/x", b"x")
    for bad in (timedelta(0), timedelta(days=8), 3600):
        with pytest.raises(ValueError):
            store.presigned_get("share/x", expires=bad)  # type: ignore[arg-type]


def test_json_helpers(store: ObjectStore) -> None:
    doc = {"name": "avatar", "psnr": 31.5, "tags": ["a", "b"]}
    info = store.put_json("meta/doc.json", doc)
    assert info.content_type == "application/json"
    assert store.get_json("meta/doc.json") == doc
    with pytest.raises(ValueError):
        store.put_json("meta/nan.json", {"loss": float("nan")})
    assert not store.exists("meta/nan.json")
    store.put("meta/garbage.json", b"\xff not json")
    with pytest.raises(StoreIntegrityError):
        store.get_json("meta/garbage.json")


BAD_KEYS = ["../x", "a/../b", "/abs", "a//b", "a\\b", "a/ b", "", ".hidden", "a/", "a/./b"]

KEY_OPERATIONS: dict[str, Callable[[ObjectStore, str], Any]] = {
    "put": lambda s, k: s.put(k, b"data"),
    "put_stream": lambda s, k: s.put(k, io.BytesIO(b"data")),
    "get": lambda s, k: s.get(k),
    "stream": lambda s, k: s.stream(k),
    "stat": lambda s, k: s.stat(k),
    "exists": lambda s, k: s.exists(k),
    "delete": lambda s, k: s.delete(k),
    "delete_prefix": lambda s, k: s.delete_prefix(k),
    "list": lambda s, k: s.list(k) if k else s.list("/"),  # "" legitimately lists everything
    "presigned_get": lambda s, k: s.presigned_get(k),
    "put_json": lambda s, k: s.put_json(k, {}),
    "get_json": lambda s, k: s.get_json(k),
    "publish_prefix": lambda s, k: s.publish_version(k, {"f": b"x"}),
    "publish_file_name": lambda s, k: s.publish_version("ok", {k: b"x"}),
    "publish_version_id": lambda s, k: s.publish_version("ok", {"f": b"x"}, version=k or "a/b"),
    "list_versions": lambda s, k: s.list_versions(k),
    "latest_version": lambda s, k: s.latest_version(k),
    "read_manifest": lambda s, k: s.read_manifest(k, "v1"),
    "read_manifest_version": lambda s, k: s.read_manifest("ok", k),
    "read_version_file": lambda s, k: s.read_version_file("ok", "v1", k),
}


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_rejected_by_every_operation(
    store: ObjectStore, key: str, tmp_path: Path
) -> None:
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    for name, operation in KEY_OPERATIONS.items():
        with pytest.raises(InvalidKey):
            operation(store, key)
            pytest.fail(f"{name}({key!r}) was accepted")
    assert store.list("") == []  # nothing was written anywhere in the store
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before
