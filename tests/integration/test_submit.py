"""The example end to end: `flops submit` of examples/digits-cnn runs a real federation tracked in MLflow.

One expensive run per session (the `example_run` fixture); every test below asserts one behaviour of it.
The run is the default one: TLS with a CA of its own and authenticated SuperNodes, its source fetched from an
HTTP URL that carries user:token (the server refuses any other).
"""

from __future__ import annotations

import json
import stat
import subprocess
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import SubmittedRun, assert_no_process_left, run_flops, run_git, run_state, wait_for
from git_http import serve_repo

pytestmark = pytest.mark.slow

ROUNDS = 3
LEARNERS = 3
TOKEN = "tok-3x4mpl3-n0t-to-be-kept"
SERVED_URL: list[str] = []  # the source URL without its credentials, once example_run has served it


@pytest.fixture(scope="module")
def example_run(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> SubmittedRun:
    workdir = tmp_path_factory.mktemp("example-work")
    with serve_repo(example_repo, tmp_path_factory.mktemp("served"), "alice", TOKEN) as url:
        result = run_flops(
            "submit", url, "--learners", str(LEARNERS), "--rounds", str(ROUNDS), "--workdir", str(workdir), "--json",
            timeout_s=1800,  # the shared CI machine can be slow; no timing asserted
        )
    assert result.returncode == 0, result.output
    SERVED_URL.append(url.replace(f"alice:{TOKEN}@", ""))  # what every record must say instead
    return SubmittedRun(workdir, result, result.last_json(), repo=example_repo)


def test_example_finishes_with_a_json_summary(example_run: SubmittedRun) -> None:
    summary = example_run.summary
    assert summary["status"] == "FINISHED", summary
    assert summary["rounds_completed"] == ROUNDS
    assert summary["final_metrics"]["accuracy"] >= 0.85, summary
    assert summary["bytes_to_root"] > 0
    assert summary["model_uri"] and summary["mlflow_run_id"]
    assert summary["source_url"] == SERVED_URL[0]


def test_example_prints_no_traceback(example_run: SubmittedRun) -> None:
    assert "Traceback" not in example_run.result.output


def test_example_leaves_no_process_behind(example_run: SubmittedRun) -> None:
    assert_no_process_left(example_run.summary["run_id"], grace_s=0)


def test_example_state_file_agrees_with_the_summary(example_run: SubmittedRun) -> None:
    state = run_state(example_run.workdir, example_run.summary["run_id"])
    assert (state["status"], state["phase"], state["rounds_completed"]) == ("FINISHED", "done", ROUNDS)
    assert state["mlflow_run_id"] == example_run.summary["mlflow_run_id"]


def test_mlflow_run_is_finished_and_pinned_to_the_repos_head(example_run: SubmittedRun) -> None:
    run = example_run.client.get_run(example_run.summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    head = run_git(example_run.repo, "rev-parse", "HEAD")
    assert params["commit"] == head == example_run.summary["commit"]
    assert params["source_url"] == SERVED_URL[0]
    assert (params["rounds"], params["learners"]) == (str(ROUNDS), str(LEARNERS))
    assert params["flwr_version"] == version("flwr")


def test_mlflow_has_one_point_per_round_for_central_and_aggregated_learner_metrics(
    example_run: SubmittedRun,
) -> None:
    client, run_id = example_run.client, example_run.summary["mlflow_run_id"]
    run = client.get_run(run_id)
    keys = set(run.data.metrics)
    learner = {k for k in keys if k.startswith(("train_", "evaluate_"))}
    assert any(k.startswith("train_") for k in learner), keys
    assert {"evaluate_accuracy", "evaluate_loss"} <= learner, keys
    # Central evaluation starts at round 0, the initial model, on the same curve as every later round.
    for key in ("central_accuracy", "central_loss"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(0, ROUNDS + 1)), (key, steps)
    for key in sorted(learner):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, ROUNDS + 1)), (key, steps)
    assert not any(k.startswith("initial_") for k in keys), keys
    # Every point carries the wall time it was measured at, within the run (never 0, 1970 on a time axis).
    for key in sorted(keys):
        for metric in client.get_metric_history(run_id, key):
            assert run.info.start_time <= metric.timestamp <= run.info.end_time, (key, metric)
    history = client.get_metric_history(run_id, "central_accuracy")
    final = max(history, key=lambda m: m.step).value
    assert final == pytest.approx(example_run.summary["final_metrics"]["accuracy"])


