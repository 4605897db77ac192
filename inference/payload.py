"""Turn a /predict request body into one input array checked against the model's signature, and back."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, Field

from inference.bundle import TensorSchema

# Keys a client may put its batch under: "inputs" (ours, and MLflow's tensor format) or MLflow's "instances".
_BATCH_KEYS = ("inputs", "instances")


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


def parse_inputs(body: bytes, schema: TensorSchema) -> np.ndarray:
    """Decode `body` and return a C-contiguous array of `schema.dtype`, or raise RequestRejected."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected(400, f"body is not valid JSON: {exc}") from None
    batch = _batch_of(document)
    try:
        raw = np.asarray(batch)
    except (ValueError, OverflowError):
        raise RequestRejected(
            422, f"inputs must have shape {_shape_text(schema.shape)}, got a ragged or mixed-type list"
        ) from None
    _check_shape(raw, schema)
    return _cast(raw, schema.dtype)


def encode_outputs(outputs: np.ndarray, classifier: bool) -> bytes:
    """JSON for `outputs`; float32 values are written in their shortest form that reads back bit-exact."""
    response: dict[str, Any] = {"predictions": outputs}
    if classifier:
        response["labels"] = outputs.argmax(axis=1)
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)


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


def _check_shape(raw: np.ndarray, schema: TensorSchema) -> None:
    if raw.dtype == object or raw.ndim != len(schema.shape) or any(
        expected not in (-1, actual) for expected, actual in zip(schema.shape, raw.shape, strict=True)
    ):
        got = "a ragged or mixed-type list" if raw.dtype == object else f"shape {_shape_text(list(raw.shape))}"
        raise RequestRejected(422, f"inputs must have shape {_shape_text(schema.shape)}, got {got}")


def _cast(raw: np.ndarray, dtype_name: str) -> np.ndarray:
    target = np.dtype(dtype_name)
    kind = raw.dtype.kind
    if target.kind == "b":
        if kind != "b":
            raise RequestRejected(422, f"inputs must be booleans (dtype bool), got {_kind_text(kind)}")
        return raw
    if kind not in "iuf" or (target.kind in "iu" and kind == "f"):
        wanted = "integers" if target.kind in "iu" else "numbers"
        raise RequestRejected(422, f"inputs must be {wanted} (dtype {dtype_name}), got {_kind_text(kind)}")
    if target.kind in "iu":
        limits = np.iinfo(target)
        if raw.min() < limits.min or raw.max() > limits.max:
            raise RequestRejected(422, f"inputs out of range for {dtype_name} [{limits.min}, {limits.max}]")
        return np.ascontiguousarray(raw, dtype=target)
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(raw, dtype=target)
    if not np.isfinite(cast).all():
        raise RequestRejected(422, f"inputs out of range for {dtype_name}")
    return cast


def _kind_text(kind: str) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "f": "floats", "O": "mixed values"}.get(kind, kind)


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join("N" if dim == -1 else str(dim) for dim in shape) + "]"
