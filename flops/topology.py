"""The federation's shape read from a user's topology file: root, cluster aggregators and learners."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from flops.config import read_user_text
from flops.errors import ConfigError

# Names end up in node configs, container names and log lines: keep them to one safe token.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Letters, digits, '.', '_' or '-'; at most 63 characters.")]
Cost = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def is_ip_address(host: str) -> bool:
    """Whether a `host:` value is an IP address (v4 or v6), not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(f"'{value}' is neither an IP address nor a host name") from None
        return value.lower()


Host = Annotated[str, AfterValidator(_host), Field(description="An IP address or a DNS name (RFC 1123).")]
Port = Annotated[int, Field(ge=1, le=65535)]
HOSTNAME_LABEL = "kubernetes.io/hostname"
HOST_DOC = ("The host this component runs on: what the others dial to reach it (an IP address or a name). "
            "Components with the same host share it, as on one machine.")


class Toleration(BaseModel):
    """A Kubernetes toleration: lets a pod onto nodes with a matching taint (e.g. dedicated edge nodes)."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0, description="NoExecute only: how long the pod stays after the taint appears.")

    def manifest(self) -> dict[str, str | int]:
        """The toleration as it appears in a pod spec."""
        fields = {"key": self.key, "operator": self.operator, "value": self.value, "effect": self.effect,
                  "tolerationSeconds": self.toleration_seconds}
        return {k: v for k, v in fields.items() if v is not None}


class Placement(BaseModel):
    """Where an orchestrator that schedules onto nodes (kubernetes) may put a component."""

    model_config = ConfigDict(extra="forbid")

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the component's node must carry, e.g. {kubernetes.io/arch: arm64} or "
        "{kubernetes.io/hostname: pi-7}; empty: the scheduler chooses (the multi-arch image runs on either arch).",
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the component tolerates.")


class LearnerNode(Placement):
    """One learner (a SuperNode that trains on its own data partition)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    host: Host | None = Field(None, description=HOST_DOC)
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels, e.g. {arch: arm64, site: lab}.")
    link_costs: dict[str, Cost] = Field(
        default_factory=dict,
        description="Cost per MB between this learner and an aggregator, keyed by cluster name (or the root's name).",
    )


