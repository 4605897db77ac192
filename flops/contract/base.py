"""The ML contract interface: recognise which shape of training code a repo has, and check it statically."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel


class ContractSpec(BaseModel):
    """Where a repo's code fits a contract: which contract, and the module FLOps will import."""

    contract: str  # registry name, e.g. "pytorch-task"
    code_dir: Path  # repo root; put first on sys.path when importing
    task_module: str  # import name: "task" or "pkg.task"
    task_file: Path  # absolute path of the task module's file
    # A Flower app's own [tool.flwr.app.config] (key -> value): run defaults that flags and config override.
    app_config: dict[str, Any] = {}

    @property
    def task_label(self) -> str:
        """The task file relative to the repo root, as it appears in messages ("pkg/task.py")."""
        return self.task_file.relative_to(self.code_dir).as_posix()


class MLContract(ABC):
    """One shape of user code FLOps can federate. One module per implementation, chosen by name."""

    name: ClassVar[str]
    # What the repo should contain, for the "nothing matched" error, e.g. "task.py at the root or in a package".
    expectation: ClassVar[str]

    @abstractmethod
    def detect(self, code_dir: Path) -> ContractSpec | None:
        """The spec when code_dir has this contract's shape, None when it does not (ContractError if ambiguous)."""

    @abstractmethod
    def check(self, spec: ContractSpec) -> None:
        """Check the code without importing it; raise ContractError naming file:line on the first problems."""
