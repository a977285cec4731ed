"""TensorProto decoding without TensorFlow: packed, typed lists, padding, fp16."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboard.compat.proto import tensor_pb2, types_pb2

from bnrewrite import tensors


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_])
def test_packed_round_trip(dtype):
    array = (np.arange(12).reshape(3, 4) % 5).astype(dtype)
    back = tensors.to_numpy(tensors.to_proto(array))
    assert back.dtype == array.dtype and back.shape == (3, 4)
    np.testing.assert_array_equal(back, array)


def _proto(dtype, dims, **fields):
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    return proto


def test_short_value_list_repeats_last_element():
    value = tensors.to_numpy(_proto(types_pb2.DT_FLOAT, [2, 3], float_val=[1.5, 2.5]))
    np.testing.assert_array_equal(value, [[1.5, 2.5, 2.5], [2.5, 2.5, 2.5]])


def test_half_values_are_bit_patterns():
    bits = np.array([0.5, -2.0], dtype=np.float16).view(np.uint16)
    value = tensors.to_numpy(_proto(types_pb2.DT_HALF, [2], half_val=list(map(int, bits))))
    assert value.dtype == np.float16
    np.testing.assert_array_equal(value, [0.5, -2.0])


def test_scalar_and_empty():
    assert tensors.to_numpy(_proto(types_pb2.DT_FLOAT, [], float_val=[3.0])) == 3.0
    assert tensors.to_numpy(_proto(types_pb2.DT_FLOAT, [0])).shape == (0,)


def test_undecodable_is_none():
    assert tensors.to_numpy(_proto(types_pb2.DT_STRING, [1], string_val=[b"a"])) is None
    bad = _proto(types_pb2.DT_FLOAT, [4])
    bad.tensor_content = b"\0" * 8  # two floats for a shape of four
    assert tensors.to_numpy(bad) is None


def test_a_scalar_stays_a_scalar():
    proto = tensors.to_proto(np.float32(2.5))
    assert len(proto.tensor_shape.dim) == 0
    assert tensors.to_numpy(proto).shape == () and tensors.to_numpy(proto) == 2.5
