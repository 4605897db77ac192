"""Runs that survive the edge, through the real `flops` CLI with faults injected by PID: a learner and the
submitting shell killed mid-run, poisoned and straggling learners, and a SuperLink killed then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import (
    FIXTURES_DIR,
    FLOPS,
    assert_no_process_left,
    flops_env,
    git_repo_of,
    run_flops,
    run_ids,
    run_state,
    wait_for,
)

pytestmark = pytest.mark.slow


def _faulty_repo(tmp_path: Path, faults: dict[int, str]) -> Path:
    source = tmp_path / "source"
    source.mkdir(parents=True)
    for name in ("task.py", "requirements.txt"):
        (source / name).write_text((FIXTURES_DIR / "faulty_learners" / name).read_text())
    task = source / "task.py"
    task.write_text(task.read_text().replace("FAULTS = {}", f"FAULTS = {faults!r}"))
    return git_repo_of(source, tmp_path / "faulty-learners")


def _events(workdir: Path, run_id: str) -> list[dict]:
    path = workdir / "runs" / run_id / "output" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rounds(workdir: Path, run_id: str) -> list[dict]:
    return [e for e in _events(workdir, run_id) if e["event"] == "round" and e["round"] > 0]


def _the_run_once(workdir: Path, predicate) -> dict:  # noqa: ANN001
    """The only run's state once PREDICATE(state) holds."""
    def ready() -> dict | None:
        ids = run_ids(workdir) if (workdir / "runs").is_dir() else []
        if len(ids) != 1 or not (workdir / "runs" / ids[0] / "state.json").is_file():
            return None
        state = run_state(workdir, ids[0])
        return state if predicate(state) else None
    return ready


def _stop_every_run(workdir: Path) -> None:
    """The controller is detached from `flops submit`: a failing test must stop the run itself."""
    for run_id in run_ids(workdir) if (workdir / "runs").is_dir() else []:
        run_flops("stop", run_id, "--workdir", str(workdir), timeout_s=120)


def _component_pid(state: dict, name: str) -> int:
    return next(c["pid"] for c in state["deployment"]["components"] if c["name"] == name)


def _metric_steps(client: MlflowClient, mlflow_run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(mlflow_run_id, key))


def test_a_killed_learner_is_restarted_and_a_killed_submit_does_not_stop_the_run(tmp_path: Path) -> None:
    """kill -9 of learner-1 and of `flops submit` in round 2: the run finishes and registers its model;
    learner-1 is missing from at most 2 rounds, restarted, and takes part again; status reattaches."""
    repo = _faulty_repo(tmp_path, {})
    workdir = tmp_path / "work"
    submit = subprocess.Popen(
        [str(FLOPS), "submit", repo.as_uri(), "--learners", "3", "--rounds", "4", "--round-timeout", "150",
         "--lr", "0.1", "--workdir", str(workdir), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=flops_env(), stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        state = wait_for(_the_run_once(workdir, lambda s: s["rounds_completed"] >= 1), 1200, "round 1 to complete")
        run_id = state["run_id"]
        os.killpg(_component_pid(state, "learner-1"), signal.SIGKILL)
        os.killpg(submit.pid, signal.SIGKILL)
        submit.wait()
        # The run goes on without the shell that started it; another shell reattaches.
        waited = run_flops("status", run_id, "--wait", "--workdir", str(workdir), "--json", timeout_s=1800)
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, signal.SIGKILL)
            submit.wait()
        _stop_every_run(workdir)  # a no-op for a finished run
    assert waited.returncode == 0, waited.output
    summary = waited.last_json()
    assert summary["status"] == "FINISHED", summary
    assert summary["rounds_completed"] == 4 and summary["model_uri"], summary
    assert summary["restarts"].get("learner-1", 0) >= 1, summary
    rounds = _rounds(workdir, run_id)
    assert [e["round"] for e in rounds] == [1, 2, 3, 4]
    missing_in = [e["round"] for e in rounds if "learner-1" in e["missing"]]
    assert 1 <= len(missing_in) <= 2, [(e["round"], e["missing"]) for e in rounds]
    assert "learner-1" in rounds[-1]["accepted"], rounds[-1]  # restarted, and back in the federation
    assert all(len(e["accepted"]) >= 2 for e in rounds)  # every round met its quorum
    assert summary["final_metrics"]["accuracy"] > 0.7, summary
    assert "Traceback" not in (workdir / "runs" / run_id / "logs" / "controller.log").read_text()
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert _metric_steps(client, summary["mlflow_run_id"], "central_accuracy") == [0, 1, 2, 3, 4]  # round 0: the initial model
    assert client.get_run(summary["mlflow_run_id"]).data.tags["flops.model_uri"] == summary["model_uri"]
    assert_no_process_left(run_id)


def _submit_poisoned(tmp_path: Path, strategy: str, params: str, faults: dict[int, str]) -> dict:
    repo = _faulty_repo(tmp_path / strategy, faults)
    config = tmp_path / f"{strategy}.yaml"
    config.write_text(f"rounds: 3\nlearners: 5\nround_timeout_s: 75\nstrategy: {{name: {strategy}, params: {params}}}\n"
                      "training: {local_epochs: 1, batch_size: 16, learning_rate: 0.1}\n")
    workdir = tmp_path / strategy / "work"
    try:
        result = run_flops("submit", repo.as_uri(), "--config", str(config), "--workdir", str(workdir), "--json",
                           timeout_s=1800)
    finally:
        _stop_every_run(workdir)
    assert result.returncode == 0, result.output
    summary = result.last_json()
    assert summary["status"] == "FINISHED", summary
    assert_no_process_left(summary["run_id"])
    return {"summary": summary, "rounds": _rounds(workdir, summary["run_id"]), "stderr": result.stderr}


def test_poisoned_updates_are_rejected_or_outvoted_and_a_straggler_is_left_behind_at_the_deadline(tmp_path: Path) -> None:
    """Learner 3 sends NaN weights, learner 4 large noise; learner 2 sleeps past round 2's deadline.
    trimmed-mean keeps accuracy; plain FedAvg with the same faults is wrecked by the noise."""
    faults = {3: "nan", 4: "noise"}
    robust = _submit_poisoned(tmp_path, "trimmed-mean", "{beta: 0.4}", {**faults, 2: "sleep:2:100"})
    plain = _submit_poisoned(tmp_path, "fedavg", "{}", faults)
    for run in (robust, plain):
        for event in run["rounds"]:
            assert "non-finite" in event["rejected"]["learner-3"], event  # NaN: always rejected, never averaged
            assert "learner-3" not in event["accepted"]
        assert run["summary"]["rejected_updates"]["learner-3"] == 3, run["summary"]
        assert "rejected: learner-3 (array 0: non-finite values)" in run["stderr"]
        client = MlflowClient(tracking_uri=run["summary"]["tracking_uri"])
        history = client.get_metric_history(run["summary"]["mlflow_run_id"], "train_updates_rejected")
        assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 1.0), (3, 1.0)]
    # The straggler: round 2 closed at its deadline with the others' updates, learner-2 named as missing.
    round_2 = robust["rounds"][1]
    assert round_2["missing"] == ["learner-2"] and "learner-2" not in round_2["accepted"], round_2
    assert round_2["duration_s"] >= 75, round_2
    assert len(round_2["accepted"]) == 3  # learners 0, 1 and the noisy 4: above the quorum of 3
    robust_accuracy = robust["summary"]["final_metrics"]["accuracy"]
    plain_accuracy = plain["summary"]["final_metrics"]["accuracy"]
    assert robust_accuracy >= 0.8, robust["summary"]
    assert plain_accuracy <= robust_accuracy - 0.15, (plain_accuracy, robust_accuracy)


