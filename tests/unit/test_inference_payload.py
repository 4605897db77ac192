"""Unit tests of /predict's body parsing and response encoding, torch only, against what numpy would make of it."""

from __future__ import annotations

import random
import struct
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from inference.bundle import SUPPORTED_DTYPES, TensorSchema
from inference.payload import TORCH_DTYPES, RequestRejected, encode_outputs, parse_inputs


def parse(inputs: Any, dtype: str = "float32", shape: list[int] | None = None) -> torch.Tensor:
    return parse_inputs(orjson.dumps({"inputs": inputs}), TensorSchema(dtype=dtype, shape=shape or [-1, 2]))


def rejection(inputs: Any, dtype: str = "float32", shape: list[int] | None = None) -> str:
    with pytest.raises(RequestRejected) as caught:
        parse(inputs, dtype, shape)
    assert caught.value.status_code == 422
    return caught.value.message


def random_doubles(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    # Bit patterns of every exponent, so values round at every scale, plus ordinary ones.
    anything = (struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(count))
    finite = [value for value in anything if abs(value) < 3e38]
    return finite + [rng.uniform(-10, 10) for _ in range(count)] + [rng.uniform(-1e-40, 1e-40) for _ in range(count)]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_floats_round_to_the_same_bits_as_numpy(dtype: str) -> None:
    limit = 60000.0 if dtype == "float16" else 3e38
    values = [value for value in random_doubles(20000, seed=1) if abs(value) < limit]
    values = values[: len(values) // 4 * 4] + [0, 1, -7, 40001, True, 0.5, False, 3]  # ints and bools too
    rows = [values[i : i + 4] for i in range(0, len(values), 4)]
    tensor = parse(rows, dtype, [-1, 4])
    expected = np.asarray(rows).astype(dtype)
    assert tensor.dtype == TORCH_DTYPES[dtype] and tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.numpy().view(f"u{expected.itemsize}"), expected.view(f"u{expected.itemsize}"))


def test_rows_of_any_rank_keep_their_shape() -> None:
    batch = np.arange(2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4)
    tensor = parse(batch.tolist(), shape=[-1, 1, 3, 4])
    assert tensor.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(tensor.numpy(), batch)


@pytest.mark.parametrize(
    ("inputs", "dtype", "message"),
    [
        ([[True, False]], "float32", "inputs must be numbers (dtype float32), got booleans"),
        ([[1.5, 2]], "int64", "inputs must be integers (dtype int64), got floats"),
        ([[True, False]], "int32", "inputs must be integers (dtype int32), got booleans"),
        ([[1, 128]], "int8", "inputs out of range for int8 [-128, 127]"),
        ([[-1, 0]], "uint8", "inputs out of range for uint8 [0, 255]"),
        ([[2**63, 0]], "int64", "inputs out of range for int64"),
        ([[1, 0]], "bool", "inputs must be booleans (dtype bool), got integers"),
        ([[0.5, 0]], "bool", "inputs must be booleans (dtype bool), got floats"),
        ([["a", "b"]], "bool", "inputs must be booleans (dtype bool), got strings"),
        ([[1, "b"]], "float32", "inputs must be numbers (dtype float32), got strings"),
        ([[1e300, 0]], "float64", None),  # in range: accepted
        ([[1e39, 0]], "float32", "inputs out of range for float32"),
        ([[-70000, 0]], "float16", "inputs out of range for float16"),
        ([[], [1, 2]], "float32", "got a ragged or mixed-type list"),
        ([[], 3], "int64", "got a ragged or mixed-type list"),
        ([[1, 2], [3]], "float32", "got a ragged or mixed-type list"),
        ([[1, [2]], [3, 4]], "float32", "got a ragged or mixed-type list"),
        ([[1, None]], "float32", "got a ragged or mixed-type list"),
        ([[1, {"a": 1}]], "float32", "got a ragged or mixed-type list"),
        ([["ab", "cd"]], "float32", "got strings"),
        ([["a", "b", "c"]], "float32", "inputs must have shape [N, 2], got shape [1, 3]"),
        ([[[1, 2]]], "float32", "inputs must have shape [N, 2], got shape [1, 1, 2]"),
        ([1, 2], "int64", "inputs must have shape [N, 2], got shape [2]"),
    ],
)
def test_inputs_the_dtype_cannot_take_get_a_422_saying_why(inputs: Any, dtype: str, message: str | None) -> None:
    if message is None:
        assert parse(inputs, dtype).dtype == TORCH_DTYPES[dtype]
    else:
        assert message in rejection(inputs, dtype)


@pytest.mark.parametrize(
    ("inputs", "dtype", "expected"),
    [
        ([[1, 2], [-3, 127]], "int8", [[1, 2], [-3, 127]]),
        ([[True, 2]], "int64", [[1, 2]]),  # numpy reads booleans among integers as integers
        ([[0, 255]], "uint8", [[0, 255]]),
        ([[True, False]], "bool", [[True, False]]),
        ([[True, 2.5]], "float32", [[1.0, 2.5]]),  # and among floats as floats
        ([[2.5, False]], "float32", [[2.5, 0.0]]),
        ([[2**64 - 1, 0]], "float32", [[float(2**64), 0.0]]),
    ],
)
def test_inputs_the_dtype_takes_become_a_tensor_of_it(inputs: Any, dtype: str, expected: list[Any]) -> None:
    tensor = parse(inputs, dtype)
    assert tensor.dtype == TORCH_DTYPES[dtype]
    assert tensor.tolist() == expected


def test_float32_outputs_read_back_bit_exact_with_argmax_labels() -> None:
    outputs = torch.tensor(random_doubles(3000, seed=2)[:3000], dtype=torch.float32).reshape(-1, 10)
    document = orjson.loads(encode_outputs(outputs, classifier=True))
    assert torch.equal(torch.tensor(document["predictions"], dtype=torch.float32), outputs)
    assert document["labels"] == outputs.argmax(dim=1).tolist()
    assert "labels" not in orjson.loads(encode_outputs(outputs, classifier=False))


def test_every_supported_dtype_has_a_torch_dtype() -> None:
    assert set(TORCH_DTYPES) == SUPPORTED_DTYPES

