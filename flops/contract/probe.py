"""Import a task module in the run's environment, build Net() and round-trip its weights; print one JSON line.

Runs as `python probe.py CODE_DIR TASK_MODULE` (or `-m flops.contract.probe`) inside the user's environment,
so it uses only the standard library and numpy (plus whatever the task imports). It never calls load_data:
the data lives on the learners. Exit 0 with {"num_arrays": ...} or exit 3 with {"error", "file", "line"}.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import traceback
from types import ModuleType
from typing import Any

FAILURE_EXIT_CODE = 3


class ProbeFailure(Exception):
    """A contract violation found while probing, with where it happened (relative to CODE_DIR)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: probe.py CODE_DIR TASK_MODULE", file=sys.stderr)
        return 2
    code_dir, task_module = os.path.abspath(argv[0]), argv[1]
    # The probe's own directory must not shadow the user's modules (a user `base.py`, say).
    sys.path[0] = code_dir
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # the task's prints must not be mistaken for our JSON line
    try:
        result = probe(code_dir, task_module)
        status = 0
    except ProbeFailure as failure:
        result = {"error": str(failure), "file": failure.file, "line": failure.line}
        status = FAILURE_EXIT_CODE
    print(json.dumps(result), file=real_stdout, flush=True)
    return status


def probe(code_dir: str, task_module: str) -> dict[str, Any]:
    """Import the task, build two Nets and copy weights from one into the other; describe the model."""
    module = _step(code_dir, f"importing {task_module} failed", importlib.import_module, task_module)
    net_class = getattr(module, "Net", None)
    if not callable(net_class):
        raise ProbeFailure(f"{task_module}.Net is missing or not callable", _rel(code_dir, module.__file__))
    net = _step(code_dir, "building Net() failed", net_class)
    weights = _weights(code_dir, module, net)
    # A second, independently initialised Net shows whether set_weights really writes into the model.
    other = _step(code_dir, "building a second Net() failed", net_class)
    _step(code_dir, "set_weights(net, parameters) failed", module.set_weights, other, weights)
    _compare(code_dir, module, weights, _weights(code_dir, module, other))
    torch = sys.modules.get("torch")
    return {
        "num_arrays": len(weights),
        "num_parameters": int(sum(array.size for array in weights)),
        "model_bytes": int(sum(array.nbytes for array in weights)),
        "python_version": platform.python_version(),
        "torch_version": str(getattr(torch, "__version__", "")),
    }


def _weights(code_dir: str, module: ModuleType, net: Any) -> list[Any]:
    import numpy as np

    weights = _step(code_dir, "get_weights(net) failed", module.get_weights, net)
    if not isinstance(weights, list) or not all(isinstance(w, np.ndarray) for w in weights):
        kinds = sorted({type(w).__name__ for w in weights}) if isinstance(weights, (list, tuple)) else []
        got = f"{type(weights).__name__}" + (f" of {', '.join(kinds)}" if kinds else "")
        raise ProbeFailure(
            f"get_weights(net) must return a list of numpy arrays, got {got}", *_def_site(code_dir, module.get_weights)
        )
    return weights


def _compare(code_dir: str, module: ModuleType, sent: list[Any], received: list[Any]) -> None:
    import numpy as np

    where = _def_site(code_dir, module.set_weights)
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
