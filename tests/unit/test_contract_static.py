"""Static checks of the pytorch-task contract: detection of task.py, binding by parameter name, refused shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from flops.contract import CONTRACTS, check_contract, detect_contract, get_contract
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
    with pytest.raises(ContractError, match=r"^no ML contract matched .*; or task.py at the root or in a package"):
        detect_contract(tmp_path)


def test_missing_task_file_is_an_explicit_error(tmp_path: Path) -> None:
    write_files(tmp_path, {"train.py": "print('hi')"})
    with pytest.raises(ContractError) as raised:
        check_contract(tmp_path, label="https://git.example.org/team/wine.git/src")
    message = str(raised.value)
    assert message.startswith("no ML contract matched https://git.example.org/team/wine.git/src: expected ")
    assert message.endswith("(see README: ML contract)")
    assert str(tmp_path) not in message  # FLOps' cache path is never shown: the source is


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


@pytest.mark.parametrize("name", ["load_data", "train", "test"])
def test_each_missing_function_is_named_with_its_accepted_shapes(tmp_path: Path, name: str) -> None:
    source = replace_function(valid_task_source(), name, None)
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    assert f"task.py: missing function {name}; accepted: {name}(" in str(raised.value)


def test_missing_train_message_matches_the_documented_text(tmp_path: Path) -> None:
    source = replace_function(valid_task_source(), "train", None)
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    assert str(raised.value) == (
        "task.py: missing function train; accepted: "
        "train(net, trainloader[, valloader], epochs[, lr | learning_rate][, device]) -> dict | float | None"
    )


@pytest.mark.parametrize("name", ["get_weights", "set_weights"])
def test_weight_functions_are_optional(tmp_path: Path, name: str) -> None:
    check_source(tmp_path, replace_function(valid_task_source(), name, None))


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


REFUSED = {
    "get_weights": ("def get_weights():", "get_weights() cannot be called as get_weights(net)"),
    "set_weights": ("def set_weights(net):", "set_weights(net) cannot be called as set_weights(net, parameters)"),
    "load_data": ("def load_data(partition_id, split):", "load_data(partition_id, split): parameter 'split'"),
    "train": ("def train(net, loader, epochs, device):", "train(net, loader, epochs, device): parameter 'loader'"),
    "test": ("def test(net, device):", "test(net, device): missing parameter 'testloader'"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_shapes_name_line_and_what_is_accepted(tmp_path: Path, name: str) -> None:
    header, expected = REFUSED[name]
    source = replace_function(valid_task_source(), name, header)
    line = source.splitlines().index(header) + 1
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    message = str(raised.value)
    assert message.startswith(f"task.py:{line}: {expected}")
    assert "\n" not in message


def test_refused_train_message_matches_the_documented_text(tmp_path: Path) -> None:
    header = REFUSED["train"][0]
    source = replace_function(valid_task_source(), "train", header)
    line = source.splitlines().index(header) + 1
    with pytest.raises(ContractError) as raised:
        check_source(tmp_path, source)
    assert str(raised.value) == (
        f"task.py:{line}: train(net, loader, epochs, device): parameter 'loader' is not one FLOps can pass; "
        "accepted: train(net, trainloader[, valloader], epochs[, lr | learning_rate][, device]) -> dict | float | None"
    )


@pytest.mark.parametrize(
    ("name", "header"),
    [
        # Every shape Flower's PyTorch examples used since 2023, and the spellings researchers use.
        ("train", "def train(net, trainloader, valloader, epochs, learning_rate, device='cpu', verbose=False):"),
        ("train", "def train(net, trainloader, epochs):"),
        ("train", "def train(net, trainloader, epochs: int, verbose=False):"),
        ("train", "def train(net, trainloader, valloader, epochs, device):"),
        ("train", "def train(net, trainloader, epochs, lr, device):"),
        ("train", "def train(net, trainloader, epochs, learning_rate, device):"),
        ("train", "def train(model, train_loader, val_loader, num_epochs, lr, device):"),
        ("train", "def train(epochs, device, trainloader, net):"),  # order is free: bound by name
        ("train", "def train(net, trainloader, epochs, *, device='cpu', log=None):"),
        ("train", "def train(net, trainloader, epochs, **kwargs):"),
        ("test", "def test(net, testloader):"),
        ("test", "def test(net, testloader, device):"),
        ("test", "def test(model, test_loader, device='cpu'):"),
        ("load_data", "def load_data():"),
        ("load_data", "def load_data(node_id):"),
        ("load_data", "def load_data(partition_id: int):"),
        ("load_data", "def load_data(partition_id, num_partitions):"),
        ("load_data", "def load_data(partition_id: int, num_partitions: int, batch_size: int):"),
        ("load_data", "def load_data(partition_id, num_partitions, batch_size=32, data_dir='data'):"),
    ],
)
def test_accepted_shapes(tmp_path: Path, name: str, header: str) -> None:
    check_source(tmp_path, replace_function(valid_task_source(), name, header))


def test_required_keyword_only_parameter_is_rejected(tmp_path: Path) -> None:
    header = "def test(net, testloader, device, *, criterion):"
    with pytest.raises(ContractError, match=r"test\(net, testloader, device, criterion\): parameter 'criterion' is not"):
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
    assert "missing function train;" in message and "missing function test;" in message


def test_package_layout_messages_use_the_path_from_the_repo_root(tmp_path: Path) -> None:
    source = replace_function(valid_task_source(), "train", REFUSED["train"][0])
    with pytest.raises(ContractError, match=r"^pkg/task.py:\d+: train\(net, loader, epochs, device\): parameter"):
        check_source(tmp_path, source, layout="pkg/task.py")


def test_unknown_contract_name_lists_the_known_ones() -> None:
    with pytest.raises(ContractError, match=r"unknown ML contract 'keras' \(known: flower-app, oakestra-model-manager, pytorch-task\)"):
        get_contract("keras")
    assert "pytorch-task" in CONTRACTS


FLOWER_APP_PYPROJECT = """\
[project]
name = "blobs"
dependencies = ["flwr[simulation]>=1.12"]

