"""FLOps aggregators. Tier "root": FedAvg over the learners (flat) or the cluster aggregators
(hierarchical), central evaluation, one event per global round. Tier "cluster": a cluster's run, started by
that cluster's aggregator, doing each global round's local rounds of FedAvg over the cluster's learners."""

from __future__ import annotations

import json
import time
import traceback

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from flops_app.aggregation import non_finite, payload_bytes
from flops_app.checkpoint import load_checkpoint, save_checkpoint
from flops_app.events import EventLog, load_arrays, npy_bytes, npz_bytes
from flops_app.handover import RESULT, next_request
from flops_app.prompt_grid import PromptGrid
from flops_app.strategy import LearnerFailed, build_strategy
from flops_app.user_task import UserCodeError, input_example, load_task

app = ServerApp()


class StopFederation(Exception):
    """End the run early but cleanly: target accuracy reached, or the next round would break the budget."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    events = EventLog(str(cfg["flops-output-dir"]))
    tier = str(cfg["flops-tier"])
    grid = PromptGrid(grid)
    grid.wait_for_nodes(int(cfg["min-available-nodes"]), float(cfg["round-timeout-s"]))
    try:
        if tier == "cluster":
            _cluster_federation(grid, cfg, events, context.run_id)
        else:
            _root_federation(grid, cfg, events)
    except Exception as exc:
        if not isinstance(exc, FailureReported):
            _report_failure(events, tier, exc)
        raise


class FailureReported(Exception):
    """A failure already reported where its reader looks (a cluster's round folder)."""


def _report_failure(events: EventLog, tier: str, exc: Exception) -> None:
    traceback.print_exc()
    plain = isinstance(exc, LearnerFailed) or str(exc).startswith(("learner", "cluster"))
    message = str(exc) if plain else f"{tier} aggregator: {type(exc).__name__}: {exc}"
    if isinstance(exc, UserCodeError):  # the user's function and line, and a file with the full traceback
        message = f"{tier} aggregator: {exc}{_save_traceback(events, tier, exc.details)}"
    events.emit("failed", message=message)


def _save_traceback(events: EventLog, tier: str, details: str) -> str:
    """Write the user's full traceback beside the events (the ServerApp's stderr is not kept): " (traceback: PATH)"."""
    if events.output_dir is None:
        return ""
    name = f"{tier}-aggregator-traceback.log"
    events.publish_file(name, details.encode())  # FLOps keeps its own copy: it may not reach this host's files
    return f" (traceback: {events.output_dir / name})"


def _strategy(cfg: dict):  # noqa: ANN202 - a Flower strategy class made at run time
    return build_strategy(
        str(cfg["strategy-name"]), json.loads(str(cfg["strategy-params"]) or "{}"),
        members=json.loads(str(cfg["flops-members"]) or "{}"),
        min_fit_fraction=float(cfg["min-fit-fraction"]), max_failed_rounds=int(cfg["max-failed-rounds"]),
        first_round_wait_s=float(cfg["round-timeout-s"]),
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=int(cfg["min-train-nodes"]),
        min_evaluate_nodes=int(cfg["min-evaluate-nodes"]),
        min_available_nodes=int(cfg["min-available-nodes"]),
    )


def _train_config(cfg: dict, rounds_done: int = 0) -> ConfigRecord:
    # A resumed run's strategy counts rounds from 1 again: cluster aggregators need the global round.
    return ConfigRecord({"local-epochs": int(cfg["local-epochs"]), "flops-rounds-done": rounds_done})


class LinkCosts:
    """Cost of a global round's traffic from the link costs FLOps passes (cost per MB; 1 when unset)."""

    def __init__(self, spec: str) -> None:
        parsed = json.loads(spec) if spec else {}
        self.flat = float(parsed.get("flat", 1.0))
        self.clusters = {k: (float(v[0]), float(v[1])) for k, v in parsed.get("clusters", {}).items()}

    def round_cost(self, stats: dict) -> float:
        clusters = stats.get("clusters")
        if not clusters:
            return (stats.get("bytes_to_root", 0) + stats.get("bytes_from_root", 0)) / 1e6 * self.flat
        cost = 0.0
        for index, c in clusters.items():
            to_root, to_learners = self.clusters.get(index, (1.0, 1.0))
            cost += (c["bytes_to_root"] + c["bytes_from_root"]) / 1e6 * to_root
            cost += (c["bytes-learners-to-cluster"] + c["bytes-cluster-to-learners"]) / 1e6 * to_learners
        return cost


def _root_federation(grid: Grid, cfg: dict, events: EventLog) -> None:
    task = load_task(str(cfg["task-module"]))
    net = task.build_net()
    device = str(cfg["device"])
    # Central evaluation on the test split of the whole data set, as the tutorials' global server does.
    _, central_testloader = task.load_data(0, 1, int(cfg["batch-size"]))
    strategy = _strategy(cfg)
    num_rounds = int(cfg["num-server-rounds"])
    initial = ArrayRecord(task.get_weights(net))
    done = 0  # global rounds completed before this run: a resumed run goes on from its checkpoint
    if str(cfg["flops-resume-from"]):
        checkpoint = load_checkpoint(str(cfg["flops-resume-from"]))
        done, initial = checkpoint.round, ArrayRecord(checkpoint.arrays)
        strategy.restore_strategy_state(checkpoint.strategy_state)
    target = float(cfg["target-accuracy"])
    budget = float(cfg["comm-budget"])
    costs = LinkCosts(str(cfg["flops-link-costs"]))
    spent = [0.0]
    latest = [initial]
    round_started = [time.time()]

    def central_evaluate(strategy_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = done + strategy_round  # the global round, counted across resumes
        if strategy_round == 0 and done:
            return None  # the checkpoint's model was evaluated in the round that wrote it
        latest[0] = arrays
        task.set_weights(net, arrays.to_numpy_ndarrays())
        central = task.test(net, central_testloader, device)  # {"loss"[, "accuracy"]}
        stats = strategy.round_stats.get(strategy_round, {})
        cost = costs.round_cost(stats) if server_round else 0.0
        spent[0] += cost
        if server_round:
            # Durable before it is reported: a round the controller saw is a round `flops resume` keeps.
            save_checkpoint(events.output_dir, server_round, arrays.to_numpy_ndarrays(), strategy.strategy_state())
        now = time.time()
        events.emit("round", round=server_round, rounds=num_rounds, duration_s=now - round_started[0],
                    central=central, cost=cost, **stats)
        round_started[0] = now
        if server_round and target and central.get("accuracy", 0.0) >= target:
            raise StopFederation(f"target accuracy {target} reached in round {server_round}")
        if server_round and budget and server_round < num_rounds and spent[0] + cost > budget:
            raise StopFederation(
                f"communication budget {budget} would be exceeded by round {server_round + 1} "
                f"(spent {spent[0]:.4g}, last round {cost:.4g})"
            )
        return MetricRecord(central)

    events.emit("started", rounds=num_rounds, resumed_from=done, model_bytes=payload_bytes([task.get_weights(net)]))
    # Rounds up to the checkpoint whose events FLOps may have lost with the process that died (it keeps each once).
    for earlier in events.recorded("round"):
        if 1 <= int(earlier["round"]) <= done:
            events.resend(earlier)
    stopped = ""
    try:
        result = strategy.start(
            grid=grid, initial_arrays=latest[0], num_rounds=num_rounds - done, timeout=float(cfg["round-timeout-s"]),
            train_config=_train_config(cfg, done), evaluate_fn=central_evaluate,
        )
        final = result.arrays if result.arrays is not None else latest[0]
    except StopFederation as stop:
        final, stopped = latest[0], str(stop)
    if non_finite(final.to_numpy_ndarrays()):
        raise RuntimeError("the final global model holds non-finite values; it is not saved or registered")
    events.publish_file("final_model.npz", npz_bytes(final.to_numpy_ndarrays()))
    events.publish_file("input_example.npy", npy_bytes(input_example(central_testloader)))
    events.emit("finished", rounds=num_rounds, stopped_early=stopped)


def _cluster_federation(grid: Grid, cfg: dict, events: EventLog, run_id: int) -> None:
    """One cluster run for the whole federation: the local rounds of each global round its aggregator asks for
    (handover.py), so this process and the learners' warm workers stay loaded between global rounds. Ends after
    the root's last round, or when no round was asked for twice the round timeout (the aggregator starts a new
    run if one comes later)."""
    base = events.output_dir
    if base is None:
        raise RuntimeError("a cluster run needs flops-output-dir, its hand-over folder")
    done: set[str] = set()
    while (request := next_request(base, run_id, done, 2 * float(cfg["round-timeout-s"]))) is not None:
        work = EventLog(str(request.folder))
        try:
            _cluster_round(grid, cfg, work, request.global_round)
        except Exception as exc:
            _report_failure(work, "cluster", exc)  # where the aggregator waiting for this round looks
            raise FailureReported(str(exc)) from exc
        done.add(request.ask)
        if request.last:
            return


def _cluster_round(grid: Grid, cfg: dict, events: EventLog, global_round: int) -> None:
    strategy = _strategy(cfg)
    local_rounds = int(cfg["num-server-rounds"])

    def report_local_round(local_round: int, _arrays: ArrayRecord) -> None:
        if local_round:
            events.emit("local_round", global_round=global_round, local_round=local_round,
                        **strategy.round_stats.get(local_round, {}))

    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(load_arrays(str(events.output_dir / "initial.npz"))),
        num_rounds=local_rounds, timeout=float(cfg["round-timeout-s"]), train_config=_train_config(cfg),
        evaluate_fn=report_local_round,
    )
    rounds = [strategy.round_stats.get(r, {}) for r in range(1, local_rounds + 1)]
    last = next((r for r in reversed(rounds) if r.get("examples")), rounds[-1])
    if result.arrays is None:
        raise RuntimeError("no local round of this cluster reached its quorum")
    events.save_arrays(result.arrays.to_numpy_ndarrays())
    events.save_json(RESULT, {
        "examples": last.get("examples", 0),  # the last local round's examples, never a running total
        "bytes_to_cluster": sum(r.get("bytes_to_root", 0) for r in rounds),
        "bytes_from_cluster": sum(r.get("bytes_from_root", 0) for r in rounds),
        "train": last.get("train", {}),
        "evaluate": last.get("evaluate", {}),
    })
