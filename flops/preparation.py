"""Preparing a run: everything that can reject bad input, before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from flops.assignment import assign
from flops.augment import AppSpec, augment_app
from flops.config import RunConfig
from flops.contract import ContractSpec, ProbeResult, check_contract, remembered_import_check
from flops.contract.flower_app import run_config_defaults
from flops.dependencies import read_declared_dependencies
from flops.environment import ensure_run_env, lock_file
from flops.errors import BadInputError, ConfigError, ContractError, FlopsError
from flops.intake import Source, fetch_source
from flops.credentials import LOOPBACK_NAMES, refuse_insecure_network
from flops.orchestrators import EXPORTERS, orchestrator_class
from flops.orchestrators.kubernetes import check_namespace
from flops.orchestrators.netns import SUBNET_POOL, check_namespaces_usable
from flops.plan import KubernetesTarget, RunPlan, new_run_id, plan_clusters
from flops.runstate import RunState, process_start_time, runs_dir
from flops.topology import Topology, load_topology, topology_from_counts
from flops.workdir import cache_dir


class Progress(Protocol):
    def phase(self, state: RunState) -> None: ...
    def round(self, state: RunState) -> None: ...
    def warn(self, message: str) -> None: ...
    def note(self, message: str) -> None: ...


class SilentProgress:
    def phase(self, state: RunState) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def round(self, state: RunState) -> None:
        pass


class AugmentedSource(BaseModel):
    """What an image of an augmented app needs to know about its source."""

    app_dir: Path
    name: str
    url: str
    commit: str
    dependencies: list[str]


class StopRequested(FlopsError):
    """SIGTERM (from `flops stop`) or SIGINT arrived while the run was going."""


def raise_stop(signum: int, _frame: Any) -> None:
    raise StopRequested(f"stopped by request ({signal.Signals(signum).name})")


class RunRequest(BaseModel):
    """What a user asked for (`flops submit`, `flops export`): the input prepare_run checks and turns into a plan.

    `image` is a ready FLOps image. `kubernetes` (namespace, context) is for the kubernetes and podman-kube
    orchestrators only; `network` "namespaces" for the local one only (a network namespace per host).
    """

    source: str
    ref: str | None = None
    config: RunConfig
    workdir: Path
    orchestrator: str = "local"
    tracking_uri: str
    topology_file: Path | None = None
    image: str | None = None
    insecure: bool = False
    allow_insecure_network: bool = False
    kubernetes: KubernetesTarget | None = None
    network: Literal["loopback", "namespaces"] = "loopback"


def prepare_run(request: RunRequest, progress: Progress | None = None,
                build_image: Callable[[RunPlan], str] | None = None) -> RunPlan:
    """Everything that can reject bad input, before anything starts. Raises BadInputError subclasses.

    Without request.image, `build_image`, when given, makes one from the prepared plan (the image step, passed
    in because preparation comes before it). Input refused here leaves no run behind.
    """
    source, ref, config, orchestrator = request.source, request.ref, request.config, request.orchestrator
    insecure, kubernetes, network = request.insecure, request.kubernetes, request.network
    progress = progress or SilentProgress()
    workdir = request.workdir.resolve()
    if not insecure and not orchestrator_class(orchestrator).carries_credentials:  # an unknown name fails here too
        raise ConfigError(f"--orchestrator {orchestrator} does not carry the run's TLS material and SuperNode keys "
                          "yet: pass --insecure (plain-text Flower links inside the cluster)")
    if kubernetes is not None:
        if orchestrator not in EXPORTERS:
            raise ConfigError(f"--namespace/--kube-context: only for {' and '.join(sorted(EXPORTERS))} runs; "
                              f"--orchestrator {orchestrator} starts no Kubernetes objects")
        check_namespace(kubernetes.namespace)
    if network == "namespaces":
        if orchestrator != "local":
            raise ConfigError(f"--network namespaces: only for --orchestrator local (--orchestrator {orchestrator} "
                              "places its components itself)")
        check_namespaces_usable()
    topology = _topology(config, request.topology_file)
    orchestrator_class(orchestrator).check_placement(topology, network)
    if insecure:
        hosts = list(LOOPBACK_NAMES) if network == "loopback" else [f"{SUBNET_POOL} (one network namespace per host)"]
        refuse_insecure_network([*hosts, *(host for _, host in topology.placed_hosts())], request.allow_insecure_network)
    if topology.is_flat and config.hierarchy_options_given():
        given = ", ".join(f"{name} = {getattr(config, name)}" for name in config.hierarchy_options_given())
        raise ConfigError(f"{given}: applies to hierarchical runs only; this run is flat "
                          "(set clusters / --clusters, or a --topology with clusters, or drop it)")
    config = config.model_copy(update={"learners": len(topology.learners), "clusters": len(topology.clusters)})
    run_id = new_run_id()
    run_dir = runs_dir(workdir) / run_id
    state = RunState(run_id=run_id, run_dir=run_dir, rounds=config.rounds, tracking_uri=request.tracking_uri,
                     started_at=time.time(), controller_pid=os.getpid(),
                     controller_started=process_start_time(os.getpid()))
    (run_dir / "logs").mkdir(parents=True)
    run_dir.chmod(0o700)  # keys, logs and the plan are the operator's alone
    previous = signal.signal(signal.SIGTERM, raise_stop)  # `flops stop` while fetching or installing
    try:
        plan = _prepare(source, ref, config, topology, workdir, orchestrator, request.tracking_uri, state, progress)
        if request.image:
            plan = plan.model_copy(update={"image": request.image})
        elif build_image is not None:
            progress.phase(state.update(phase="building image"))
            plan = plan.model_copy(update={"image": build_image(plan)})
        plan = plan.model_copy(update={"insecure": insecure, "network": network,
                                       "kubernetes": kubernetes or (KubernetesTarget() if orchestrator in EXPORTERS else None)})
        plan.save()
        return plan
    except (StopRequested, KeyboardInterrupt):
        state.update(status="STOPPED", message="stopped by request", ended_at=time.time())
        raise
    except BadInputError:
        shutil.rmtree(run_dir, ignore_errors=True)  # refused input: nothing ran, nothing to list
        raise
    except BaseException as exc:
        state.update(status="FAILED", message=str(exc), ended_at=time.time())  # phase says where it failed
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


class CheckedSource(BaseModel):
    """A source that passed every check `flops validate` and `flops submit` share, and its run environment."""

    source: Source
    spec: ContractSpec
    python: Path
    probe: ProbeResult
    dependencies: list[str]
    warnings: list[str]  # one line each: requirements FLOps replaced
    lock: Path  # the resolved package set of the run env


def source_label(src: Source) -> str:
    """How messages name the source: its URL and the folder inside it, never FLOps' cache path."""
    return f"{src.url}{'/' + src.subdir if src.subdir and not src.url.endswith(src.subdir) else ''}"


