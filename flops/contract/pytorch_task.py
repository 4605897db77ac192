"""The "pytorch-task" contract: a task.py shaped like Flower's PyTorch tutorials (Net, weights, data, train, test)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from flops.contract.base import ContractSpec, MLContract
from flops.errors import ContractError


@dataclass(frozen=True)
class ExpectedFunction:
    """A function task.py must define: its positional parameters and what it returns (for messages)."""

    name: str
    params: tuple[str, ...]
    returns: str | None = None

    def signature(self) -> str:
        arrow = f" -> {self.returns}" if self.returns else ""
        return f"{self.name}({', '.join(self.params)}){arrow}"


EXPECTED_FUNCTIONS = (
    ExpectedFunction("get_weights", ("net",), "list[np.ndarray]"),
    ExpectedFunction("set_weights", ("net", "parameters")),
    ExpectedFunction("load_data", ("partition_id", "num_partitions", "batch_size"), "(trainloader, testloader)"),
    ExpectedFunction(
        "train", ("net", "trainloader", "valloader", "epochs", "learning_rate", "device"), "dict"
    ),
    ExpectedFunction("test", ("net", "testloader", "device"), "(loss, accuracy)"),
)
MODEL_CLASS = "Net"
TASK_FILE = "task.py"


class PytorchTaskContract(MLContract):
    """task.py at the repo root, or in exactly one package one level down (imported as pkg.task)."""

    name: ClassVar[str] = "pytorch-task"
    expectation: ClassVar[str] = "task.py at the root or in a package"

    def detect(self, code_dir: Path) -> ContractSpec | None:
        code_dir = Path(code_dir).resolve()
        if (code_dir / TASK_FILE).is_file():
            return self._spec(code_dir, "task", code_dir / TASK_FILE)
        candidates = sorted(
            child
            for child in code_dir.iterdir()
            if child.is_dir() and (child / "__init__.py").is_file() and (child / TASK_FILE).is_file()
        )
        if not candidates:
            return None
        if len(candidates) > 1:
            found = ", ".join(f"{c.name}/{TASK_FILE}" for c in candidates)
            raise ContractError(
                f"several task modules in {code_dir}: {found}; keep one, or put task.py at the root to choose"
            )
        package = candidates[0]
        return self._spec(code_dir, f"{package.name}.task", package / TASK_FILE)

    def check(self, spec: ContractSpec) -> None:
        problems = find_problems(spec.task_file.read_text(encoding="utf-8"), spec.task_label)
        if problems:
            # One line (the CLI shows the first line only), listing every problem so one fix round suffices.
            raise ContractError("; ".join(problems))

    def _spec(self, code_dir: Path, module: str, task_file: Path) -> ContractSpec:
        return ContractSpec(contract=self.name, code_dir=code_dir, task_module=module, task_file=task_file)


def find_problems(source: str, label: str) -> list[str]:
    """Every way the task source misses the contract, as "label:line: message" strings (empty when it fits)."""
    try:
        tree = ast.parse(source, filename=label)
    except SyntaxError as exc:
        return [f"{label}:{exc.lineno}: syntax error: {exc.msg}"]
    definitions = top_level_definitions(tree)
    problems = _model_problems(definitions.get(MODEL_CLASS), label)
    for expected in EXPECTED_FUNCTIONS:
        problems += _function_problems(definitions.get(expected.name), expected, label)
    return problems


def top_level_definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """Name -> the last statement binding it at module level (the one Python would keep at import)."""
    found: dict[str, ast.AST] = {}
    for node in _module_level_statements(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                found[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
    return found


def _module_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    # Definitions under `if`/`try`/`with` at module level still run at import (e.g. try: import ... except).
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                yield from _module_level_statements(block)
            for handler in getattr(node, "handlers", []):
                yield from _module_level_statements(handler.body)


def _model_problems(node: ast.AST | None, label: str) -> list[str]:
    if node is None:
        return [f"{label}: missing class {MODEL_CLASS} (the model, an nn.Module built with {MODEL_CLASS}())"]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [f"{label}:{node.lineno}: {MODEL_CLASS} must be a class (an nn.Module), not a function"]
    return []  # a class, or an import/assignment (e.g. Net = ResNet18) that the import check will exercise


def _function_problems(node: ast.AST | None, expected: ExpectedFunction, label: str) -> list[str]:
    if node is None:
        return [f"{label}: missing function {expected.signature()}"]
    if isinstance(node, ast.ClassDef):
        return [f"{label}:{node.lineno}: {expected.name} must be a function, not a class"]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []  # imported or assigned: its signature is not visible statically
    return _arity_problems(node, expected, label)


def _arity_problems(node: ast.FunctionDef | ast.AsyncFunctionDef, expected: ExpectedFunction, label: str) -> list[str]:
    """FLOps calls these positionally with exactly len(expected.params) arguments: the def must accept that."""
    args = node.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    required = len(positional) - len(args.defaults)
    wanted = len(expected.params)
    accepts = required <= wanted and (wanted <= len(positional) or args.vararg is not None)
    where = f"{label}:{node.lineno}: {node.name}()"
    problems = []
    if not accepts:
        problems.append(
            f"{where} takes {_count_phrase(required, len(positional), args.vararg is not None)} "
            f"({', '.join(positional)}); expected {wanted}: ({', '.join(expected.params)})"
        )
    missing_keywords = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    if missing_keywords:
        problems.append(f"{where} has keyword-only parameters without defaults: {', '.join(missing_keywords)}")
    return problems


def _count_phrase(required: int, total: int, has_varargs: bool) -> str:
    if has_varargs:
        return f"at least {required} positional parameters"
    if required == total:
        return f"{total} positional parameter{'s' if total != 1 else ''}"
    return f"{required} to {total} positional parameters"
