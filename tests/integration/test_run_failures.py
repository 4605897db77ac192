"""Runs that do not finish: a learner raising, Ctrl-C, and a detached run stopped from another shell."""

from __future__ import annotations

import json
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


def _state_if(workdir: Path, run_id: str | None = None) -> dict | None:
    """The (only, or named) run's state.json, or None while it does not exist yet."""
    ids = [run_id] if run_id else run_ids(workdir)
    if len(ids) != 1 or not (workdir / "runs" / ids[0] / "state.json").is_file():
        return None
    return run_state(workdir, ids[0])


def test_a_raising_learner_fails_the_run_promptly_naming_the_learner(tmp_path: Path) -> None:
    """One learner's exception is tolerated once (the others' updates close the round); the same learner raising
    again is broken code, not a flaky device: the run fails in round 2. The plain output (no --json) names the
    learner, the error and its log; so does the run record (`flops status --json`)."""
    repo = git_repo_of(FIXTURES_DIR / "raising_learner", tmp_path / "raising-learner")
    workdir = tmp_path / "work"
    # A round timeout far beyond the test's own 900 s: only the learner's error can have ended the run.
    result = run_flops("submit", repo.as_uri(), "--learners", "2", "--rounds", "3", "--round-timeout", "3600",
                       "--workdir", str(workdir), timeout_s=900)
    assert result.returncode == 1, result.output
    assert "FAILED" in result.output
    assert "learner 1" in result.output and "boom from partition 1" in result.output, result.output
    assert "learner-1.log" in result.output
    assert "Traceback" not in result.output, result.output
    (run_id,) = run_ids(workdir)
    summary = run_flops("status", run_id, "--workdir", str(workdir), "--json").last_json()
    # learner 1 raises in every round: once is tolerated (round 1 closes with learner 0), the second time ends the run
    assert (summary["status"], summary["rounds_completed"]) == ("FAILED", 1), summary
    message = summary["message"]
    assert "learner 1" in message and "boom from partition 1" in message, message
    assert "did not finish within" not in message, message
    assert str(workdir / "runs" / run_id / "logs" / "learner-1.log") in message, message
    assert_no_process_left(run_id)
    run = MlflowClient(tracking_uri=summary["tracking_uri"]).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FAILED"


def test_sigint_during_training_stops_the_run_and_its_processes(tiny_task_repo: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        [str(FLOPS), "submit", str(tiny_task_repo), "--learners", "2", "--rounds", "50", "--workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=flops_env(), start_new_session=True,
    )
    try:
        state = wait_for(lambda: (s := _state_if(workdir)) and s["phase"] == "training" and s,
                         240, "the run to reach the training phase")
        run_id = state["run_id"]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stdout + stderr
    assert "Traceback" not in stdout + stderr, stdout + stderr
    final = run_state(workdir, run_id)
    assert (final["status"], final["phase"]) == ("STOPPED", "done"), final
    assert "STOPPED" in stdout
    assert_no_process_left(run_id, grace_s=2)
    run = MlflowClient(tracking_uri=final["tracking_uri"]).get_run(final["mlflow_run_id"])
    assert run.info.status == "KILLED"


def _controllers_of(run_dir: str) -> list[int]:
    """PIDs of live processes whose command line names RUN_DIR (the detached `python -m flops.controller`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and run_dir.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _status(workdir: Path, run_id: str) -> dict:
    result = run_flops("status", run_id, "--workdir", str(workdir), "--json")
    assert result.returncode == 0, result.output
    return result.last_json()


def test_detached_run_is_followed_and_stopped_from_other_commands(tiny_task_repo: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    submitted = run_flops("submit", str(tiny_task_repo), "--learners", "2", "--rounds", "50",
                          "--workdir", str(workdir), "--detach", "--json")
    assert submitted.returncode == 0, submitted.output
    run_id = submitted.last_json()["run_id"]
    try:
        wait_for(lambda: _state_if(workdir, run_id)["status"] == "RUNNING", 60, "the detached run to be RUNNING")
        assert _status(workdir, run_id)["status"] == "RUNNING"

        listed = run_flops("list", "--workdir", str(workdir), "--json")
        assert listed.returncode == 0, listed.output
        assert [r["run_id"] for r in listed.last_json()["runs"]] == [run_id]
        plain_list = run_flops("list", "--workdir", str(workdir))
        assert run_id in plain_list.stdout and "RUNNING" in plain_list.stdout

        wait_for(lambda: _state_if(workdir, run_id)["phase"] == "training", 120, "the run to start training")
        logs = run_flops("logs", run_id, "--component", "superlink", "--workdir", str(workdir))
        assert logs.returncode == 0, logs.output
        assert "SuperLink" in logs.stdout, logs.stdout

        stopped = run_flops("stop", run_id, "--workdir", str(workdir))
        assert stopped.returncode == 0, stopped.output
        assert "STOPPED" in stopped.stdout
    finally:
        run_flops("stop", run_id, "--workdir", str(workdir))  # idempotent; makes sure nothing outlives the test
    assert _status(workdir, run_id)["status"] == "STOPPED"
    assert_no_process_left(run_id)


def test_stop_right_after_detach_stops_the_run_for_good(tiny_task_repo: Path, tmp_path: Path) -> None:
    """`flops stop` may come before the detached controller has written its pid; the run must stay stopped."""
    workdir = tmp_path / "work"
    submitted = run_flops("submit", str(tiny_task_repo), "--learners", "1", "--rounds", "50",
                          "--workdir", str(workdir), "--detach", "--json")
    assert submitted.returncode == 0, submitted.output
    run_id = submitted.last_json()["run_id"]
    try:
        stopped = run_flops("stop", run_id, "--workdir", str(workdir))
        assert stopped.returncode == 0, stopped.output
        # A controller that missed the stop would go on deploying and training for 50 rounds.
        run_dir = str(workdir / "runs" / run_id)
        wait_for(lambda: not _controllers_of(run_dir), 30, "the detached controller to exit")
        state = run_state(workdir, run_id)
        assert state["status"] == "STOPPED", json.dumps(state, indent=1)
        assert_no_process_left(run_id, grace_s=0)
    finally:
        run_flops("stop", run_id, "--workdir", str(workdir))
        assert_no_process_left(run_id)
