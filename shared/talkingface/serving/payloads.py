"""Tensor payloads of the stage services: read a TensorPayload (inline Tensor, or ObjectRef to
a .npy file in the store, bounded in size) and write result tensors to the store as .npy."""

from __future__ import annotations

import io
import uuid

import numpy as np

from talkingface.errors import TalkingFaceError
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.tensors import from_tensor
from talkingface.v1 import audio_features_pb2, common_pb2

NPY = "application/x-npy"
NPY_HEADER_SLACK = 64 * 1024  # a .npy header is at most a few hundred bytes


def read_payload(
    payload: common_pb2.TensorPayload, name: str, max_bytes: int, store: ObjectStore
) -> np.ndarray:
    """The array a TensorPayload carries. A missing payload, a stored object that is not a
    numeric .npy array, or one over `max_bytes` of data is a TalkingFaceError."""
    source = payload.WhichOneof("source")
    if source == "inline":
        return from_tensor(payload.inline)
    if source != "ref":
        raise TalkingFaceError("INVALID_REQUEST", f"the request carries no {name}")
    key = payload.ref.key
    try:
        size = store.stat(key).size
        if size > max_bytes + NPY_HEADER_SLACK:
            raise TalkingFaceError(
                "PAYLOAD_TOO_LARGE", f"{name} object {key} of {size} bytes is over the limit"
            )
        data = store.get(key)
    except StoreError as exc:
        raise as_talkingface_error(exc) from None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise TalkingFaceError(
            "INVALID_REQUEST", f"{name} object {key} is not a .npy array: {exc}"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise TalkingFaceError(
            "INVALID_REQUEST", f"{name} object {key} is not a numeric .npy array"
        )
    return array


def store_tensors(
    store: ObjectStore, prefix: str, arrays: dict[str, np.ndarray]
) -> audio_features_pb2.StoredTensors:
    """Write each array as `<prefix>/<uuid>/<name>.npy`; their ObjectRefs by name."""
    folder = f"{prefix}/{uuid.uuid4().hex}"
    stored = audio_features_pb2.StoredTensors()
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        try:
            info = store.put(f"{folder}/{name}.npy", buffer.getvalue(), content_type=NPY)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        stored.tensors[name].CopyFrom(
            common_pb2.ObjectRef(
                key=info.key, size=info.size, sha256=info.sha256 or "", content_type=NPY
            )
        )
    return stored
