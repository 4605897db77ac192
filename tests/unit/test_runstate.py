"""The run record: strict JSON with non-finite metrics, and the truth about a run whose controller died."""

from __future__ import annotations

import json
import math
import subprocess
import sys
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
    state = _state(tmp_path, status="RUNNING", phase="training", controller_pid=dead.pid)
    (state.run_dir / "output").mkdir()
    (state.run_dir / "output" / "checkpoint.npz").write_bytes(b"")
    seen = observed_state(tmp_path, "r1")
    assert (seen.status, seen.phase, seen.resumable) == ("FAILED", "done", True)
    assert f"pid {dead.pid}" in seen.message and "flops resume r1" in seen.message
    assert load_state(tmp_path, "r1").status == "FAILED"  # written back: every reader agrees


def test_a_run_with_a_live_controller_is_left_as_it_is(tmp_path: Path) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "flops-controller"])
    try:
        _state(tmp_path, status="RUNNING", phase="training", controller_pid=alive.pid)
        assert observed_state(tmp_path, "r1").status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()
