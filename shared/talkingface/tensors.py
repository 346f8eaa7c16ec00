"""numpy arrays <-> talkingface.v1 Tensor messages, and chunked tensor streams.

Arrays travel little-endian and C-contiguous. A message never carries more than 4 MiB of
payload (BRIEF §3): `to_tensor` refuses larger arrays, `to_chunks` splits any array into
TensorChunk messages of at most `chunk_bytes`, and `TensorAssembler` puts them back together,
checking order, sizes and the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

from talkingface.errors import TalkingFaceError
from talkingface.v1 import common_pb2

MAX_INLINE_BYTES = 4 * 1024 * 1024
DEFAULT_CHUNK_BYTES = 1024 * 1024

_DTYPES: dict[int, np.dtype] = {
    common_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    common_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    common_pb2.DTYPE_INT32: np.dtype("<i4"),
    common_pb2.DTYPE_INT64: np.dtype("<i8"),
    common_pb2.DTYPE_UINT8: np.dtype("u1"),
    common_pb2.DTYPE_BOOL: np.dtype("?"),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}


def dtype_code(dtype: np.dtype) -> int:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    try:
        return _CODES[dt]
    except KeyError:
        raise TalkingFaceError("INVALID_REQUEST", f"unsupported tensor dtype {dtype}") from None


def numpy_dtype(code: int) -> np.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        name = common_pb2.DType.Name(code) if code in common_pb2.DType.values() else code
        raise TalkingFaceError("INVALID_REQUEST", f"unsupported tensor dtype {name}") from None


def _le_bytes(array: np.ndarray) -> tuple[int, bytes]:
    code = dtype_code(array.dtype)
    return code, np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()


def to_tensor(array: np.ndarray) -> common_pb2.Tensor:
    """One Tensor message; arrays over 4 MiB must be chunked or stored instead."""
    code, data = _le_bytes(np.asarray(array))
    if len(data) > MAX_INLINE_BYTES:
        raise TalkingFaceError(
            "PAYLOAD_TOO_LARGE",
            f"tensor of {len(data)} bytes exceeds the {MAX_INLINE_BYTES}-byte inline limit; "
            "stream it in chunks or pass an object-store reference",
        )
    return common_pb2.Tensor(dtype=code, shape=list(array.shape), data=data)


def _checked_array(dtype_code_: int, shape: Iterable[int], data: bytes) -> np.ndarray:
    dtype = numpy_dtype(dtype_code_)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise TalkingFaceError("INVALID_REQUEST", f"negative dimension in shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(data):
        raise TalkingFaceError(
            "INVALID_REQUEST",
            f"tensor data has {len(data)} bytes but shape {shape} of {dtype} needs {expected}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def from_tensor(tensor: common_pb2.Tensor) -> np.ndarray:
    """The array a Tensor message holds (a writable copy in native layout)."""
    return _checked_array(tensor.dtype, tensor.shape, tensor.data)


def to_chunks(
    name: str, array: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[common_pb2.TensorChunk]:
    """Split an array into TensorChunk messages; the first one carries the header."""
    if chunk_bytes <= 0 or chunk_bytes > MAX_INLINE_BYTES:
        raise ValueError(f"chunk_bytes must be in (0, {MAX_INLINE_BYTES}]")
    code, data = _le_bytes(np.asarray(array))
    header = common_pb2.TensorHeader(
        name=name,
        dtype=code,
        shape=list(np.shape(array)),
        total_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    view = memoryview(data)
    offset = 0
    while True:
        piece = view[offset : offset + chunk_bytes]
        last = offset + len(piece) >= len(data)
        chunk = common_pb2.TensorChunk(name=name, offset=offset, data=bytes(piece), last=last)
        if offset == 0:
            chunk.header.CopyFrom(header)
        yield chunk
        offset += len(piece)
        if last:
            return


class TensorAssembler:
    """Collects TensorChunk messages (several tensors may interleave) into arrays."""

    def __init__(self, max_total_bytes: int | None = None) -> None:
        self._headers: dict[str, common_pb2.TensorHeader] = {}
        self._parts: dict[str, list[bytes]] = {}
        self._received: dict[str, int] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self._max_total = max_total_bytes

    def add(self, chunk: common_pb2.TensorChunk) -> np.ndarray | None:
        """Add one chunk; returns the finished array when this chunk completes it."""
        name = chunk.name
        if name in self.arrays:
            raise TalkingFaceError("INVALID_REQUEST", f"tensor {name!r} was already completed")
        if name not in self._headers:
            if not chunk.HasField("header") or chunk.offset != 0:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"first chunk of tensor {name!r} must carry its header"
                )
            total = chunk.header.total_bytes
            if self._max_total is not None and total > self._max_total:
                raise TalkingFaceError(
                    "PAYLOAD_TOO_LARGE", f"tensor {name!r} of {total} bytes is over the limit"
                )
            self._headers[name] = chunk.header
            self._parts[name] = []
            self._received[name] = 0
        if chunk.offset != self._received[name]:
            raise TalkingFaceError(
                "INVALID_REQUEST",
                f"tensor {name!r}: chunk at offset {chunk.offset}, expected {self._received[name]}",
            )
        header = self._headers[name]
        self._received[name] += len(chunk.data)
        if self._received[name] > header.total_bytes:
            raise TalkingFaceError("INVALID_REQUEST", f"tensor {name!r}: more data than declared")
        self._parts[name].append(chunk.data)
        if not chunk.last:
            return None
        data = b"".join(self._parts.pop(name))
        if header.sha256 and hashlib.sha256(data).hexdigest() != header.sha256:
            raise TalkingFaceError("INVALID_REQUEST", f"tensor {name!r}: sha256 mismatch")
        array = _checked_array(header.dtype, header.shape, data)
        self.arrays[name] = array
        return array

    @property
    def pending(self) -> list[str]:
        """Tensors started but not finished (a stream that ends here was cut short)."""
        return sorted(self._parts)


def assemble(chunks: Iterable[common_pb2.TensorChunk]) -> dict[str, np.ndarray]:
    """All tensors of a finished chunk stream; raises if any tensor was left incomplete."""
    assembler = TensorAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    if assembler.pending:
        raise TalkingFaceError(
            "INVALID_REQUEST", f"stream ended inside tensors {', '.join(assembler.pending)}"
        )
    return assembler.arrays
