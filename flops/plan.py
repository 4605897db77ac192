"""The run plan: one typed record of everything a run needs, written before anything starts."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from pydantic import BaseModel

from flops.config import RunConfig


class LearnerSpec(BaseModel):
    """One learner: a SuperNode that trains on partition `partition_id` of `num_partitions`."""

    name: str
    partition_id: int
    num_partitions: int


class RunPlan(BaseModel):
    """What `flops submit` decided: source, app, environment, config and the learners to start."""

    run_id: str
    run_dir: Path
    source_url: str
    source_ref: str | None
    commit: str
    source_name: str
    app_dir: Path
    python: Path  # interpreter of the run's environment; Flower's executables sit beside it
    config: RunConfig
    orchestrator: str
    tracking_uri: str
    learners: list[LearnerSpec]
    task_module: str  # import name of the user's task module inside the app's user/ folder
    dependencies: list[str]

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def output_dir(self) -> Path:
        """Where the root aggregator writes its event log, final weights and input example."""
        return self.run_dir / "output"

    @property
    def events_path(self) -> Path:
        return self.output_dir / "events.jsonl"

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "plan.json").write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> RunPlan:
        return cls.model_validate_json((run_dir / "plan.json").read_text())


def new_run_id() -> str:
    """Sortable, unique and short: `r` + UTC time + 4 random hex digits."""
    return "r" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def plan_learners(config: RunConfig) -> list[LearnerSpec]:
    """Flat topology: learner i trains on partition i of N."""
    return [
        LearnerSpec(name=f"learner-{i}", partition_id=i, num_partitions=config.learners)
        for i in range(config.learners)
    ]
