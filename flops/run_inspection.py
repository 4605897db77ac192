"""A run's components seen from any shell: their pods (Kubernetes runs) and their log files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flops.errors import BadInputError
from flops.orchestrators import EXPORTERS, orchestrator_for
from flops.plan import RunPlan
from flops.runstate import TERMINAL, RunState


def _live_pod_orchestrator(state: RunState) -> Any:
    """The orchestrator of a live run whose components are pods (kubernetes, podman-kube), else None."""
    if state.deployment is None or state.deployment.orchestrator not in EXPORTERS or state.status in TERMINAL:
        return None
    return orchestrator_for(RunPlan.load(state.run_dir))


def component_pods(state: RunState) -> dict[str, Any]:
    """Component name -> its pod (phase, readiness, restarts; None while it has none); empty unless pods run it."""
    orchestrator = _live_pod_orchestrator(state)
    return orchestrator.describe(state.deployment) if orchestrator is not None else {}


def component_log(state: RunState, component: str) -> Path:
    """The log file of one component; a live pod's log is read from the cluster into it first."""
    path = state.run_dir / "logs" / f"{component}.log"
    orchestrator = _live_pod_orchestrator(state)
    if orchestrator is not None and component in {c.name for c in state.deployment.components}:
        orchestrator.logs(state.deployment, component)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (state.run_dir / "logs").glob("*.log")))
        raise BadInputError(f"no log for component '{component}' in run {state.run_id} (have: {known})")
    return path