class ClusterNode(Placement):
    """One cluster aggregator between its learners and the root (its SuperLink is placed beside it)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    host: Host | None = Field(None, description=HOST_DOC + " The cluster's SuperLink and its aggregator share it.")
    port: Port | None = Field(None, description="The port the cluster's SuperLink listens on (default: a free one).")
    learners: list[str] = Field(
        default_factory=list,
        description="Learner names. With assignment 'manual' every learner is listed in one cluster; "
        "with another strategy these learners are pinned and the rest are placed by the strategy.",
    )
    cost_to_root: Cost = Field(0.0, description="Cost per MB on the cluster <-> root link.")
    capacity: StrictInt | None = Field(None, ge=1, description="Most learners this cluster takes (default: ceil(learners / clusters)).")
    labels: dict[str, str] = Field(default_factory=dict)


def _error(loc: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """A model-level validation error that remembers which field it is about (for the one-line message)."""
    return PydanticCustomError("topology", "{path}: {detail}", {"path": field_path(loc), "detail": message, "loc": loc})


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class Topology(BaseModel):
    """Root, clusters and learners; learners[i] trains on partition i of len(learners). No clusters = flat FL."""

    model_config = ConfigDict(extra="forbid")

    root: Name = "root"
    root_host: Host | None = Field(None, description="The host of the root SuperLink and aggregator. " + HOST_DOC)
    root_port: Port | None = Field(None, description="The port the root SuperLink listens on (default: a free one).")
    clusters: list[ClusterNode] = Field(default_factory=list, description="Cluster aggregators; empty means flat FL.")
    learners: list[LearnerNode] = Field(min_length=1, description="Order gives partition ids: learners[i] trains on partition i.")
    assignment: str = Field("manual", description="Learner-to-cluster strategy: manual, balanced, min-comm-cost or label-balance.")

    # Where the topology came from, for error messages raised after loading (e.g. by a strategy).
    _source: str = PrivateAttr("topology")

    @field_validator("assignment")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from flops.assignment import STRATEGIES  # the registry imports this module

        canonical = value.strip().lower().replace("_", "-")
        if canonical not in STRATEGIES:
            raise ValueError(f"unknown strategy '{value}' (known: {', '.join(sorted(STRATEGIES))})")
        return canonical

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        learner_names = self._check_names()
        cluster_names = {c.name for c in self.clusters}
        aggregators = cluster_names | {self.root}
        for i, learner in enumerate(self.learners):
            for target in learner.link_costs:
                if target not in aggregators:
                    known = _listing(sorted(cluster_names) + [self.root])
                    raise _error(("learners", i, "link_costs", target), f"unknown aggregator '{target}' (known: {known})")
        if len(self.clusters) > len(self.learners):
            raise _error(("clusters",), f"{len(self.clusters)} clusters for {len(self.learners)} learners; each cluster needs a learner")
        self._check_cluster_members(learner_names)
        self._check_superlink_addresses()
        return self

    def _check_superlink_addresses(self) -> None:
        """Two SuperLinks cannot listen on one host and port."""
        taken = {(self.root_host, self.root_port): ("root_port",)} if self.root_port else {}
        for i, cluster in enumerate(self.clusters):
            if cluster.port is None:
                continue
            where = (cluster.host, cluster.port)
            if where in taken:
                raise _error(("clusters", i, "port"), f"{cluster.host or 'this host'}:{cluster.port} is already the "
                             f"SuperLink address of {field_path(taken[where])}")
            taken[where] = ("clusters", i, "port")

    def placed_hosts(self) -> list[tuple[str, str]]:
        """(field, host) of every `host:` the file gives, e.g. ("clusters[0].host", "10.0.0.5")."""
        found = [("root_host", self.root_host)] + [(f"clusters[{i}].host", c.host) for i, c in enumerate(self.clusters)]
        found += [(f"learners[{i}].host", learner.host) for i, learner in enumerate(self.learners)]
        return [(name, host) for name, host in found if host is not None]

    def placed_ports(self) -> list[str]:
        """The fields that give a SuperLink's port."""
        return (["root_port"] if self.root_port else []) + [f"clusters[{i}].port" for i, c in enumerate(self.clusters) if c.port]

    def host_of(self, name: str) -> tuple[str | None, int | None]:
        """(host, port) the file gives the root (NAME == root), a cluster or a learner; None where it says nothing."""
        if name == self.root:
            return self.root_host, self.root_port
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster.host, cluster.port
        return next(((learner.host, None) for learner in self.learners if learner.name == name), (None, None))

    def _check_names(self) -> set[str]:
        seen: dict[str, str] = {self.root: "root"}
        for kind, nodes in (("learners", self.learners), ("clusters", self.clusters)):
            for i, node in enumerate(nodes):
                if node.name in seen:
                    raise _error((kind, i, "name"), f"name '{node.name}' is already used by {seen[node.name]}")
                seen[node.name] = f"{kind}[{i}]"
        return {learner.name for learner in self.learners}

    def _check_cluster_members(self, learner_names: set[str]) -> None:
        home: dict[str, str] = {}
        for i, cluster in enumerate(self.clusters):
            if not cluster.learners and self.assignment == "manual":
                raise _error(("clusters", i, "learners"), f"cluster '{cluster.name}' has no learners (assignment: manual)")
            if cluster.capacity is not None and len(cluster.learners) > cluster.capacity:
                raise _error(("clusters", i, "learners"), f"{len(cluster.learners)} learners exceed capacity {cluster.capacity}")
            for j, name in enumerate(cluster.learners):
                if name not in learner_names:
                    raise _error(("clusters", i, "learners", j), f"unknown learner '{name}' (known: {_listing(sorted(learner_names))})")
                if name in home:
                    other = home[name]
                    where = "listed twice" if other == cluster.name else f"in clusters '{other}' and '{cluster.name}'"
                    raise _error(("clusters", i, "learners"), f"learner '{name}' is {where}")
                home[name] = cluster.name
        if self.clusters and self.assignment == "manual":
            missing = [learner.name for learner in self.learners if learner.name not in home]
            if missing:
                raise _error(("clusters",), f"learner(s) {_listing(missing)} in no cluster; with assignment 'manual' every learner is in one")

    def placement_of(self, name: str) -> Placement | None:
        """The node selector and tolerations of the learner or cluster called NAME (or the root); a `host:` is the
        Kubernetes node's name (the label kubernetes.io/hostname), unless the node selector says otherwise."""
        host = self.host_of(name)[0]
        hostname = {HOSTNAME_LABEL: host} if host else {}
        if name == self.root:
            return Placement(node_selector=hostname) if host else None
        for node in [*self.learners, *self.clusters]:
            if node.name == name:
                return Placement(node_selector={**hostname, **node.node_selector}, tolerations=node.tolerations)
        return None

    @property
    def is_flat(self) -> bool:
        """True when learners talk to the root directly (no cluster aggregators)."""
        return not self.clusters

    @property
    def source(self) -> str:
        """The file (or 'flags', 'topology') this topology was read from, for error messages."""
        return self._source

    def config_error(self, field: str, message: str) -> ConfigError:
        """A one-line ConfigError naming this topology's source and FIELD."""
        return ConfigError(f"{self._source}: {field}: {message}")

    def learner_names(self) -> list[str]:
        """Learner names in partition order."""
        return [learner.name for learner in self.learners]

    def cluster_of(self, learner: str) -> str | None:
        """The cluster LEARNER is in, or None (flat FL, or not yet assigned)."""
        self.partition_id(learner)
        for cluster in self.clusters:
            if learner in cluster.learners:
                return cluster.name
        return None

    def partition_id(self, learner: str) -> int:
        """LEARNER's index in learners: the data partition it trains on."""
        for i, node in enumerate(self.learners):
            if node.name == learner:
                return i
        raise self.config_error("learners", f"unknown learner '{learner}' (known: {_listing(self.learner_names())})")

    def with_assignment(self, assignment: dict[str, list[str]]) -> Topology:
        """A copy whose clusters hold exactly ASSIGNMENT's learners (cluster name -> learner names), validated."""
        cluster_names = [c.name for c in self.clusters]
        unknown = sorted(set(assignment) - set(cluster_names))
        if unknown:
            raise self.config_error("clusters", f"assignment names unknown cluster(s) {_listing(unknown)}")
        placed = {name for names in assignment.values() for name in names}
        missing = [name for name in self.learner_names() if name not in placed]
        if self.clusters and missing:
            raise self.config_error("clusters", f"assignment leaves learner(s) {_listing(missing)} in no cluster")
        data = self.model_dump(exclude_unset=True)
        data["clusters"] = [
            {**c.model_dump(exclude_unset=True), "learners": list(assignment.get(c.name, []))} for c in self.clusters
        ]
        for i, cluster in enumerate(data["clusters"]):
            if not cluster["learners"]:
                raise self.config_error(f"clusters[{i}].learners", f"assignment leaves cluster '{cluster['name']}' empty")
        return topology_from_dict(data, self._source)


