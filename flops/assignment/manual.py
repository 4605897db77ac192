"""Manual assignment: the clusters exactly as the topology file lists them."""

from __future__ import annotations

from typing import ClassVar

from flops.assignment.base import AssignmentStrategy
from flops.topology import Topology


class ManualAssignment(AssignmentStrategy):
    """Keeps the file's clusters; every learner must already be listed in exactly one, no cluster empty."""

    name: ClassVar[str] = "manual"

    def assign(self, topology: Topology, label_histograms: dict[str, list[int]] | None = None) -> dict[str, list[str]]:
        for i, cluster in enumerate(topology.clusters):
            if not cluster.learners:
                raise topology.config_error(f"clusters[{i}].learners", f"cluster '{cluster.name}' has no learners (assignment: manual)")
        listed = {name for cluster in topology.clusters for name in cluster.learners}
        missing = [name for name in topology.learner_names() if name not in listed]
        if topology.clusters and missing:
            raise topology.config_error("clusters", f"learner(s) {', '.join(missing)} in no cluster (assignment: manual)")
        return {cluster.name: list(cluster.learners) for cluster in topology.clusters}
