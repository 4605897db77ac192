"""Following a run through the root aggregator's events: tailing them and recording each round."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

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


CHECKPOINT_FILE = "checkpoint.npz"  # written by the root aggregator after every global round


def checkpoint_path(plan: RunPlan) -> Path:
    return plan.output_dir / CHECKPOINT_FILE


def final_model_is_finite(plan: RunPlan) -> bool:
    """Whether every floating array of the final model is finite (a NaN model is never registered)."""
    path = plan.output_dir / "final_model.npz"
    if not path.exists():
        return True  # nothing to check; logging the model reports the missing file
    with np.load(path) as npz:
        return all(npz[k].dtype.kind not in "fc" or bool(np.isfinite(npz[k]).all()) for k in npz.files)


def trackable(event: dict[str, Any]) -> dict[str, Any]:
    """The event without metrics that are null or non-finite (a learner's NaN loss): MLflow gets numbers only."""
    cleaned = dict(event)
    for group in ("central", "train", "evaluate"):
        values = event.get(group)
        if isinstance(values, dict):
            cleaned[group] = {k: v for k, v in values.items()
                              if isinstance(v, (int, float)) and math.isfinite(float(v))}
    return cleaned


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
        last_round_missing=list(event.get("missing", [])), last_round_rejected=dict(event.get("rejected", {})),
        rejected_updates=dict(event.get("rejected_total", state.rejected_updates)),
    )


def learner_log_hint(plan: RunPlan, message: str) -> str:
    match = re.match(r"learner (\d+):", message)
    name = f"learner-{match.group(1)}" if match else "superlink"
    return f"{message} (log: {plan.logs_dir / (name + '.log')})"
