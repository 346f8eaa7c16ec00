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


def as_talkingface_error(exc: StoreError):
    """The stable error code a service reports for a store failure (talkingface.errors)."""
    from talkingface.errors import TalkingFaceError

    if isinstance(exc, InvalidKey):
        return TalkingFaceError("STORE_KEY_INVALID", str(exc))
    if isinstance(exc, StoreObjectNotFound):
        return TalkingFaceError("STORE_OBJECT_NOT_FOUND", str(exc))
    if isinstance(exc, StoreIntegrityError):
        return TalkingFaceError("STORE_INTEGRITY", str(exc))
    if isinstance(exc, VersionExists):
        return TalkingFaceError("ALREADY_EXISTS", str(exc))
    return TalkingFaceError("STORE_UNAVAILABLE", str(exc))
