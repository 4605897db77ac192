"""What becomes of a run request: submitted (handed to its own controller, optionally followed), exported (the
manifests `kubectl apply` takes) or, after a crash, resumed. Each is one call for the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flops.controller import follow_run, start_detached
from flops.errors import ConfigError, FlopsError
from flops.orchestrators import orchestrator_for
from flops.plan import RunPlan
from flops.preparation import Progress, RunRequest, prepare_run
from flops.runstate import RunState, load_state


def submit(request: RunRequest, progress: Progress, detach: bool,
           build_image: Callable[[RunPlan], str] | None = None) -> tuple[RunPlan, RunState]:
    """Prepare REQUEST (bad input is refused before anything starts), start its controller in its own session (it
    survives the caller) and, unless DETACH, follow it until it ends; Ctrl-C or SIGTERM stops the run."""
    plan = prepare_run(request, progress, build_image)
    for cluster in plan.clusters:
        progress.note(f"cluster {cluster.name}: {', '.join(l.name for l in cluster.learners)}")
    state = start_detached(plan)
    if not detach:
        state = follow_run(plan.run_dir.parent.parent, plan.run_id, progress, stop_on_interrupt=True)
    return plan, state


def export(request: RunRequest, output_dir: Path, progress: Progress,
           build_image: Callable[[RunPlan], str] | None = None) -> tuple[RunPlan, Path]:
    """Prepare REQUEST and write the manifests its orchestrator would apply to OUTPUT_DIR/RUN.yaml; the run is
    recorded as exported (nothing runs)."""
    if not request.insecure:
        # Each SuperNode's key is registered with its SuperLink once that is up, by the controller of
        # `flops submit`: a `kubectl apply` of files has no step between the two.
        raise ConfigError("flops export writes --insecure runs only: with TLS, SuperNode keys are registered with "
                          "their SuperLinks as they come up (flops submit --orchestrator kubernetes does that); "
                          "pass --insecure")
    plan = prepare_run(request, progress, build_image)
    state = load_state(plan.run_dir.parent.parent, plan.run_id)
    try:
        path = orchestrator_for(plan).export(plan, output_dir.resolve() / f"{plan.run_id}.yaml")
    except FlopsError as exc:
        state.update(status="FAILED", phase="exporting", message=str(exc))
        raise
    state.update(phase="exported", controller_pid=None, message=f"manifests in {path}")
    return plan, path


def resume(workdir: Path, run_id: str, progress: Progress) -> RunState:
    """Continue a run whose SuperLink, controller or host died from its last checkpoint, in the same MLflow run,
    with a new controller; follow it until it ends."""
    from flops.execution import prepare_resume  # the controller's side; only a resume needs it here

    plan = prepare_resume(workdir, run_id)
    start_detached(plan, resume=True)
    return follow_run(workdir, run_id, progress, stop_on_interrupt=True)
