"""FLOps root aggregator: runs FedAvg over the learners, evaluates centrally, reports every round."""

from __future__ import annotations

import time
import traceback

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from flops_app.events import EventLog
from flops_app.strategy import FlopsFedAvg
from flops_app.user_task import input_example, load_task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    events = EventLog(str(cfg["flops-output-dir"]))
    try:
        _federate(grid, cfg, events)
    except Exception as exc:
        traceback.print_exc()
        message = str(exc) if "learner" in str(exc) else f"root aggregator: {type(exc).__name__}: {exc}"
        events.emit("failed", message=message)
        raise


def _federate(grid: Grid, cfg: dict, events: EventLog) -> None:
    task = load_task(str(cfg["task-module"]))
    net = task.Net()
    device = str(cfg["device"])
    # Central evaluation on the test split of the whole data set, as the tutorials' global server does.
    _, central_testloader = task.load_data(0, 1, int(cfg["batch-size"]))
    strategy = FlopsFedAvg(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=int(cfg["min-train-nodes"]),
        min_evaluate_nodes=int(cfg["min-evaluate-nodes"]),
        min_available_nodes=int(cfg["min-available-nodes"]),
    )
    num_rounds = int(cfg["num-server-rounds"])
    round_started = [time.time()]

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        task.set_weights(net, arrays.to_numpy_ndarrays())
        loss, accuracy = task.test(net, central_testloader, device)
        central = {"loss": float(loss), "accuracy": float(accuracy)}
        now = time.time()
        events.emit(
            "round",
            round=server_round,
            rounds=num_rounds,
            duration_s=now - round_started[0],
            central=central,
            **strategy.round_stats.get(server_round, {}),
        )
        round_started[0] = now
        return MetricRecord(central)

    events.emit("started", rounds=num_rounds)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.get_weights(net)),
        num_rounds=num_rounds,
        timeout=float(cfg["round-timeout-s"]),
        train_config=ConfigRecord({"local-epochs": int(cfg["local-epochs"])}),
        evaluate_fn=central_evaluate,
    )
    events.save_model(result.arrays.to_numpy_ndarrays(), input_example(central_testloader))
    events.emit("finished", rounds=num_rounds)
