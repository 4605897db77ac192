"""What a run is called and how it reads in MLflow: names, redaction, metric names, clean logs, pins, the UI's port."""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flops.config import RunConfig
from flops.errors import BadInputError
from flops.model_logger import pinned_requirements
from flops.plan import ClusterSpec, RunPlan, plan_learners
from flops.tracking import Tracker, default_tracking_uri, round_metrics
from flops.tracking_logs import clean_log
from flops.tracking_names import experiment_name, redact_url, run_name
from flops.ui import check_port_free, ui_argv


def _plan(tmp_path: Path, source_url: str, name: str = "wine", clusters: int = 0) -> RunPlan:
    learners = plan_learners(4)
    specs = [ClusterSpec(name=f"c{i}", index=i, learners=learners[2 * i: 2 * i + 2]) for i in range(clusters)]
    app_dir = tmp_path / "app"
    app_dir.mkdir(exist_ok=True)
    return RunPlan(
        run_id="r1", run_dir=tmp_path / "runs" / "r1", source_url=source_url, source_ref=None, commit="c" * 40,
        source_name=name, app_dir=app_dir, python=Path("/usr/bin/python3"),
        config=RunConfig(rounds=3, learners=4, clusters=clusters, local_rounds=2 if clusters else 1),
        orchestrator="local", tracking_uri=default_tracking_uri(tmp_path), learners=learners, clusters=specs,
        task_module="task", dependencies=[],
    )


def test_credentials_are_stripped_from_source_urls() -> None:
    assert redact_url("https://alice:s3cret@git.example.org/team/wine.git") == "https://git.example.org/team/wine.git"
    assert redact_url("https://token@git.example.org:8443/x") == "https://git.example.org:8443/x"
    assert redact_url("git@github.com:team/wine.git") == "git@github.com:team/wine.git"
    assert redact_url("file:///tmp/wine") == "file:///tmp/wine"


def test_a_second_repository_of_the_same_name_gets_its_own_experiment(tmp_path: Path) -> None:
    assert experiment_name("wine", "https://a/wine", None) == "wine"
    assert experiment_name("wine", "https://a/wine", "https://a/wine") == "wine"
    other = experiment_name("wine", "https://b/wine", "https://a/wine")
    assert other.startswith("wine-") and other != "wine"
    # Through a real store: the same URL returns to its experiment, another URL of the same name does not.
    first = Tracker(default_tracking_uri(tmp_path), tmp_path / "mlartifacts")
    ids = [first._experiment_id(_plan(tmp_path, url)) for url in ("https://a/wine", "https://b/wine", "https://a/wine")]
    assert ids[0] == ids[2] != ids[1]
    names = {e.experiment_id: e.name for e in first.client.search_experiments()}
    assert names[ids[0]] == "wine" and names[ids[1]] == other


def test_the_store_keeps_every_experiments_artifacts_under_the_work_dir(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    workdir = tmp_path / "work"
    workdir.mkdir()
    Tracker(default_tracking_uri(workdir), workdir / "mlartifacts")
    default = MlflowClient(default_tracking_uri(workdir)).get_experiment("0")
    assert default.artifact_location.startswith((workdir / "mlartifacts").as_uri()), default.artifact_location
    assert not any(elsewhere.iterdir())
    argv = ui_argv(default_tracking_uri(workdir), workdir, "127.0.0.1", 5000)
    assert argv[argv.index("--artifacts-destination") + 1] == str((workdir / "mlartifacts").resolve())


def test_run_name_says_what_ran(tmp_path: Path) -> None:
    assert run_name(_plan(tmp_path, "https://a/wine")) == "wine 4 learners x 3 rounds fedavg"
    assert run_name(_plan(tmp_path, "https://a/wine", clusters=2)) == "wine 4 learners in 2 clusters x 3 rounds x 2 local fedavg"


def test_cluster_metrics_have_readable_names() -> None:
    event = {"round": 1, "central": {"accuracy": 0.5}, "bytes_to_root": 10, "bytes_from_root": 10,
             "clusters": {"0": {"bytes_to_root": 5, "bytes_from_root": 5, "bytes-learners-to-cluster": 7,
                                "bytes-cluster-to-learners": 3, "examples": 30}}}
    metrics = round_metrics(event, {"0": "edge"})
    assert metrics["cluster-edge/bytes_to_root"] == 5 and metrics["cluster-edge/examples"] == 30
    assert round_metrics(event, {"0": "cluster-0"})["cluster-0/bytes_learners_to_cluster"] == 7
    assert metrics["bytes_total"] == 10 + 10 + 7 + 3
    assert not any(key.startswith("cluster_") for key in metrics), metrics


def test_logs_lose_colour_codes_and_polling_lines_but_keep_the_rest() -> None:
    raw = ("\x1b[92mINFO \x1b[0m:      Starting Flower SuperLink\n"
           "\x1b[92mINFO \x1b[0m:      ControlServicer.ListRuns\n"
           '2026-12-02T04:48:01.1Z INFO [uvicorn.access] 127.0.0.1:1 - "POST /v1/control/list-runs HTTP/1.1" 200\n'
           "\x1b[92mINFO \x1b[0m:      \n"
           "\x1b[91mERROR \x1b[0m:     learner 1: boom\n")
    cleaned = clean_log(raw).splitlines()
    assert cleaned == ["INFO :      Starting Flower SuperLink", "ERROR :     learner 1: boom",
                       "[flops] left out 2 polling lines: 2 status polls (ListRuns)"]


def test_model_requirements_pin_the_installed_versions() -> None:
    pins = pinned_requirements(["scikit-learn>=1.0", "--index-url https://x", "not-installed-pkg>=2"])
    assert pins[:2] == [f"torch=={version('torch').split('+')[0]}", f"numpy=={version('numpy')}"]
    assert f"scikit-learn=={version('scikit-learn')}" in pins
    assert "not-installed-pkg>=2" in pins and not any(p.startswith("--") for p in pins)
    assert pinned_requirements(["Torch"]).count(f"torch=={version('torch').split('+')[0]}") == 1


def test_ui_refuses_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BadInputError, match=f"--port {port}: .* already in use") as caught:
            check_port_free("127.0.0.1", port)
        assert caught.value.exit_code == 2


