"""A PNG line chart of one central-evaluation quantity per global round, round 0 being the initial model."""

from __future__ import annotations

from pathlib import Path

from flops.topology_plot import _pyplot


def draw_curve(points: list[tuple[int, float]], quantity: str, title: str, path: Path) -> Path:
    """`quantity` (accuracy, loss) against global round, titled with what ran; returns path."""
    plt = _pyplot()
    rounds = [int(r) for r, _ in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [v for _, v in points], marker="o")
    ax.set_title(f"{title}\ncentral {quantity} per global round (round 0 = initial model)", fontsize=10)
    ax.set_xlabel("global round")
    ax.set_ylabel(f"central {quantity}")
    ax.set_xticks(rounds if len(rounds) <= 20 else rounds[:: max(1, len(rounds) // 10)])
    if quantity == "accuracy":
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
