"""Exceptions raised by the object stores: one hierarchy, never a raw client exception."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for every error an object store raises (I/O, server, conflicts)."""


class InvalidKey(StoreError, ValueError):
    """An object key, prefix or segment breaks the key rules (see `talkingface.storage.keys`)."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class StoreObjectNotFound(StoreError):
    """The object does not exist (or, for versioned reads, its version is not published)."""

    def __init__(self, key: str, detail: str = "no such object") -> None:
        super().__init__(f"{detail}: {key}")
        self.key = key


class StoreIntegrityError(StoreError):
    """Stored bytes or a manifest do not match what was recorded when they were written."""


class VersionExists(StoreError):
    """A published version is immutable: its manifest already exists."""

    def __init__(self, prefix: str, version: str) -> None:
        super().__init__(f"version {version!r} of {prefix!r} is already published")
        self.prefix = prefix
        self.version = version
