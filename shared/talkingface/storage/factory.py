"""The object store a process should use, chosen by its settings (TALKINGFACE_STORE)."""

from __future__ import annotations

import threading

from talkingface.config import Settings
from talkingface.storage.base import ObjectStore
from talkingface.storage.local import LocalStore
from talkingface.storage.minio_store import MinioStore


def store_from_settings(settings: Settings) -> ObjectStore:
    """LocalStore at TALKINGFACE_STORE_DIR, or MinioStore on the configured bucket."""
    if settings.store == "minio":
        settings.require("minio_endpoint", "minio_access_key", "minio_secret_key", by="MinIO store")
        return MinioStore(
            settings.minio_endpoint,
            settings.minio_access_key,
            settings.minio_secret_key,
            bucket=settings.minio_bucket,
            secure=settings.minio_secure,
            region=settings.minio_region or None,
        )
    return LocalStore(settings.store_dir)


class LazyStore:
    """The store of `settings`, created on first use and shared by every thread after that
    (services start without touching the store; a misconfigured one fails the first request
    that needs it, with its own error)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()

    def get(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = store_from_settings(self._settings)
            return self._store
