"""Min-comm-cost assignment: each learner to its cheapest aggregator with room, most constrained learners first."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from flops.assignment.base import AssignmentStrategy, capacities, in_partition_order, pinned
from flops.topology import Topology


def link_cost_matrix(topology: Topology) -> np.ndarray:
    """learners x clusters cost per MB. A missing link costs +inf; a learner that gives no cluster costs may go anywhere (0).

    cost_to_root is left out on purpose: each cluster sends one aggregate to the root whatever its size, so that
    cost does not depend on the assignment.
    """
    names = [c.name for c in topology.clusters]
    rows = []
    for learner in topology.learners:
        known = {c: v for c, v in learner.link_costs.items() if c in names}
        rows.append([known.get(c, math.inf) for c in names] if known else [0.0] * len(names))
    return np.array(rows, dtype=float).reshape(len(topology.learners), len(names))


class MinCommCostAssignment(AssignmentStrategy):
    """Greedy by regret: learners whose best and second-best links differ most choose first.

    Capacity is each cluster's own or ceil(N/K). Regrets are recomputed whenever a cluster fills up. A cluster
    left empty takes the learner whose move to it adds the least cost.
    """

    name: ClassVar[str] = "min-comm-cost"

    def assign(self, topology: Topology, label_histograms: dict[str, list[int]] | None = None) -> dict[str, list[str]]:
        if topology.is_flat:
            return {}
        clusters = [c.name for c in topology.clusters]
        cost = link_cost_matrix(topology)
        room = np.array([capacities(topology)[c] for c in clusters])
        home = {name: k for k, members in enumerate(pinned(topology).values()) for name in members}
        placed = np.full(len(topology.learners), -1)
        for i, name in enumerate(topology.learner_names()):
            placed[i] = home.get(name, -1)
        load = np.bincount(placed[placed >= 0], minlength=len(clusters))
        while (free := np.flatnonzero(placed < 0)).size:
            open_mask = load < room
            order = self._by_regret(topology, cost, free, open_mask)
            for i in order:
                k = self._cheapest(cost[i], load, open_mask)
                placed[i] = k
                load[k] += 1
                if load[k] >= room[k]:
                    break  # a cluster filled up: the remaining learners' regrets change
        self._fill_empty(topology, cost, placed, load, home)
        result: dict[str, list[str]] = {c: [] for c in clusters}
        for i, name in enumerate(topology.learner_names()):
            result[clusters[placed[i]]].append(name)
        return in_partition_order(topology, result)

    @staticmethod
    def _by_regret(topology: Topology, cost: np.ndarray, free: np.ndarray, open_mask: np.ndarray) -> list[int]:
        open_cost = np.where(open_mask, cost[free], math.inf)
        best = open_cost.min(axis=1)
        stuck = free[np.isinf(best)]
        if stuck.size:
            i = int(stuck[0])
            open_names = [c.name for c, ok in zip(topology.clusters, open_mask) if ok]
            raise topology.config_error(
                f"learners[{i}].link_costs",
                f"learner '{topology.learners[i].name}' has no link cost to a cluster with room ({', '.join(open_names)})",
            )
        if open_cost.shape[1] > 1:
            second = np.partition(open_cost, 1, axis=1)[:, 1]
            regret = second - best
        else:
            regret = np.zeros_like(best)
        # Stable sort: equal regrets keep partition order.
        return [int(free[j]) for j in np.argsort(-regret, kind="stable")]

    @staticmethod
    def _cheapest(costs: np.ndarray, load: np.ndarray, open_mask: np.ndarray) -> int:
        candidates = np.flatnonzero(open_mask)
        best = costs[candidates].min()
        tied = candidates[costs[candidates] == best]
        return int(tied[np.argmin(load[tied])])  # equal cost: the emptier cluster, then file order

    @staticmethod
    def _fill_empty(topology: Topology, cost: np.ndarray, placed: np.ndarray, load: np.ndarray, home: dict[str, int]) -> None:
        movable = np.array([name not in home for name in topology.learner_names()])
        for k in np.flatnonzero(load == 0):
            sources_ok = load[placed] > 1
            with np.errstate(invalid="ignore"):  # inf - inf on links that do not exist; masked just below
                extra = cost[:, k] - cost[np.arange(len(placed)), placed]
            extra = np.where(movable & sources_ok & np.isfinite(cost[:, k]), extra, math.inf)
            i = int(np.argmin(extra))
            if not np.isfinite(extra[i]):
                name = topology.clusters[k].name
                raise topology.config_error(
                    f"clusters[{k}]", f"cluster '{name}' gets no learner: none has a link cost to it and a cluster to spare"
                )
            load[placed[i]] -= 1
            placed[i] = k
            load[k] += 1