[tool.flwr.app]
publisher = "me"

[tool.flwr.app.components]
serverapp = "blobs.server_app:app"
clientapp = "blobs.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 4
learning-rate = 0.2
my-own-key = "kept out"
"""


def test_a_flower_app_uses_its_task_module_and_app_config(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": FLOWER_APP_PYPROJECT, "blobs/__init__.py": "",
                           "blobs/task.py": valid_task_source(), "other/__init__.py": "", "other/task.py": "x = 1"})
    spec = check_contract(tmp_path)  # two packages with a task.py: the app's components say which one
    assert (spec.contract, spec.task_module, spec.task_label) == ("flower-app", "blobs.task", "blobs/task.py")
    assert spec.app_config["num-server-rounds"] == 4
    from flops.contract.flower_app import run_config_defaults

    assert run_config_defaults(spec.app_config) == {"rounds": 4, "training.learning_rate": 0.2}


def test_a_flower_app_without_a_task_module_says_which_file_is_missing(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": FLOWER_APP_PYPROJECT, "blobs/__init__.py": ""})
    with pytest.raises(ContractError, match=r"^pyproject.toml: a Flower app, but blobs/task.py is missing"):
        check_contract(tmp_path)


def test_a_pyproject_without_flower_app_falls_through_to_task_py(tmp_path: Path) -> None:
    write_files(tmp_path, {"pyproject.toml": "[project]\nname = 'x'\n", "task.py": valid_task_source()})
    assert check_contract(tmp_path).contract == "pytorch-task"


def test_an_oakestra_model_manager_repo_is_detected_and_checked(tmp_path: Path) -> None:
    manager = "class ModelManager:\n    def set_model_data(self):\n        pass\n"
    write_files(tmp_path, {"model_manager.py": manager, "conda.yaml": "dependencies: []\n"})
    with pytest.raises(ContractError) as raised:
        check_contract(tmp_path)
    assert str(raised.value) == (
        "model_manager.py:1: ModelManager lacks get_model_parameters(self) -> list of arrays, "
        "set_model_parameters(self, parameters), fit_model(self) -> num_examples, "
        "evaluate_model(self) -> (loss, accuracy, num_examples)")
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "contract_shapes" / "oakestra_model_manager"
    spec = check_contract(fixture)
    assert (spec.contract, spec.task_label) == ("oakestra-model-manager", "model_manager.py")
