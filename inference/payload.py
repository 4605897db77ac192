"""Turn a /predict request body into one input tensor checked against the model's signature, and back.

torch alone, no numpy: the serving image does not install numpy (nor the OpenBLAS it vendors).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from itertools import chain
from typing import Any

import orjson
import torch
from pydantic import BaseModel, Field

from inference.bundle import TensorSchema
from inference.errors import BundleError

# Keys a client may put its batch under: "inputs" (ours, and MLflow's tensor format) or MLflow's "instances".
_BATCH_KEYS = ("inputs", "instances")

# The numpy dtype names MLflow writes in tensor specs (bundle.SUPPORTED_DTYPES), as torch dtypes.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
# How _flat_tensor packs each float dtype: array.array typecodes, and struct's "e" for float16 (array has none).
_ARRAY_TYPECODES = {torch.float32: "f", torch.float64: "d"}


class PredictRequest(BaseModel):
    """Request body of POST /predict: one batch, rows in the model's input shape without the batch axis."""

    inputs: list[Any] = Field(description="Batch of inputs: a nested list of numbers shaped like the input schema")


class PredictResponse(BaseModel):
    """Response of POST /predict, one entry per input row, in order."""

    predictions: list[Any] = Field(description="The model's outputs, one per input row")
    labels: list[int] | None = Field(
        default=None, description="Argmax of each row's outputs; only for classifiers"
    )


class RequestRejected(Exception):
    """A request the server refuses; carries the HTTP status and a message for the client."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(message)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a signature's dtype name; BundleError when the server cannot take it from JSON."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise BundleError(
            f"input dtype {name!r} is not servable from JSON; use one of {', '.join(sorted(TORCH_DTYPES))}"
        ) from None


def parse_inputs(body: bytes, schema: TensorSchema) -> torch.Tensor:
    """Decode `body` and return a contiguous tensor of `schema.dtype`, or raise RequestRejected.

    Takes what numpy.asarray plus a checked cast would: numbers for a float model (booleans only mixed with
    numbers), integers for an integer model, booleans for a bool model, in the schema's shape and the dtype's range.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected(400, f"body is not valid JSON: {exc}") from None
    batch = _batch_of(document)
    dtype = torch_dtype(schema.dtype)
    if not dtype.is_floating_point:
        inferred = _tensor(batch, None, schema)  # torch infers bool, int64 or float, as numpy would
        _check_shape(inferred, schema)
        return _cast(inferred, dtype, schema)
    # Straight to the target dtype, never letting torch infer one first (that costs ~2.5x).
    tensor = _flat_tensor(batch, len(schema.shape), dtype)
    if tensor is None:
        tensor = _tensor(batch, dtype, schema)
    _check_shape(tensor, schema)
    # Both conversions turn booleans into 0/1. numpy does too when they are mixed with numbers, but an
    # all-boolean batch is refused; such a batch starts with a boolean, so only then is the whole list walked.
    if isinstance(_first_leaf(batch), bool) and _structure(batch)[1] == {bool}:
        raise RequestRejected(422, f"inputs must be numbers (dtype {schema.dtype}), got booleans")
    # Numbers beyond the dtype's range became inf (JSON has no inf or NaN, so any non-finite value is one).
    # One min/max pass: a third of the time of torch.isfinite(tensor).all(), and NaN fails the test too.
    if tensor.numel():
        low, high = torch.aminmax(tensor)
        limit = torch.finfo(dtype).max
        if not (-limit <= float(low) and float(high) <= limit):
            raise RequestRejected(422, f"inputs out of range for {schema.dtype}")
    return tensor


def encode_outputs(outputs: torch.Tensor, classifier: bool) -> bytes:
    """JSON for `outputs`; float32 values are written as the double they equal, so they read back bit-exact."""
    response: dict[str, Any] = {"predictions": outputs.tolist()}
    if classifier:
        response["labels"] = outputs.argmax(dim=1).tolist()
    return orjson.dumps(response)


def _batch_of(document: Any) -> list[Any]:
    if not isinstance(document, dict):
        raise RequestRejected(422, 'body must be a JSON object like {"inputs": [[...], ...]}')
    for key in _BATCH_KEYS:
        if key in document:
            batch = document[key]
            if not isinstance(batch, list):
                raise RequestRejected(422, f'"{key}" must be a list of input rows, got {type(batch).__name__}')
            if not batch:
                raise RequestRejected(422, f'"{key}" is empty; send at least one row')
            return batch
    raise RequestRejected(422, f'body has no "inputs" field (keys: {", ".join(map(str, document)) or "none"})')


def _first_leaf(batch: list[Any]) -> Any:
    leaf: Any = batch
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    return leaf


