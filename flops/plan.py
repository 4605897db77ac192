"""The run plan: one typed record of everything a run needs, written before anything starts."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from flops.config import RunConfig
from flops.topology import Topology


class LearnerSpec(BaseModel):
    """One learner: a SuperNode that trains on partition `partition_id` of `num_partitions`."""

    name: str
    partition_id: int
    num_partitions: int


class ClusterSpec(BaseModel):
    """One cluster aggregator: its own SuperLink for its learners, and a SuperNode of the root federation."""

    name: str
    index: int
    learners: list[LearnerSpec]
    cost_to_root: float = 0.0  # cost per MB on the cluster <-> root link
    learner_link_cost: float = 0.0  # mean cost per MB on this cluster's learner links

    @property
    def dir_name(self) -> str:
        return f"cluster-{self.index}"


class KubernetesTarget(BaseModel):
    """Where a kubernetes or podman-kube run's objects go; kept in the plan so every later command finds them."""

    namespace: str = "default"
    context: str | None = None  # kubeconfig context; None: the current one


class RunPlan(BaseModel):
    """What `flops submit` decided: source, app, environment, config and the topology to start."""

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
    image: str | None = None  # the FLOps image (from `flops build`) for container orchestrators
    tracking_uri: str
    learners: list[LearnerSpec]
    clusters: list[ClusterSpec] = []  # empty: flat FL, the learners join the root directly
    topology: Topology | None = None  # as assigned; drawn into MLflow
    task_module: str  # import name of the user's task module inside the app's user/ folder
    dependencies: list[str]
    insecure: bool = False  # --insecure: plain-text Flower links, no SuperNode authentication
    network: Literal["loopback", "namespaces"] = "loopback"  # local runs: one network namespace per host
    kubernetes: KubernetesTarget | None = None  # kubernetes and podman-kube runs only

    @property
    def hierarchical(self) -> bool:
        return bool(self.clusters)

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def output_dir(self) -> Path:
        """The controller's record of the root's events and the files it sent (final weights, input example)."""
        return self.run_dir / "output"

    def placed_at(self, host: str) -> tuple[str | None, int | None]:
        """Where the topology file put HOST ("root", "cluster-0", a learner's name): (host, port), None where it
        says nothing (the orchestrator chooses)."""
        if self.topology is None:
            return None, None
        if host == "root":
            return self.topology.host_of(self.topology.root)
        cluster = next((c for c in self.clusters if c.dir_name == host), None)
        return self.topology.host_of(cluster.name if cluster else host)

    def host_dir(self, host: str) -> Path:
        """Where the components of HOST ("root", "cluster-0", ...) keep their own files when that host is this
        machine (local and Docker runs); the controller does not read them."""
        return self.run_dir / "hosts" / host

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "plan.json").write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> RunPlan:
        return cls.model_validate_json((run_dir / "plan.json").read_text())


def new_run_id() -> str:
    """Sortable, unique and short: `r` + UTC time + 4 random hex digits."""
    return "r" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def plan_learners(count: int) -> list[LearnerSpec]:
    """Learner i trains on partition i of N, whichever cluster it ends up in."""
    return [LearnerSpec(name=f"learner-{i}", partition_id=i, num_partitions=count) for i in range(count)]


def plan_clusters(topology: Topology) -> tuple[list[LearnerSpec], list[ClusterSpec]]:
    """Learners (partition i = i-th learner of the topology) and, when hierarchical, their clusters."""
    learners = [
        LearnerSpec(name=node.name, partition_id=i, num_partitions=len(topology.learners))
        for i, node in enumerate(topology.learners)
    ]
    by_name = {spec.name: spec for spec in learners}
    costs = {node.name: node.link_costs for node in topology.learners}
    clusters = []
    for index, cluster in enumerate(topology.clusters):
        members = [by_name[name] for name in cluster.learners]
        link_costs = [costs[name].get(cluster.name, 0.0) for name in cluster.learners]
        clusters.append(ClusterSpec(
            name=cluster.name, index=index, learners=members, cost_to_root=cluster.cost_to_root,
            learner_link_cost=sum(link_costs) / len(link_costs) if link_costs else 0.0,
        ))
    return learners, clusters