def test_mlflow_names_say_what_ran(example_run: SubmittedRun) -> None:
    client, summary = example_run.client, example_run.summary
    run = client.get_run(summary["mlflow_run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "digits-cnn"
    assert experiment.tags["flops.source_url"] == SERVED_URL[0]  # fetched over HTTP with a token, recorded without
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert Path(experiment.artifact_location.removeprefix("file://")).is_relative_to(example_run.workdir)
    assert run.info.run_name == f"digits-cnn {LEARNERS} learners x {ROUNDS} rounds fedavg"
    assert run.data.tags["flops.run_id"] == summary["run_id"]
    note = run.data.tags["mlflow.note.content"]
    assert "FINISHED" in note and f"{summary['final_metrics']['accuracy']:.4f}" in note, note
    # Partition datasets: one per learner, sized as load_data makes them, plus the central test split.
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    partitions = [inputs[f"partition {i} of {LEARNERS} (train)"] for i in range(LEARNERS)]
    sizes = [json.loads(d.dataset.profile)["num_rows"] for d in partitions]
    assert sum(sizes) == 1437 and len({d.dataset.digest for d in partitions}) == LEARNERS, sizes  # digits' 80 %
    assert json.loads(inputs["central test split"].dataset.profile)["num_rows"] == 360


def test_logged_model_carries_final_metrics_user_source_and_pinned_requirements(example_run: SubmittedRun) -> None:
    client, summary = example_run.client, example_run.summary
    run = client.get_run(summary["mlflow_run_id"])
    registered = client.get_model_version(*summary["model_uri"].removeprefix("models:/").split("/"))
    [model] = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])
               if m.source_run_id == run.info.run_id]
    assert registered.model_id in (None, model.model_id)  # the registered version is that logged model
    # The model page shows what the final model scored: the run's final values, no round 0 value.
    linked = {m.key: m for m in model.metrics}
    assert {"central_accuracy", "central_loss", "evaluate_accuracy"} <= set(linked), linked
    assert {m.step for m in model.metrics} == {ROUNDS}, model.metrics
    for key, metric in linked.items():
        assert metric.value == run.data.metrics[key], key
    assert linked["central_accuracy"].value == pytest.approx(summary["final_metrics"]["accuracy"])
    # "Logged from" is the user's repository and commit, not FLOps' model_logger.py.
    head = run_git(example_run.repo, "rev-parse", "HEAD")
    for tags in (model.tags, run.data.tags):
        assert tags["mlflow.source.name"] == SERVED_URL[0], tags  # the source as fetched, token removed
        assert tags["mlflow.source.git.commit"] == head, tags
    # The embedded store keeps the logged model's artifacts on this disk.
    requirements = (Path(model.artifact_location.removeprefix("file://")) / "requirements.txt").read_text().split()
    assert f"torch=={version('torch').split('+')[0]}" in requirements, requirements
    assert f"numpy=={version('numpy')}" in requirements, requirements
    assert any(r.startswith("scikit-learn==") for r in requirements), requirements


def test_logs_are_clean_artifacts(example_run: SubmittedRun) -> None:
    summary = example_run.summary
    local = Path(mlflow.artifacts.download_artifacts(
        run_id=summary["mlflow_run_id"], artifact_path="logs", tracking_uri=summary["tracking_uri"],
        dst_path=str(example_run.workdir / "downloaded-logs"),
    ))
    superlink = (local / "superlink.log").read_text()
    assert "\x1b[" not in superlink and "ControlServicer.ListRuns" not in superlink
    assert "polling lines" in superlink.splitlines()[-1]


def test_generated_app_and_config_are_logged_as_artifacts(example_run: SubmittedRun) -> None:
    client, run_id = example_run.client, example_run.summary["mlflow_run_id"]
    app = {Path(a.path).name for a in client.list_artifacts(run_id, "flower_app")}
    assert {"pyproject.toml", "flops_app", "user"} <= app, app
    config_files = [a.path for a in client.list_artifacts(run_id, "config")]
    assert config_files == ["config/run_config.json"]
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="config/run_config.json", tracking_uri=example_run.summary["tracking_uri"],
        dst_path=str(example_run.workdir / "downloaded"),
    )
    config = json.loads(Path(local).read_text())
    assert (config["rounds"], config["learners"]) == (ROUNDS, LEARNERS)


