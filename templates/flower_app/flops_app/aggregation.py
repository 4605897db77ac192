"""Example-weighted averaging of model arrays that keeps each array's dtype.

Flower's FedAvg turns every array into floats; integer buffers such as BatchNorm's
num_batches_tracked must come back as integers, so they are averaged and rounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_average(models: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """Average layer by layer in float64, then cast back to each layer's own dtype."""
    if not models:
        raise ValueError("nothing to aggregate")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("aggregation weights sum to zero (every learner reported 0 examples)")
    factors = [w / total for w in weights]
    averaged = []
    for layers in zip(*models, strict=True):
        acc = np.zeros(np.shape(layers[0]), dtype=np.float64)
        for layer, factor in zip(layers, factors, strict=True):
            acc += np.asarray(layer, dtype=np.float64) * factor
        dtype = np.asarray(layers[0]).dtype
        if not np.issubdtype(dtype, np.floating) and not np.issubdtype(dtype, np.complexfloating):
            acc = np.rint(acc)
        # np.rint of a 0-d array returns a scalar; ArrayRecord takes ndarrays only.
        averaged.append(np.asarray(acc, dtype=dtype))
    return averaged


def payload_bytes(models: Sequence[Sequence[np.ndarray]]) -> int:
    """Bytes of model arrays carried by a set of replies."""
    return int(sum(np.asarray(layer).nbytes for model in models for layer in model))
