"""Balanced assignment: round-robin in learner order, so cluster sizes differ by at most one."""

from __future__ import annotations

from typing import ClassVar

from flops.assignment.base import AssignmentStrategy, capacities, in_partition_order, pinned
from flops.topology import Topology


class BalancedAssignment(AssignmentStrategy):
    """Each unplaced learner, in partition order, joins the smallest cluster with room (ties: file order).

    With nothing pinned and no capacities this is plain round-robin: learner i -> cluster i mod K.
    """

    name: ClassVar[str] = "balanced"

    def assign(self, topology: Topology, label_histograms: dict[str, list[int]] | None = None) -> dict[str, list[str]]:
        if topology.is_flat:
            return {}
        room = capacities(topology)
        result = pinned(topology)
        placed = {name for names in result.values() for name in names}
        order = list(result)
        for learner in topology.learner_names():
            if learner in placed:
                continue
            open_clusters = [c for c in order if len(result[c]) < room[c]]
            target = min(open_clusters, key=lambda c: (len(result[c]), order.index(c)))
            result[target].append(learner)
        return in_partition_order(topology, result)