def test_hierarchical_events_make_consistent_parent_and_cluster_runs(tmp_path: Path) -> None:
    """The root's and clusters' events as the aggregators write them, tracked into a real SQLite store."""
    plan = _plan(tmp_path, "https://alice:tok@a/wine", clusters=2)
    (tmp_path / "app" / "pyproject.toml").write_text("[project]\nname = 'app'\n")
    tracker = Tracker(plan.tracking_uri, tmp_path / "mlartifacts")
    parent = tracker.start(plan)
    t0 = 1_800_000_000.0
    tracker.log_initial({"event": "round", "round": 0, "time": t0, "central": {"accuracy": 0.1, "loss": 2.0}})
    for cluster, offset in (("c0", 1.0), ("c1", 2.0)):
        for local in (1, 2):
            tracker.log_local_round(cluster, {"event": "local_round", "global_round": 1, "local_round": local,
                                              "time": t0 + offset + local, "examples": 30, "bytes_to_root": 48,
                                              "evaluate": {"loss": 1.0 / local}, "train": {"loss": 0.5}}, 2)
    tracker.log_round({"event": "round", "round": 1, "time": t0 + 10, "central": {"accuracy": 0.8, "loss": 0.5},
                       "clusters": {"0": {"bytes_to_root": 24, "examples": 30}, "1": {"bytes_to_root": 24, "examples": 30}}},
                      {"0": "c0", "1": "c1"})
    tracker.finish("FINISHED")
    client = tracker.client
    run = client.get_run(parent)
    assert run.data.tags["mlflow.source.name"] == "https://a/wine"  # no credentials anywhere
    assert "tok" not in str(run.data.params) + str(run.data.tags)
    assert [(m.step, m.timestamp) for m in client.get_metric_history(parent, "central_accuracy")] == [
        (0, int(t0 * 1000)), (1, int((t0 + 10) * 1000))]
    assert [m.step for m in client.get_metric_history(parent, "cluster-c0/evaluate_loss")] == [1]
    assert run.data.metrics["cluster-c1/examples"] == 30
    children = {c.data.tags["flops.cluster"]: c for c in client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")}
    assert sorted(children) == ["c0", "c1"]
    for name, offset in (("c0", 1.0), ("c1", 2.0)):
        child = children[name]
        assert child.info.start_time == int(t0 * 1000)  # the root's round 0: when clusters start working
        assert child.info.end_time == int((t0 + offset + 2) * 1000)  # its own last local round
        assert set(child.data.metrics) == {"local_round/examples", "local_round/bytes_learners_to_cluster",
                                           "local_round/evaluate_loss", "local_round/train_loss",
                                           "local_round/global_round"}
        shared = set(child.data.params) & set(run.data.params)
        assert {k: child.data.params[k] for k in shared - {"learners"}} == {k: run.data.params[k] for k in shared - {"learners"}}
        assert child.data.params["learners"] == "2" and run.data.params["learners"] == "4"
    assert (run.data.params["clusters"], run.data.params["local_rounds"]) == ("2", "2")
