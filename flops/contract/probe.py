"""Import a task in the run's environment and call every contract function once on a tiny batch; print one JSON line.

Runs as `python probe.py CODE_DIR TASK_MODULE NUM_PARTITIONS BATCH_SIZE` inside the user's environment, with
the generated app's own adapter (templates/flower_app/flops_app/user_task.py, loaded by path): what passes
here is called the same way on the learners and the root. It builds Net(), round-trips its weights, loads
partition 0 and runs train() and test() on one batch, checking what they return.
Exit 0 with {"num_arrays": ...} or exit 3 with {"error", "file", "line"}.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

FAILURE_EXIT_CODE = 3
# The templates ship as the `flops_templates` package (a wheel has no templates/ beside flops/); only its location
# is read here, so this probe still imports nothing but the standard library before the user's code.
ADAPTER_FILE = Path(importlib.util.find_spec("flops_templates").origin).parent / "flower_app" / "flops_app" / "user_task.py"


class ProbeFailure(Exception):
    """A contract violation found while probing, with where it happened (relative to CODE_DIR)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 4):
        print("usage: probe.py CODE_DIR TASK_MODULE [NUM_PARTITIONS BATCH_SIZE]", file=sys.stderr)
        return 2
    code_dir, task_module = os.path.abspath(argv[0]), argv[1]
    num_partitions, batch_size = (int(argv[2]), int(argv[3])) if len(argv) == 4 else (2, 32)
    # The probe's own directory must not shadow the user's modules (a user `base.py`, say).
    sys.path[0] = code_dir
    sys.path.append(str(ADAPTER_FILE.parent.parent))  # the app's flops_app package (contract shims), after the user's
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # the task's prints must not be mistaken for our JSON line
    try:
        result = probe(code_dir, task_module, num_partitions, batch_size)
        status = 0
    except ProbeFailure as failure:
        result = {"error": str(failure), "file": failure.file, "line": failure.line}
        status = FAILURE_EXIT_CODE
    print(json.dumps(result), file=real_stdout, flush=True)
    return status


def load_adapter() -> ModuleType:
    """The generated app's user_task module, by path (the app package itself is not importable here)."""
    spec = importlib.util.spec_from_file_location("flops_probe_user_task", ADAPTER_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def probe(code_dir: str, task_module: str, num_partitions: int = 2, batch_size: int = 32) -> dict[str, Any]:
    """Import the task, check the weights round trip and one tiny round of load_data/train/test."""
    adapter = load_adapter()
    module = _step(code_dir, f"importing {task_module} failed", importlib.import_module, task_module)
    if not callable(getattr(module, "Net", None)):
        raise ProbeFailure(f"{task_module}.Net is missing or not callable", _rel(code_dir, module.__file__))
    task = adapter.UserTask(module, Path(code_dir))
    net = _adapted(adapter, "building Net() failed", task.build_net)
    weights = _adapted(adapter, "get_weights(net) failed", task.get_weights, net)
    # A second, independently initialised Net shows whether set_weights really writes into the model.
    other = _adapted(adapter, "building a second Net() failed", task.build_net)
    _adapted(adapter, "set_weights(net, parameters) failed", task.set_weights, other, weights)
    _compare(code_dir, module, weights, _adapted(adapter, "get_weights(net) failed", task.get_weights, other))
    trainloader, testloader = _adapted(
        adapter, "load_data(partition 0) failed", task.load_data, 0, num_partitions, batch_size)
    try:
        train_metrics = _adapted(adapter, "train() on one batch failed", task.train, net,
                                 one_batch(trainloader), one_batch(testloader), 1, 0.001, "cpu")
        test_metrics = _adapted(adapter, "test() on one batch failed", task.test, net, one_batch(testloader), "cpu")
    except ProbeFailure as failure:
        if "on one batch failed" not in str(failure):  # a wrong return shape is the same on any loader
            raise
        # Code may rely on its own loader's dataset type (e.g. `loader.dataset.tensors`), which the one-batch
        # stand-in does not keep: only what fails on the loaders a real run hands over is refused.
        train_metrics = _adapted(adapter, "train() failed", task.train, net, trainloader, testloader, 1, 0.001, "cpu")
        test_metrics = _adapted(adapter, "test() failed", task.test, net, testloader, "cpu")
    torch = sys.modules.get("torch")
    return {
        "num_arrays": len(weights),
        "num_parameters": int(sum(array.size for array in weights)),
        "model_bytes": int(sum(array.nbytes for array in weights)),
        "python_version": platform.python_version(),
        "torch_version": str(getattr(torch, "__version__", "")),
        "train_metrics": sorted(train_metrics),
        "accuracy_reported": "accuracy" in test_metrics,
    }


def one_batch(loader: Any) -> Any:
    """A loader over the first batch only (a real DataLoader when it is one), so the probe trains in moments."""
    try:
        from torch.utils.data import DataLoader, Subset
    except ImportError:
        return _FirstBatch(loader)
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, DataLoader) and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        size = min(len(dataset), loader.batch_size or 1)
        return DataLoader(Subset(dataset, range(size)), batch_size=loader.batch_size, collate_fn=loader.collate_fn)
    return _FirstBatch(loader)


