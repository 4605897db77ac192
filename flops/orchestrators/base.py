"""The orchestrator interface: deploy the Flower processes of a run plan, report on them, stop them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel

from flops.plan import RunPlan

ComponentRole = Literal["superlink", "root-aggregator", "cluster-aggregator", "learner"]


class ComponentRecord(BaseModel):
    """One deployed process or container, as recorded in the run state so another shell can find it."""

    name: str  # e.g. "superlink", "learner-0", "cluster-1"
    role: ComponentRole
    log_path: Path
    pid: int | None = None  # local orchestrator: process group leader
    container_id: str | None = None  # docker orchestrator
    partition_id: int | None = None


class Deployment(BaseModel):
    """What an orchestrator started for one run: enough to find, watch and stop it later."""

    orchestrator: str
    run_id: str
    control_address: str  # host:port of the root SuperLink's Control API
    components: list[ComponentRecord] = []


class Orchestrator(ABC):
    """Starts and stops the SuperLink(s) and SuperNodes of a run. One module per implementation."""

    name: ClassVar[str]

    @abstractmethod
    def deploy(self, plan: RunPlan) -> Deployment:
        """Start every component of the plan and return once the root SuperLink accepts runs."""

    @abstractmethod
    def status(self, deployment: Deployment) -> dict[str, bool]:
        """Component name -> whether it is still running."""

    @abstractmethod
    def logs(self, deployment: Deployment, component: str) -> Path:
        """Path of the log file holding the component's output."""

    @abstractmethod
    def stop(self, deployment: Deployment) -> None:
        """Stop every component of the deployment; safe to call twice, leaves nothing running."""
