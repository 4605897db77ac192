"""Topology files: loading, every validation error as one line naming file and field, counts, the published schema."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from flops.errors import ConfigError
from flops.topology import Topology, load_topology, topology_from_counts, topology_from_dict, topology_json_schema

REPO = Path(__file__).resolve().parents[2]


def four_learners(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "learners": [{"name": f"l{i}"} for i in range(4)],
        "clusters": [{"name": "edge-a", "learners": ["l0", "l1"]}, {"name": "edge-b", "learners": ["l2", "l3"]}],
    }
    data.update(overrides)
    return data


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        topology_from_dict(data, "topology.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_loads_the_two_cluster_example() -> None:
    topology = load_topology(REPO / "examples/topologies/two-clusters.yaml")
    assert [c.name for c in topology.clusters] == ["edge-a", "edge-b"]
    assert topology.cluster_of("field-1") == "edge-b"
    assert topology.partition_id("field-0") == 2
    assert topology.learners[0].labels == {"arch": "amd64", "site": "lab"}
    assert topology.learners[2].link_costs == {"edge-a": 1.5, "edge-b": 0.2}
    assert topology.clusters[1].cost_to_root == 5.0
    assert not topology.is_flat
    assert topology.source.endswith("two-clusters.yaml")


def test_loads_the_min_cost_example_with_clusters_left_to_assign() -> None:
    topology = load_topology(REPO / "examples/topologies/min-cost.yaml")
    assert topology.assignment == "min-comm-cost"
    assert all(not c.learners for c in topology.clusters)
    assert topology.clusters[2].capacity == 3
    assert topology.cluster_of("desk-0") is None


def test_a_topology_without_clusters_is_flat() -> None:
    topology = topology_from_dict({"learners": [{"name": "a"}, {"name": "b"}]})
    assert topology.is_flat
    assert topology.cluster_of("b") is None
    assert topology.root == "root"


def test_unknown_learner_in_a_cluster() -> None:
    data = four_learners()
    data["clusters"][1]["learners"] = ["l2", "l3", "l9"]
    assert error_of(data) == "topology.yaml: clusters[1].learners[2]: unknown learner 'l9' (known: l0, l1, l2, l3)"


def test_learner_in_two_clusters() -> None:
    data = four_learners()
    data["clusters"][1]["learners"] = ["l1", "l2", "l3"]
    assert error_of(data) == "topology.yaml: clusters[1].learners: learner 'l1' is in clusters 'edge-a' and 'edge-b'"


def test_learner_listed_twice_in_one_cluster() -> None:
    data = four_learners()
    data["clusters"][0]["learners"] = ["l0", "l1", "l0"]
    assert error_of(data) == "topology.yaml: clusters[0].learners: learner 'l0' is listed twice"


def test_link_cost_to_an_unknown_aggregator() -> None:
    data = four_learners()
    data["learners"][2]["link_costs"] = {"edge-a": 1.0, "edge-c": 2.0}
    assert error_of(data) == "topology.yaml: learners[2].link_costs.edge-c: unknown aggregator 'edge-c' (known: edge-a, edge-b, root)"


def test_link_cost_to_the_root_is_allowed() -> None:
    data = four_learners()
    data["learners"][0]["link_costs"] = {"root": 3.0}
    assert topology_from_dict(data).learners[0].link_costs == {"root": 3.0}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["learners"].append({"name": "l1"}), "learners[4].name: name 'l1' is already used by learners[1]"),
        (lambda d: d["clusters"].append({"name": "edge-a", "learners": []}), "clusters[2].name: name 'edge-a' is already used by clusters[0]"),
        (lambda d: d["clusters"][1].update(name="l0"), "clusters[1].name: name 'l0' is already used by learners[0]"),
        (lambda d: d["clusters"][0].update(name="root"), "clusters[0].name: name 'root' is already used by root"),
        (lambda d: d["learners"][3].update(name="hub"), "learners[3].name: name 'hub' is already used by root"),
    ],
    ids=["learner-twice", "cluster-twice", "cluster-named-like-learner", "cluster-named-like-root", "learner-named-like-root"],
)
def test_duplicate_names(change: Any, expected: str) -> None:
    data = four_learners(root="hub") if "hub" in expected else four_learners()
    change(data)
    assert error_of(data) == f"topology.yaml: {expected}"


def test_empty_cluster_with_manual_assignment() -> None:
    data = four_learners()
    data["clusters"].append({"name": "edge-c"})
    assert error_of(data) == "topology.yaml: clusters[2].learners: cluster 'edge-c' has no learners (assignment: manual)"


def test_empty_clusters_are_fine_when_a_strategy_assigns() -> None:
    data = four_learners(assignment="balanced")
    data["clusters"] = [{"name": "edge-a"}, {"name": "edge-b", "learners": ["l3"]}]
    topology = topology_from_dict(data)
    assert topology.cluster_of("l3") == "edge-b"
    assert topology.cluster_of("l0") is None


def test_manual_assignment_must_place_every_learner() -> None:
    data = four_learners()
    data["clusters"][1]["learners"] = ["l2"]
    assert error_of(data) == "topology.yaml: clusters: learner(s) l3 in no cluster; with assignment 'manual' every learner is in one"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["learners"][1].update(link_costs={"edge-a": -0.5}), "learners[1].link_costs.edge-a"),
        (lambda d: d["clusters"][0].update(cost_to_root=-1), "clusters[0].cost_to_root"),
    ],
)
def test_negative_costs(change: Any, field: str) -> None:
    data = four_learners()
    change(data)
    assert error_of(data) == f"topology.yaml: {field}: Input should be greater than or equal to 0"


def test_capacity_below_one() -> None:
    data = four_learners()
    data["clusters"][0]["capacity"] = 0
    assert error_of(data) == "topology.yaml: clusters[0].capacity: Input should be greater than or equal to 1"


def test_capacity_below_the_listed_learners() -> None:
    data = four_learners()
    data["clusters"][0]["capacity"] = 1
    assert error_of(data) == "topology.yaml: clusters[0].learners: 2 learners exceed capacity 1"


def test_more_clusters_than_learners() -> None:
    data = {"learners": [{"name": "a"}], "clusters": [{"name": "c0"}, {"name": "c1"}], "assignment": "balanced"}
    assert error_of(data) == "topology.yaml: clusters: 2 clusters for 1 learners; each cluster needs a learner"


def test_unknown_strategy_lists_the_known_ones() -> None:
    assert error_of(four_learners(assignment="random")) == (
        "topology.yaml: assignment: unknown strategy 'random' (known: balanced, label-balance, manual, min-comm-cost)"
    )


def test_strategy_names_accept_underscores() -> None:
    assert topology_from_dict(four_learners(assignment="min_comm_cost")).assignment == "min-comm-cost"


def test_unknown_field_and_missing_learners() -> None:
    data = four_learners()
    data["clusters"][0]["learner"] = ["l0"]
    assert error_of(data) == "topology.yaml: clusters[0].learner: Extra inputs are not permitted"
    assert error_of({"clusters": []}) == "topology.yaml: learners: Field required"
    assert error_of({"learners": []}).startswith("topology.yaml: learners: List should have at least 1 item")


def test_bad_name_characters() -> None:
    data = four_learners()
    data["learners"][0]["name"] = "has space"
    assert error_of(data).startswith("topology.yaml: learners[0].name: String should match pattern")


def test_file_errors_carry_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        learners:
          - name: l0
          - name: l1
        clusters:
          - name: a
            learners: [l0, l1]
          - name: b
            learners: [l1]
        """,
    )
    with pytest.raises(ConfigError, match=r"topology\.yaml:8: clusters\[1\]\.learners: learner 'l1' is in clusters 'a' and 'b'$"):
        load_topology(path)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "learners:\n  - name: l0\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"topology\.yaml:4: invalid YAML"):
        load_topology(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="topology file not found"):
        load_topology(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_topology(write(tmp_path, "- a\n- b\n"))


def test_topology_from_counts() -> None:
    topology = topology_from_counts(5, 2)
    assert topology.learner_names() == [f"learner-{i}" for i in range(5)]
    assert [c.name for c in topology.clusters] == ["cluster-0", "cluster-1"]
    assert all(not c.learners for c in topology.clusters)
    assert topology.assignment == "balanced"
    assert topology.partition_id("learner-3") == 3


def test_topology_from_counts_without_clusters_is_flat() -> None:
    topology = topology_from_counts(3, 0)
    assert topology.is_flat
    assert len(topology.learners) == 3


@pytest.mark.parametrize(("learners", "clusters", "field"), [(0, 0, "learners"), (2, 3, "clusters"), (2, -1, "clusters")])
def test_topology_from_counts_rejects_impossible_counts(learners: int, clusters: int, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^flags: {field}: "):
        topology_from_counts(learners, clusters)


def test_partition_id_of_an_unknown_learner() -> None:
    with pytest.raises(ConfigError, match="unknown learner 'zz'"):
        topology_from_counts(2, 0).partition_id("zz")


def test_with_assignment_returns_a_validated_copy() -> None:
    topology = topology_from_counts(4, 2)
    assigned = topology.with_assignment({"cluster-0": ["learner-0", "learner-3"], "cluster-1": ["learner-1", "learner-2"]})
    assert assigned.cluster_of("learner-3") == "cluster-0"
    assert topology.cluster_of("learner-3") is None
    assert assigned.source == "flags"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ({"cluster-0": ["learner-0", "learner-1"], "cluster-1": ["learner-2"]}, "leaves learner(s) learner-3 in no cluster"),
        ({"cluster-0": ["learner-0", "learner-1", "learner-2", "learner-3"]}, "leaves cluster 'cluster-1' empty"),
        ({"cluster-0": ["learner-0", "learner-1"], "cluster-1": ["learner-1", "learner-2", "learner-3"]}, "'learner-1' is in clusters"),
        ({"cluster-9": ["learner-0"]}, "unknown cluster(s) cluster-9"),
    ],
)
def test_with_assignment_rejects_a_broken_assignment(assignment: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        topology_from_counts(4, 2).with_assignment(assignment)
    assert message in str(caught.value)


def test_committed_schema_matches_the_model() -> None:
    assert (REPO / "docs/schema/topology.schema.json").read_text() == topology_json_schema()


def test_schema_describes_the_model() -> None:
    assert set(Topology.model_json_schema()["properties"]) == {"root", "root_host", "root_port", "clusters", "learners", "assignment"}


def test_a_binary_topology_file_is_one_config_error(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match=rf"^{path}: not a UTF-8 text file \(byte 0\); expected a YAML topology file"):
        load_topology(path)
