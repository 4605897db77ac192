"""Import the user's task module (from user/, copied unmodified) and read its data and examples."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

USER_CODE_DIR = Path(__file__).resolve().parent.parent / "user"


def load_task(module_name: str) -> ModuleType:
    """The user's task module; user/ goes first on sys.path so its own imports resolve."""
    if str(USER_CODE_DIR) not in sys.path:
        sys.path.insert(0, str(USER_CODE_DIR))
    return importlib.import_module(module_name)


def num_examples(loader: Any) -> int:
    """Examples behind a DataLoader (its dataset's length), else counted batch by batch."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        try:
            return len(dataset)
        except TypeError:
            pass
    return sum(len(_inputs_of(batch)) for batch in loader)


def _inputs_of(batch: Any) -> Any:
    """The model input of one batch: (x, y) tuples and {"img"/...: x, "label": y} dicts both occur."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        for key, value in batch.items():
            if key not in ("label", "labels", "target", "targets", "y"):
                return value
    return batch


def input_example(loader: Any, rows: int = 5) -> np.ndarray:
    """A few rows of real model input, for the logged model's signature and example."""
    inputs = _inputs_of(next(iter(loader)))
    array = inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else np.asarray(inputs)
    return array[:rows]


def numeric_metrics(values: Any) -> dict[str, float]:
    """The int/float entries of what train() returned (a MetricRecord holds numbers only)."""
    if not isinstance(values, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in values.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    }
