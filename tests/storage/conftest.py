"""The `store` fixture: every contract test runs once on LocalStore and once on MinioStore."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from talkingface.storage import LocalStore, MinioStore, ObjectStore
from tests.storage.support import MiB


@pytest.fixture(params=["local", "minio"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """LocalStore on tmp_path, or MinioStore on the session moto server with a fresh bucket."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3_server")
    return MinioStore(
        s3.endpoint,
        s3.access_key,
        s3.secret_key,
        bucket=f"tf-test-{uuid.uuid4().hex[:16]}",
        region=s3.region,
        part_size=5 * MiB,  # the S3 minimum, so a 6 MiB stream is a real multipart upload
    )