def test_registered_model_loads_and_predicts_digits(example_run: SubmittedRun, monkeypatch) -> None:
    from sklearn.datasets import load_digits

    monkeypatch.setenv("MLFLOW_TRACKING_URI", example_run.summary["tracking_uri"])
    model = mlflow.pyfunc.load_model(example_run.summary["model_uri"])
    images = (load_digits().images[:16] / 16.0).astype(np.float32)[:, None, :, :]
    predictions = np.asarray(model.predict(images))
    assert predictions.shape == (16, 10)
    # The model learnt something: most of these training digits are recognised.
    assert (predictions.argmax(axis=1) == load_digits().target[:16]).mean() >= 0.7


def test_second_submit_of_the_same_repo_reuses_the_cached_environment(example_run: SubmittedRun) -> None:
    envs = [p for p in (example_run.workdir / "cache" / "envs").iterdir() if p.is_dir()]
    assert len(envs) == 1, envs
    marker = next(envs[0].glob(".flops-env-complete"))
    built_at = marker.stat().st_mtime_ns
    # --detach returns once the run is prepared, environment included; then stop it (training is not the point).
    result = run_flops("submit", example_run.repo.as_uri(), "--rounds", "1", "--learners", "1",
                       "--workdir", str(example_run.workdir), "--detach", "--json")
    assert result.returncode == 0, result.output
    run_id = result.last_json()["run_id"]
    try:
        assert [p for p in (example_run.workdir / "cache" / "envs").iterdir() if p.is_dir()] == envs
        assert marker.stat().st_mtime_ns == built_at
        # A reused environment runs no pip at all, so the run has no environment log.
        assert not (example_run.workdir / "runs" / run_id / "logs" / "environment.log").exists()
    finally:
        wait_for(lambda: run_state(example_run.workdir, run_id)["status"] != "PENDING", 60, "the detached controller")
        stopped = run_flops("stop", run_id, "--workdir", str(example_run.workdir))
        assert stopped.returncode == 0, stopped.output
        assert_no_process_left(run_id)


def test_the_sources_token_is_recorded_nowhere(example_run: SubmittedRun) -> None:
    # The work dir holds run state, plan, generated app, logs, the MLflow store and its artifacts.
    found = subprocess.run(["grep", "-r", "-a", "-l", TOKEN, str(example_run.workdir)], capture_output=True, text=True)
    assert found.returncode == 1 and not found.stdout, found.stdout
    assert TOKEN not in example_run.result.output
    experiment = example_run.client.get_experiment(example_run.client.get_run(example_run.mlflow_run_id).info.experiment_id)
    assert experiment.tags["flops.source_url"] == SERVED_URL[0]


def test_links_are_tls_with_authenticated_supernodes_and_keys_stay_private(example_run: SubmittedRun) -> None:
    run_dir = Path(example_run.summary["run_dir"])
    superlink_log = (run_dir / "logs" / "superlink.log").read_text()
    assert "running on https://127.0.0.1" in superlink_log
    assert "SuperNode authentication is disabled" not in superlink_log
    for learner in range(LEARNERS):
        log = (run_dir / "logs" / f"learner-{learner}.log").read_text()
        assert "--insecure" not in log and "insecure channel" not in log
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    keys = sorted(run_dir.glob("credentials/*/*.key"))
    assert [k.parent.name for k in keys] == [*(f"learner-{i}" for i in range(LEARNERS)), "superlink"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    # No private key material in the MLflow store, its artifacts or the --json output.
    found = subprocess.run(["grep", "-r", "-a", "-l", "PRIVATE KEY", str(example_run.workdir)],
                           capture_output=True, text=True).stdout.split()
    # (Other tests of this module start runs in the same work dir: their keys are the only other ones.)
    assert sorted(Path(p) for p in found) == sorted(example_run.workdir.glob("runs/*/credentials/*/*.key"))
    assert set(keys) <= {Path(p) for p in found}
    assert "PRIVATE KEY" not in example_run.result.output
