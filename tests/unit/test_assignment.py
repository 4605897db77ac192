"""Learner-to-cluster assignment strategies: the registry and each strategy's guarantees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flops.assignment import STRATEGIES, assign, cluster_label_kl, get_strategy
from flops.assignment.base import AssignmentStrategy
from flops.errors import ConfigError
from flops.topology import Topology, load_topology, topology_from_counts, topology_from_dict

REPO = Path(__file__).resolve().parents[2]


def sizes(topology: Topology) -> list[int]:
    return [len(c.learners) for c in topology.clusters]


def assert_partition(topology: Topology) -> None:
    """Every learner in exactly one cluster, no cluster empty."""
    placed = [name for c in topology.clusters for name in c.learners]
    assert sorted(placed) == sorted(topology.learner_names())
    assert all(c.learners for c in topology.clusters)


def counts_topology(learners: int, clusters: int, assignment: str) -> Topology:
    return topology_from_counts(learners, clusters, assignment=assignment)


def skewed_histograms(topology: Topology, classes: int = 10) -> dict[str, list[int]]:
    """Learner i holds mostly two classes picked by i mod 4, so round-robin clusters see few classes."""
    histograms = {}
    for i, name in enumerate(topology.learner_names()):
        counts = [1] * classes
        major = (2 * (i % 4)) % classes
        counts[major] += 60
        counts[(major + 1) % classes] += 30
        histograms[name] = counts
    return histograms


# Registry


def test_registry_names_every_strategy() -> None:
    assert set(STRATEGIES) == {"manual", "balanced", "min-comm-cost", "label-balance"}
    assert all(issubclass(cls, AssignmentStrategy) and STRATEGIES[cls.name] is cls for cls in STRATEGIES.values())


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown assignment strategy 'nearest' \(known: balanced, label-balance, manual, min-comm-cost\)"):
        get_strategy("nearest")


def test_get_strategy_accepts_underscores() -> None:
    assert get_strategy("label_balance").name == "label-balance"


def test_flat_topology_is_returned_as_is() -> None:
    flat = topology_from_counts(3, 0)
    assert assign(flat) is flat


# Manual


def test_manual_keeps_the_file() -> None:
    topology = load_topology(REPO / "examples/topologies/two-clusters.yaml")
    assigned = assign(topology)
    assert {c.name: c.learners for c in assigned.clusters} == {"edge-a": ["lab-0", "lab-1"], "edge-b": ["field-0", "field-1"]}
    assert assigned == topology


def test_manual_on_a_topology_left_to_assign_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.learners: cluster 'cluster-0' has no learners"):
        get_strategy("manual").assign(topology_from_counts(4, 2))


# Balanced


@pytest.mark.parametrize(("learners", "clusters"), [(4, 2), (7, 3), (10, 4), (5, 5), (1000, 7)])
def test_balanced_sizes_differ_by_at_most_one(learners: int, clusters: int) -> None:
    assigned = assign(counts_topology(learners, clusters, "balanced"))
    assert_partition(assigned)
    assert max(sizes(assigned)) - min(sizes(assigned)) <= 1


def test_balanced_is_round_robin_in_learner_order() -> None:
    assigned = assign(counts_topology(5, 2, "balanced"))
    assert assigned.clusters[0].learners == ["learner-0", "learner-2", "learner-4"]
    assert assigned.clusters[1].learners == ["learner-1", "learner-3"]


def test_balanced_keeps_pinned_learners_and_respects_capacity() -> None:
    data = {
        "learners": [{"name": f"l{i}"} for i in range(7)],
        "clusters": [{"name": "a", "learners": ["l5"]}, {"name": "b", "capacity": 1}, {"name": "c"}],
        "assignment": "balanced",
    }
    assigned = assign(topology_from_dict(data))
    assert_partition(assigned)
    assert {c.name: c.learners for c in assigned.clusters} == {"a": ["l2", "l4", "l5"], "b": ["l0"], "c": ["l1", "l3", "l6"]}


def test_assigning_twice_gives_the_same_topology() -> None:
    once = assign(counts_topology(9, 3, "balanced"))
    assert assign(once) == once


# Min-comm-cost


def cost_topology(link_costs: list[dict[str, float]], clusters: list[dict[str, Any]]) -> Topology:
    return topology_from_dict(
        {
            "learners": [{"name": f"l{i}", "link_costs": costs} for i, costs in enumerate(link_costs)],
            "clusters": clusters,
            "assignment": "min-comm-cost",
        }
    )


def total_cost(topology: Topology) -> float:
    return sum(topology.learners[topology.partition_id(n)].link_costs[c.name] for c in topology.clusters for n in c.learners)


def test_min_comm_cost_picks_the_cheap_aggregator() -> None:
    topology = cost_topology(
        [{"a": 1.0, "b": 5.0}, {"a": 5.0, "b": 1.0}, {"a": 1.0, "b": 5.0}, {"a": 5.0, "b": 1.0}],
        [{"name": "a"}, {"name": "b"}],
    )
    assigned = assign(topology)
    assert assigned.clusters[0].learners == ["l0", "l2"]
    assert assigned.clusters[1].learners == ["l1", "l3"]


def test_min_comm_cost_respects_the_default_capacity_and_lets_constrained_learners_choose_first() -> None:
    # All four prefer a; capacity is ceil(4/2) = 2. l3's alternative is dearest, l2's next: they keep a.
    topology = cost_topology(
        [{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.5}, {"a": 1.0, "b": 6.0}, {"a": 1.0, "b": 9.0}],
        [{"name": "a"}, {"name": "b"}],
    )
    assigned = assign(topology)
    assert assigned.clusters[0].learners == ["l2", "l3"]
    assert assigned.clusters[1].learners == ["l0", "l1"]
    assert total_cost(assigned) == 1 + 1 + 2 + 2.5


def test_min_comm_cost_respects_an_explicit_capacity() -> None:
    topology = cost_topology([{"a": 1.0, "b": 3.0}] * 5, [{"name": "a", "capacity": 1}, {"name": "b", "capacity": 4}])
    assigned = assign(topology)
    assert sizes(assigned) == [1, 4]


def test_min_comm_cost_treats_a_missing_link_as_unusable() -> None:
    topology = cost_topology([{"a": 1.0}, {"a": 0.5, "b": 0.6}, {"b": 2.0, "a": 1.5}, {"b": 9.0}], [{"name": "a"}, {"name": "b"}])
    assigned = assign(topology)
    assert assigned.cluster_of("l0") == "a"
    assert assigned.cluster_of("l3") == "b"
    assert_partition(assigned)


def test_min_comm_cost_without_any_costs_spreads_learners_evenly() -> None:
    assigned = assign(counts_topology(7, 3, "min-comm-cost"))
    assert_partition(assigned)
    assert max(sizes(assigned)) - min(sizes(assigned)) <= 1


def test_min_comm_cost_fills_a_cluster_nobody_prefers() -> None:
    # Capacity 3 each: a and b could take all 6 and leave c empty; l5's move to c adds the least cost (3 - 1).
    topology = cost_topology(
        [{"a": 1, "b": 2, "c": 9}] * 3 + [{"a": 2, "b": 1, "c": 4}] * 2 + [{"a": 2, "b": 1, "c": 3}],
        [{"name": "a", "capacity": 3}, {"name": "b", "capacity": 3}, {"name": "c", "capacity": 3}],
    )
    assigned = assign(topology)
    assert_partition(assigned)
    assert assigned.clusters[2].learners == ["l5"]


def test_min_comm_cost_without_a_link_to_a_free_cluster_names_the_learner() -> None:
    topology = cost_topology([{"a": 1.0}, {"a": 1.0}, {"a": 1.0}, {"b": 1.0}], [{"name": "a"}, {"name": "b"}])
    with pytest.raises(ConfigError, match=r"learners\[\d\]\.link_costs: learner 'l\d' has no link cost to a cluster with room \(b\)"):
        assign(topology)


def test_total_capacity_below_the_learners_is_an_error() -> None:
    topology = cost_topology([{}] * 5, [{"name": "a", "capacity": 2}, {"name": "b", "capacity": 2}])
    with pytest.raises(ConfigError, match=r"clusters\[\*\]\.capacity: total capacity 4 is below the 5 learners"):
        assign(topology)


def test_min_cost_example_assigns_each_learner_to_its_site() -> None:
    assigned = assign(load_topology(REPO / "examples/topologies/min-cost.yaml"))
    assert {c.name: c.learners for c in assigned.clusters} == {
        "campus": ["desk-0", "desk-1"],
        "factory": ["desk-2", "plc-0"],
        "vehicles": ["truck-0", "truck-1"],
    }


# Label balance


def mean_kl(topology: Topology, histograms: dict[str, list[int]]) -> float:
    return float(np.mean(list(cluster_label_kl(topology, histograms).values())))


@pytest.mark.parametrize("clusters", [2, 4])
def test_label_balance_beats_balanced_on_a_skewed_split(clusters: int) -> None:
    topology = counts_topology(8, clusters, "label-balance")
    histograms = skewed_histograms(topology)
    label_balanced = assign(topology, histograms)
    round_robin = assign(counts_topology(8, clusters, "balanced"))
    assert_partition(label_balanced)
    assert mean_kl(label_balanced, histograms) < mean_kl(round_robin, histograms)
    assert max(sizes(label_balanced)) <= 8 // clusters


def test_label_balance_scales_to_a_thousand_learners() -> None:
    topology = counts_topology(1000, 10, "label-balance")
    rng = np.random.default_rng(7)
    histograms = {name: rng.multinomial(200, rng.dirichlet([0.1] * 10)).tolist() for name in topology.learner_names()}
    assigned = assign(topology, histograms)
    assert_partition(assigned)
    assert sizes(assigned) == [100] * 10
    assert mean_kl(assigned, histograms) < mean_kl(assign(counts_topology(1000, 10, "balanced")), histograms) / 10


def test_label_balance_keeps_pinned_learners() -> None:
    data = {
        "learners": [{"name": f"l{i}"} for i in range(8)],
        "clusters": [{"name": "a", "learners": ["l0", "l4"]}, {"name": "b"}],
        "assignment": "label-balance",
    }
    topology = topology_from_dict(data)
    assigned = assign(topology, skewed_histograms(topology))
    assert {"l0", "l4"} <= set(assigned.clusters[0].learners)
    assert_partition(assigned)


def test_label_balance_is_deterministic() -> None:
    topology = counts_topology(50, 5, "label-balance")
    rng = np.random.default_rng(3)
    histograms = {name: rng.multinomial(50, rng.dirichlet([0.2] * 6)).tolist() for name in topology.learner_names()}
    assert assign(topology, histograms) == assign(topology, histograms)


def test_label_balance_without_histograms_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^flags: assignment: 'label-balance' needs each learner's label histogram"):
        assign(counts_topology(4, 2, "label-balance"))


@pytest.mark.parametrize(
    ("histograms", "message"),
    [
        ({"learner-0": [1, 2], "learner-1": [1, 2], "learner-2": [3, 4]}, "no histogram from learner(s) learner-3"),
        ({"learner-0": [1], "learner-1": [1, 2], "learner-2": [1, 2], "learner-3": [1, 2]}, "one length > 0"),
        ({"learner-0": [-1, 2], "learner-1": [1, 2], "learner-2": [1, 2], "learner-3": [1, 2]}, "non-negative"),
        ({f"learner-{i}": [0, 0] for i in range(4)}, "every histogram is empty"),
        ({**{f"learner-{i}": [1, 0] for i in range(4)}, "ghost": [1, 0]}, "unknown learner(s) ghost"),
    ],
)
def test_bad_histograms_are_named(histograms: dict[str, list[int]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        assign(counts_topology(4, 2, "label-balance"), histograms)
    assert str(caught.value).startswith("flags: label_histograms: ")
    assert message in str(caught.value)


def test_cluster_label_kl_is_zero_for_a_cluster_matching_the_global_mix() -> None:
    topology = topology_from_dict(
        {
            "learners": [{"name": n} for n in ("x", "y", "z", "w")],
            "clusters": [{"name": "mixed", "learners": ["x", "y"]}, {"name": "mixed-too", "learners": ["z", "w"]}],
        }
    )
    kl = cluster_label_kl(topology, {"x": [10, 0], "y": [0, 10], "z": [5, 5], "w": [5, 5]})
    assert kl == pytest.approx({"mixed": 0.0, "mixed-too": 0.0})
    skewed = cluster_label_kl(topology, {"x": [10, 0], "y": [10, 0], "z": [0, 10], "w": [0, 10]})
    assert skewed == pytest.approx({"mixed": np.log(2), "mixed-too": np.log(2)})
    assert cluster_label_kl(topology_from_counts(2, 0), {}) == {}
