"""Run state kept in the work dir, so status, list, logs and stop work from any shell."""

from __future__ import annotations

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
    latest_metrics: dict[str, float] = {}
    message: str = ""
    controller_pid: int | None = None
    deployment: Deployment | None = None
    flower_run_id: int | None = None
    tracking_uri: str = ""
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    bytes_to_root: int = 0
    bytes_total: int = 0
    comm_cost: float = 0.0
    clusters: dict[str, dict[str, float]] = {}  # cluster name -> accumulated bytes per link and examples
    history: list[dict[str, float]] = []  # per global round: round, central accuracy and loss
    stopped_early: str = ""
    started_at: float = 0.0
    ended_at: float | None = None

    def save(self) -> None:
        """Atomic write: a reader in another shell never sees half a file."""
        path = self.run_dir / "state.json"
        tmp = path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        os.replace(tmp, path)

    def update(self, **fields: Any) -> RunState:
        for key, value in fields.items():
            setattr(self, key, value)
        self.save()
        return self

    @property
    def duration_s(self) -> float:
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at) if self.started_at else 0.0

    def summary(self) -> dict[str, Any]:
        """The --json result object."""
        return {
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
            "bytes_to_root": self.bytes_to_root,
            "bytes_total": self.bytes_total,
            "comm_cost": self.comm_cost,
            "clusters": self.clusters,
            "stopped_early": self.stopped_early,
            "run_dir": str(self.run_dir),
        }


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
