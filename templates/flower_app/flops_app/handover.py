"""The hand-over between a cluster's aggregator and its cluster's Flower run, through a folder of their host.

One cluster run serves the whole federation (its ServerApp and its learners' warm workers stay up across global
rounds). For global round N the aggregator writes `round-N/initial.npz`, then `round-N/request.json` naming the
cluster run it is meant for; that run's ServerApp takes it, runs the local rounds and writes `round-N/`'s
`final_model.npz`, then `cluster_result.json` (or a "failed" event in `round-N/events.jsonl`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REQUEST = "request.json"
RESULT = "cluster_result.json"
CLUSTER_RUN = "cluster-run.json"  # the aggregator's record of the cluster run it uses (survives its restart)
POLL_S = 0.05


@dataclass(frozen=True)
class Request:
    global_round: int
    folder: Path
    last: bool  # the root's last round: the cluster run ends after it
    ask: str  # this asking of the round: a round asked again (a restarted aggregator) is computed again


def round_folder(base: Path, global_round: int) -> Path:
    return base / f"round-{global_round}"


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)  # the other side never reads half a file


def post_request(base: Path, global_round: int, cluster_run: int, last: bool) -> Path:
    """Ask the cluster run for global round N's local rounds (its initial.npz is already in the folder)."""
    folder = round_folder(base, global_round)
    (folder / RESULT).unlink(missing_ok=True)  # a round asked again (a retried message) is computed again
    _write_json(folder / REQUEST, {"global_round": global_round, "cluster_run": cluster_run, "last": last,
                                   "ask": uuid.uuid4().hex})
    return folder


def next_request(base: Path, cluster_run: int, done: set[str], idle_s: float) -> Request | None:
    """The lowest global round asked of this cluster run and not answered yet (DONE holds the answered asks);
    None after idle_s without one."""
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:
        waiting = []
        for path in base.glob(f"round-*/{REQUEST}"):
            try:
                asked = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if asked["cluster_run"] == cluster_run and asked["ask"] not in done:
                waiting.append(Request(int(asked["global_round"]), path.parent, bool(asked["last"]), str(asked["ask"])))
        if waiting:
            return min(waiting, key=lambda r: r.global_round)
        time.sleep(POLL_S)
    return None


def remembered_run(base: Path) -> int | None:
    try:
        return int(json.loads((base / CLUSTER_RUN).read_text())["run_id"])
    except (OSError, ValueError, KeyError):
        return None


def remember_run(base: Path, run_id: int) -> None:
    _write_json(base / CLUSTER_RUN, {"run_id": run_id})