def field_path(loc: tuple[str | int, ...]) -> str:
    """('clusters', 1, 'learners') -> 'clusters[1].learners'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _yaml_line(node: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the YAML node at LOC (or of its deepest existing parent)."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if child is None:  # a key that should not be there: point at the key itself
                child = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _one_line(exc: ValidationError, origin: str, yaml_root: yaml.Node | None) -> str:
    err = exc.errors()[0]
    ctx = err.get("ctx") or {}
    if err["type"] == "topology":
        loc, message = tuple(ctx["loc"]), f"{ctx['path']}: {ctx['detail']}"
    else:
        loc = tuple(err["loc"])
        message = f"{field_path(loc)}: {err['msg'].removeprefix('Value error, ')}"
    line = _yaml_line(yaml_root, loc) if yaml_root is not None else None
    return f"{origin}{f':{line}' if line else ''}: {message}"


def topology_from_dict(data: Any, origin: str = "topology", yaml_root: yaml.Node | None = None) -> Topology:
    """Validate DATA (as read from YAML or JSON) into a Topology; ConfigError with one line naming ORIGIN and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'learners' (and optionally 'root', 'clusters', 'assignment')")
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, origin, yaml_root)) from None
    topology._source = origin
    return topology


def load_topology(path: Path) -> Topology:
    """Read and validate a topology YAML file; ConfigError names the file, line and field."""
    path = Path(path)
    text = read_user_text(path, "topology")
    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    return topology_from_dict(data, str(path), root_node)


def topology_from_counts(learners: int, clusters: int, assignment: str = "balanced") -> Topology:
    """learner-0.. and cluster-0.. with clusters' learners left for ASSIGNMENT to place; clusters=0 gives flat FL."""
    if learners < 1:
        raise ConfigError(f"flags: learners: {learners} learners; need at least 1")
    if clusters < 0:
        raise ConfigError(f"flags: clusters: {clusters} clusters; use 0 for flat FL")
    data = {
        "learners": [{"name": f"learner-{i}"} for i in range(learners)],
        "clusters": [{"name": f"cluster-{k}"} for k in range(clusters)],
        "assignment": assignment if clusters else "manual",
    }
    return topology_from_dict(data, "flags")


def default_capacity(topology: Topology) -> int:
    """ceil(learners / clusters): the balanced share used when a cluster sets no capacity."""
    return math.ceil(len(topology.learners) / max(1, len(topology.clusters)))


def topology_json_schema() -> str:
    """The published JSON schema of the topology file (docs/schema/topology.schema.json)."""
    return json.dumps(Topology.model_json_schema(), indent=2, sort_keys=True) + "\n"
