"""Preparing a run: everything that can reject bad input, before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from flops.assignment import assign
from flops.augment import AppSpec, augment_app
from flops.config import RunConfig
from flops.credentials import LOOPBACK_NAMES, refuse_insecure_network
from flops.contract import ContractSpec, check_contract, run_import_check
from flops.dependencies import read_dependencies
from flops.environment import ensure_run_env
from flops.errors import ContractError, FlopsError
from flops.intake import fetch_source
from flops.orchestrators import orchestrator_class
from flops.plan import RunPlan, new_run_id, plan_clusters
from flops.runstate import RunState, runs_dir
from flops.topology import Topology, load_topology, topology_from_counts


class Progress(Protocol):
    def phase(self, state: RunState) -> None: ...
    def round(self, state: RunState) -> None: ...


class SilentProgress:
    def phase(self, state: RunState) -> None:
        pass

    def round(self, state: RunState) -> None:
        pass


class StopRequested(FlopsError):
    """SIGTERM (from `flops stop`) or SIGINT arrived while the run was going."""



def raise_stop(signum: int, _frame: Any) -> None:
    raise StopRequested(f"stopped by request ({signal.Signals(signum).name})")



def prepare_run(
    source: str, ref: str | None, config: RunConfig, workdir: Path, orchestrator: str,
    tracking_uri: str, progress: Progress | None = None, topology_file: Path | None = None,
    image: str | None = None, insecure: bool = False, allow_insecure_network: bool = False,
) -> RunPlan:
    """Everything that can reject bad input, before anything starts. Raises BadInputError subclasses."""
    progress = progress or SilentProgress()
    workdir = workdir.resolve()
    orchestrator_class(orchestrator)  # an unknown name fails here, before any work
    if insecure:  # every orchestrator binds loopback today; topology hosts will add theirs here
        refuse_insecure_network(list(LOOPBACK_NAMES), allow_insecure_network)
    topology = _topology(config, topology_file)
    config = config.model_copy(update={"learners": len(topology.learners), "clusters": len(topology.clusters)})
    run_id = new_run_id()
    run_dir = runs_dir(workdir) / run_id
    state = RunState(run_id=run_id, run_dir=run_dir, rounds=config.rounds, tracking_uri=tracking_uri,
                     started_at=time.time(), controller_pid=os.getpid())
    (run_dir / "logs").mkdir(parents=True)
    run_dir.chmod(0o700)  # keys, logs and the plan are the operator's alone
    previous = signal.signal(signal.SIGTERM, raise_stop)  # `flops stop` while fetching or installing
    try:
        plan = _prepare(source, ref, config, topology, workdir, orchestrator, tracking_uri, state, progress)
        if image or insecure:
            plan = plan.model_copy(update={"image": image, "insecure": insecure})
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
