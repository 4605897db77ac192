"""The one adapter between the generated app and the user's task: binds functions by parameter name, normalises returns."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

USER_CODE_DIR = Path(__file__).resolve().parent.parent / "user"

# What each contract function may call its parameters: role -> accepted names. FLOps passes a role's value
# under whichever name the function uses; a parameter with another name must have a default.
PARAMETER_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "load_data": {
        "partition_id": ("partition_id", "node_id"),
        "num_partitions": ("num_partitions",),
        "batch_size": ("batch_size",),
    },
    "train": {
        "net": ("net", "model"),
        "trainloader": ("trainloader", "train_loader"),
        "valloader": ("valloader", "val_loader", "testloader", "test_loader"),
        "epochs": ("epochs", "local_epochs", "num_epochs"),
        "lr": ("lr", "learning_rate"),
        "device": ("device",),
    },
    "test": {
        "net": ("net", "model"),
        "testloader": ("testloader", "test_loader", "valloader", "val_loader"),
        "device": ("device",),
    },
}
# Roles a function must take: FLOps cannot train without being able to pass the epochs, say.
REQUIRED_ROLES: dict[str, tuple[str, ...]] = {
    "load_data": (),
    "train": ("net", "trainloader", "epochs"),
    "test": ("net", "testloader"),
}
ACCEPTED_SHAPES: dict[str, str] = {
    "load_data": "load_data([partition_id, num_partitions][, batch_size])",
    "train": "train(net, trainloader[, valloader], epochs[, lr | learning_rate][, device]) -> dict | float | None",
    "test": "test(net, testloader[, device]) -> (loss, accuracy) | {'loss', 'accuracy'} | loss",
}


def binding_problem(function: str, parameters: list[tuple[str, str, bool]]) -> str | None:
    """Why FLOps cannot call FUNCTION with these (name, kind, has_default) parameters; None when it can.

    kind is inspect's parameter kind name (POSITIONAL_ONLY, POSITIONAL_OR_KEYWORD, VAR_POSITIONAL, KEYWORD_ONLY,
    VAR_KEYWORD). Shared by the static check (from the AST) and the adapter (from inspect), so both agree.
    """
    names = PARAMETER_NAMES[function]
    role_of = {alias: role for role, aliases in names.items() for alias in aliases}
    found: set[str] = set()
    for name, kind, has_default in parameters:
        if kind in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            continue
        if name in role_of:
            found.add(role_of[name])
        elif not has_default:
            return f"parameter '{name}' is not one FLOps can pass"
    missing = [role for role in REQUIRED_ROLES[function] if role not in found]
    if missing:
        return f"missing parameter{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}"
    return None


def signature_parameters(func: Callable[..., Any]) -> list[tuple[str, str, bool]]:
    """(name, kind, has_default) of FUNC's parameters, as binding_problem takes them."""
    return [
        (p.name, p.kind.name, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(func).parameters.values()
    ]


class UserCodeError(Exception):
    """A user function raised or returned the wrong shape: which function, where (last user frame), what."""

    def __init__(self, function: str, message: str, file: str | None, line: int | None, details: str = "") -> None:
        self.function, self.reason, self.file, self.line, self.details = function, message, file, line, details
        where = f" at {file}:{line}" if file else ""
        super().__init__(f"{function}(){where}: {message}")


class UserTask:
    """The user's task module behind one interface: every call binds by parameter name and checks the result."""

    def __init__(self, module: ModuleType, code_dir: Path = USER_CODE_DIR) -> None:
        self.module = module
        self.code_dir = str(Path(code_dir).resolve())

    # --- the model and its weights ---

    def build_net(self) -> Any:
        return self._call("Net", self.module.Net)

    def get_weights(self, net: Any) -> list[Any]:
        import numpy as np

        user = getattr(self.module, "get_weights", None)
        if user is None:  # Flower's Message-API examples: the state_dict, in order, dtypes kept
            return [value.detach().cpu().numpy() for value in net.state_dict().values()]
        weights = self._call("get_weights", user, net)
        if not isinstance(weights, (list, tuple)) or not all(isinstance(w, np.ndarray) for w in weights):
            kinds = sorted({type(w).__name__ for w in weights}) if isinstance(weights, (list, tuple)) else []
            got = type(weights).__name__ + (f" of {', '.join(kinds)}" if kinds else "")
            raise self._shape_error("get_weights", user, f"must return a list of numpy arrays, got {got}")
        return list(weights)

    def set_weights(self, net: Any, arrays: list[Any]) -> None:
        user = getattr(self.module, "set_weights", None)
        if user is not None:
            self._call("set_weights", user, net, arrays)
            return
        import torch

        state = net.state_dict()
        if len(arrays) != len(state):
            raise UserCodeError("set_weights", f"got {len(arrays)} arrays for {len(state)} state_dict entries",
                                None, None)
        # Cast to each entry's own dtype: integer buffers (BatchNorm's num_batches_tracked) stay integer.
        net.load_state_dict({key: torch.as_tensor(array).to(value.dtype) for (key, value), array
                             in zip(state.items(), arrays)}, strict=True)

    # --- data, training, evaluation ---

    def load_data(self, partition_id: int, num_partitions: int, batch_size: int) -> tuple[Any, Any]:
        func = self.module.load_data
        loaders = self._call_by_name("load_data", func, {
            "partition_id": partition_id, "num_partitions": num_partitions, "batch_size": batch_size})
        if not isinstance(loaders, (tuple, list)) or len(loaders) < 2:
            raise self._shape_error("load_data", func, f"must return (trainloader, testloader), got {_kind(loaders)}")
        return loaders[0], loaders[-1]  # (train, val, test) triples: the last is the test split

    def train(self, net: Any, trainloader: Any, valloader: Any, epochs: int, lr: float, device: str) -> dict[str, float]:
        """The numeric metrics of one local training: a dict's numbers, a float as train_loss, None as {}."""
        func = self.module.train
        returned = self._call_by_name("train", func, {
            "net": net, "trainloader": trainloader, "valloader": valloader, "epochs": epochs, "lr": lr,
            "device": device})
        if returned is None:
            return {}
        if _is_number(returned):
            return {"train_loss": float(returned)}
        if isinstance(returned, dict):
            return numeric_metrics(returned)
        raise self._shape_error("train", func, f"must return a dict, a float (its loss) or None, got {_kind(returned)}")

    def test(self, net: Any, testloader: Any, device: str) -> dict[str, float]:
        """{"loss", "accuracy"} from (loss, accuracy), a dict with those keys, or {"loss"} from a single loss."""
        func = self.module.test
        returned = self._call_by_name("test", func, {"net": net, "testloader": testloader, "device": device})
        if _is_number(returned):
            return {"loss": float(returned)}
        if isinstance(returned, (tuple, list)) and len(returned) == 2 and all(_is_number(v) for v in returned):
            return {"loss": float(returned[0]), "accuracy": float(returned[1])}
        if isinstance(returned, dict) and _is_number(returned.get("loss")):
            metrics = numeric_metrics(returned)
            if "accuracy" not in metrics and _is_number(returned.get("acc")):
                metrics["accuracy"] = float(returned["acc"])
            return metrics
        raise self._shape_error(
            "test", func, f"must return (loss, accuracy), a dict with a 'loss' key, or a loss; got {_kind(returned)}")

    # --- calling user code ---

    def _call_by_name(self, function: str, func: Callable[..., Any], values: dict[str, Any]) -> Any:
        parameters = signature_parameters(func)
        problem = binding_problem(function, parameters)
        if problem is not None:
            file, line = self._def_site(func)
            raise UserCodeError(function, f"{problem}; accepted: {ACCEPTED_SHAPES[function]}", file, line)
        role_of = {alias: role for role, aliases in PARAMETER_NAMES[function].items() for alias in aliases}
        args, kwargs = [], {}
        for name, kind, _ in parameters:
            if name not in role_of or kind.startswith("VAR_"):
                continue
            value = values[role_of[name]]
            if kind == "POSITIONAL_ONLY":
                args.append(value)
            else:
                kwargs[name] = value
        return self._call(function, func, *args, **kwargs)

    def _call(self, function: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever user code raises becomes one located error
            file, line = self._last_user_frame(exc)
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            raise UserCodeError(function, f"raised {detail}", file, line, traceback.format_exc()) from exc

    def _shape_error(self, function: str, func: Callable[..., Any], message: str) -> UserCodeError:
        file, line = self._def_site(func)
        return UserCodeError(function, message, file, line)

    def _last_user_frame(self, exc: BaseException) -> tuple[str | None, int | None]:
        found: tuple[str | None, int | None] = (None, None)
        for frame in traceback.extract_tb(exc.__traceback__):
            if self._inside(frame.filename):
                found = (self._rel(frame.filename), frame.lineno)
        if found == (None, None) and isinstance(exc, SyntaxError) and exc.filename and self._inside(exc.filename):
            found = (self._rel(exc.filename), exc.lineno)
        return found

    def _def_site(self, func: Any) -> tuple[str | None, int | None]:
        code = getattr(inspect.unwrap(func), "__code__", None)
        if code is None or not self._inside(code.co_filename):
            return None, None
        return self._rel(code.co_filename), code.co_firstlineno

    def _inside(self, filename: str | None) -> bool:
        return bool(filename) and os.path.abspath(filename).startswith(self.code_dir + os.sep)

    def _rel(self, filename: str) -> str:
        return os.path.relpath(filename, self.code_dir).replace(os.sep, "/")


def load_task(module_name: str, code_dir: Path = USER_CODE_DIR) -> UserTask:
    """The user's task module behind the adapter; code_dir goes first on sys.path so its own imports resolve."""
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    return UserTask(importlib.import_module(module_name), code_dir)


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


def input_example(loader: Any, rows: int = 5) -> Any:
    """A few rows of real model input, for the logged model's signature and example."""
    import numpy as np

    inputs = _inputs_of(next(iter(loader)))
    array = inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else np.asarray(inputs)
    return array[:rows]


def numeric_metrics(values: Any) -> dict[str, float]:
    """The int/float entries of a dict (a MetricRecord holds numbers only)."""
    if not isinstance(values, dict):
        return {}
    return {str(k): float(v) for k, v in values.items() if _is_number(v)}


def _is_number(value: Any) -> bool:
    # numpy scalars and 0-d tensors (a loss.item() forgotten) count; bools do not.
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return type(value).__module__ in ("numpy", "torch") and getattr(value, "ndim", 1) == 0


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__