class _FirstBatch:
    """Iterates the first batch of LOADER; every other attribute (dataset, batch_size) is the loader's."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __iter__(self):  # noqa: ANN204
        for batch in self._loader:
            yield batch
            return

    def __len__(self) -> int:
        return 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _adapted(adapter: ModuleType, what: str, func: Any, *args: Any) -> Any:
    """Call an adapter method; its UserCodeError becomes a ProbeFailure at the user's file:line."""
    try:
        return func(*args)
    except adapter.UserCodeError as exc:
        if exc.reason.startswith("raised "):
            message = f"{what}: {exc.reason.removeprefix('raised ')}"
        else:
            message = f"{exc.function}() {exc.reason}"
        raise ProbeFailure(message, exc.file, exc.line) from exc


def _compare(code_dir: str, module: ModuleType, sent: list[Any], received: list[Any]) -> None:
    import numpy as np

    setter = getattr(module, "set_weights", None)
    where = _def_site(code_dir, setter) if setter is not None else (None, None)
    if len(sent) != len(received):
        raise ProbeFailure(f"weights round trip: set {len(sent)} arrays, got {len(received)} back", *where)
    for index, (a, b) in enumerate(zip(sent, received)):
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
            raise ProbeFailure(
                f"weights round trip: array {index} ({a.dtype}{list(a.shape)}) differs after set_weights; "
                "does set_weights load the parameters in the order get_weights returns them?",
                *where,
            )


def _step(code_dir: str, what: str, func: Any, *args: Any) -> Any:
    """Call func; turn any exception (even SystemExit) into a ProbeFailure located in the user's code."""
    try:
        return func(*args)
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, including SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        file, line = _innermost_user_frame(code_dir, exc)
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
        raise ProbeFailure(f"{what}: {detail}", file, line) from exc


def _innermost_user_frame(code_dir: str, exc: BaseException) -> tuple[str | None, int | None]:
    found: tuple[str | None, int | None] = (None, None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if _inside(code_dir, frame.filename):
            found = (_rel(code_dir, frame.filename), frame.lineno)
    if found == (None, None) and isinstance(exc, SyntaxError) and exc.filename and _inside(code_dir, exc.filename):
        found = (_rel(code_dir, exc.filename), exc.lineno)  # the syntax error's own file is not a frame
    return found


def _def_site(code_dir: str, func: Any) -> tuple[str | None, int | None]:
    code = getattr(func, "__code__", None)
    if code is None or not _inside(code_dir, code.co_filename):
        return None, None
    return _rel(code_dir, code.co_filename), code.co_firstlineno


def _inside(code_dir: str, filename: str | None) -> bool:
    return bool(filename) and os.path.abspath(filename).startswith(code_dir.rstrip(os.sep) + os.sep)


def _rel(code_dir: str, filename: str | None) -> str | None:
    return os.path.relpath(filename, code_dir).replace(os.sep, "/") if filename else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
