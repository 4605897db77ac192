"""FLOps learner: trains and evaluates the user's Net on this node's data partition."""

from __future__ import annotations

import random
import sys
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from flops_app import cluster_aggregator
from flops_app.strategy import MEMBER_KEY
from flops_app.user_task import UserCodeError, load_task, num_examples, numeric_metrics

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def _failure(msg: Message, context: Context, stage: str, exc: Exception) -> Message:
    """Reply with the user's exception so the root aggregator ends the run with it, instead of retrying.

    Flower's own code for "the ClientApp raised"; the reason is our one-line message.
    """
    traceback.print_exc()
    partition_id, _ = _partition(context)
    reason = f"learner {partition_id}: {exc}" if isinstance(exc, UserCodeError) else (
        f"learner {partition_id}: {stage}: {type(exc).__name__}: {exc}")
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


@dataclass
class _Loaded:
    """The user's task, model and data as one process set them up, and the random state right after."""

    task: ModuleType
    net: Any
    trainloader: Any
    testloader: Any
    rng_state: tuple


# A warm learner process (warm_executor.py) serves every message of one run: set up once, reused.
_loaded: dict[tuple, _Loaded] = {}


def _rng_state() -> tuple:
    torch = sys.modules.get("torch")
    return random.getstate(), np.random.get_state(), torch.get_rng_state() if torch else None


def _restore_rng(state: tuple) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    if state[2] is not None:
        sys.modules["torch"].set_rng_state(state[2])


def _model_and_data(msg: Message, context: Context):  # noqa: ANN202 - the user's own types
    cfg = context.run_config
    partition_id, num_partitions = _partition(context)
    key = (str(cfg["task-module"]), partition_id, num_partitions, int(cfg["batch-size"]))
    if key not in _loaded:
        task = load_task(key[0])
        net = task.build_net()
        trainloader, testloader = task.load_data(partition_id, num_partitions, key[3])
        _loaded[key] = _Loaded(task, net, trainloader, testloader, _rng_state())
    loaded = _loaded[key]
    # Every message starts from the random state a fresh process would have here (import, Net(),
    # load_data), so a seeded task trains exactly as on Flower's one-process-per-message path.
    _restore_rng(loaded.rng_state)
    loaded.task.set_weights(loaded.net, msg.content["arrays"].to_numpy_ndarrays())
    return loaded.task, loaded.net, loaded.trainloader, loaded.testloader


@app.train()
def train(msg: Message, context: Context) -> Message:
    if cluster_aggregator.is_cluster_aggregator(context):
        return cluster_aggregator.train(msg, context)
    stage = "load_data"
    try:
        task, net, trainloader, testloader = _model_and_data(msg, context)
        cfg = context.run_config
        stage = "train"
        _add_proximal_term(net, float(msg.content["config"].get("proximal-mu", 0.0)))
        returned = task.train(
            net,
            trainloader,
            testloader,
            int(cfg["local-epochs"]),
            float(cfg["learning-rate"]),
            str(cfg["device"]),
        )
        stage = "get_weights"
        arrays = ArrayRecord(task.get_weights(net))
        metrics = {**numeric_metrics(returned), "num-examples": num_examples(trainloader),
                   MEMBER_KEY: _partition(context)[0]}
    except Exception as exc:  # noqa: BLE001 - any failure of user code ends the run with its message
        return _failure(msg, context, stage, exc)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def _add_proximal_term(net, mu: float) -> None:  # noqa: ANN001 - the user's nn.Module
    """FedProx without touching the user's train(): each gradient gains mu * (w - w_global)."""
    if mu <= 0:
        return
    for param in net.parameters():
        if param.requires_grad:
            anchor = param.detach().clone()
            param.register_hook(lambda grad, p=param, a=anchor: grad + mu * (p.detach() - a))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    stage = "load_data"
    try:
        task, net, _, testloader = _model_and_data(msg, context)
        stage = "test"
        metrics = task.test(net, testloader, str(context.run_config["device"]))  # {"loss"[, "accuracy"]}
        metrics.update({"num-examples": num_examples(testloader), MEMBER_KEY: _partition(context)[0]})
    except Exception as exc:  # noqa: BLE001
        return _failure(msg, context, stage, exc)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
