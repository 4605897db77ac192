"""The "oakestra-model-manager" contract: an ML repo of Oakestra's FLOps add-on (model_manager.py, class ModelManager)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import ClassVar

from flops.contract.base import ContractSpec, MLContract
from flops.errors import ContractError

MODEL_MANAGER_FILE = "model_manager.py"
MODEL_MANAGER_CLASS = "ModelManager"
# The generated app's shim that shows a ModelManager to the adapter as a task module.
SHIM_MODULE = "flops_app.model_manager_task"
METHODS = {
    "set_model_data": "set_model_data(self[, partition_id, num_partitions])",
    "get_model_parameters": "get_model_parameters(self) -> list of arrays",
    "set_model_parameters": "set_model_parameters(self, parameters)",
    "fit_model": "fit_model(self) -> num_examples",
    "evaluate_model": "evaluate_model(self) -> (loss, accuracy, num_examples)",
}


class OakestraModelManagerContract(MLContract):
    """model_manager.py at the repo root with a ModelManager class; dependencies in conda.yaml or requirements.txt."""

    name: ClassVar[str] = "oakestra-model-manager"
    expectation: ClassVar[str] = "model_manager.py with a ModelManager class at the root"

    def detect(self, code_dir: Path) -> ContractSpec | None:
        path = Path(code_dir).resolve() / MODEL_MANAGER_FILE
        if not path.is_file():
            return None
        return ContractSpec(contract=self.name, code_dir=path.parent, task_module=SHIM_MODULE, task_file=path)

    def check(self, spec: ContractSpec) -> None:
        label = spec.task_label
        try:
            tree = ast.parse(spec.task_file.read_text(encoding="utf-8"), filename=label)
        except SyntaxError as exc:
            raise ContractError(f"{label}:{exc.lineno}: syntax error: {exc.msg}") from None
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == MODEL_MANAGER_CLASS]
        if not classes:
            raise ContractError(f"{label}: missing class {MODEL_MANAGER_CLASS} with {', '.join(METHODS.values())}")
        node = classes[-1]
        defined = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        missing = [shape for method, shape in METHODS.items() if method not in defined]
        if missing:
            raise ContractError(f"{label}:{node.lineno}: {MODEL_MANAGER_CLASS} lacks {', '.join(missing)}")

