"""Static checks of the pytorch-task contract: detection of task.py and every way a task.py can miss the shape."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flops.contract import CONTRACTS, check_contract, detect_contract, get_contract
from flops.contract.pytorch_task import EXPECTED_FUNCTIONS
from flops.errors import ContractError
from conftest import valid_task_source, write_files


def replace_function(source: str, name: str, new_def: str | None) -> str:
    """SOURCE with the top-level `def NAME(...)` header swapped for NEW_DEF, or the whole function removed."""
    lines = source.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    if new_def is not None:
        lines[start] = new_def + "\n"
        return "".join(lines)
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "\n")), len(lines))
    return "".join(lines[:start] + lines[end:])


def check_source(tmp_path: Path, source: str, layout: str = "task.py") -> None:
    write_files(tmp_path, {layout: source})
    if "/" in layout:
        write_files(tmp_path, {str(Path(layout).parent / "__init__.py"): ""})
    check_contract(tmp_path)


def test_valid_task_at_root_passes(tmp_path: Path) -> None:
    write_files(tmp_path, {"task.py": valid_task_source()})
    spec = check_contract(tmp_path)
    assert (spec.contract, spec.task_module, spec.task_file) == ("pytorch-task", "task", tmp_path / "task.py")
    assert spec.code_dir == tmp_path.resolve()


def test_task_in_a_package_is_detected_as_pkg_task(tmp_path: Path) -> None:
    write_files(tmp_path, {"digits/__init__.py": "", "digits/task.py": valid_task_source(), "README.md": "x"})
    spec = check_contract(tmp_path)
    assert spec.task_module == "digits.task"
    assert spec.task_label == "digits/task.py"


def test_root_task_wins_over_a_package_task(tmp_path: Path) -> None:
    write_files(tmp_path, {"task.py": valid_task_source(), "pkg/__init__.py": "", "pkg/task.py": "x = 1"})
    assert detect_contract(tmp_path).task_module == "task"


def test_a_directory_without_init_is_not_a_package(tmp_path: Path) -> None:
    write_files(tmp_path, {"scripts/task.py": valid_task_source()})
    with pytest.raises(ContractError, match=r"^no task.py found in .*: expected task.py at the root or in a package"):
        detect_contract(tmp_path)


def test_missing_task_file_is_an_explicit_error(tmp_path: Path) -> None:
    write_files(tmp_path, {"train.py": "print('hi')"})
    with pytest.raises(ContractError, match=r"no task.py found in .*\(see README: ML contract\)"):
        check_contract(tmp_path)


def test_two_candidate_packages_are_ambiguous(tmp_path: Path) -> None:
    for package in ("alpha", "beta"):
        write_files(tmp_path, {f"{package}/__init__.py": "", f"{package}/task.py": valid_task_source()})
    with pytest.raises(ContractError, match=r"several task modules .*alpha/task.py, beta/task.py"):
        detect_contract(tmp_path)


def test_syntax_error_reports_its_line(tmp_path: Path) -> None:
    source = valid_task_source() + "\ndef broken(:\n    pass\n"
    line = source.count("\n", 0, source.index("def broken(")) + 1
    with pytest.raises(ContractError, match=rf"^task.py:{line}: syntax error: "):
        check_source(tmp_path, source)


@pytest.mark.parametrize("expected", EXPECTED_FUNCTIONS, ids=lambda e: e.name)
def test_each_missing_function_is_named_with_its_signature(tmp_path: Path, expected) -> None:
    source = replace_function(valid_task_source(), expected.name, None)
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    assert f"task.py: missing function {expected.signature()}" in str(raised.value)


def test_missing_train_message_matches_the_documented_text(tmp_path: Path) -> None:
    source = replace_function(valid_task_source(), "train", None)
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    assert str(raised.value) == (
        "task.py: missing function train(net, trainloader, valloader, epochs, learning_rate, device) -> dict"
    )


def test_missing_net_is_reported(tmp_path: Path) -> None:
    source = valid_task_source().replace("class Net(nn.Module):", "class Model(nn.Module):")
    with pytest.raises(ContractError, match=r"^task.py: missing class Net"):
        check_source(tmp_path, source)


def test_net_as_a_function_is_not_a_class(tmp_path: Path) -> None:
    source = valid_task_source() + "\n\ndef Net():\n    return None\n"
    with pytest.raises(ContractError, match=r"^task.py:\d+: Net must be a class"):
        check_source(tmp_path, source)


@pytest.mark.parametrize(
    "binding", ["Net = torch.nn.Linear", "from torch.nn import Linear as Net", "from .model import Net"]
)
def test_net_bound_by_assignment_or_import_is_accepted(tmp_path: Path, binding: str) -> None:
    source = valid_task_source().replace("class Net(nn.Module):", "class _Model(nn.Module):") + f"\n{binding}\n"
    check_source(tmp_path, source)


WRONG_ARITY = {
    "get_weights": "def get_weights():",
    "set_weights": "def set_weights(net):",
    "load_data": "def load_data(partition_id, num_partitions):",
    "train": "def train(net, loader, epochs, device):",
    "test": "def test(net, testloader, device, extra):",
}


@pytest.mark.parametrize("name", sorted(WRONG_ARITY))
def test_wrong_arity_names_line_and_expected_parameters(tmp_path: Path, name: str) -> None:
    source = replace_function(valid_task_source(), name, WRONG_ARITY[name])
    line = source.splitlines().index(WRONG_ARITY[name]) + 1
    expected = next(e for e in EXPECTED_FUNCTIONS if e.name == name)
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    message = str(raised.value)
    assert re.search(rf"^task.py:{line}: {name}\(\) takes \d+ positional parameters? \(", message)
    assert f"expected {len(expected.params)}: ({', '.join(expected.params)})" in message


def test_wrong_train_arity_message_matches_the_documented_text(tmp_path: Path) -> None:
    source = replace_function(valid_task_source(), "train", WRONG_ARITY["train"])
    line = source.splitlines().index(WRONG_ARITY["train"]) + 1
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    assert str(raised.value) == (
        f"task.py:{line}: train() takes 4 positional parameters (net, loader, epochs, device); "
        "expected 6: (net, trainloader, valloader, epochs, learning_rate, device)"
    )


@pytest.mark.parametrize(
    "header",
    [
        "def train(net, trainloader, valloader, epochs, learning_rate, device='cpu', verbose=False):",
        "def train(net, *args):",
        "def train(model, train_loader, val_loader, n_epochs, lr, dev):",  # names are free, the count is not
        "def train(net, trainloader, valloader, epochs, learning_rate, device, *, log=None):",
    ],
)
def test_compatible_signatures_are_accepted(tmp_path: Path, header: str) -> None:
    check_source(tmp_path, replace_function(valid_task_source(), "train", header))


def test_required_keyword_only_parameter_is_rejected(tmp_path: Path) -> None:
    header = "def test(net, testloader, device, *, criterion):"
    with pytest.raises(ContractError, match=r"test\(\) has keyword-only parameters without defaults: criterion"):
        check_source(tmp_path, replace_function(valid_task_source(), "test", header))


def test_functions_imported_from_another_module_are_accepted(tmp_path: Path) -> None:
    source = replace_function(valid_task_source(), "train", None) + "\nfrom engine import train\n"
    check_source(tmp_path, source)


def test_definitions_inside_module_level_try_count(tmp_path: Path) -> None:
    source = replace_function(valid_task_source(), "test", None)
    source += "\ntry:\n    import fancy\nexcept ImportError:\n    def test(net, testloader, device):\n        return 0.0, 0.0\n"
    check_source(tmp_path, source)


def test_every_problem_is_reported_on_one_line(tmp_path: Path) -> None:
    source = replace_function(replace_function(valid_task_source(), "train", None), "test", None)
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    message = str(raised.value)
    assert "\n" not in message
    assert "missing function train(" in message and "missing function test(" in message


def test_package_layout_messages_use_the_path_from_the_repo_root(tmp_path: Path) -> None:
    source = replace_function(valid_task_source(), "train", WRONG_ARITY["train"])
    with pytest.raises(ContractError, match=r"^pkg/task.py:\d+: train\(\) takes 4"):
        check_source(tmp_path, source, layout="pkg/task.py")


def test_unknown_contract_name_lists_the_known_ones() -> None:
    with pytest.raises(ContractError, match=r"unknown ML contract 'keras' \(known: pytorch-task\)"):
        get_contract("keras")
    assert "pytorch-task" in CONTRACTS
