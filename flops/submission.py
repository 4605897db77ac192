"""A submission end to end: source -> contract -> environment -> app -> deployment -> tracking."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from flops.augment import AppSpec, augment_app
from flops.config import RunConfig
from flops.assignment import assign
from flops.contract import ContractSpec, check_contract, run_import_check
from flops.dependencies import read_dependencies
from flops.environment import ensure_run_env
from flops.errors import ContractError, FlopsError, RunFailedError
from flops.flower_control import FlowerControl
from flops.intake import fetch_source
from flops.orchestrators import get_orchestrator, orchestrator_class
from flops.plan import RunPlan, new_run_id, plan_clusters
from flops.runstate import TERMINAL, RunState, load_state, runs_dir
from flops.topology import Topology, load_topology, topology_from_counts
from flops.tracking import Tracker, log_final_model

POLL_INTERVAL_S = 0.5  # how often the controller looks at events, processes and Flower's run status
MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}


class Progress(Protocol):
    def phase(self, state: RunState) -> None: ...
    def round(self, state: RunState) -> None: ...


class _Silent:
    def phase(self, state: RunState) -> None:
        pass

    def round(self, state: RunState) -> None:
        pass


class StopRequested(FlopsError):
    """SIGTERM (from `flops stop`) or SIGINT arrived while the run was going."""


def prepare_run(
    source: str, ref: str | None, config: RunConfig, workdir: Path, orchestrator: str,
    tracking_uri: str, progress: Progress | None = None, topology_file: Path | None = None,
    image: str | None = None,
) -> RunPlan:
    """Everything that can reject bad input, before anything starts. Raises BadInputError subclasses."""
    progress = progress or _Silent()
    workdir = workdir.resolve()
    orchestrator_class(orchestrator)  # an unknown name fails here, before any work
    topology = _topology(config, topology_file)
    config = config.model_copy(update={"learners": len(topology.learners), "clusters": len(topology.clusters)})
    run_id = new_run_id()
    run_dir = runs_dir(workdir) / run_id
    state = RunState(run_id=run_id, run_dir=run_dir, rounds=config.rounds, tracking_uri=tracking_uri,
                     started_at=time.time(), controller_pid=os.getpid())
    (run_dir / "logs").mkdir(parents=True)
    previous = signal.signal(signal.SIGTERM, _raise_stop)  # `flops stop` while fetching or installing
    try:
        plan = _prepare(source, ref, config, topology, workdir, orchestrator, tracking_uri, state, progress)
        if image:
            plan = plan.model_copy(update={"image": image})
            plan.save()
        return plan
    except (StopRequested, KeyboardInterrupt):
        state.update(status="STOPPED", message="stopped by request", ended_at=time.time())
        raise
    except BaseException as exc:
        state.update(status="FAILED", phase="rejected", message=str(exc), ended_at=time.time())
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _topology(config: RunConfig, topology_file: Path | None) -> Topology:
    """The topology file if given, else --clusters K over --learners N (K = 0: flat)."""
    if topology_file is not None:
        return load_topology(topology_file)
    return topology_from_counts(config.learners, config.clusters, assignment=config.assignment)


def _label_histograms(spec: ContractSpec, python: Path, config: RunConfig) -> dict[str, list[int]]:
    done = subprocess.run(
        [str(python), "-m", "flops.label_probe", str(spec.code_dir), spec.task_module, str(config.learners),
         str(config.training.batch_size)],
        capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ContractError(f"{spec.task_label}: computing label histograms for label-balance failed: {last}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])["histograms"]
    return {f"learner-{i}": row for i, row in enumerate(rows)}


def _prepare(source: str, ref: str | None, config: RunConfig, topology: Topology, workdir: Path,
             orchestrator: str, tracking_uri: str, state: RunState, progress: Progress) -> RunPlan:
    cache_dir = workdir / "cache"
    progress.phase(state.update(phase="fetching source"))
    src = fetch_source(source, ref, cache_dir)
    state.update(source_url=src.url, commit=src.commit)
    progress.phase(state.update(phase="checking contract"))
    spec = check_contract(src.path)
    dependencies = read_dependencies(src.path)
    progress.phase(state.update(phase="preparing environment"))
    python = ensure_run_env(dependencies, cache_dir, state.run_dir / "logs" / "environment.log")
    progress.phase(state.update(phase="import check"))
    run_import_check(spec, python)
    app_dir = augment_app(
        AppSpec(source_url=src.url, source_name=src.name, commit=src.commit, code_dir=spec.code_dir,
                task_module=spec.task_module, dependencies=dependencies),
        config, state.run_dir / "app",
    )
    if not topology.is_flat:
        histograms = None
        if topology.assignment == "label-balance":
            progress.phase(state.update(phase="reading label histograms"))
            histograms = _label_histograms(spec, python, config)
            histograms = {node.name: histograms[f"learner-{i}"] for i, node in enumerate(topology.learners)}
        topology = assign(topology, histograms)
    learners, clusters = plan_clusters(topology)
    plan = RunPlan(
        run_id=state.run_id, run_dir=state.run_dir, source_url=src.url, source_ref=ref, commit=src.commit,
        source_name=src.name, app_dir=app_dir, python=python, config=config, orchestrator=orchestrator,
        tracking_uri=tracking_uri, learners=learners, clusters=clusters, topology=topology,
        task_module=spec.task_module,
        dependencies=dependencies,
    )
    plan.save()
    return plan


def _raise_stop(signum: int, _frame: Any) -> None:
    raise StopRequested(f"stopped by request ({signal.Signals(signum).name})")


def execute_run(plan: RunPlan, progress: Progress | None = None) -> RunState:
    """Deploy, train, track, and tear down. Always returns the final state; never leaves processes."""
    progress = progress or _Silent()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
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


class _EventTail:
    """Reads complete new lines of the root aggregator's events.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


