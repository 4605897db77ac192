"""A cluster aggregator: a SuperNode of the root federation that answers each global round by running
`local-rounds` rounds of FedAvg over its own learners on its own SuperLink, through Flower's Control API.

The cluster's SuperLink runs on the same host (the cluster's gateway): one cluster run serves every global round,
and each round's model and results pass through a folder of that host (node config `cluster-dir`, see
handover.py); everything else goes up to the root in the reply."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from flops_app.control import ControlClient, ControlError
from flops_app.events import EventLog, load_arrays, read_events
from flops_app.handover import RESULT, post_request, remember_run, remembered_run, round_folder
from flops_app.strategy import CLUSTER_INDEX, CLUSTER_KEY_PREFIX, LOCAL_ROUNDS_KEY, quorum_size

# A cluster that lost its learners is a lost device at the root, not broken code (Flower's NODE_UNAVAILABLE).
CLUSTER_UNAVAILABLE = ErrorCode.NODE_UNAVAILABLE
POLL_S = 0.05  # for the result file: a local file, cheap to look at
STATUS_EVERY = 10  # polls between two looks at the cluster run's status (a Control API call)


def is_cluster_aggregator(context: Context) -> bool:
    return "cluster-superlink" in context.node_config


def train(msg: Message, context: Context) -> Message:
    """Run this global round's local rounds in the cluster and reply with the cluster model and their metrics."""
    node, cfg = context.node_config, context.run_config
    name, index = str(node["cluster-name"]), int(node["cluster-index"])
    config = msg.content["config"]
    global_round = int(config["server-round"]) + int(config.get("flops-rounds-done", 0))
    base = Path(str(node["cluster-dir"]))
    work = EventLog(str(round_folder(base, global_round)))
    work.save_arrays(msg.content["arrays"].to_numpy_ndarrays(), "initial.npz")
    control = ControlClient(str(node["cluster-superlink"]), str(node.get("cluster-superlink-ca", "")) or None)
    deadline = time.monotonic() + float(cfg["round-timeout-s"])
    try:
        run_id = _cluster_run(control, base, node, cfg)
        post_request(base, global_round, run_id, last=int(config["server-round"]) >= int(cfg["num-server-rounds"]))
        status = None
        polls = 0
        while not (work.output_dir / RESULT).exists():
            if time.monotonic() > deadline:
                control.stop_run(run_id)
                return _error(msg, f"cluster {name}: local rounds did not finish within {cfg['round-timeout-s']}s")
            polls += 1
            if polls % STATUS_EVERY == 0 and (status := control.run_status(run_id)).finished:
                break  # the cluster run ended (a learner's exception, no quorum): its reason is in the folder
            time.sleep(POLL_S)
    except ControlError as exc:  # this cluster's SuperLink is gone: a lost cluster at the root, not broken code
        return _error(msg, f"cluster {name}: {exc}")
    finally:
        control.close()
    result_path = work.output_dir / RESULT
    if not result_path.exists():
        fallback = (status.details or status.sub_status) if status is not None else "no result"
        return _error(msg, _failure_reason(work.output_dir, name, fallback))
    result = json.loads(result_path.read_text())
    metrics = {
        "num-examples": int(result["examples"]),
        CLUSTER_INDEX: index,
        f"{CLUSTER_KEY_PREFIX}bytes-learners-to-cluster": float(result["bytes_to_cluster"]),
        f"{CLUSTER_KEY_PREFIX}bytes-cluster-to-learners": float(result["bytes_from_cluster"]),
        **{k: float(v) for k, v in result.get("train", {}).items() if k != "num-examples"},
    }
    arrays = ArrayRecord(load_arrays(work.output_dir / "final_model.npz"))
    local_rounds = ConfigRecord({LOCAL_ROUNDS_KEY: json.dumps(read_events(work.output_dir, "local_round"))})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics), "flops": local_rounds}),
                   reply_to=msg)


def _cluster_run(control: ControlClient, base: Path, node: dict, cfg: dict) -> int:
    """The cluster's Flower run for this federation: the one started for an earlier global round while it still
    runs (its ServerApp and its learners' workers stay loaded), else a new one (first round; or the cluster run
    ended, or the cluster's SuperLink restarted and forgot it)."""
    known = remembered_run(base)
    if known is not None:
        try:
            if not control.run_status(known).finished:
                return known
        except ControlError:
            pass  # unknown to the SuperLink: start one
    quorum = quorum_size(float(cfg["min-fit-fraction"]), int(node["cluster-size"]))
    run_id = control.start_run(Path(str(node["app-dir"])), {
        "flops-tier": "cluster",
        "flops-output-dir": str(base),
        "num-server-rounds": int(cfg["local-rounds"]),
        "min-train-nodes": quorum, "min-evaluate-nodes": quorum, "min-available-nodes": quorum,
        "flops-members": json.dumps(dict(m.split("=", 1) for m in str(node.get("cluster-members", "")).split(",") if m)),
    })
    remember_run(base, run_id)
    return run_id


def _failure_reason(output_dir: Path, name: str, fallback: str) -> str:
    """The cluster run's own failure message (a learner's exception), else Flower's status details."""
    failures = read_events(output_dir, "failed")
    return failures[-1]["message"] if failures else f"cluster {name}: local rounds failed: {fallback}"


def _error(msg: Message, reason: str) -> Message:
    """A learner's exception inside the cluster stays a code failure; anything else is a lost cluster."""
    code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION if reason.startswith("learner") else CLUSTER_UNAVAILABLE
    return Message(Error(code=code, reason=reason), reply_to=msg)
