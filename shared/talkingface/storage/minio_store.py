"""The MinIO object store: the `minio` client against a MinIO (or any S3-compatible) server.

Each object's sha256 is kept as user metadata (`x-amz-meta-sha256`) so `stat` can return it
without reading the object. Bytes are uploaded in one PUT with the digest attached. Streams of
unknown length are uploaded with minio's `part_size` streaming (multipart above one part,
bounded memory), hashed as they are read; since the digest is known only at EOF, it is then
attached by a server-side self-copy that replaces the metadata (a metadata-only update on
MinIO). Until that copy lands, or if it never does, `stat` hashes the object instead.

Guarantees: S3 PUTs are atomic per object (readers see the old or the new object).
`publish_version` is the base-class algorithm: files first, manifest last, so a version is
invisible until complete; there is no rename on S3, so staging is not possible.
Every client or transport failure is raised as a StoreError subclass.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from datetime import timedelta

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from talkingface.storage.base import ObjectInfo, ObjectStore
from talkingface.storage.errors import InvalidKey, StoreError, StoreObjectNotFound
from talkingface.storage.keys import validate_key
from talkingface.storage.streams import (
    DEFAULT_CHUNK_SIZE,
    ChunkIterator,
    HashingReader,
    PutData,
    Sha256Counter,
    hash_chunks,
)

logger = logging.getLogger(__name__)

SHA256_META = "sha256"  # stored as the header x-amz-meta-sha256
MIN_PART_SIZE = 5 << 20  # the S3 minimum for every multipart part but the last
DEFAULT_PART_SIZE = 8 << 20  # memory use of a stream upload is ~(parallel uploads + 1) parts
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchVersion"}


class MinioStore(ObjectStore):
    """Objects in one bucket of a MinIO/S3 server. See the module docstring for guarantees.

    `region` avoids a bucket-location lookup before signing (give it for presigned URLs on
    servers that do not answer that call). With `create_bucket`, a missing bucket is made.
    `part_size` (at least 5 MiB) bounds the memory of stream uploads; `http_client` lets a
    caller set timeouts and retries (the client's default retries a refused connection ~5x).
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = True,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        http_client: urllib3.PoolManager | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        try:
            self._client = Minio(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,
                http_client=http_client,
            )
        except ValueError as exc:
            raise StoreError(f"invalid MinIO endpoint {endpoint!r}: {exc}") from exc
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self._part_size = part_size
        if create_bucket:
            self.ensure_bucket()

    def __repr__(self) -> str:
        return f"MinioStore(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (a concurrent creator is not an error)."""
        with self._errors(""):
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket, location=self.region)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Translate client and transport errors into the StoreError hierarchy."""
        try:
            yield
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise StoreObjectNotFound(key) from None
            raise StoreError(f"{self.bucket}/{key}: {exc.code}: {exc.message}") from exc
        except ValueError as exc:
            # The client validates bucket names and arguments with ValueError.
            raise StoreError(f"{self.bucket}/{key}: {exc}") from exc
        except (MinioException, urllib3.exceptions.HTTPError) as exc:
            raise StoreError(f"{self.bucket}/{key}: {type(exc).__name__}: {exc}") from exc

    # ---- primitives -----------------------------------------------------------------------

    def _put(self, key: str, data: PutData, content_type: str) -> ObjectInfo:
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
            size, digest = hash_chunks(iter([payload]))
            with self._errors(key):
                self._client.put_object(
                    self.bucket,
                    key,
                    io.BytesIO(payload),
                    size,
                    content_type=content_type,
                    metadata={SHA256_META: digest},
                )
            return ObjectInfo(key, size, digest, content_type)
        counter = Sha256Counter()
        with self._errors(key):
            written = self._client.put_object(
                self.bucket,
                key,
                HashingReader(data, counter),
                -1,
                content_type=content_type,
                part_size=self._part_size,
            )
            self._attach_digest(key, written.etag, counter.hexdigest(), content_type)
        return ObjectInfo(key, counter.size, counter.hexdigest(), content_type)

    def _attach_digest(self, key: str, etag: str | None, digest: str, content_type: str) -> None:
        """Record the digest of a streamed upload by a self-copy that replaces the metadata.

        The copy is conditional on the ETag we wrote, so a concurrent writer's newer object
        never gets our digest; if it lost that race, our object is gone anyway. Content-Type
        must be repeated (REPLACE drops it); above 5 GiB the client copies in parts itself.
        """
        try:
            self._client.copy_object(
                self.bucket,
                key,
                CopySource(self.bucket, key, match_etag=etag),
                metadata={SHA256_META: digest, "Content-Type": content_type},
                metadata_directive=REPLACE,
            )
        except S3Error as exc:
            if exc.code != "PreconditionFailed":
                raise
            logger.info("%s was replaced during upload; not attaching its digest", key)

    def _open(self, key: str, chunk_size: int) -> ChunkIterator:
        with self._errors(key):
            response = self._client.get_object(self.bucket, key)

        def read(size: int) -> bytes:
            with self._errors(key):
                return response.read(size)

        def release() -> None:
            response.close()
            response.release_conn()

        return ChunkIterator(read, release, chunk_size)

    def _stat(self, key: str) -> ObjectInfo:
        with self._errors(key):
            obj = self._client.stat_object(self.bucket, key)
        digest = obj.metadata.get(f"x-amz-meta-{SHA256_META}") if obj.metadata else None
        if not digest:
            # Written by another tool, or a streamed put whose metadata copy has not landed.
            _, digest = hash_chunks(self._open(key, DEFAULT_CHUNK_SIZE))
        return ObjectInfo(key, int(obj.size or 0), digest, obj.content_type)

    def _exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._client.stat_object(self.bucket, key)
        except StoreObjectNotFound:
            return False
        return True

    def _list(self, prefix: str) -> list[ObjectInfo]:
        infos = []
        with self._errors(prefix):
            listing = self._client.list_objects(
                self.bucket, prefix=f"{prefix}/" if prefix else None, recursive=True
            )
            for obj in listing:
                name = obj.object_name or ""
                try:
                    validate_key(name)
                except InvalidKey:
                    # Objects other tools wrote with names our keys cannot express (e.g.
                    # "folder/" markers) are not part of this store's view.
                    logger.debug("ignoring object with a non-key name: %r", name)
                    continue
                modified = obj.last_modified.timestamp() if obj.last_modified else None
                infos.append(ObjectInfo(name, int(obj.size or 0), modified=modified))
        return infos

    def _delete(self, key: str) -> None:
        with self._errors(key):
            self._client.remove_object(self.bucket, key)

    def _delete_prefix(self, prefix: str) -> None:
        with self._errors(prefix):
            listing = self._client.list_objects(self.bucket, prefix=f"{prefix}/", recursive=True)
            # remove_objects is lazy: the deletes happen only while its result is iterated.
            failures = list(
                self._client.remove_objects(
                    self.bucket, (DeleteObject(obj.object_name or "") for obj in listing)
                )
            )
        if failures:
            sample = ", ".join(f"{f.name}: {f.code}" for f in failures[:3])
            raise StoreError(f"{prefix}/: {len(failures)} objects not deleted ({sample})")

    def _presigned_get(self, key: str, expires: timedelta) -> str:
        with self._errors(key):
            return self._client.presigned_get_object(self.bucket, key, expires=expires)
