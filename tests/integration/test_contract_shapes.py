"""Issue 9's accepted and refused task.py shapes, through the import check (`flops validate`): no federation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import FIXTURES_DIR, valid_task_source, write_files
from flops.contract import check_contract, run_import_check
from flops.errors import ContractError

pytestmark = pytest.mark.slow

PYTHON = Path(sys.executable)
SHAPES = FIXTURES_DIR / "contract_shapes"


@pytest.mark.parametrize(
    ("fixture", "contract", "train_metrics", "accuracy_reported", "num_arrays"),
    [
        # no weight functions: state_dict order, BatchNorm's int64 num_batches_tracked among the 7 arrays
        ("names_float_train_dict_test", "pytorch-task", ["train_loss"], True, 7),
        ("legacy_2023", "pytorch-task", [], True, 2),  # load_data(node_id), train -> None, test(net, loader)
        ("loss_only", "pytorch-task", ["epochs_done"], False, 2),  # test -> loss; a str in train's dict dropped
        ("flower_app", "flower-app", ["train_loss"], True, 4),
        ("central_test_error", "pytorch-task", [], True, 2),  # fails only at the root: see test_contract_runs
    ],
)
def test_accepted_fixture_passes_the_import_check(fixture, contract, train_metrics, accuracy_reported, num_arrays) -> None:
    spec = check_contract(SHAPES / fixture)
    assert spec.contract == contract
    probe = run_import_check(spec, PYTHON)
    assert probe.train_metrics == train_metrics
    assert probe.accuracy_reported is accuracy_reported
    assert probe.num_arrays == num_arrays


def _line(source: str, text: str) -> int:
    return source.splitlines().index(text) + 1


def _refused(tmp_path: Path, source: str) -> str:
    write_files(tmp_path, {"task.py": source})
    with pytest.raises(ContractError) as raised:
        run_import_check(check_contract(tmp_path), PYTHON)
    return str(raised.value)


def test_train_returning_a_string_is_refused_at_its_def(tmp_path: Path) -> None:
    source = valid_task_source().replace(
        '    return {"val_loss": val_loss, "val_accuracy": val_accuracy}', '    return "done"')
    line = _line(source, "def train(net, trainloader, valloader, epochs, learning_rate, device):")
    assert _refused(tmp_path, source) == (
        f"task.py:{line}: train() must return a dict, a float (its loss) or None, got str")


def test_test_returning_three_values_is_refused_at_its_def(tmp_path: Path) -> None:
    source = valid_task_source().replace(
        '    val_loss, val_accuracy = test(net, valloader, device)\n'
        '    return {"val_loss": val_loss, "val_accuracy": val_accuracy}', "    return None"
    ).replace("    return loss / max(len(testloader), 1), correct / max(total, 1)", "    return 1.0, 0.5, 3")
    line = _line(source, "def test(net, testloader, device):")
    assert _refused(tmp_path, source) == (
        f"task.py:{line}: test() must return (loss, accuracy), a dict with a 'loss' key, or a loss; got tuple of 3")


def test_an_exception_in_train_names_the_users_line(tmp_path: Path) -> None:
    source = valid_task_source().replace("    criterion = nn.CrossEntropyLoss()\n    net.train()",
                                         "    criterion = nn.CrossEntropyLoss()\n    raise KeyError('lr')\n    net.train()")
    assert _refused(tmp_path, source) == (
        f"task.py:{_line(source, '    raise KeyError(' + repr('lr') + ')')}: train() on one batch failed: KeyError: 'lr'")
