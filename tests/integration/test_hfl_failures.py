"""Hierarchical runs under faults: a cluster aggregator dying (restarted), a learner raising inside a cluster,
and topology files that must be rejected before anything starts. All through the real `flops` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import (
    FIXTURES_DIR,
    FLOPS,
    assert_no_process_left,
    assert_only_error_line_on_stderr,
    flops_env,
    git_repo_of,
    mlflow_run_count,
    run_flops,
    run_ids,
    run_state,
    wait_for,
)

pytestmark = pytest.mark.slow

# The exact task (fast rounds), except that train() raises on partition 3.
RAISING_TRAIN = '''

_train_without_failure = train


def train(net, trainloader, valloader, epochs, learning_rate, device):
    if step_of(trainloader) == 4:  # partition 3
        raise RuntimeError("partition 3 has no usable data")
    return _train_without_failure(net, trainloader, valloader, epochs, learning_rate, device)
'''


@pytest.fixture(scope="module")
def exact_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return git_repo_of(FIXTURES_DIR / "hfl_exact_task", tmp_path_factory.mktemp("hfl-failures") / "hfl-exact-task")


def _state_if(workdir: Path) -> dict | None:
    ids = run_ids(workdir) if (workdir / "runs").is_dir() else []
    if len(ids) != 1 or not (workdir / "runs" / ids[0] / "state.json").is_file():
        return None
    return run_state(workdir, ids[0])


def _training_aggregator(workdir: Path, name: str) -> tuple[dict, dict] | None:
    """(state, component) once the run is training and its deployment lists component NAME with a pid."""
    state = _state_if(workdir)
    if not state or state["phase"] != "training":
        return None
    for component in (state.get("deployment") or {}).get("components", []):
        if component["name"] == name and component.get("pid"):
            return state, component
    return None


def test_a_killed_cluster_aggregator_is_restarted_and_the_run_finishes(exact_repo: Path, tmp_path: Path) -> None:
    """kill -9 of a cluster aggregator mid-round: its cluster is left out of that round (the other
    cluster meets the root's quorum), FLOps restarts it, and the run finishes with nothing left running."""
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        [str(FLOPS), "submit", exact_repo.as_uri(), "--learners", "4", "--clusters", "2", "--rounds", "3",
         "--local-rounds", "1", "--round-timeout", "90", "--workdir", str(workdir), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=flops_env(), stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        state, component = wait_for(lambda: _training_aggregator(workdir, "cluster-0-aggregator"), 300,
                                    "the run to train with cluster-0-aggregator up")
        run_id = state["run_id"]
        # Mid-round: the aggregator has taken global round 1 and is running its cluster's local rounds.
        wait_for(lambda: (Path(state["run_dir"]) / "hosts" / "cluster-0" / "round-1").is_dir(), 300,
                 "cluster-0 to start its first global round")
        os.killpg(component["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for left in run_ids(workdir) if (workdir / "runs").is_dir() else []:  # the controller is detached
            run_flops("stop", left, "--workdir", str(workdir), timeout_s=120)
    output = stdout + stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    final = run_state(workdir, run_id)
    assert (final["status"], final["rounds_completed"]) == ("FINISHED", 3), final
    assert final["restarts"].get("cluster-0-aggregator", 0) >= 1, final
    rounds = [json.loads(line) for line in (Path(final["run_dir"]) / "output" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in rounds if e["event"] == "round" and e["round"] > 0]
    assert rounds[0]["missing"] == ["cluster-0"] and rounds[0]["accepted"] == ["cluster-1"], rounds[0]
    assert len(rounds[-1]["accepted"]) == 2, rounds[-1]  # the restarted aggregator is back
    assert_no_process_left(run_id)
    run = MlflowClient(tracking_uri=final["tracking_uri"]).get_run(final["mlflow_run_id"])
    assert run.info.status == "FINISHED"


def test_a_raising_learner_inside_a_cluster_fails_the_run_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("task.py", "requirements.txt"):
        (source / name).write_text((FIXTURES_DIR / "hfl_exact_task" / name).read_text())
    with open(source / "task.py", "a") as fh:
        fh.write(RAISING_TRAIN)
    repo = git_repo_of(source, tmp_path / "raising-in-cluster")
    workdir = tmp_path / "work"
    result = run_flops("submit", repo.as_uri(), "--learners", "4", "--clusters", "2", "--rounds", "2",
                       "--local-rounds", "2", "--round-timeout", "600", "--workdir", str(workdir), "--json",
                       timeout_s=900)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output, result.output
    summary = result.last_json()
    assert summary["status"] == "FAILED", summary
    message = summary["message"]
    assert "learner 3" in message and "partition 3 has no usable data" in message, message
    assert "did not finish within" not in message, message  # the error came back, not a timeout
    assert str(workdir / "runs" / summary["run_id"] / "logs" / "learner-3.log") in message, message
    assert run_state(workdir, summary["run_id"])["status"] == "FAILED"
    assert_no_process_left(summary["run_id"])


INVALID_TOPOLOGIES = {
    "unknown-learner": ("""\
        assignment: manual
        clusters:
          - {name: a, learners: [learner-0, ghost]}
          - {name: b, learners: [learner-1]}
        learners: [{name: learner-0}, {name: learner-1}]
        """, "clusters[0].learners[1]", "ghost"),
    "learner-in-two-clusters": ("""\
        assignment: manual
        clusters:
          - {name: a, learners: [learner-0, learner-1]}
          - {name: b, learners: [learner-1, learner-2]}
        learners: [{name: learner-0}, {name: learner-1}, {name: learner-2}]
        """, "clusters[1].learners", "learner-1"),
    "empty-cluster": ("""\
        assignment: manual
        clusters:
          - {name: a, learners: [learner-0, learner-1]}
          - {name: b, learners: []}
        learners: [{name: learner-0}, {name: learner-1}]
        """, "clusters[1].learners", "no learners"),
    "negative-cost-to-root": ("""\
        assignment: manual
        clusters:
          - {name: a, learners: [learner-0], cost_to_root: -1.5}
          - {name: b, learners: [learner-1]}
        learners: [{name: learner-0}, {name: learner-1}]
        """, "clusters[0].cost_to_root", "greater than or equal to 0"),
    "negative-link-cost": ("""\
        assignment: manual
        clusters:
          - {name: a, learners: [learner-0]}
          - {name: b, learners: [learner-1]}
        learners:
          - {name: learner-0, link_costs: {a: -0.2}}
          - {name: learner-1}
        """, "learners[0].link_costs.a", "greater than or equal to 0"),
}


@pytest.mark.parametrize("case", sorted(INVALID_TOPOLOGIES))
def test_an_invalid_topology_is_rejected_before_anything_starts(case: str, exact_repo: Path, tmp_path: Path) -> None:
    text, field, detail = INVALID_TOPOLOGIES[case]
    topology = tmp_path / f"{case}.yaml"
    topology.write_text(textwrap.dedent(text))
    workdir = tmp_path / "work"
    result = run_flops("submit", exact_repo.as_uri(), "--topology", str(topology), "--rounds", "1",
                       "--workdir", str(workdir), "--json", timeout_s=120)
    line = assert_only_error_line_on_stderr(result, exit_code=2)
    assert str(topology) in line and field in line and detail in line, line
    # Refused before anything started: no run left behind, no MLflow run.
    assert run_ids(workdir) == []
    assert mlflow_run_count(workdir) == 0
