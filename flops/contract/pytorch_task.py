"""The "pytorch-task" contract: a task.py shaped like Flower's PyTorch tutorials (Net, weights, data, train, test)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from flops.contract.base import ContractSpec, MLContract
from flops.contract.probe import load_adapter
from flops.errors import ContractError


# Weight functions are optional (the state_dict in order by default); when defined they take the model first.
WEIGHT_FUNCTIONS = {"get_weights": "get_weights(net) -> list[np.ndarray]", "set_weights": "set_weights(net, parameters)"}
BOUND_FUNCTIONS = ("load_data", "train", "test")  # called by parameter name: see the adapter's PARAMETER_NAMES
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
    adapter = load_adapter()
    problems = _model_problems(definitions.get(MODEL_CLASS), label)
    for name in BOUND_FUNCTIONS:
        problems += _bound_function_problems(definitions.get(name), name, adapter, label)
    for name, shape in WEIGHT_FUNCTIONS.items():
        node = definitions.get(name)
        if node is not None:
            problems += _weight_function_problems(node, name, shape, label)
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


def _bound_function_problems(node: ast.AST | None, name: str, adapter, label: str) -> list[str]:  # noqa: ANN001
    accepted = adapter.ACCEPTED_SHAPES[name]
    if node is None:
        return [f"{label}: missing function {name}; accepted: {accepted}"]
    if isinstance(node, ast.ClassDef):
        return [f"{label}:{node.lineno}: {name} must be a function, not a class"]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []  # imported or assigned: the import check binds it
    problem = adapter.binding_problem(name, _parameters(node.args))
    if problem is None:
        return []
    shown = ", ".join(a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs)
    return [f"{label}:{node.lineno}: {name}({shown}): {problem}; accepted: {accepted}"]


def _weight_function_problems(node: ast.AST, name: str, shape: str, label: str) -> list[str]:
    if isinstance(node, ast.ClassDef):
        return [f"{label}:{node.lineno}: {name} must be a function, not a class"]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []
    args = node.args
    positional = args.posonlyargs + args.args
    wanted = 1 if name == "get_weights" else 2
    required = len(positional) - len(args.defaults)
    keyword_only_required = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    if required > wanted or (len(positional) < wanted and args.vararg is None) or keyword_only_required:
        shown = ", ".join(a.arg for a in positional + args.kwonlyargs)
        return [f"{label}:{node.lineno}: {name}({shown}) cannot be called as {shape} "
                "(or remove it: FLOps then uses the model's state_dict in order)"]
    return []


def _parameters(args: ast.arguments) -> list[tuple[str, str, bool]]:
    """(name, inspect kind, has_default) from a def's AST, as the adapter's binding_problem takes them."""
    positional = args.posonlyargs + args.args
    first_default = len(positional) - len(args.defaults)
    found = [(a.arg, "POSITIONAL_ONLY" if i < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD", i >= first_default)
             for i, a in enumerate(positional)]
    if args.vararg is not None:
        found.append((args.vararg.arg, "VAR_POSITIONAL", False))
    found += [(a.arg, "KEYWORD_ONLY", d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg is not None:
        found.append((args.kwarg.arg, "VAR_KEYWORD", False))
    return found
