"""Object storage for uploads, avatar bundles and results: one interface, two backends.

`LocalStore` (a local directory, the embedded single-machine default) and `MinioStore` (the
`minio` client against MinIO/S3) implement `ObjectStore`. Keys follow the rules in `keys`
(object keys never come from unchecked user strings). See docs/storage.md.
"""

from talkingface.storage.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectInfo,
    ObjectStore,
    PublishedVersion,
)
from talkingface.storage.errors import (
    InvalidKey,
    StoreError,
    StoreIntegrityError,
    StoreObjectNotFound,
    VersionExists,
)
from talkingface.storage.factory import store_from_settings
from talkingface.storage.keys import (
    join_key,
    user_segment,
    validate_key,
    validate_prefix,
    validate_segment,
)
from talkingface.storage.local import LocalStore
from talkingface.storage.minio_store import MinioStore
from talkingface.storage.streams import DEFAULT_CHUNK_SIZE, ChunkIterator
from talkingface.storage.versions import MANIFEST_NAME, MANIFEST_SCHEMA_VERSION, new_version_id

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTENT_TYPE",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "ChunkIterator",
    "InvalidKey",
    "LocalStore",
    "MinioStore",
    "ObjectInfo",
    "ObjectStore",
    "PublishedVersion",
    "StoreError",
    "StoreIntegrityError",
    "StoreObjectNotFound",
    "VersionExists",
    "join_key",
    "new_version_id",
    "store_from_settings",
    "user_segment",
    "validate_key",
    "validate_prefix",
    "validate_segment",
]
