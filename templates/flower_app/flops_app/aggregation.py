"""Update validation and example-weighted averaging of model arrays that keeps each array's dtype.

Flower's FedAvg turns every array into floats; integer buffers such as BatchNorm's
num_batches_tracked must come back as integers, so they are averaged and rounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def update_problem(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> str | None:
    """Why a learner's update cannot be averaged into the global model REFERENCE, or None when it can."""
    if len(update) != len(reference):
        return f"wrong number of arrays: {len(update)}, expected {len(reference)}"
    for i, (layer, ref) in enumerate(zip(update, reference)):
        layer, ref = np.asarray(layer), np.asarray(ref)
        if layer.shape != ref.shape:
            return f"array {i}: shape {layer.shape}, expected {ref.shape}"
        if layer.dtype != ref.dtype:
            return f"array {i}: dtype {layer.dtype}, expected {ref.dtype}"
        if layer.dtype.kind in "fc" and not np.isfinite(layer).all():
            return f"array {i}: non-finite values"
    return None


def non_finite(model: Sequence[np.ndarray]) -> bool:
    """Whether any floating array of MODEL holds NaN or infinity."""
    return any(np.asarray(a).dtype.kind in "fc" and not np.isfinite(a).all() for a in model)


def weighted_average(models: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """Average layer by layer in float64, then cast back to each layer's own dtype.

    Models must agree array by array in shape and dtype: broadcasting a mismatched update into the
    average would silently corrupt the global model.
    """
    if not models:
        raise ValueError("nothing to aggregate")
    if len(models) != len(weights):
        raise ValueError(f"{len(models)} models but {len(weights)} weights")
    for index, model in enumerate(models[1:], start=1):
        problem = update_problem(model, models[0])
        if problem is not None and "non-finite" not in problem:
            raise ValueError(f"model {index} does not match model 0: {problem}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("aggregation weights sum to zero (every learner reported 0 examples)")
    factors = [w / total for w in weights]
    averaged = []
    for layers in zip(*models, strict=True):
        acc = np.zeros(np.shape(layers[0]), dtype=np.float64)
        for layer, factor in zip(layers, factors, strict=True):
            acc += np.asarray(layer, dtype=np.float64) * factor
        averaged.append(cast_like(acc, np.asarray(layers[0]).dtype))
    return averaged


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """VALUES as DTYPE; integer buffers are rounded, not truncated."""
    values = np.asarray(values)
    if not np.issubdtype(dtype, np.floating) and not np.issubdtype(dtype, np.complexfloating):
        values = np.rint(values)
    # np.rint of a 0-d array returns a scalar; ArrayRecord takes ndarrays only.
    return np.asarray(values, dtype=dtype)


def payload_bytes(models: Sequence[Sequence[np.ndarray]]) -> int:
    """Bytes of model arrays carried by a set of messages."""
    return int(sum(np.asarray(layer).nbytes for model in models for layer in model))
