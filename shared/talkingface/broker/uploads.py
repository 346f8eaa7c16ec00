"""Uploads: files a client streams to the broker, kept at `uploads/<tenant>/<upload_id>/data`.

`receive_upload` stores an Upload stream (header first, then contiguous chunks, at most
`limit` bytes, sha256 computed while writing) and leaves nothing behind when the stream is
refused or breaks off (an idle stream ended by broker/streams.py's `idle_limited` included).
`upload_key` and `find_upload` are how SubmitRender and CreateAvatar refer to one:
by id, within the caller's tenant only, so another tenant's upload reads as not found and no
user string becomes part of a key (ids are generated; `upload_id` is checked as one segment).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import uuid
from collections.abc import Iterable, Iterator

from talkingface.errors import TalkingFaceError
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.storage.keys import validate_segment
from talkingface.v1 import broker_pb2 as pb

log = logging.getLogger(__name__)


def upload_key(tenant: str, upload_id: str) -> str:
    return f"uploads/{tenant}/{upload_id}/data"


def find_upload(store: ObjectStore, tenant: str, upload_id: str) -> str:
    """The store key of one of the tenant's uploads; NOT_FOUND when it is not there, and
    STORE_UNAVAILABLE (retry later) when the store cannot say: an outage is not a missing
    upload."""
    try:
        validate_segment(upload_id)
        key = upload_key(tenant, upload_id)
    except (StoreError, ValueError):
        raise TalkingFaceError("NOT_FOUND", f"upload {upload_id!r} not found") from None
    try:
        if store.exists(key):
            return key
    except StoreError as exc:
        raise as_talkingface_error(exc) from None
    raise TalkingFaceError("NOT_FOUND", f"upload {upload_id!r} not found")


def receive_upload(
    store: ObjectStore,
    tenant: str,
    requests: Iterable[pb.UploadRequest],
    limit: int,
    hint: str = "",
) -> pb.UploadResponse:
    """Store an Upload stream as a new upload of `tenant` (see the module docstring); `hint`
    names the limit in PAYLOAD_TOO_LARGE messages."""
    upload_id = uuid.uuid4().hex
    reader = UploadReader(iter(requests), limit, hint)
    header = reader.header()
    key = upload_key(tenant, upload_id)
    try:
        info = store.put(key, reader, content_type=content_type(header))
    except StoreError as exc:
        raise as_talkingface_error(exc) from None
    problem = reader.error  # the stream was refused inside the store's read
    if problem is None and info.size == 0:
        problem = TalkingFaceError("INVALID_REQUEST", "the upload carried no data")
    if problem is None and header.total_bytes and header.total_bytes != info.size:
        problem = TalkingFaceError(
            "INVALID_REQUEST",
            f"the header announced {header.total_bytes} bytes, {info.size} arrived",
        )
    if problem is not None:
        with contextlib.suppress(StoreError):
            store.delete(key)
        raise problem
    log.info("upload stored", extra={"tenant": tenant, "upload_id": upload_id,
                                     "bytes": info.size})  # fmt: skip
    return pb.UploadResponse(upload_id=upload_id, size=info.size, sha256=info.sha256 or "")


class UploadReader(io.RawIOBase):
    """The upload stream's bytes as a binary file for `store.put`, checking the header comes
    first, chunk offsets are contiguous and the total stays under the limit. A problem is
    kept in `error` (the store would otherwise wrap it) and ends the stream."""

    def __init__(self, requests: Iterator[pb.UploadRequest], limit: int, hint: str = "") -> None:
        self._requests = requests
        self._limit = limit
        self._hint = f" ({hint})" if hint else ""
        self._buffer = bytearray()
        self._offset = 0
        self._ended = False
        self.error: TalkingFaceError | None = None

    def header(self) -> pb.UploadHeader:
        first = next(self._requests, None)
        if first is None or first.WhichOneof("item") != "header":
            raise TalkingFaceError("INVALID_REQUEST", "an upload must start with its header")
        if first.header.total_bytes > self._limit:
            raise TalkingFaceError(
                "PAYLOAD_TOO_LARGE",
                f"upload of {first.header.total_bytes} bytes is over the limit of "
                f"{self._limit // (1024 * 1024)} MiB{self._hint}",
            )
        return first.header

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._ended and (size < 0 or len(self._buffer) < size):
            self._pull()
        take = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        data = bytes(self._buffer[:take])
        del self._buffer[:take]
        return data

    def _pull(self) -> None:
        if self.error is not None:
            self._ended = True
            return
        try:
            message = next(self._requests, None)  # may raise: an idle or broken-off stream
        except TalkingFaceError as exc:
            self.error = exc
            self._ended = True
            return
        if message is None:
            self._ended = True
            return
        try:
            if message.WhichOneof("item") != "chunk":
                raise TalkingFaceError("INVALID_REQUEST", "a second upload header")
            chunk = message.chunk
            if chunk.offset != self._offset:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"chunk at offset {chunk.offset}, expected {self._offset}"
                )
            if self._offset + len(chunk.data) > self._limit:
                raise TalkingFaceError(
                    "PAYLOAD_TOO_LARGE",
                    f"upload over {self._limit // (1024 * 1024)} MiB{self._hint}",
                )
        except TalkingFaceError as exc:
            self.error = exc
            self._ended = True
            return
        self._offset += len(chunk.data)
        self._buffer += chunk.data  # bytearray: appended in place


_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")


def content_type(header: pb.UploadHeader) -> str:
    """The client's content type when it is a plain `type/subtype`, else octet-stream (it is
    stored as object metadata, so nothing else of the user's string gets there)."""
    value = header.content_type.strip()
    return value if _MIME.fullmatch(value) else "application/octet-stream"