def _flat_tensor(batch: list[Any], ndim: int, dtype: torch.dtype) -> torch.Tensor | None:
    """`batch` as an `ndim`-dimensional tensor of a float `dtype`, built by flattening it into one buffer.

    ~2x faster than torch.tensor on the nested list. Each double is rounded once to the dtype, as numpy does;
    torch.tensor gives the same float32 but rounds to float16 through float32, off by one unit in rare cases.
    None when the batch is not a non-empty rectangular nest of lists of numbers, or might not be; torch.tensor
    then has the last word. Booleans pass as 0/1, as they do through torch.tensor.
    """
    shape = [len(batch)]
    level = batch
    try:
        for _ in range(ndim - 1):
            widths = set(map(len, level))  # TypeError for a number where a list belongs
            if len(widths) != 1 or 0 in widths:
                return None
            shape.append(widths.pop())
            # A string or object where a list belongs flattens into strings, which array() refuses below.
            level = list(chain.from_iterable(level))
        # TypeError (struct.error for float16) for anything but numbers: strings, null, lists nested too deep.
        values = _pack(level, dtype)
    except (TypeError, OverflowError, struct.error):  # OverflowError: beyond float16, left to torch's inf
        return None
    return torch.frombuffer(values, dtype=dtype).view(shape)


def _pack(values: list[Any], dtype: torch.dtype) -> array[Any] | bytearray:
    if dtype == torch.float16:
        packed = bytearray(2 * len(values))
        struct.pack_into(f"{len(values)}e", packed, 0, *values)
        return packed
    return array(_ARRAY_TYPECODES[dtype], values)


def _tensor(batch: list[Any], dtype: torch.dtype | None, schema: TensorSchema) -> torch.Tensor:
    """torch.tensor(batch, dtype); when torch refuses, the 422 that numpy.asarray and the checks would give."""
    try:
        tensor = torch.tensor(batch, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        tensor = None
    if tensor is not None and tensor.numel():
        return tensor
    # torch stops reading at an empty list: it takes [[], [1, 2]] or [[], 3] for shape [2, 0], so check those.
    shape, leaf_types = _structure(batch)
    if tensor is not None and shape is not None:
        return tensor
    if shape is None or not leaf_types <= {bool, int, float, str}:  # numpy: an object array, or refused
        raise RequestRejected(
            422, f"inputs must have shape {_shape_text(schema.shape)}, got a ragged or mixed-type list"
        )
    _check_shape_of(shape, schema)
    if str in leaf_types:  # numpy reads numbers mixed with strings as strings too
        raise RequestRejected(422, f"inputs must be {_wanted(schema.dtype)} (dtype {schema.dtype}), got strings")
    # Rectangular numbers torch cannot hold: integers beyond int64 (JSON integers beyond uint64 parse as floats).
    if schema.dtype == "bool":
        raise RequestRejected(422, "inputs must be booleans (dtype bool), got integers")
    raise RequestRejected(422, f"inputs out of range for {schema.dtype}{_limits_text(schema.dtype)}")


def _structure(batch: list[Any]) -> tuple[list[int] | None, set[type]]:
    """Shape of a rectangular nested list (None when ragged) and the types of its leaves."""
    shape: list[int] = []
    level: list[Any] = [batch]
    while level and isinstance(level[0], list):
        if not all(isinstance(item, list) and len(item) == len(level[0]) for item in level):
            return None, set()
        shape.append(len(level[0]))
        level = [child for item in level for child in item]
    if any(isinstance(item, list) for item in level):
        return None, set()
    return shape, {type(item) for item in level}


def _check_shape(tensor: torch.Tensor, schema: TensorSchema) -> None:
    _check_shape_of(tensor.shape, schema)


def _check_shape_of(shape: Sequence[int], schema: TensorSchema) -> None:
    if len(shape) != len(schema.shape) or any(
        expected not in (-1, actual) for expected, actual in zip(schema.shape, shape, strict=True)
    ):
        raise RequestRejected(
            422, f"inputs must have shape {_shape_text(schema.shape)}, got shape {_shape_text(shape)}"
        )


def _cast(inferred: torch.Tensor, dtype: torch.dtype, schema: TensorSchema) -> torch.Tensor:
    """Check the kind of values torch inferred against a bool or integer dtype, then convert."""
    got = _kind_text(inferred.dtype)
    if dtype == torch.bool:
        if inferred.dtype != torch.bool:
            raise RequestRejected(422, f"inputs must be booleans (dtype bool), got {got}")
        return inferred
    if inferred.dtype == torch.bool or inferred.dtype.is_floating_point:
        raise RequestRejected(422, f"inputs must be integers (dtype {schema.dtype}), got {got}")
    limits = torch.iinfo(dtype)
    if inferred.numel() and (int(inferred.min()) < limits.min or int(inferred.max()) > limits.max):
        raise RequestRejected(422, f"inputs out of range for {schema.dtype}{_limits_text(schema.dtype)}")
    return inferred.to(dtype)


def _wanted(dtype_name: str) -> str:
    if dtype_name == "bool":
        return "booleans"
    return "integers" if dtype_name.startswith(("int", "uint")) else "numbers"


def _limits_text(dtype_name: str) -> str:
    if not dtype_name.startswith(("int", "uint")):
        return ""
    limits = torch.iinfo(TORCH_DTYPES[dtype_name])
    return f" [{limits.min}, {limits.max}]"


def _kind_text(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "booleans"
    return "floats" if dtype.is_floating_point else "integers"


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join("N" if dim == -1 else str(dim) for dim in shape) + "]"
