"""Versioned-publish format: version ids, the manifest written last, and its validation.

A published version lives under `{prefix}/{version}/`: the data files, then
`{prefix}/{version}/manifest.json`. The manifest is the commit record: readers treat a version
as existing only when its manifest is present and well-formed, so a publish that crashed
before writing it is invisible.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from talkingface.storage.errors import InvalidKey, StoreIntegrityError
from talkingface.storage.keys import join_key, validate_key, validate_prefix, validate_segment

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
MANIFEST_CONTENT_TYPE = "application/json"

VersionSource = bytes | Path


def utc_now() -> datetime:
    """The current time in UTC (one place, so ids and created_at agree)."""
    return datetime.now(UTC)


def new_version_id(now: datetime | None = None) -> str:
    """A sortable, unique version id such as `v20261122T030501Z-3fa2c1` (UTC + 6 random hex)."""
    now = (now or utc_now()).astimezone(UTC)
    return f"v{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def format_created_at(now: datetime) -> str:
    """UTC ISO-8601 with microseconds and a `Z`, e.g. `2026-11-22T03:05:01.123456Z`."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_file_names(files: Mapping[str, VersionSource]) -> list[str]:
    """Validate the names of a version's files (relative keys) and return them sorted.

    Every source is checked before anything is written, so a bad argument leaves no partial
    version behind.
    """
    names = sorted(files)
    for name in names:
        validate_key(name)
        if name == MANIFEST_NAME:
            raise InvalidKey(name, f"{MANIFEST_NAME!r} is reserved for the version manifest")
        source = files[name]
        if isinstance(source, Path):
            if not source.is_file():
                raise FileNotFoundError(f"version file {name!r}: {source} is not a file")
        elif not isinstance(source, bytes | bytearray | memoryview):
            raise TypeError(f"version file {name!r} must be bytes or a Path, not {type(source)}")
    return names


def encode_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check that metadata is plain JSON (no NaN/inf) up front and return a copy of it."""
    try:
        return json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"version metadata is not plain JSON: {exc}") from exc


def build_manifest(
    version: str,
    created_at: datetime,
    metadata: dict[str, Any],
    files: Mapping[str, tuple[int, str]],
) -> dict[str, Any]:
    """The manifest document; `files` maps name -> (size, sha256 hex)."""
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "version": version,
        "created_at": format_created_at(created_at),
        "metadata": metadata,
        "files": {
            name: {"size": size, "sha256": digest} for name, (size, digest) in sorted(files.items())
        },
    }


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Serialise a manifest: stable key order and indentation so it diffs and reads well."""
    return (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def parse_manifest(raw: bytes, key: str, version: str) -> dict[str, Any]:
    """Parse and check a manifest read from `key`; raise StoreIntegrityError when malformed."""
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreIntegrityError(f"{key}: manifest is not valid JSON: {exc}") from exc
    problems = []
    if not isinstance(manifest, dict):
        raise StoreIntegrityError(f"{key}: manifest is not a JSON object")
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        problems.append(f"unsupported schema_version {manifest.get('schema_version')!r}")
    if manifest.get("version") != version:
        problems.append(f"version field {manifest.get('version')!r} != {version!r}")
    try:
        datetime.fromisoformat(manifest["created_at"])
    except (KeyError, TypeError, ValueError):
        problems.append("created_at missing or not ISO-8601")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
        for entry in files.values()
    ):
        problems.append("files must map names to {size, sha256}")
    if problems:
        raise StoreIntegrityError(f"{key}: malformed manifest: {'; '.join(problems)}")
    return manifest


def prepare_publish(
    prefix: str,
    files: Mapping[str, VersionSource],
    metadata: Mapping[str, Any] | None,
    version: str | None,
) -> tuple[str, str, datetime, list[str], dict[str, Any]]:
    """Validate every publish argument before anything is written and pick the version id.

    Returns (prefix, version, created_at, sorted file names, JSON-checked metadata).
    """
    prefix = validate_prefix(prefix)
    created_at = utc_now()
    if version is None:
        version = new_version_id(created_at)
    validate_segment(version)
    join_key(prefix, version, MANIFEST_NAME)  # the longest key must fit too
    names = check_file_names(files)
    for name in names:
        join_key(prefix, version, name)
    return prefix, version, created_at, names, encode_metadata(metadata)
