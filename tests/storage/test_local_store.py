"""LocalStore guarantees beyond the shared contract: confinement, atomic writes, staged publish."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from talkingface.storage import LocalStore, StoreError, StoreObjectNotFound, VersionExists


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "root")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.mkdir()
    (target / "secret.txt").write_bytes(b"secret")
    return target


def test_symlinked_directory_inside_root_is_never_followed(
    store: LocalStore, outside: Path
) -> None:
    (store.root / "evil").symlink_to(outside, target_is_directory=True)
    for operation in (
        lambda: store.put("evil/new.txt", b"x"),
        lambda: store.put("evil/deeper/new.txt", io.BytesIO(b"x")),
        lambda: store.get("evil/secret.txt"),
        lambda: store.stat("evil/secret.txt"),
        lambda: store.stream("evil/secret.txt"),
        lambda: store.delete("evil/secret.txt"),
        lambda: store.list("evil"),
    ):
        with pytest.raises(StoreError, match="symlink"):
            operation()
    assert not store.exists("evil/secret.txt")
    assert store.list("") == []  # links are not objects, so a full listing just skips them
    store.delete_prefix("evil")  # not a directory of the store: nothing to delete
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_symlinked_file_inside_root_is_never_followed(store: LocalStore, outside: Path) -> None:
    (store.root / "link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(StoreError, match="symlink"):
        store.get("link.txt")
    assert not store.exists("link.txt")
    assert store.list("") == []
    store.put("link.txt", b"mine")  # replaces the link itself, never writes through it
    assert store.get("link.txt") == b"mine"
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_readers_never_see_a_half_written_object(store: LocalStore) -> None:
    store.put("obj/a.bin", b"old contents")
    seen_during_write: list[bytes] = []

    class SlowStream:
        """Checks what a reader sees while the new object is still being written."""

        def __init__(self) -> None:
            self._parts = [b"new ", b"contents ", b"arriving slowly"]

        def read(self, size: int = -1) -> bytes:
            seen_during_write.append(store.get("obj/a.bin"))
            return self._parts.pop(0) if self._parts else b""

    store.put("obj/a.bin", SlowStream())  # type: ignore[arg-type]
    assert set(seen_during_write) == {b"old contents"}
    assert store.get("obj/a.bin") == b"new contents arriving slowly"
    assert sorted(os.listdir(store.root / "obj")) == [".a.bin.meta", "a.bin"]  # no temp left


def test_a_failed_write_leaves_the_old_object_and_no_temp_file(store: LocalStore) -> None:
    store.put("obj/a.bin", b"old")

    class BrokenStream:
        def read(self, size: int = -1) -> bytes:
            raise OSError("upload connection dropped")

    with pytest.raises(OSError, match="connection dropped"):
        store.put("obj/a.bin", BrokenStream())  # type: ignore[arg-type]
    assert store.get("obj/a.bin") == b"old"
    assert sorted(os.listdir(store.root / "obj")) == [".a.bin.meta", "a.bin"]


def test_bookkeeping_files_are_invisible(store: LocalStore) -> None:
    store.put("v/a", b"1")
    store.publish_version("pub", {"w": b"1"})
    (store.root / "v" / ".tmp-leftover").write_bytes(b"crashed temp file")
    (store.root / "v" / "not a key").write_bytes(b"written by hand")
    keys = [info.key for info in store.list("")]
    assert keys[0] == "pub/" + keys[0].split("/")[1] + "/manifest.json"
    assert keys[1:] == ["pub/" + keys[0].split("/")[1] + "/w", "v/a"]
    assert os.listdir(store.root / ".staging") == []


def test_a_crashed_staged_publish_is_invisible(store: LocalStore) -> None:
    staged = store.root / ".staging" / "dead" / "v1"
    staged.mkdir(parents=True)
    (staged / "manifest.json").write_text("{}")
    assert store.list_versions("anything") == []
    assert store.list("") == []


def test_stat_recomputes_the_digest_when_the_file_changed_behind_its_back(
    store: LocalStore,
) -> None:
    store.put("f/x", b"original", content_type="text/plain")
    (store.root / "f" / "x").write_bytes(b"edited by hand")
    info = store.stat("f/x")
    assert info.sha256 == hashlib.sha256(b"edited by hand").hexdigest()
    assert (info.size, info.content_type) == (14, "text/plain")
    (store.root / "f" / ".x.meta").unlink()
    assert store.stat("f/x").sha256 == info.sha256


def test_an_object_cannot_also_be_a_prefix(store: LocalStore) -> None:
    store.put("a/b", b"1")
    with pytest.raises(StoreError, match="prefix"):
        store.put("a", b"2")
    store.put("c", b"3")
    with pytest.raises(StoreError, match="is an object"):
        store.put("c/d", b"4")
    with pytest.raises(StoreObjectNotFound):
        store.get("c/d")
    assert [i.key for i in store.list("")] == ["a/b", "c"]


def test_delete_prunes_empty_directories_but_not_the_root(store: LocalStore) -> None:
    store.put("x/y/z", b"1")
    store.delete("x/y/z")
    assert not (store.root / "x").exists()
    assert store.root.is_dir()


def test_presigned_url_is_the_absolute_file_path(store: LocalStore) -> None:
    store.put("p/q.bin", b"1")
    assert store.presigned_get("p/q.bin") == (store.root / "p" / "q.bin").as_uri()


def test_republishing_over_a_crashed_unstaged_version_replaces_it(store: LocalStore) -> None:
    store.put("av/v1/stale-only-in-crash", b"stale")
    store.publish_version("av", {"w": b"fresh"}, version="v1")
    assert [i.key for i in store.list("av")] == ["av/v1/manifest.json", "av/v1/w"]


def test_concurrent_publishers_of_one_version_have_exactly_one_winner(store: LocalStore) -> None:
    def publish(n: int) -> str:
        try:
            store.publish_version("race", {"w": f"writer {n}".encode()}, version="v1")
        except VersionExists:
            return "lost"
        return f"writer {n}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(publish, range(8)))
    winners = [outcome for outcome in outcomes if outcome != "lost"]
    assert len(winners) == 1
    assert store.read_version_file("race", "v1", "w") == winners[0].encode()
    assert os.listdir(store.root / ".staging") == []
