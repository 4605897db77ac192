"""Following a run through the root aggregator's events: reading them from its log stream, recording each round."""

from __future__ import annotations

import base64
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from flops_templates.flower_app.flops_app.events import EVENT_PREFIX  # how the aggregators print an event

from flops.plan import RunPlan
from flops.runstate import RunState


# Files the root aggregator sends through its log: the final model and what the model is logged with.
DELIVERED_FILES = {"final_model.npz", "input_example.npy", "root-aggregator-traceback.log"}


class RootEvents:
    """The root aggregator's events, from the lines of its log stream (FLOps may not reach the files of the root's
    host). Kept as this controller's own record: output/events.jsonl, and the files the root sends in output/."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def read(self, lines: list[str], rounds_recorded: int = 0) -> list[dict[str, Any]]:
        """The events among LINES; a round a resumed root sent again is skipped if ROUNDS_RECORDED has it."""
        events = []
        for line in lines:
            start = line.find(EVENT_PREFIX)  # Flower may put a log prefix before the printed text
            if start < 0:
                continue
            try:
                event = json.loads(line[start + len(EVENT_PREFIX):])
            except json.JSONDecodeError:
                continue  # a user's print that happens to start like an event
            if not isinstance(event, dict) or "event" not in event:
                continue
            if event["event"] == "file":
                self._save_file(event)
                continue
            if event.get("resent") and int(event.get("round", 0)) <= rounds_recorded:
                continue
            with open(self.output_dir / "events.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event) + "\n")
            events.append(event)
        return events

    def _save_file(self, event: dict[str, Any]) -> None:
        name = str(event.get("name", ""))
        if name not in DELIVERED_FILES:
            return  # only names FLOps asked for: the root never picks a path on this host
        tmp = self.output_dir / f".{name}.tmp"
        tmp.write_bytes(base64.b64decode(event["data"]))
        os.replace(tmp, self.output_dir / name)

    def local_copy(self, message: str) -> str:
        """MESSAGE with a root-host path of a file the root also sent (its traceback) replaced by this copy's."""
        match = re.search(r"\(traceback: ([^)]+)\)", message)
        if match and (self.output_dir / Path(match.group(1)).name).exists():
            return message.replace(match.group(1), str(self.output_dir / Path(match.group(1)).name))
        return message


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
