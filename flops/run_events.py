"""Following a run through the root aggregator's events: tailing them and recording each round."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flops.plan import RunPlan
from flops.runstate import RunState


class EventTail:
    """Reads complete new lines of the root aggregator's events.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


class ClusterEvents:
    """Tails every cluster's per-global-round event logs (output/cluster-i/round-g/events.jsonl)."""

    def __init__(self, plan: RunPlan) -> None:
        self.dirs = {c.name: plan.cluster_dir(c) for c in plan.clusters}
        self.tails: dict[Path, EventTail] = {}

    def read(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for name, cluster_dir in self.dirs.items():
            for path in sorted(cluster_dir.glob("round-*/events.jsonl"), key=lambda p: int(p.parent.name[6:])):
                tail = self.tails.setdefault(path, EventTail(path))
                found += [(name, event) for event in tail.read()]
        return found


def record_round(state: RunState, metrics: dict[str, float], event: dict[str, Any],
                  cluster_names: dict[str, str]) -> None:
    clusters = {name: dict(values) for name, values in state.clusters.items()}
    for index, values in (event.get("clusters") or {}).items():
        acc = clusters.setdefault(cluster_names.get(index, index), {})
        for key in ("bytes_to_root", "bytes_from_root", "bytes-learners-to-cluster", "bytes-cluster-to-learners"):
            acc[key.replace("-", "_")] = acc.get(key.replace("-", "_"), 0.0) + float(values.get(key, 0.0))
    state.update(
        rounds_completed=int(event["round"]), latest_metrics=metrics, clusters=clusters,
        bytes_to_root=state.bytes_to_root + int(event.get("bytes_to_root", 0)),
        bytes_total=state.bytes_total + int(metrics.get("bytes_total", 0)),
        comm_cost=state.comm_cost + float(event.get("cost", 0.0)),
        history=[*state.history, {"round": event["round"], **event.get("central", {})}],
    )


def learner_log_hint(plan: RunPlan, message: str) -> str:
    match = re.match(r"learner (\d+):", message)
    name = f"learner-{match.group(1)}" if match else "superlink"
    return f"{message} (log: {plan.logs_dir / (name + '.log')})"
