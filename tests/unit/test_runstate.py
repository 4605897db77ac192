"""The run record: strict JSON with non-finite metrics, and the truth about a run whose controller died."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

from flops.runstate import RunState, list_states, load_state, observed_state


def _state(workdir: Path, **fields) -> RunState:  # noqa: ANN003
    run_dir = workdir / "runs" / "r1"
    run_dir.mkdir(parents=True)
    return RunState(run_id="r1", run_dir=run_dir, started_at=1.0, **fields).update()


def test_non_finite_metrics_are_null_in_state_json_and_the_summary_and_still_load(tmp_path: Path) -> None:
    _state(tmp_path, status="RUNNING", latest_metrics={"central_accuracy": math.nan, "central_loss": math.inf},
           history=[{"round": 1, "accuracy": math.nan}])
    raw = json.loads((tmp_path / "runs" / "r1" / "state.json").read_text())  # strict JSON: no NaN token
    assert raw["latest_metrics"] == {"central_accuracy": None, "central_loss": None}
    state = load_state(tmp_path, "r1")
    assert [s.run_id for s in list_states(tmp_path)] == ["r1"]  # never hidden from `flops list`
    text = json.dumps(state.summary(), allow_nan=False)
    assert json.loads(text)["final_metrics"] == {"accuracy": None, "loss": None}


def test_a_run_whose_controller_died_is_failed_and_resumable_never_running(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _state(tmp_path, status="RUNNING", phase="training", controller_pid=dead.pid, rounds_completed=2)
    seen = observed_state(tmp_path, "r1")
    assert (seen.status, seen.phase, seen.resumable) == ("FAILED", "done", True)
    assert f"pid {dead.pid}" in seen.message and "flops resume r1" in seen.message
    assert load_state(tmp_path, "r1").status == "FAILED"  # written back: every reader agrees


def test_a_run_with_a_live_controller_is_left_as_it_is(tmp_path: Path) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "flops-controller"])
    try:
        # Until the child has exec'd, /proc shows the forked pytest's command line: wait for its own.
        while b"flops-controller" not in Path(f"/proc/{alive.pid}/cmdline").read_bytes():
            time.sleep(0.01)
        _state(tmp_path, status="RUNNING", phase="training", controller_pid=alive.pid)
        assert observed_state(tmp_path, "r1").status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()


def test_a_controller_is_known_by_pid_and_start_time_from_its_first_moment(tmp_path: Path) -> None:
    """Right after Popen the child may still be exec'ing (its command line empty or the parent's): with the start
    time recorded it counts as alive at once; the same pid with another start time (a reused pid) does not."""
    from flops.runstate import controller_alive, process_start_time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = process_start_time(child.pid)
        state = _state(tmp_path, status="RUNNING", phase="import check", controller_pid=child.pid,
                       controller_started=started)
        assert controller_alive(state) and observed_state(tmp_path, "r1").status == "RUNNING"
        assert not controller_alive(state.model_copy(update={"controller_started": started - 1}))
    finally:
        child.kill()
        child.wait()
    assert not controller_alive(state)


def test_each_phase_s_time_is_recorded_for_the_json_summary(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    clock = iter([10.0, 12.5, 20.0, 20.0, 27.0, 30.0])
    monkeypatch.setattr("flops.runstate.time.time", lambda: next(clock))
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    state = RunState(run_id="r1", run_dir=run_dir, started_at=10.0)
    state.update(phase="fetching")  # 10.0: planned took 0 s
    state.update(phase="environment")  # 12.5
    state.update(rounds_completed=1)  # 20.0: no phase change, nothing closes
    state.update(phase="training")  # 20.0
    state.update(phase="training", latest_metrics={"central_accuracy": 0.5})  # 27.0: same phase
    state.update(status="FINISHED", ended_at=30.0)  # 30.0: the run ends in training
    assert load_state(tmp_path, "r1").summary()["phase_s"] == {"planned": 0.0, "fetching": 2.5, "environment": 7.5,
                                                               "training": 10.0}


def test_a_run_whose_checkpoint_went_with_its_pods_is_not_resumable(tmp_path: Path) -> None:
    from flops.orchestrators.base import Deployment

    kept = Deployment(orchestrator="local", run_id="r1", control_address="127.0.0.1:9092")
    in_pod = Deployment(orchestrator="kubernetes", run_id="r1", control_address="10.43.0.10:9092", checkpoint_kept=False)
    assert RunState(run_id="r1", run_dir=tmp_path, started_at=1.0, rounds_completed=2, deployment=kept).can_resume()
    assert not RunState(run_id="r1", run_dir=tmp_path, started_at=1.0, rounds_completed=0, deployment=kept).can_resume()
    assert not RunState(run_id="r1", run_dir=tmp_path, started_at=1.0, rounds_completed=2, deployment=in_pod).can_resume()
