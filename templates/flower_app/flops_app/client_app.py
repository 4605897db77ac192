"""FLOps learner: trains and evaluates the user's Net on this node's data partition."""

from __future__ import annotations

import traceback

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flops_app import cluster_aggregator
from flops_app.strategy import MEMBER_KEY
from flops_app.user_task import load_task, num_examples, numeric_metrics

# Flower's code for "the ClientApp raised"; the reason we send is our own one-line message.
CLIENT_APP_RAISED_EXCEPTION = 2

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def _failure(msg: Message, context: Context, stage: str, exc: Exception) -> Message:
    """Reply with the user's exception so the root aggregator ends the run with it, instead of retrying."""
    traceback.print_exc()
    partition_id, _ = _partition(context)
    reason = f"learner {partition_id}: {stage}: {type(exc).__name__}: {exc}"
    return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _model_and_data(msg: Message, context: Context):  # noqa: ANN202 - the user's own types
    cfg = context.run_config
    task = load_task(str(cfg["task-module"]))
    net = task.Net()
    task.set_weights(net, msg.content["arrays"].to_numpy_ndarrays())
    partition_id, num_partitions = _partition(context)
    trainloader, testloader = task.load_data(partition_id, num_partitions, int(cfg["batch-size"]))
    return task, net, trainloader, testloader


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
        loss, accuracy = task.test(net, testloader, str(context.run_config["device"]))
        metrics = {"loss": float(loss), "accuracy": float(accuracy), "num-examples": num_examples(testloader),
                   MEMBER_KEY: _partition(context)[0]}
    except Exception as exc:  # noqa: BLE001
        return _failure(msg, context, stage, exc)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
