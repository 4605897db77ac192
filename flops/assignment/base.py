"""The learner-to-cluster assignment plug-in point and what every strategy shares (capacities, pinned learners)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from flops.topology import Topology, default_capacity


class AssignmentStrategy(ABC):
    """Places learners into a topology's clusters.

    assign() returns cluster name -> learner names with every learner in exactly one cluster and no cluster
    empty. Learners a non-manual topology already lists under a cluster are pinned there.
    """

    name: ClassVar[str]

    @abstractmethod
    def assign(self, topology: Topology, label_histograms: dict[str, list[int]] | None = None) -> dict[str, list[str]]:
        """Cluster name -> learner names (in partition order) for TOPOLOGY's clusters."""


def capacities(topology: Topology) -> dict[str, int]:
    """Each cluster's capacity: its own, else ceil(N/K) (raised to its pinned count); ConfigError if all cannot fit."""
    share = default_capacity(topology)
    result = {c.name: c.capacity if c.capacity is not None else max(share, len(c.learners)) for c in topology.clusters}
    if topology.clusters and sum(result.values()) < len(topology.learners):
        raise topology.config_error(
            "clusters[*].capacity",
            f"total capacity {sum(result.values())} is below the {len(topology.learners)} learners; raise or drop a capacity",
        )
    return result


def pinned(topology: Topology) -> dict[str, list[str]]:
    """Cluster name -> the learners the file already lists there (kept by every strategy)."""
    return {c.name: list(c.learners) for c in topology.clusters}


def in_partition_order(topology: Topology, assignment: dict[str, list[str]]) -> dict[str, list[str]]:
    """ASSIGNMENT with each cluster's learners sorted by partition id, so results read the same every time."""
    order = {name: i for i, name in enumerate(topology.learner_names())}
    return {cluster: sorted(names, key=order.__getitem__) for cluster, names in assignment.items()}
