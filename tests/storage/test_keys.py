"""Key rules: validate_key, join_key and user_segment (object keys never come from raw input)."""

from __future__ import annotations

import pytest

from talkingface.storage import InvalidKey, StoreError, join_key, user_segment, validate_key
from talkingface.storage.keys import (
    MAX_KEY_LENGTH,
    validate_prefix,
    validate_segment,
)

GOOD_KEYS = [
    "a",
    "A9",
    "avatars/t1/v20261122T030501Z-3fa2c1/manifest.json",
    "a.b-c_d/e",
    "x" * 128,
    "a..b",  # dots inside a segment are harmless: only a whole `..` segment traverses
    "/".join(["s" * 100] * 10),
]

BAD_KEYS = [
    "",
    "../x",
    "a/../b",
    "a/..",
    "./a",
    "/abs",
    "a/",
    "a//b",
    "a\\b",
    "a/ b",
    "a\tb",
    "a\nb",
    ".hidden",
    "a/.hidden",
    "-dash",
    "_under",
    "a/b?c",
    "a:b",
    "ü",
    "x" * 129,
    "a/" * 600 + "a",
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_valid_keys_pass_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_raise_invalid_key(key: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    # InvalidKey is both a store error and a ValueError, so either kind of handler catches it.
    assert isinstance(info.value, StoreError)
    assert isinstance(info.value, ValueError)
    assert "invalid object key" in str(info.value)


def test_messages_say_what_is_wrong() -> None:
    cases = {
        "": "empty",
        "a/../b": "path traversal",
        "/abs": "leading '/'",
        "a/": "trailing '/'",
        "a//b": "empty segment",
        "a\\b": "backslash",
        "a/ b": "whitespace",
        ".hidden": "starts with '.'",
        "x" * (MAX_KEY_LENGTH + 1): "longer than 1024",
    }
    for key, phrase in cases.items():
        with pytest.raises(InvalidKey, match=phrase):
            validate_key(key)


def test_non_string_keys_are_rejected() -> None:
    for key in (None, b"a/b", 3, ["a"]):
        with pytest.raises(InvalidKey, match="must be a str"):
            validate_key(key)  # type: ignore[arg-type]


def test_key_length_limit_is_inclusive() -> None:
    key = "/".join(["k" * 127] * 8)  # 8*127 + 7 = 1023
    assert validate_key(key + "x") == key + "x"  # exactly 1024
    with pytest.raises(InvalidKey):
        validate_key(key + "xy")


def test_validate_segment_rejects_slashes() -> None:
    assert validate_segment("v1") == "v1"
    with pytest.raises(InvalidKey, match="single segment"):
        validate_segment("a/b")


def test_validate_prefix_allows_empty_only_when_asked() -> None:
    assert validate_prefix("", allow_empty=True) == ""
    assert validate_prefix("a/b") == "a/b"
    with pytest.raises(InvalidKey):
        validate_prefix("")


def test_join_key_joins_and_validates_every_segment() -> None:
    assert join_key("avatars", "t1", "bundle.bin") == "avatars/t1/bundle.bin"
    assert join_key("avatars/t1", "v1") == "avatars/t1/v1"
    for parts in (("a", ".."), ("a", ""), ("a", "b/../c"), ("/a", "b"), ("a", "b c"), ()):
        with pytest.raises(InvalidKey):
            join_key(*parts)
    with pytest.raises(InvalidKey, match="longer than"):
        join_key(*["k" * 100] * 11)


@pytest.mark.parametrize(
    "raw",
    [
        "../../etc/passwd",
        "Ünïcødé name",
        "My Avatar (final).mp4",
        "   ",
        "...",
        "日本語",
        "a" * 5000,
        "C:\\Windows\\system32",
        "x\x00y",
        "\ud800lone surrogate",
        "-leading-dash",
    ],
)
def test_user_segment_is_always_a_valid_segment(raw: str) -> None:
    segment = user_segment(raw)
    assert validate_segment(segment) == segment
    assert segment == segment.lower()
    assert len(segment) <= 48 + 1 + 12
    assert segment != raw  # a raw user string never becomes a key as is


def test_user_segment_examples() -> None:
    assert user_segment("../../etc/passwd").startswith("etc-passwd-")
    assert user_segment("Ünïcødé name").startswith("unicde-name-")
    assert user_segment("日本語") == user_segment("日本語")  # deterministic
    digest_only = user_segment("日本語")
    assert len(digest_only) == 12 and all(c in "0123456789abcdef" for c in digest_only)


def test_user_segment_keeps_different_strings_apart() -> None:
    # These all slug to "my-avatar"; the sha256 suffix keeps their segments distinct.
    raws = ["My Avatar", "my avatar", "my-avatar", "my_avatar!", "MY  AVATAR", "my/avatar"]
    segments = [user_segment(raw) for raw in raws]
    assert len(set(segments)) == len(raws)
    slugs = {segment.rsplit("-", 1)[0] for segment in segments}
    assert slugs == {"my-avatar", "my_avatar"}


def test_user_segment_rejects_empty_and_non_strings() -> None:
    with pytest.raises(InvalidKey):
        user_segment("")
    with pytest.raises(InvalidKey):
        user_segment(b"bytes")  # type: ignore[arg-type]
