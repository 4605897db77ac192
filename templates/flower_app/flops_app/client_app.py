"""FLOps learner: trains and evaluates the user's Net on this node's data partition."""

from __future__ import annotations

import traceback

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from flops_app import cluster_aggregator
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


def _model_and_data(msg: Message, context: Context):  # noqa: ANN202 - the user's own types
    cfg = context.run_config
    task = load_task(str(cfg["task-module"]))
    net = task.build_net()
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
        metrics = {**numeric_metrics(returned), "num-examples": num_examples(trainloader)}
    except Exception as exc:  # noqa: BLE001 - any failure of user code ends the run with its message
        return _failure(msg, context, stage, exc)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    stage = "load_data"
    try:
        task, net, _, testloader = _model_and_data(msg, context)
        stage = "test"
        metrics = task.test(net, testloader, str(context.run_config["device"]))  # {"loss"[, "accuracy"]}
        metrics["num-examples"] = num_examples(testloader)
    except Exception as exc:  # noqa: BLE001
        return _failure(msg, context, stage, exc)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
