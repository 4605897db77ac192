"""Issue 9 end to end: representative fixture repos run as real federations (2 learners, 2 rounds, tiny data).

One federation per behaviour only a run shows; every other shape is covered by test_contract_shapes (import check).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FIXTURES_DIR, assert_no_process_left, git_repo_of, run_flops

pytestmark = pytest.mark.slow

SHAPES = FIXTURES_DIR / "contract_shapes"


def _submit(tmp_path: Path, fixture: str, *flags: str):  # noqa: ANN202 - FlopsResult
    repo = git_repo_of(SHAPES / fixture, tmp_path / fixture.replace("_", "-"))
    return run_flops("submit", repo.as_uri(), "--learners", "2", "--round-timeout", "1200",
                     "--workdir", str(tmp_path / "work"), "--json", *flags, timeout_s=1800)  # a loaded CI machine


def test_names_bound_float_train_dict_test_and_default_weights_run_to_finished(tmp_path: Path) -> None:
    result = _submit(tmp_path, "names_float_train_dict_test", "--rounds", "2")
    assert result.returncode == 0, result.output
    summary = result.last_json()
    assert (summary["status"], summary["rounds_completed"]) == ("FINISHED", 2)
    assert 0.0 <= summary["final_metrics"]["accuracy"] <= 1.0
    client = _client(summary)
    # train() returned a float: tracked as train_loss, aggregated over the learners each round
    history = client.get_metric_history(summary["mlflow_run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2], history
    # the resolved package set is in the run dir and in the run's MLflow artifacts
    lock = Path(summary["run_dir"]) / "logs" / "requirements.lock"
    assert any(line.startswith("flwr==1.42") for line in lock.read_text().splitlines())
    logged = [a.path for a in client.list_artifacts(summary["mlflow_run_id"], "logs")]
    assert "logs/requirements.lock" in logged, logged
    assert_no_process_left(summary["run_id"])


def test_a_flower_app_source_runs_with_its_own_config_and_flowers_pin_replaced(tmp_path: Path) -> None:
    # The app's config says 2 rounds, 2 local epochs and learning rate 0.2; the --epochs flag overrides one.
    result = _submit(tmp_path, "flower_app", "--epochs", "1")
    assert result.returncode == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: pyproject.toml:10: 'flwr[simulation]>=1.12.0' replaced by FLOps' flwr 1.42.0 "
                        "(FLOps owns Flower's version)"], result.stderr
    summary = result.last_json()
    assert (summary["status"], summary["rounds_completed"]) == ("FINISHED", 2)
    params = _client(summary).get_run(summary["mlflow_run_id"]).data.params
    assert (params["rounds"], params["learning_rate"], params["epochs"]) == ("2", "0.2", "1")
    app_pyproject = (Path(summary["run_dir"]) / "app" / "pyproject.toml").read_text()
    assert "flwr[simulation]" not in app_pyproject


def test_a_loss_only_test_runs_and_the_summary_says_accuracy_is_not_reported(tmp_path: Path) -> None:
    result = _submit(tmp_path.joinpath("json"), "loss_only", "--rounds", "1")
    assert result.returncode == 0, result.output
    summary = result.last_json()
    assert summary["status"] == "FINISHED"
    assert summary["final_metrics"]["accuracy"] is None and summary["final_metrics"]["loss"] > 0
    plain = run_flops("status", summary["run_id"], "--workdir", str(tmp_path / "json" / "work"))
    assert "accuracy not reported" in plain.output, plain.output


def test_an_error_in_test_during_central_evaluation_names_test_file_and_line(tmp_path: Path) -> None:
    result = _submit(tmp_path, "central_test_error", "--rounds", "1")
    assert result.returncode == 1, result.output
    summary = result.last_json()
    source = (SHAPES / "central_test_error" / "task.py").read_text().splitlines()
    line = source.index('        raise ValueError("central test set has no labels")') + 1
    message = summary["message"]
    assert message.startswith(f"root aggregator: test() at task.py:{line}: raised ValueError: central test set"), message
    traceback_file = Path(message.split("(traceback: ")[1].split(")")[0])
    assert f'task.py", line {line}, in test' in traceback_file.read_text()
    assert "Traceback" not in result.stderr
    assert_no_process_left(summary["run_id"])


def _client(summary: dict):  # noqa: ANN202 - MlflowClient
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=summary["tracking_uri"])


def test_an_oakestra_model_manager_repo_runs_to_finished_and_logs_its_model(tmp_path: Path) -> None:
    result = _submit(tmp_path, "oakestra_model_manager", "--rounds", "1")
    assert result.returncode == 0, result.output
    summary = result.last_json()
    assert (summary["status"], summary["rounds_completed"]) == ("FINISHED", 1)
    assert 0.0 <= summary["final_metrics"]["accuracy"] <= 1.0
    assert summary["model_uri"], summary  # the ModelManager's self.model, logged and registered
