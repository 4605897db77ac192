"""A PNG picture of a topology: root on top, cluster aggregators in the middle, learners below, links labelled."""

from __future__ import annotations

from pathlib import Path

from flops.errors import FlopsError
from flops.topology import Topology

_ROOT_Y, _CLUSTER_Y, _LEARNER_Y = 2.0, 1.0, 0.0
_COLORS = {"root": "#c0392b", "cluster": "#2e86c1", "learner": "#27ae60", "unassigned": "#95a5a6"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise FlopsError("drawing a topology needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _edge_label(cost: float | None, megabytes: float | None) -> str:
    parts = []
    if cost is not None:
        parts.append(f"{cost:g}/MB")
    if megabytes is not None:
        parts.append(f"{megabytes:.3g} MB")
        if cost is not None:
            parts.append(f"= {cost * megabytes:.3g}")
    return "\n".join(parts)


def _layout(topology: Topology) -> tuple[dict[str, tuple[float, float]], list[tuple[str, str]]]:
    """Node positions and (child, parent) edges; learners sit under their cluster, unassigned ones at the right."""
    pos: dict[str, tuple[float, float]] = {}
    edges: list[tuple[str, str]] = []
    if topology.is_flat:
        row = topology.learner_names()
        groups: list[tuple[str, list[str]]] = [(topology.root, row)]
    else:
        groups = [(c.name, list(c.learners)) for c in topology.clusters]
        placed = {name for _, members in groups for name in members}
        loose = [name for name in topology.learner_names() if name not in placed]
        if loose:
            groups.append(("", loose))
    x = 0.0
    for parent, members in groups:
        width = max(1, len(members))
        for j, name in enumerate(members):
            pos[name] = (x + j, _LEARNER_Y)
            if parent:
                edges.append((name, parent))
        if not topology.is_flat and parent:
            pos[parent] = (x + (width - 1) / 2, _CLUSTER_Y)
            edges.append((parent, topology.root))
        x += width + 0.6
    total = x - 0.6
    pos[topology.root] = ((total - 1) / 2, _ROOT_Y)
    return pos, edges


def draw_topology(topology: Topology, path: Path, bytes_per_link: dict[str, float] | None = None) -> Path:
    """Draw TOPOLOGY to the PNG at PATH and return PATH.

    Edges carry their cost per MB where the topology gives one; BYTES_PER_LINK (keyed by the lower node of a link:
    a learner for its uplink, a cluster for its link to the root) adds the traffic in MB and its cost.
    """
    plt = _pyplot()
    path = Path(path)
    pos, edges = _layout(topology)
    learners = {node.name: node for node in topology.learners}
    clusters = {node.name: node for node in topology.clusters}
    n_learners = len(topology.learners)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * n_learners + 0.6 * len(clusters) + 1), 5.0), dpi=110)
    for child, parent in edges:
        (x0, y0), (x1, y1) = pos[child], pos[parent]
        ax.plot([x0, x1], [y0, y1], color="#7f8c8d", linewidth=1.2, zorder=1)
        if child in learners:
            cost = learners[child].link_costs.get(parent)
        else:
            node = clusters[child]
            cost = node.cost_to_root if ("cost_to_root" in node.model_fields_set or node.cost_to_root) else None
        megabytes = bytes_per_link[child] / 1e6 if bytes_per_link and child in bytes_per_link else None
        label = _edge_label(cost, megabytes)
        if label:
            # Learner links are labelled near the learner, where the fan-out leaves room.
            t = 0.3 if child in learners else 0.5
            ax.text(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, label, fontsize=7, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}, zorder=3)
    linked = {child for child, _ in edges}
    for name, (x, y) in pos.items():
        kind = "root" if name == topology.root else "cluster" if name in clusters else "learner"
        if kind == "learner" and name not in linked:
            kind = "unassigned"
        bottom_row = kind in ("learner", "unassigned")
        ax.scatter([x], [y], s=320 if bottom_row else 520, color=_COLORS[kind], zorder=2, edgecolors="white")
        ax.text(x, y - 0.17 if bottom_row else y + 0.17, name, fontsize=8, ha="center", va="top" if bottom_row else "bottom",
                rotation=30 if bottom_row and n_learners > 10 else 0, zorder=4)
    title = "flat" if topology.is_flat else f"{len(clusters)} clusters, assignment: {topology.assignment}"
    ax.set_title(f"{n_learners} learners, {title}", fontsize=10)
    ax.set_ylim(_LEARNER_Y - 0.7, _ROOT_Y + 0.45)
    ax.set_xlim(min(x for x, _ in pos.values()) - 0.8, max(x for x, _ in pos.values()) + 0.8)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