def test_a_killed_superlink_fails_the_run_resumably_and_resume_continues_the_same_mlflow_run(tmp_path: Path) -> None:
    repo = _faulty_repo(tmp_path, {})
    workdir = tmp_path / "work"
    submit = subprocess.Popen(
        [str(FLOPS), "submit", repo.as_uri(), "--learners", "2", "--rounds", "4", "--round-timeout", "150",
         "--lr", "0.1", "--workdir", str(workdir), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=flops_env(), stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        state = wait_for(_the_run_once(workdir, lambda s: s["rounds_completed"] >= 2), 1200, "round 2 to complete")
        run_id = state["run_id"]
        os.killpg(_component_pid(state, "superlink"), signal.SIGKILL)
        stdout, stderr = submit.communicate(timeout=300)
    finally:
        if submit.poll() is None:
            os.killpg(submit.pid, signal.SIGKILL)
            submit.wait()
        _stop_every_run(workdir)
    assert submit.returncode == 1, stdout + stderr
    failed = json.loads(stdout.strip().splitlines()[-1])
    assert failed["status"] == "FAILED" and failed["resumable"], failed
    assert "root SuperLink died" in failed["message"] and f"flops resume {run_id}" in failed["message"], failed
    assert "internal error" not in failed["message"] and "Traceback" not in stdout + stderr
    done_before = failed["rounds_completed"]
    assert done_before >= 2
    assert_no_process_left(run_id)

    try:
        resumed = run_flops("resume", run_id, "--workdir", str(workdir), "--json", timeout_s=1800)
    finally:
        _stop_every_run(workdir)
    assert resumed.returncode == 0, resumed.output
    summary = resumed.last_json()
    assert summary["status"] == "FINISHED" and summary["rounds_completed"] == 4 and summary["model_uri"], summary
    assert summary["mlflow_run_id"] == failed["mlflow_run_id"]
    started = [e for e in _events(workdir, run_id) if e["event"] == "started"]
    assert started[-1]["resumed_from"] >= 2, started  # the new aggregator began after the checkpoint
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert _metric_steps(client, summary["mlflow_run_id"], "central_accuracy") == [0, 1, 2, 3, 4]  # each round once, round 0 included
    assert_no_process_left(run_id)
