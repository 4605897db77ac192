"""Run state kept in the work dir, so status, list, logs and stop work from any shell."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from flops.errors import BadInputError
from flops.orchestrators.base import Deployment

RunStatus = Literal["PENDING", "RUNNING", "FINISHED", "FAILED", "STOPPED"]
TERMINAL: frozenset[str] = frozenset({"FINISHED", "FAILED", "STOPPED"})


class RunState(BaseModel):
    run_id: str
    run_dir: Path
    status: RunStatus = "PENDING"
    phase: str = "planned"
    source_url: str = ""
    commit: str = ""
    rounds: int = 0
    rounds_completed: int = 0
    latest_metrics: dict[str, float | None] = {}
    message: str = ""
    controller_pid: int | None = None
    controller_started: int | None = None  # its start time in clock ticks since boot (/proc/PID/stat field 22)
    deployment: Deployment | None = None
    flower_run_id: int | None = None
    tracking_uri: str = ""
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    bytes_to_root: int = 0
    bytes_total: int = 0
    comm_cost: float = 0.0
    clusters: dict[str, dict[str, float]] = {}  # cluster name -> accumulated bytes per link and examples
    history: list[dict[str, float | None]] = []  # per global round: round, central accuracy and loss
    last_round_missing: list[str] = []  # members that did not reply in the latest round
    last_round_rejected: dict[str, str] = {}  # member -> why its update was rejected in the latest round
    rejected_updates: dict[str, int] = {}  # member -> updates rejected over the run
    restarts: dict[str, int] = {}  # component -> times FLOps restarted it
    resumable: bool = False  # a round completed (so the root's host holds a checkpoint): `flops resume` can continue
    stopped_early: str = ""
    started_at: float = 0.0
    ended_at: float | None = None
    phase_s: dict[str, float] = {}  # wall seconds spent per phase so far (fetching, environment, training, ...)
    phase_started_at: float = 0.0  # when the current phase began

    def save(self) -> None:
        """Atomic write: a reader in another shell never sees half a file."""
        path = self.run_dir / "state.json"
        tmp = path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        os.replace(tmp, path)

    def update(self, **fields: Any) -> RunState:
        now = time.time()
        closing = fields.get("phase", self.phase) != self.phase or (fields.get("status") in TERMINAL
                                                                       and self.status not in TERMINAL)
        if closing:  # the current phase ends here: its time goes to phase_s
            began = self.phase_started_at or self.started_at or now
            self.phase_s = {**self.phase_s, self.phase: round(self.phase_s.get(self.phase, 0.0) + now - began, 3)}
            self.phase_started_at = now
        for key, value in fields.items():
            setattr(self, key, value)
        self.save()
        return self

    @property
    def duration_s(self) -> float:
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at) if self.started_at else 0.0

    def can_resume(self) -> bool:
        """A round completed (a round is reported once its checkpoint is on the root's host) and that checkpoint
        outlives the run's components."""
        return self.rounds_completed > 0 and (self.deployment is None or self.deployment.checkpoint_kept)

    def summary(self) -> dict[str, Any]:
        """The --json result object: strict JSON (a non-finite number is null)."""
        return strict_json({
            "run_id": self.run_id,
            "status": self.status,
            "message": self.message,
            "source_url": self.source_url,
            "commit": self.commit,
            "tracking_uri": self.tracking_uri,
            "mlflow_run_id": self.mlflow_run_id,
            "model_uri": self.model_uri,
            "rounds_completed": self.rounds_completed,
            "final_metrics": {
                "accuracy": self.latest_metrics.get("central_accuracy"),
                "loss": self.latest_metrics.get("central_loss"),
            },
            "duration_s": round(self.duration_s, 3),
            "phase_s": self.phase_s,
            "bytes_to_root": self.bytes_to_root,
            "bytes_total": self.bytes_total,
            "comm_cost": self.comm_cost,
            "clusters": self.clusters,
            "stopped_early": self.stopped_early,
            "rejected_updates": self.rejected_updates,
            "restarts": self.restarts,
            "resumable": self.resumable,
            "run_dir": str(self.run_dir),
        })


def strict_json(value: Any) -> Any:
    """VALUE with NaN and infinities as None, so json.dumps writes valid JSON (null, never NaN)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def runs_dir(workdir: Path) -> Path:
    return workdir / "runs"


def load_state(workdir: Path, run_id: str) -> RunState:
    path = runs_dir(workdir) / run_id / "state.json"
    if not path.is_file():
        raise BadInputError(f"no run '{run_id}' in {runs_dir(workdir)} (see `flops list`)")
    return RunState.model_validate_json(path.read_text())


def list_states(workdir: Path) -> list[RunState]:
    states = []
    for path in sorted(runs_dir(workdir).glob("*/state.json")):
        try:
            states.append(RunState.model_validate_json(path.read_text()))
        except ValueError:
            continue  # a run dir from an older or broken FLOps: skip rather than fail the listing
    return states


def latest_run_id(workdir: Path) -> str:
    states = list_states(workdir)
    if not states:
        raise BadInputError(f"no runs in {runs_dir(workdir)}")
    return max(states, key=lambda s: s.started_at).run_id


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3, the state, first), None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """When process PID started (clock ticks since boot), None if it is gone. A reused pid has another start
    time; an exec keeps it (so a controller caught between fork and exec is still itself)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def controller_alive(state: RunState) -> bool:
    """Whether the run's controller still runs: the same process (pid and start time), not a zombie.

    Without a recorded start time (a record from an older FLOps) its command line must name FLOps instead.
    """
    fields = _stat_fields(state.controller_pid) if state.controller_pid is not None else None
    if fields is None or fields[0] == "Z":
        return False
    if state.controller_started is not None:
        return int(fields[19]) == state.controller_started
    try:
        cmdline = Path(f"/proc/{state.controller_pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state.run_id.encode() in cmdline or b"flops" in cmdline or b"cli.main" in cmdline


def observed_state(workdir: Path, run_id: str) -> RunState:
    """The run's state, corrected when its controller died without saying so: FAILED (resumable), never RUNNING."""
    state = load_state(workdir, run_id)
    if state.status in TERMINAL or state.controller_pid is None or controller_alive(state):
        return state
    state = load_state(workdir, run_id)  # it may have ended between the two reads
    if state.status in TERMINAL:
        return state
    if state.deployment is not None:  # whatever the dead controller left running goes with it
        from flops.orchestrators import orchestrator_for  # the orchestrators need the plan; the plan needs no state
        from flops.plan import RunPlan

        orchestrator_for(RunPlan.load(state.run_dir)).stop(state.deployment)
    resumable = state.can_resume()
    hint = f"; continue it with `flops resume {run_id}`" if resumable else ""
    return state.update(status="FAILED", phase="done", ended_at=time.time(), resumable=resumable,
                        message=f"the controller (pid {state.controller_pid}) died during '{state.phase}'{hint}")