class _ClusterEvents:
    """Tails every cluster's per-global-round event logs (output/cluster-i/round-g/events.jsonl)."""

    def __init__(self, plan: RunPlan) -> None:
        self.dirs = {c.name: plan.cluster_dir(c) for c in plan.clusters}
        self.tails: dict[Path, _EventTail] = {}

    def read(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for name, cluster_dir in self.dirs.items():
            for path in sorted(cluster_dir.glob("round-*/events.jsonl"), key=lambda p: int(p.parent.name[6:])):
                tail = self.tails.setdefault(path, _EventTail(path))
                found += [(name, event) for event in tail.read()]
        return found


def _record_round(state: RunState, metrics: dict[str, float], event: dict[str, Any],
                  cluster_names: dict[str, str]) -> None:
    clusters = {name: dict(values) for name, values in state.clusters.items()}
    for index, values in (event.get("clusters") or {}).items():
        acc = clusters.setdefault(cluster_names.get(index, index), {})
        for key in ("bytes_to_root", "bytes_from_root", "bytes-learners-to-cluster", "bytes-cluster-to-learners"):
            acc[key.replace("-", "_")] = acc.get(key.replace("-", "_"), 0.0) + float(values.get(key, 0.0))
    state.update(
        rounds_completed=int(event["round"]), latest_metrics=metrics, clusters=clusters,
        bytes_to_root=state.bytes_to_root + int(event.get("bytes_to_root", 0)),
        bytes_total=state.bytes_total + int(metrics.get("bytes_total", 0)),
        comm_cost=state.comm_cost + float(event.get("cost", 0.0)),
        history=[*state.history, {"round": event["round"], **event.get("central", {})}],
    )


def _learner_log_hint(plan: RunPlan, message: str) -> str:
    match = re.match(r"learner (\d+):", message)
    name = f"learner-{match.group(1)}" if match else "superlink"
    return f"{message} (log: {plan.logs_dir / (name + '.log')})"


def root_overrides(plan: RunPlan) -> dict[str, str | int | float]:
    """Run config for the root aggregator: where to write, and in a hierarchy, its K cluster nodes."""
    overrides: dict[str, str | int | float] = {"flops-output-dir": str(plan.output_dir)}
    costs = [c.cost_to_root for c in plan.clusters] + [c.learner_link_cost for c in plan.clusters]
    if plan.hierarchical:
        k = len(plan.clusters)
        # Clusters evaluate their learners every local round; the root evaluates centrally.
        overrides.update({"fraction-evaluate": 0.0, "min-train-nodes": k, "min-evaluate-nodes": 0,
                          "min-available-nodes": k})
        if any(costs):
            overrides["flops-link-costs"] = json.dumps(
                {"clusters": {str(c.index): [c.cost_to_root, c.learner_link_cost] for c in plan.clusters}})
    return overrides


def _train(plan: RunPlan, state: RunState, orchestrator: Any, deployment: Any, tracker: Tracker,
           progress: Progress) -> None:
    control = FlowerControl(deployment.control_address)
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
    tail = _EventTail(plan.events_path)
    cluster_events = _ClusterEvents(plan)
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
                _record_round(state, tracker.log_round(event, cluster_names), event, cluster_names)
                progress.round(state)
                deadline = time.monotonic() + cfg.round_timeout_s
            elif event["event"] == "failed":
                raise RunFailedError(_learner_log_hint(plan, event["message"]))
            elif event["event"] == "finished":
                finished = True
                state.update(stopped_early=event.get("stopped_early", ""))
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
            raise RunFailedError(f"{dead[0]} exited unexpectedly (log: {orchestrator.logs(deployment, dead[0])})")
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
