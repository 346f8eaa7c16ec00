"""Tensor payloads of the stage services: read a TensorPayload (inline Tensor, or ObjectRef to
a .npy file in the store, bounded in size) and write result tensors to the store as .npy."""

from __future__ import annotations

import io
import math
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


def read_lm3d(
    payload: common_pb2.TensorPayload, store: ObjectStore, max_seconds: float, fps: float = 25.0
) -> np.ndarray:
    """An lm3d sequence payload as float32 [T, 68, 3], T >= 1: LANDMARKS_INVALID_SHAPE for
    another shape or a non-float dtype, AUDIO_TOO_LONG past `max_seconds`
    (TALKINGFACE_AUDIO_MAX_SECONDS), LANDMARKS_NON_FINITE for NaN or infinite values."""
    from talkingface.config import env_name
    from talkingface.lm3d import NUM_LANDMARKS

    max_frames = math.ceil(max_seconds * fps)
    lm3d = read_payload(payload, "lm3d", max_frames * NUM_LANDMARKS * 3 * 8, store)
    if lm3d.ndim != 3 or lm3d.shape[1:] != (NUM_LANDMARKS, 3) or lm3d.shape[0] == 0:
        raise TalkingFaceError(
            "LANDMARKS_INVALID_SHAPE",
            f"lm3d must be float32 [T, {NUM_LANDMARKS}, 3] with T >= 1, "
            f"got {lm3d.dtype} {list(lm3d.shape)}",
        )
    if lm3d.dtype.kind != "f":
        raise TalkingFaceError(
            "LANDMARKS_INVALID_SHAPE", f"lm3d must be float32, got dtype {lm3d.dtype}"
        )
    if lm3d.shape[0] > max_frames:
        raise TalkingFaceError(
            "AUDIO_TOO_LONG",
            f"{lm3d.shape[0]} frames ({lm3d.shape[0] / fps:.0f} s) is over the "
            f"{max_seconds:g} s limit ({env_name('audio_max_seconds')})",
        )
    lm3d = np.ascontiguousarray(lm3d, dtype=np.float32)
    if not np.isfinite(lm3d).all():
        raise TalkingFaceError("LANDMARKS_NON_FINITE", "lm3d contains NaN or infinite values")
    return lm3d
