"""Learner-to-cluster assignment strategies by name, and applying a topology's strategy to it."""

from __future__ import annotations

from flops.assignment.balanced import BalancedAssignment
from flops.assignment.base import AssignmentStrategy
from flops.assignment.label_balance import LabelBalanceAssignment
from flops.assignment.label_mix import cluster_label_kl
from flops.assignment.manual import ManualAssignment
from flops.assignment.min_comm_cost import MinCommCostAssignment
from flops.errors import ConfigError
from flops.topology import Topology

STRATEGIES: dict[str, type[AssignmentStrategy]] = {
    strategy.name: strategy
    for strategy in (ManualAssignment, BalancedAssignment, MinCommCostAssignment, LabelBalanceAssignment)
}

__all__ = ["STRATEGIES", "AssignmentStrategy", "assign", "cluster_label_kl", "get_strategy"]


def get_strategy(name: str) -> AssignmentStrategy:
    """The strategy registered under NAME ('_' and '-' are the same); an unknown name lists the known ones."""
    try:
        return STRATEGIES[name.strip().lower().replace("_", "-")]()
    except KeyError:
        raise ConfigError(f"unknown assignment strategy '{name}' (known: {', '.join(sorted(STRATEGIES))})") from None


def assign(topology: Topology, label_histograms: dict[str, list[int]] | None = None) -> Topology:
    """TOPOLOGY with its clusters' learners filled by its own strategy (topology.assignment); flat stays as is."""
    if topology.is_flat:
        return topology
    placement = get_strategy(topology.assignment).assign(topology, label_histograms)
    return topology.with_assignment(placement)
