"""The import check: the probe imports task.py in a real interpreter, builds Net() and round-trips its weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import valid_task_source, write_files
from flops.contract import check_contract, detect_contract, run_import_check
from flops.errors import ContractError

pytestmark = pytest.mark.slow

PYTHON = Path(sys.executable)  # FLOps' own env has torch: the run env would be built on top of it


def spec_for(tmp_path: Path, files: dict[str, str]):
    write_files(tmp_path, files)
    return detect_contract(tmp_path)


def line_of(source: str, text: str) -> int:
    return source.splitlines().index(text) + 1


def test_valid_task_reports_model_size_and_versions(tmp_path: Path) -> None:
    spec = check_contract(spec_for(tmp_path, {"task.py": valid_task_source()}).code_dir)
    result = run_import_check(spec, PYTHON)
    assert (result.num_arrays, result.num_parameters, result.model_bytes) == (2, 15, 60)  # Linear(4, 3), float32
    assert result.python_version == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert result.torch_version.startswith("2.13.0")
    assert not list(tmp_path.rglob("__pycache__"))  # the checkout is left as exported


def test_task_printing_on_import_does_not_confuse_the_report(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {"task.py": 'print("{not json")\n' + valid_task_source()})
    assert run_import_check(spec, PYTHON).num_arrays == 2


def test_missing_module_is_reported_with_file_and_line(tmp_path: Path) -> None:
    source = valid_task_source().replace("import numpy as np\n", "import numpy as np\nimport nosuchmodule_flops\n")
    spec = spec_for(tmp_path, {"task.py": source})
    with pytest.raises(ContractError) as raised:
        run_import_check(spec, PYTHON)
    assert str(raised.value) == (
        f"task.py:{line_of(source, 'import nosuchmodule_flops')}: importing task failed: "
        "ModuleNotFoundError: No module named 'nosuchmodule_flops'"
    )


def test_error_in_a_helper_module_points_at_the_helper(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/task.py": "from pkg.model import *\n" + valid_task_source(),
        "pkg/model.py": "X = 1\nraise RuntimeError('model config missing')\n",
    }
    spec = spec_for(tmp_path, files)
    with pytest.raises(ContractError, match=r"^pkg/model.py:2: importing pkg.task failed: RuntimeError: model config"):
        run_import_check(spec, PYTHON)


def test_net_constructor_raising_is_reported_in_net(tmp_path: Path) -> None:
    source = valid_task_source().replace(
        "        self.fc = nn.Linear(4, 3)\n", "        self.fc = nn.Linear(4, 3)\n        raise ValueError('no GPU')\n"
    )
    spec = spec_for(tmp_path, {"task.py": source})
    with pytest.raises(ContractError) as raised:
        run_import_check(spec, PYTHON)
    line = line_of(source, "        raise ValueError('no GPU')")
    assert str(raised.value) == f"task.py:{line}: building Net() failed: ValueError: no GPU"


def test_set_weights_that_ignores_its_input_fails_the_round_trip(tmp_path: Path) -> None:
    source = valid_task_source().replace("    net.load_state_dict(state_dict, strict=True)\n", "    pass\n")
    spec = spec_for(tmp_path, {"task.py": source})
    with pytest.raises(ContractError, match=r"^task.py:\d+: weights round trip: array 0 .* differs after set_weights"):
        run_import_check(spec, PYTHON)


def test_get_weights_returning_tensors_is_rejected(tmp_path: Path) -> None:
    source = valid_task_source().replace("[val.cpu().numpy() for", "[val for")
    spec = spec_for(tmp_path, {"task.py": source})
    with pytest.raises(ContractError, match=r"^task.py:\d+: get_weights\(\) must return a list of numpy arrays, got list of Tensor"):
        run_import_check(spec, PYTHON)


def test_load_data_exiting_is_reported_at_its_line(tmp_path: Path) -> None:
    # The import check runs load_data for partition 0 (then train and test on one batch): a data loader
    # that cannot run here would not run on a learner either.
    source = valid_task_source().replace(
        "def load_data(partition_id, num_partitions, batch_size):\n",
        "def load_data(partition_id, num_partitions, batch_size):\n    raise SystemExit('data is on the learners')\n",
    )
    spec = spec_for(tmp_path, {"task.py": source})
    with pytest.raises(ContractError) as raised:
        run_import_check(spec, PYTHON)
    line = line_of(source, "    raise SystemExit('data is on the learners')")
    assert str(raised.value) == f"task.py:{line}: load_data(partition 0) failed: SystemExit: data is on the learners"


def test_user_modules_named_like_probe_internals_are_not_shadowed(tmp_path: Path) -> None:
    # The probe lives beside flops/contract/base.py; the user's base.py must win.
    spec = spec_for(tmp_path, {"base.py": "WIDTH = 4\n", "task.py": "from base import WIDTH\n" + valid_task_source()})
    assert run_import_check(spec, PYTHON).num_arrays == 2


def test_slow_import_times_out_with_a_hint(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {"task.py": "import time\ntime.sleep(30)\n" + valid_task_source()})
    with pytest.raises(ContractError, match=r"^task.py: import check timed out after 2s \(does importing task"):
        run_import_check(spec, PYTHON, timeout_s=2)


def test_sys_exit_during_import_is_reported(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {"task.py": "import sys\nsys.exit(5)\n" + valid_task_source()})
    with pytest.raises(ContractError, match=r"^task.py:2: importing task failed: SystemExit: 5"):
        run_import_check(spec, PYTHON)


def test_import_check_runs_in_a_built_run_environment(tmp_path: Path, monkeypatch) -> None:
    from flops.environment import ensure_run_env

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # torch and numpy are already there; never reach an index
    python = ensure_run_env(["torch", "numpy"], tmp_path / "cache")
    spec = spec_for(tmp_path / "code", {"task.py": valid_task_source()})
    assert run_import_check(spec, python).torch_version.startswith("2.13.0")
