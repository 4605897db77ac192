"""Topology pictures: a PNG is written for flat, clustered and not-yet-assigned topologies."""

from __future__ import annotations

from pathlib import Path

import pytest

from flops.assignment import assign
from flops.topology import Topology, load_topology, topology_from_counts

pytest.importorskip("matplotlib")

from flops.topology_plot import draw_topology  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "topology",
    [
        load_topology(REPO / "examples/topologies/two-clusters.yaml"),
        assign(topology_from_counts(16, 4)),
        topology_from_counts(16, 4),
        topology_from_counts(5, 0),
    ],
    ids=["two-clusters", "sixteen-learners", "unassigned", "flat"],
)
def test_draw_topology_writes_a_png(topology: Topology, tmp_path: Path) -> None:
    path = draw_topology(topology, tmp_path / "plots" / "topology.png")
    assert path == tmp_path / "plots" / "topology.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


def test_draw_topology_with_bytes_per_link(tmp_path: Path) -> None:
    topology = assign(load_topology(REPO / "examples/topologies/min-cost.yaml"))
    path = draw_topology(topology, tmp_path / "t.png", bytes_per_link={"desk-0": 2.5e6, "campus": 1e6, "unknown": 1.0})
    assert path.read_bytes().startswith(PNG_MAGIC)
