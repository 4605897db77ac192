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
        f"task.py:{_line(source, '    raise KeyError(' + repr('lr') + ')')}: train() failed: KeyError: 'lr'")


# --- `flops validate` and `flops submit` agree: the same checks, the same one line (CLI, no federation) ---

from conftest import assert_one_line_error, assert_only_error_line_on_stderr, run_flops, run_git, run_ids  # noqa: E402


def test_validate_and_submit_refuse_a_conflicting_numpy_pin_with_the_same_line(tmp_path: Path, git_repo) -> None:
    repo = git_repo({"task.py": valid_task_source(), "requirements.txt": "torch\nnumpy==1.21.0\n"}, name="old-numpy")
    validated = run_flops("validate", str(repo), "--workdir", str(tmp_path / "work"))
    line = assert_only_error_line_on_stderr(validated)
    assert line.startswith("error: requirements.txt:2: 'numpy==1.21.0' would replace numpy "), line
    assert "which FLOps needs" in line and "flwr 1.42" in line
    submitted = run_flops("submit", str(repo), "--workdir", str(tmp_path / "work"), "--rounds", "1")
    assert assert_one_line_error(submitted) == line
    # refused before anything was generated: a refused submission leaves no run behind
    assert not (tmp_path / "work" / "runs").is_dir() or run_ids(tmp_path / "work") == []


def test_validate_accepts_flower_and_cpu_torch_pins_with_one_warning(tmp_path: Path, git_repo) -> None:
    repo = git_repo({"task.py": valid_task_source(), "requirements.txt": "flwr==1.7.0\ntorch==2.13.0+cpu\n"},
                    name="pinned")
    validated = run_flops("validate", str(repo), "--workdir", str(tmp_path / "work"))
    assert validated.returncode == 0, validated.output
    assert validated.stderr.splitlines() == [
        "warning: requirements.txt:1: 'flwr==1.7.0' replaced by FLOps' flwr 1.42.0 (FLOps owns Flower's version)"]
    assert "fits the pytorch-task contract" in validated.stdout


def test_a_refused_shape_names_the_source_not_the_cache(tmp_path: Path, git_repo) -> None:
    repo = git_repo({"README.md": "no code here\n"}, name="empty")
    line = assert_only_error_line_on_stderr(run_flops("validate", repo.as_uri(), "--workdir", str(tmp_path / "w")))
    assert line.startswith(f"error: no ML contract matched {repo.as_uri()}: expected "), line
    assert str(tmp_path / "w") not in line


def test_the_import_check_of_a_commit_is_remembered_and_a_new_commit_is_checked_again(
        tmp_path: Path, git_repo, monkeypatch) -> None:
    counter = tmp_path / "imports.txt"
    monkeypatch.setenv("FLOPS_TEST_IMPORT_COUNTER", str(counter))
    source = "import os\nopen(os.environ['FLOPS_TEST_IMPORT_COUNTER'], 'a').write('import\\n')\n" + valid_task_source()
    repo = git_repo({"task.py": source, "requirements.txt": "torch\nnumpy\n"}, name="counted")
    workdir = str(tmp_path / "work")
    for _ in range(2):
        assert run_flops("validate", str(repo), "--workdir", workdir).returncode == 0
    assert counter.read_text().splitlines() == ["import"]  # the second validate reused the first check
    (repo / "task.py").write_text(source + "\n# changed\n")
    run_git(repo, "commit", "-q", "-am", "change")
    assert run_flops("validate", str(repo), "--workdir", workdir).returncode == 0
    assert counter.read_text().splitlines() == ["import", "import"]
