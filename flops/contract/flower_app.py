"""The "flower-app" contract: a repo that already is a Flower app (pyproject with [tool.flwr.app]) around a task.py."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar

from flops.contract.base import ContractSpec
from flops.contract.pytorch_task import TASK_FILE, PytorchTaskContract
from flops.errors import ContractError

PYPROJECT = "pyproject.toml"
# [tool.flwr.app.config] keys of Flower's templates and examples -> FLOps' run config field (dotted).
CONFIG_KEYS: dict[str, str] = {
    "num-server-rounds": "rounds",
    "local-epochs": "training.local_epochs",
    "batch-size": "training.batch_size",
    "learning-rate": "training.learning_rate",
    "lr": "training.learning_rate",
    "fraction-train": "strategy.fraction_train",
    "fraction-fit": "strategy.fraction_train",
    "fraction-evaluate": "strategy.fraction_evaluate",
}


class FlowerAppContract(PytorchTaskContract):
    """A Flower app: its ClientApp's package holds the task module; its app config gives run defaults."""

    name: ClassVar[str] = "flower-app"
    expectation: ClassVar[str] = "a Flower app (pyproject.toml with [tool.flwr.app]) whose package has a task.py"

    def detect(self, code_dir: Path) -> ContractSpec | None:
        code_dir = Path(code_dir).resolve()
        pyproject = code_dir / PYPROJECT
        if not pyproject.is_file():
            return None
        try:
            app = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("flwr", {}).get("app")
        except tomllib.TOMLDecodeError as exc:
            raise ContractError(f"{PYPROJECT}: invalid TOML: {exc}") from None
        if not isinstance(app, dict):
            return None
        package = _component_package(app, "clientapp") or _component_package(app, "serverapp")
        if package is None or not (code_dir / package / TASK_FILE).is_file():
            shown = f"{package}/{TASK_FILE}" if package else f"[tool.flwr.app.components] clientapp's package/{TASK_FILE}"
            raise ContractError(f"{PYPROJECT}: a Flower app, but {shown} is missing: FLOps runs the app's task module")
        config = app.get("config", {})
        return ContractSpec(contract=self.name, code_dir=code_dir, task_module=f"{package.replace('/', '.')}.task",
                            task_file=code_dir / package / TASK_FILE,
                            app_config=config if isinstance(config, dict) else {})


def _component_package(app: dict[str, Any], component: str) -> str | None:
    """"pkg.client_app:app" -> "pkg" (as a path: "pkg/sub" for "pkg.sub.client_app:app")."""
    reference = app.get("components", {}).get(component)
    if not isinstance(reference, str) or ":" not in reference:
        return None
    module = reference.split(":", 1)[0]
    package = module.rpartition(".")[0]
    return package.replace(".", "/") or None


def run_config_defaults(app_config: dict[str, Any]) -> dict[str, Any]:
    """The app config's values FLOps understands, as dotted run-config fields."""
    return {CONFIG_KEYS[key]: value for key, value in app_config.items() if key in CONFIG_KEYS}
