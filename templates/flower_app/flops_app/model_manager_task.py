"""An Oakestra FLOps ML repo (model_manager.py's ModelManager) in the task-module shape the adapter calls."""

from __future__ import annotations

import inspect
import os
import sys
import types
import weakref
from abc import ABC, abstractmethod
from typing import Any


def _provide_flops_utils() -> None:
    """Oakestra repos subclass flops_utils' ModelManagerTemplate; outside the add-on, give them the same ABC."""
    try:
        import flops_utils.ml_repo_templates  # noqa: F401
    except ImportError:

        class ModelManagerTemplate(ABC):
            @abstractmethod
            def set_model_data(self) -> None: ...
            @abstractmethod
            def get_model_parameters(self) -> Any: ...
            @abstractmethod
            def set_model_parameters(self, parameters: Any) -> None: ...
            @abstractmethod
            def fit_model(self) -> int: ...
            @abstractmethod
            def evaluate_model(self) -> tuple[Any, Any, int]: ...

        package = sys.modules.setdefault("flops_utils", types.ModuleType("flops_utils"))
        templates = types.ModuleType("flops_utils.ml_repo_templates")
        templates.ModelManagerTemplate = ModelManagerTemplate
        package.ml_repo_templates = templates
        sys.modules["flops_utils.ml_repo_templates"] = templates


_provide_flops_utils()
from model_manager import ModelManager  # noqa: E402 - the user's module, after its imports can resolve

# The model each manager trains -> the manager (the model is what FLOps sends, logs and serves).
_MANAGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def Net() -> Any:  # noqa: N802 - the contract's name for "build the model"
    manager = ModelManager()
    model = getattr(manager, "model", None)
    if model is None:
        model = _Holder()
    _MANAGERS[model] = manager
    return model


class _Holder:
    """Stands for the model when a ModelManager keeps none in self.model."""


class Split:
    """One side of a learner's data: ModelManager.set_model_data loads it; its size is what the manager reports."""

    def __init__(self, partition_id: int, num_partitions: int, side: str) -> None:
        self.partition_id, self.num_partitions, self.side = partition_id, num_partitions, side
        self.num_examples = 0
        self.manager: Any = None

    @property
    def dataset(self) -> range:  # len(loader.dataset) is how FLOps counts examples
        return range(self.num_examples)

    def __iter__(self):  # noqa: ANN204 - an input example for the logged model: the manager's own loader
        loader = getattr(self.manager, "testloader" if self.side == "test" else "trainloader", None)
        return iter(loader if loader is not None else ())


def get_weights(net: Any) -> list[Any]:
    import numpy as np

    return [np.asarray(array) for array in _MANAGERS[net].get_model_parameters()]


def set_weights(net: Any, parameters: list[Any]) -> None:
    _MANAGERS[net].set_model_parameters(parameters)


def load_data(partition_id: int, num_partitions: int) -> tuple[Split, Split]:
    return Split(partition_id, num_partitions, "train"), Split(partition_id, num_partitions, "test")


def train(net: Any, trainloader: Any, epochs: int) -> None:
    manager = _with_data(net, trainloader)
    fit = manager.fit_model
    trainloader.num_examples = int(fit(epochs=epochs) if "epochs" in inspect.signature(fit).parameters else fit())


def test(net: Any, testloader: Any) -> tuple[float, float]:
    loss, accuracy, num_examples = _with_data(net, testloader).evaluate_model()
    testloader.num_examples = int(num_examples)
    return float(loss), float(accuracy)


def _with_data(net: Any, split: Any) -> Any:
    """The net's manager with this partition's data set (set_model_data takes the partition by name, or reads
    FLOPS_PARTITION_ID / FLOPS_NUM_PARTITIONS from the environment)."""
    manager = _MANAGERS[net]
    wanted = (split.partition_id, split.num_partitions)
    if getattr(manager, "_flops_partition", None) != wanted:
        os.environ["FLOPS_PARTITION_ID"], os.environ["FLOPS_NUM_PARTITIONS"] = str(wanted[0]), str(wanted[1])
        accepted = inspect.signature(manager.set_model_data).parameters
        given = {"partition_id": wanted[0], "num_partitions": wanted[1]}
        manager.set_model_data(**{k: v for k, v in given.items() if k in accepted})
        manager._flops_partition = wanted
    split.manager = manager
    return manager
