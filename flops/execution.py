"""Executing a prepared run: deploy, follow it round by round, track it, tear it down; stopping and resuming one."""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from flops.errors import BadInputError, DeployError, FlopsError, RunFailedError
from flops.flower_control import ControlUnavailable, FlowerControl, RunLog
from flops.flower_run_config import root_overrides
from flops.orchestrators import orchestrator_for
from flops.orchestrators.link_security import describe_exit, refusal_reason, refuse_intruders
from flops.plan import RunPlan
from flops.preparation import Progress, StopRequested, SilentProgress, raise_stop
from flops.run_events import RootEvents, final_model_is_finite, learner_log_hint, record_round, trackable
from flops.runstate import TERMINAL, RunState, load_state, observed_state, process_start_time
from flops.tracking import ModelLogger, Tracker, log_final_model
from flops.tracking_names import run_description

POLL_INTERVAL_S = 0.5  # how often the controller looks at events, processes and Flower's run status
LAST_LINES_WAIT_S = 15.0  # after Flower reports the run finished: how long its last log lines may take to arrive
CONTROL_MISSES = 20  # polls in a row a live root SuperLink may leave unanswered (a loaded host) before the run fails
MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}


def execute_run(plan: RunPlan, progress: Progress | None = None, resume: bool = False) -> RunState:
    """Deploy, train, track, and tear down. Always returns the final state; never leaves processes.

    With RESUME, the run goes on from its last checkpoint in the same MLflow run.
    """
    progress = progress or SilentProgress()
    previous = {sig: signal.signal(sig, raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    state = load_state(plan.run_dir.parent.parent, plan.run_id)
    if state.status in TERMINAL and not resume:  # stopped between `submit --detach` and this controller starting
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return state
    state.update(status="RUNNING", phase="deploying", controller_pid=os.getpid(),
                 controller_started=process_start_time(os.getpid()), message="", ended_at=None,
                 resumable=False, model_uri=None)
    progress.phase(state)
    orchestrator = orchestrator_for(plan)
    # The embedded store keeps artifacts beside it; a tracking server decides where its artifacts go.
    embedded = plan.tracking_uri.startswith("sqlite:")
    tracker = Tracker(plan.tracking_uri, plan.run_dir.parent.parent / "mlartifacts" if embedded else None)
    status, message = "FAILED", ""
    model_logger: ModelLogger | None = None
    try:
        if resume and state.mlflow_run_id:
            _reattach(tracker, state.mlflow_run_id, plan)
        else:
            state.update(mlflow_run_id=tracker.start(plan))
            tracker.log_topology(plan)
        deployment = orchestrator.deploy(plan)
        state.update(deployment=deployment)
        model_logger = ModelLogger(plan)  # its imports overlap the rounds
        _train(plan, state, orchestrator, deployment, tracker, progress, resume)
        progress.phase(state.update(phase="logging model"))
        if not final_model_is_finite(plan):
            raise RunFailedError(f"the final model holds non-finite values; it is not registered ({plan.output_dir})")
        logged = log_final_model(plan, tracker, model_logger)
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
        try:
            if model_logger is not None:
                model_logger.close()
            if state.deployment is not None:
                orchestrator.stop(state.deployment)
        finally:
            try:
                _close_tracking(tracker, state, status, message)
            except Exception as exc:  # noqa: BLE001 - the run's outcome stands; say that tracking failed
                traceback.print_exc()
                message = (f"{message}; " if message else "") + f"closing the MLflow run failed: {exc}"
            finally:
                # Always reached, so a tracking failure never leaves the run record RUNNING.
                # A round is reported only once its checkpoint is on the root's host.
                state.update(status=status, message=message, phase="done", ended_at=time.time(),
                             resumable=status != "FINISHED" and state.can_resume())
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    progress.phase(state)
    return state


def _reattach(tracker: Tracker, mlflow_run_id: str, plan: RunPlan) -> None:
    """Continue the MLflow run of an earlier attempt (and its clusters' nested runs)."""
    tracker.mlflow_run_id = mlflow_run_id
    tracker.plan = plan
    tracker.client.update_run(mlflow_run_id, status="RUNNING")
    experiment_id = tracker.client.get_run(mlflow_run_id).info.experiment_id
    nested = tracker.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{mlflow_run_id}'")
    for run in nested:
        cluster = run.data.tags.get("flops.cluster")
        if cluster:
            tracker.cluster_runs[cluster] = run.info.run_id
            tracker.client.update_run(run.info.run_id, status="RUNNING")


def _close_tracking(tracker: Tracker, state: RunState, status: str, message: str) -> None:
    if tracker.mlflow_run_id is None:
        return
    try:
        tracker.log_summary({"bytes_to_root_total": float(state.bytes_to_root),
                             "rounds_completed": float(state.rounds_completed)}, step=state.rounds_completed)
        tracker.log_logs(state.run_dir / "logs", state.run_dir / "clean_logs")
        tracker.log_curves(state.run_dir / "plots")
        tracker.describe(run_description(tracker.plan, status, message, {m.key: m.value for m in tracker.final_metrics},
                                         state.rounds_completed, state.bytes_to_root, state.model_uri))
    finally:
        tracker.finish(MLFLOW_STATUS[status])



def _train(plan: RunPlan, state: RunState, orchestrator: Any, deployment: Any, tracker: Tracker,
           progress: Progress, resume: bool) -> None:
    control = FlowerControl(deployment.control_address, deployment.ca_cert)
    overrides = root_overrides(plan, deployment.root_state_dir)
    if resume:
        # The checkpoint is on the root's host, in the folder its orchestrator gave it; the root reads it there.
        overrides["flops-resume-from"] = deployment.root_state_dir
    run_log = None
    try:
        progress.phase(state.update(phase="starting run"))
        flower_run_id = control.start_run(plan.app_dir, overrides)
        state.update(flower_run_id=flower_run_id, phase="training")
        progress.phase(state)
        run_log = RunLog(deployment.control_address, deployment.ca_cert, flower_run_id)
        _monitor(plan, state, orchestrator, deployment, control, tracker, progress, run_log)
    finally:
        if run_log is not None:
            run_log.close()
        control.close()


def _follow_events(plan: RunPlan, state: RunState, tracker: Tracker, progress: Progress, root: RootEvents,
                   events: list[dict[str, Any]], cluster_names: dict[str, str]) -> bool:
    """Track a batch of root events; True once the `finished` event is among them."""
    finished = False
    for event in events:
        if event["event"] == "round" and event["round"] == 0:
            tracker.log_initial(trackable(event))  # the initial model's central evaluation, before any training
        elif event["event"] == "round" and event["round"] > state.rounds_completed:  # never logged twice
            # A hierarchy's local rounds came up to the root in its clusters' replies; they are logged first.
            for index, local_rounds in (event.get("local_rounds") or {}).items():
                for local_round in local_rounds:
                    tracker.log_local_round(cluster_names.get(index, index), trackable(local_round),
                                            plan.config.local_rounds)
            record_round(state, tracker.log_round(trackable(event), cluster_names), event, cluster_names)
            progress.round(state)
        elif event["event"] == "failed":
            raise RunFailedError(learner_log_hint(plan, root.local_copy(event["message"])))
        elif event["event"] == "finished":
            finished = True
            state.update(stopped_early=event.get("stopped_early", ""))
    return finished


def _monitor(plan: RunPlan, state: RunState, orchestrator: Any, deployment: Any, control: FlowerControl,
             tracker: Tracker, progress: Progress, run_log: RunLog) -> None:
    cfg = plan.config
    root = RootEvents(plan.output_dir)
    cluster_names = {str(c.index): c.name for c in plan.clusters}
    # The aggregator closes each round at its deadline itself (train, then evaluate): this only catches a hang.
    watchdog_s = 2 * cfg.round_timeout_s + cfg.startup_timeout_s
    deadline = time.monotonic() + cfg.startup_timeout_s + watchdog_s
    finished = False

    def follow() -> None:
        nonlocal finished, deadline
        done_before = state.rounds_completed
        events = root.read(run_log.lines(), state.rounds_completed)
        finished = _follow_events(plan, state, tracker, progress, root, events, cluster_names) or finished
        if state.rounds_completed > done_before:
            deadline = time.monotonic() + watchdog_s

    misses = 0
    while True:
        follow()
        try:
            refuse_intruders(control, deployment.node_ids)
            flower = control.run_status(state.flower_run_id)
        except ControlUnavailable as exc:
            time.sleep(POLL_INTERVAL_S)  # a killed process may take a moment to be seen dead
            _restart_dead(plan, state, orchestrator, deployment)  # a dead root SuperLink ends the run resumably
            misses += 1
            if misses >= CONTROL_MISSES:
                raise RunFailedError(f"the root SuperLink, still running, did not answer {misses} times in a row: "
                                     f"{exc} (log: {plan.logs_dir / 'superlink.log'})") from exc
            continue
        misses = 0
        if flower.finished:
            run_log.ended.wait(LAST_LINES_WAIT_S)  # the stream ends once every line of the run was sent
            follow()  # events printed before Flower reported the end: a late `finished` or `failed` counts
            if finished and flower.completed:
                return
            detail = flower.details or flower.sub_status
            raise RunFailedError(f"Flower run ended {flower.sub_status}: {detail} (log: {plan.logs_dir / 'superlink.log'})")
        _restart_dead(plan, state, orchestrator, deployment)
        if time.monotonic() > deadline:
            raise RunFailedError(
                f"round {state.rounds_completed + 1} did not finish within {watchdog_s:.0f}s "
                f"(2 x round_timeout_s + startup_timeout_s; logs: {plan.logs_dir})"
            )
        time.sleep(POLL_INTERVAL_S)


def _restart_dead(plan: RunPlan, state: RunState, orchestrator: Any, deployment: Any) -> None:
    """A dead learner, cluster SuperLink or cluster aggregator is restarted; a dead root SuperLink ends the run."""
    for name, alive in orchestrator.status(deployment).items():
        if alive:
            continue
        if name == "superlink":
            kept = (f"rounds done are kept in checkpoints: continue with `flops resume {plan.run_id}`"
                    if deployment.checkpoint_kept else "its checkpoint went with its pod")
            raise RunFailedError(f"the root SuperLink died (log: {orchestrator.logs(deployment, name)}); {kept}")
        try:
            # An authenticated SuperNode restarts under a freshly registered key (see LinkSecurity.renew_identity).
            # Refused every time: say why.
            restarted = orchestrator.restart(plan, deployment, name)
        except DeployError as exc:
            log_path = orchestrator.logs(deployment, name)
            raise RunFailedError(describe_exit(name, log_path) if refusal_reason(log_path) else str(exc)) from exc
        if restarted:
            state.update(deployment=deployment, restarts={**state.restarts, name: state.restarts.get(name, 0) + 1})


def prepare_resume(workdir: Path, run_id: str) -> RunPlan:
    """Check that a run can go on from its last checkpoint; stop whatever is left of it. Returns its plan."""
    state = observed_state(workdir, run_id)
    plan = RunPlan.load(state.run_dir)
    if state.status == "FINISHED":
        raise BadInputError(f"run {run_id} already finished (model: {state.model_uri})")
    if state.rounds_completed == 0:
        raise BadInputError(f"run {run_id} has no checkpoint: no round completed")
    if not state.can_resume():
        raise BadInputError(f"run {run_id} cannot be resumed: its root's checkpoint lived in the root's pod "
                            f"(--orchestrator {plan.orchestrator}) and went with it")
    if state.status not in TERMINAL:
        stop_run(workdir, run_id)  # a controller still around: stop it and whatever it started first
    return plan


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
    plan = RunPlan.load(state.run_dir)
    if state.deployment is not None:
        orchestrator_for(plan).stop(state.deployment)
    if state.mlflow_run_id:
        try:
            Tracker(plan.tracking_uri, None).client.set_terminated(state.mlflow_run_id, status="KILLED")
        except Exception:  # noqa: BLE001 - the store may be unreachable; the run record still says STOPPED
            pass
    return state.update(status="STOPPED", phase="done", message="stopped by request", ended_at=time.time(),
                        resumable=state.can_resume())
