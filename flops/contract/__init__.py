"""ML contracts by name: detect which one a repo fits, check it statically, and import-check it in the run's env."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from pydantic import BaseModel, ValidationError

from flops.contract.base import ContractSpec, MLContract
from flops.contract.flower_app import FlowerAppContract
from flops.contract.oakestra_model_manager import OakestraModelManagerContract
from flops.contract.pytorch_task import PytorchTaskContract
from flops.errors import ContractError, EnvironmentSetupError

# Detection order: the first contract whose detect() returns a spec wins.
CONTRACTS: dict[str, type[MLContract]] = {
    FlowerAppContract.name: FlowerAppContract,
    PytorchTaskContract.name: PytorchTaskContract,
    OakestraModelManagerContract.name: OakestraModelManagerContract,
}

__all__ = [
    "CONTRACTS",
    "ContractSpec",
    "MLContract",
    "ProbeResult",
    "check_contract",
    "detect_contract",
    "get_contract",
    "remembered_import_check",
    "run_import_check",
]


class ProbeResult(BaseModel):
    """What importing the task and building Net() in the run's environment showed."""

    num_arrays: int
    num_parameters: int
    model_bytes: int
    python_version: str
    torch_version: str  # "" when the task does not import torch
    train_metrics: list[str] = []  # what train() reported on one batch (a float becomes train_loss)
    accuracy_reported: bool = True  # False when test() returns a loss alone


def get_contract(name: str) -> MLContract:
    """The contract registered under NAME; an unknown name lists the known ones."""
    try:
        return CONTRACTS[name]()
    except KeyError:
        raise ContractError(f"unknown ML contract '{name}' (known: {', '.join(sorted(CONTRACTS))})") from None


def detect_contract(code_dir: Path, label: str | None = None) -> ContractSpec:
    """The spec of the first contract that recognises code_dir; ContractError when none does.

    LABEL names the source in messages (its URL and the folder inside it), never FLOps' cache path.
    """
    code_dir = Path(code_dir).resolve()
    label = label or str(code_dir)
    for contract_class in CONTRACTS.values():
        try:
            spec = contract_class().detect(code_dir)
        except ContractError as exc:
            raise ContractError(str(exc).replace(str(code_dir), label)) from None
        if spec is not None:
            return spec
    expected = "; or ".join(f"{c.expectation} ({name})" for name, c in CONTRACTS.items())
    raise ContractError(f"no ML contract matched {label}: expected {expected} (see README: ML contract)")


def check_contract(code_dir: Path, label: str | None = None) -> ContractSpec:
    """Detect the contract and check the code statically (nothing of the user's is imported)."""
    spec = detect_contract(code_dir, label)
    get_contract(spec.contract).check(spec)
    return spec


IMPORT_CHECK_ENV = "FLOPS_IMPORT_CHECK"  # set to "1" in the environment of the import check's process


def run_import_check(
    spec: ContractSpec, python: Path, num_partitions: int = 2, batch_size: int = 32, timeout_s: float = 180
) -> ProbeResult:
    """Import the task, round-trip Net()'s weights, and run load_data/train/test on one batch with PYTHON (the
    run's env), through the generated app's own adapter; ContractError with file:line."""
    from flops.contract import probe  # imported here so `python -m flops.contract.probe` runs it only once

    # Run the probe by file path, not `-m flops.contract.probe`: the run's env needs numpy, not FLOps' deps.
    command = [str(python), probe.__file__, str(spec.code_dir), spec.task_module, str(num_partitions), str(batch_size)]
    # No __pycache__ in the checkout: it is the pinned commit's tree, later packaged as is. IMPORT_CHECK_ENV
    # tells a task that this is the check, not a learner (a task may skip side effects such as logging there).
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", IMPORT_CHECK_ENV: "1"}
    try:
        done = subprocess.run(
            command,
            cwd=spec.code_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ContractError(
            f"{spec.task_label}: import check timed out after {timeout_s:g}s "
            f"(does importing {spec.task_module} or building Net() do heavy work?)"
        ) from None
    except OSError as exc:
        raise EnvironmentSetupError(f"cannot run the run environment's python {python}: {exc.strerror}") from None
    return _parse_probe_output(spec, done)


def remembered_import_check(spec: ContractSpec, python: Path, num_partitions: int, batch_size: int, commit: str,
                            cache_dir: Path) -> ProbeResult:
    """run_import_check, remembered per commit: the same commit's code, in the same run environment (its path is
    keyed by the resolved requirements), checked by the same probe and adapter with the same sizes, passes the
    same way, so a resubmission skips the seconds of imports and one batch. Failures are not remembered."""
    from flops.contract import probe

    adapter_dir = probe.ADAPTER_FILE.parent
    checked_code = [Path(probe.__file__).read_bytes(), *(f.read_bytes() for f in sorted(adapter_dir.glob("*.py")))]
    key = hashlib.sha256(json.dumps([commit, str(spec.code_dir), spec.task_module, spec.contract, str(python),
                                     num_partitions, batch_size]).encode()
                         + b"".join(hashlib.sha256(code).digest() for code in checked_code)).hexdigest()[:24]
    record = cache_dir / "import-checks" / f"{key}.json"
    try:
        return ProbeResult.model_validate_json(record.read_text())
    except (OSError, ValidationError):
        pass
    result = run_import_check(spec, python, num_partitions, batch_size)
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_suffix(f".{os.getpid()}.tmp")  # whole or absent for a concurrent submit
    partial.write_text(result.model_dump_json())
    os.replace(partial, record)
    return result


def _parse_probe_output(spec: ContractSpec, done: subprocess.CompletedProcess[str]) -> ProbeResult:
    from flops.contract.probe import FAILURE_EXIT_CODE

    report = _last_json_line(done.stdout)
    if done.returncode == 0 and report is not None:
        try:
            return ProbeResult.model_validate(report)
        except ValidationError as exc:
            raise ContractError(f"{spec.task_label}: import check returned an unexpected report: {exc}") from None
    if done.returncode == FAILURE_EXIT_CODE and report is not None and "error" in report:
        where = report.get("file") or spec.task_label
        line = f":{report['line']}" if report.get("line") else ""
        raise ContractError(f"{where}{line}: {report['error']}")
    # The process died without a report (os._exit, a crash in native code, a killed interpreter).
    last = next((l for l in reversed(done.stderr.splitlines()) if l.strip()), "no output")
    raise ContractError(f"{spec.task_label}: import check exited with code {done.returncode}: {last.strip()}")


def _last_json_line(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None