def check_source(src: Source, cache_dir: Path, env_log: Path | None, num_partitions: int, batch_size: int,
                 on_phase: Callable[[str], None] = lambda phase: None) -> CheckedSource:
    """Static contract check, dependencies, run environment and import check: the same for validate and submit."""
    on_phase("checking contract")
    label = source_label(src)
    try:
        spec = check_contract(src.path, label)
        declared = read_declared_dependencies(src.path)
        on_phase("preparing environment")
        python = ensure_run_env(declared.requirements, cache_dir, env_log, declared.origins)
        on_phase("import check")
        probe = remembered_import_check(spec, python, num_partitions, batch_size, src.commit, cache_dir)
    except ContractError as exc:  # paths inside the checkout are the source's paths
        raise ContractError(str(exc).replace(str(src.path), label)) from None
    return CheckedSource(source=src, spec=spec, python=python, probe=probe, dependencies=declared.requirements,
                         warnings=declared.warnings, lock=lock_file(python))


def _with_app_config(config: RunConfig, app_config: dict[str, Any]) -> RunConfig:
    """CONFIG with a Flower app's own config values for every field neither the config file nor a flag set."""
    data = config.model_dump()
    for dotted, value in run_config_defaults(app_config).items():
        *parents, leaf = dotted.split(".")
        owner, node = config, data
        for key in parents:
            owner, node = getattr(owner, key), node[key]
        if leaf not in owner.model_fields_set:
            node[leaf] = value
    try:
        updated = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"pyproject.toml [tool.flwr.app.config]: {exc.errors()[0]['msg']}") from None
    return config if updated == config else updated


def _prepare(source: str, ref: str | None, config: RunConfig, topology: Topology, workdir: Path,
             orchestrator: str, tracking_uri: str, state: RunState, progress: Progress) -> RunPlan:
    cache = cache_dir(workdir)
    progress.phase(state.update(phase="fetching source"))
    src = fetch_source(source, ref, cache)
    state.update(source_url=src.url, commit=src.commit)
    checked = check_source(src, cache, state.run_dir / "logs" / "environment.log", config.learners,
                           config.training.batch_size, lambda phase: progress.phase(state.update(phase=phase)))
    for warning in checked.warnings:
        progress.warn(warning)
    spec, python, dependencies = checked.spec, checked.python, checked.dependencies
    shutil.copyfile(checked.lock, state.run_dir / "logs" / "requirements.lock")  # tracking logs logs/
    config = _with_app_config(config, spec.app_config)
    state.update(rounds=config.rounds)
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
    return plan


def validate_source(source: str, ref: str | None, cache: Path) -> CheckedSource:
    """`flops validate`: fetch, then the same checks as a submit (static, dependencies, import check)."""
    return check_source(fetch_source(source, ref, cache), cache, None, num_partitions=2, batch_size=32)


def augment_source(source: str, ref: str | None, config: RunConfig, cache: Path, out_dir: Path,
                   force: bool = False) -> AugmentedSource:
    """Fetch, check and augment SOURCE into out_dir, which must be empty or missing unless `force`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: is a file, not a directory for the app")
    if not force and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: exists and is not empty; pass --force to replace it")
    src = fetch_source(source, ref, cache)
    spec = check_contract(src.path, source_label(src))
    dependencies = read_declared_dependencies(src.path).requirements
    app_dir = augment_app(
        AppSpec(source_url=src.url, source_name=src.name, commit=src.commit, code_dir=spec.code_dir,
                task_module=spec.task_module, dependencies=dependencies),
        config, out_dir,
    )
    return AugmentedSource(app_dir=app_dir, name=src.name, url=src.url, commit=src.commit, dependencies=dependencies)
