"""MinioStore behaviour beyond the shared contract, against moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import io
import uuid

import pytest
import urllib3
from minio import Minio

from talkingface.storage import MinioStore, StoreError, StoreObjectNotFound
from talkingface.storage.minio_store import DEFAULT_PART_SIZE
from tests.fixtures.servers import S3Server, free_port


def new_bucket() -> str:
    return f"tf-minio-{uuid.uuid4().hex[:16]}"


def raw_client(s3: S3Server) -> Minio:
    return Minio(
        s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        secure=False,
        region=s3.region,
    )


def make_store(
    s3: S3Server, bucket: str, *, create_bucket: bool = True, part_size: int = DEFAULT_PART_SIZE
) -> MinioStore:
    return MinioStore(
        s3.endpoint,
        s3.access_key,
        s3.secret_key,
        bucket,
        region=s3.region,
        create_bucket=create_bucket,
        part_size=part_size,
    )


def test_digest_is_stored_as_object_metadata(s3_server: S3Server) -> None:
    bucket = new_bucket()
    store = make_store(s3_server, bucket)
    store.put("k/bytes", b"abc")
    store.put("k/stream", io.BytesIO(b"defg"), content_type="text/plain")
    client = raw_client(s3_server)
    for key, data, content_type in [
        ("k/bytes", b"abc", "application/octet-stream"),
        ("k/stream", b"defg", "text/plain"),
    ]:
        obj = client.stat_object(bucket, key)
        assert obj.metadata["x-amz-meta-sha256"] == hashlib.sha256(data).hexdigest()
        assert obj.content_type == content_type


def test_objects_from_other_tools_are_hashed_or_ignored(s3_server: S3Server) -> None:
    bucket = new_bucket()
    store = make_store(s3_server, bucket)
    client = raw_client(s3_server)
    client.put_object(bucket, "ext/plain.bin", io.BytesIO(b"no digest"), 9)
    client.put_object(bucket, "ext/folder/", io.BytesIO(b""), 0)  # a console "folder" marker
    client.put_object(bucket, "ext/with space", io.BytesIO(b"x"), 1)
    assert store.stat("ext/plain.bin").sha256 == hashlib.sha256(b"no digest").hexdigest()
    assert [info.key for info in store.list("ext")] == ["ext/plain.bin"]
    store.delete_prefix("ext")  # removes everything under the prefix, names we cannot express too
    assert list(client.list_objects(bucket, recursive=True)) == []


def test_bucket_is_created_once_and_shared(s3_server: S3Server) -> None:
    bucket = new_bucket()
    first = make_store(s3_server, bucket)
    first.put("a", b"1")
    second = make_store(s3_server, bucket)  # bucket already exists: not an error
    assert second.get("a") == b"1"


def test_missing_bucket_without_create_is_a_store_error(s3_server: S3Server) -> None:
    store = make_store(s3_server, new_bucket(), create_bucket=False)
    with pytest.raises(StoreError, match="NoSuchBucket"):
        store.put("a", b"1")
    # HEAD responses carry no error body, so the client reports a missing bucket on stat as
    # NoSuchKey: the object is simply not found.
    with pytest.raises(StoreObjectNotFound):
        store.stat("a")


def test_unreachable_server_is_a_store_error() -> None:
    no_retries = urllib3.PoolManager(retries=urllib3.Retry(total=0), timeout=2)
    with pytest.raises(StoreError) as info:
        MinioStore(
            f"127.0.0.1:{free_port()}",
            "k",
            "s",
            "bucket",
            region="us-east-1",
            http_client=no_retries,
        )
    assert not isinstance(info.value, StoreObjectNotFound)


def test_invalid_settings_are_store_errors(s3_server: S3Server) -> None:
    with pytest.raises(StoreError):
        make_store(s3_server, "No_Such-Bucket-Name!")
    with pytest.raises(ValueError, match="part_size"):
        make_store(s3_server, new_bucket(), part_size=1024)
