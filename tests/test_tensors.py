"""Tensor messages and chunked tensor streams."""

import numpy as np
import pytest

from talkingface.errors import TalkingFaceError
from talkingface.tensors import (
    MAX_INLINE_BYTES,
    TensorAssembler,
    assemble,
    from_tensor,
    to_chunks,
    to_tensor,
)
from talkingface.v1 import common_pb2


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "float64", "int32", "int64", "uint8", "bool"]
)
def test_round_trip_every_dtype(dtype):
    array = (np.arange(2 * 68 * 3) % 7).reshape(2, 68, 3).astype(dtype)
    again = from_tensor(to_tensor(array))
    assert again.dtype == array.dtype and again.shape == array.shape
    np.testing.assert_array_equal(again, array)


def test_big_endian_and_non_contiguous_input():
    array = np.arange(12, dtype=">f4").reshape(3, 4).T
    np.testing.assert_array_equal(from_tensor(to_tensor(array)), array)


def test_inline_limit():
    with pytest.raises(TalkingFaceError) as err:
        to_tensor(np.zeros(MAX_INLINE_BYTES // 4 + 1, dtype=np.float32))
    assert err.value.code == "PAYLOAD_TOO_LARGE"


def test_shape_and_data_must_agree():
    bad = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2, 3], data=b"\0" * 20)
    with pytest.raises(TalkingFaceError, match="needs 24"):
        from_tensor(bad)
    with pytest.raises(TalkingFaceError, match="unsupported tensor dtype"):
        from_tensor(common_pb2.Tensor(dtype=common_pb2.DTYPE_UNSPECIFIED, shape=[0]))


def test_chunks_respect_size_and_reassemble():
    rng = np.random.default_rng(1)
    lm3d = rng.normal(size=(4500, 68, 3)).astype(np.float32)  # 3 minutes at 25 fps, 3.7 MB
    f0 = rng.normal(size=4500).astype(np.float32)
    chunks = list(to_chunks("lm3d", lm3d, chunk_bytes=1 << 20))
    assert len(chunks) == 4
    assert all(len(c.data) <= 1 << 20 for c in chunks)
    assert chunks[0].HasField("header") and not chunks[1].HasField("header")
    assert [c.last for c in chunks] == [False, False, False, True]
    f0_chunks = list(to_chunks("f0", f0, chunk_bytes=4096))
    interleaved = [f0_chunks[0], *chunks[:2], *f0_chunks[1:], *chunks[2:]]
    arrays = assemble(interleaved)
    np.testing.assert_array_equal(arrays["lm3d"], lm3d)
    np.testing.assert_array_equal(arrays["f0"], f0)


def test_empty_tensor_is_one_chunk():
    chunks = list(to_chunks("empty", np.zeros((0, 68, 3), np.float32)))
    assert len(chunks) == 1 and chunks[0].last
    assert assemble(chunks)["empty"].shape == (0, 68, 3)


def test_broken_streams_are_rejected():
    chunks = list(to_chunks("x", np.arange(1000, dtype=np.int64), chunk_bytes=1000))
    with pytest.raises(TalkingFaceError, match="must carry its header"):
        assemble(chunks[1:])
    with pytest.raises(TalkingFaceError, match="offset"):
        assemble([chunks[0], chunks[2]])
    with pytest.raises(TalkingFaceError, match="stream ended inside"):
        assemble(chunks[:-1])
    tampered = [common_pb2.TensorChunk() for _ in chunks]
    for original, copy in zip(chunks, tampered, strict=True):
        copy.CopyFrom(original)
    tampered[3].data = b"\xff" * len(tampered[3].data)
    with pytest.raises(TalkingFaceError, match="sha256"):
        assemble(tampered)
    limited = TensorAssembler(max_total_bytes=100)
    with pytest.raises(TalkingFaceError) as err:
        limited.add(chunks[0])
    assert err.value.code == "PAYLOAD_TOO_LARGE"
