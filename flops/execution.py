"""Executing a prepared run: deploy, follow it round by round, track it, tear it down; and stopping one."""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from flops.errors import FlopsError, RunFailedError
from flops.flower_control import FlowerControl
from flops.flower_run_config import root_overrides
from flops.orchestrators import get_orchestrator
from flops.orchestrators.link_security import describe_exit, refuse_intruders
from flops.plan import RunPlan
from flops.preparation import Progress, StopRequested, SilentProgress, raise_stop
from flops.run_events import ClusterEvents, EventTail, learner_log_hint, record_round
from flops.runstate import TERMINAL, RunState, load_state
from flops.tracking import Tracker, log_final_model

POLL_INTERVAL_S = 0.5  # how often the controller looks at events, processes and Flower's run status
MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}


def execute_run(plan: RunPlan, progress: Progress | None = None) -> RunState:
    """Deploy, train, track, and tear down. Always returns the final state; never leaves processes."""
    progress = progress or SilentProgress()
    previous = {sig: signal.signal(sig, raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    state = load_state(plan.run_dir.parent.parent, plan.run_id)
    if state.status in TERMINAL:  # stopped between `submit --detach` and this controller starting
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return state
    state.update(status="RUNNING", phase="deploying", controller_pid=os.getpid())
    progress.phase(state)
    orchestrator = get_orchestrator(plan.orchestrator, plan.image)
    # The embedded store keeps artifacts beside it; a tracking server decides where its artifacts go.
    embedded = plan.tracking_uri.startswith("sqlite:")
    tracker = Tracker(plan.tracking_uri, plan.run_dir.parent.parent / "mlartifacts" if embedded else None)
    status, message = "FAILED", ""
    try:
        state.update(mlflow_run_id=tracker.start(plan))
        tracker.start_clusters(plan)
        tracker.log_topology(plan)
        deployment = orchestrator.deploy(plan)
        state.update(deployment=deployment)
        _train(plan, state, orchestrator, deployment, tracker, progress)
        progress.phase(state.update(phase="logging model"))
        logged = log_final_model(plan, tracker.run_id, plan.task_module, plan.dependencies)
        state.update(model_uri=logged["model_uri"])
        tracker.set_tag("flops.model_uri", logged["model_uri"])
        status = "FINISHED"
    except StopRequested:
        status, message = "STOPPED", "stopped by request"
    except FlopsError as exc:
        message = str(exc)
    except Exception as exc:  # a bug or a tool's unexpected failure: still tear down, and say what it was
        traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc} (please report; details in the controller output)"
    finally:
        # Teardown must not be interrupted by a second Ctrl-C.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if state.deployment is not None:
            orchestrator.stop(state.deployment)
        _close_tracking(tracker, state, status)
        state.update(status=status, message=message, phase="done", ended_at=time.time())
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    progress.phase(state)
    return state


def _close_tracking(tracker: Tracker, state: RunState, status: str) -> None:
    if tracker.mlflow_run_id is None:
        return
    tracker.log_summary({"bytes_to_root_total": float(state.bytes_to_root),
                         "rounds_completed": float(state.rounds_completed)})
    tracker.log_logs(state.run_dir / "logs")
    tracker.log_accuracy_curve(state.history, state.run_dir / "accuracy.png")
    tracker.finish(MLFLOW_STATUS[status])



def _train(plan: RunPlan, state: RunState, orchestrator: Any, deployment: Any, tracker: Tracker,
           progress: Progress) -> None:
    control = FlowerControl(deployment.control_address, deployment.ca_cert)
    try:
        progress.phase(state.update(phase="starting run"))
        flower_run_id = control.start_run(plan.app_dir, root_overrides(plan))
        state.update(flower_run_id=flower_run_id, phase="training")
        progress.phase(state)
        _monitor(plan, state, orchestrator, deployment, control, tracker, progress)
    finally:
        control.close()


def _monitor(plan: RunPlan, state: RunState, orchestrator: Any, deployment: Any, control: FlowerControl,
             tracker: Tracker, progress: Progress) -> None:
    cfg = plan.config
    tail = EventTail(plan.events_path)
    cluster_events = ClusterEvents(plan)
    cluster_names = {str(c.index): c.name for c in plan.clusters}
    deadline = time.monotonic() + cfg.startup_timeout_s + cfg.round_timeout_s
    finished = False
    while True:
        for cluster, event in cluster_events.read():
            if event["event"] == "local_round":
                tracker.log_local_round(cluster, event, cfg.local_rounds)
        for event in tail.read():
            if event["event"] == "round" and event["round"] == 0:
                tracker.log_initial(event)  # the initial model's central evaluation, before any training
            elif event["event"] == "round":
                record_round(state, tracker.log_round(event, cluster_names), event, cluster_names)
                progress.round(state)
                deadline = time.monotonic() + cfg.round_timeout_s
            elif event["event"] == "failed":
                raise RunFailedError(learner_log_hint(plan, event["message"]))
            elif event["event"] == "finished":
                finished = True
                state.update(stopped_early=event.get("stopped_early", ""))
        refuse_intruders(control, deployment.node_ids)
        flower = control.run_status(state.flower_run_id)
        if flower.finished:
            if finished and flower.completed:
                return
            if not finished:
                tail_events = tail.read()
                if any(e["event"] in ("finished", "failed") for e in tail_events):
                    continue  # let the loop handle the late event
            detail = flower.details or flower.sub_status
            raise RunFailedError(f"Flower run ended {flower.sub_status}: {detail} (log: {plan.logs_dir / 'superlink.log'})")
        dead = [name for name, alive in orchestrator.status(deployment).items() if not alive]
        if dead:
            raise RunFailedError(describe_exit(dead[0], orchestrator.logs(deployment, dead[0])))
        if time.monotonic() > deadline:
            raise RunFailedError(
                f"round {state.rounds_completed + 1} did not finish within {cfg.round_timeout_s:.0f}s "
                f"(round_timeout_s; logs: {plan.logs_dir})"
            )
        time.sleep(POLL_INTERVAL_S)


def stop_run(workdir: Path, run_id: str, wait_s: float = 30.0) -> RunState:
    """Stop a run from any shell: ask its controller to stop; if it is gone, stop the components directly."""
    state = load_state(workdir, run_id)
    if state.status in TERMINAL:
        return state
    if state.controller_pid is not None:
        try:
            os.kill(state.controller_pid, signal.SIGTERM)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                state = load_state(workdir, run_id)
                if state.status in TERMINAL:
                    return state
                os.kill(state.controller_pid, 0)  # ProcessLookupError once the controller is gone
                time.sleep(0.2)
        except ProcessLookupError:
            state = load_state(workdir, run_id)
            if state.status in TERMINAL:
                return state
    if state.deployment is not None:
        get_orchestrator(state.deployment.orchestrator, RunPlan.load(state.run_dir).image).stop(state.deployment)
    return state.update(status="STOPPED", phase="done", message="stopped by request", ended_at=time.time())
