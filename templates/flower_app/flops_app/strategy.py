"""FedAvg that fails fast on a learner's error, keeps array dtypes and counts the bytes it receives."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flops_app.aggregation import payload_bytes, weighted_average


# Metric keys a cluster aggregator adds to its reply: accounting, not model metrics.
CLUSTER_KEY_PREFIX = "cluster-"
CLUSTER_INDEX = "cluster-index"


class LearnerFailed(RuntimeError):
    """A learner replied with an error or did not reply in time."""


class FlopsFedAvg(FedAvg):
    """Plain FedAvg semantics; what differs is failure handling and accounting, not the maths."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 - FedAvg's own keyword arguments
        super().__init__(**kwargs)
        self._sent = 0
        self.round_stats: dict[int, dict] = {}

    def _stats(self, server_round: int) -> dict:
        return self.round_stats.setdefault(server_round, {"bytes_to_root": 0, "bytes_from_root": 0})

    def _check(self, server_round: int, replies: list[Message], what: str) -> list[Message]:
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors:
            raise LearnerFailed(errors[0])
        if len(replies) < self._sent:
            raise LearnerFailed(
                f"round {server_round}: only {len(replies)} of {self._sent} learners replied to {what} "
                "before the round timeout"
            )
        return replies

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent = len(messages)
        self._stats(server_round)["bytes_from_root"] += len(messages) * payload_bytes([arrays.to_numpy_ndarrays()])
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self._check(server_round, list(replies), "train")
        if not replies:
            return None, None
        contents = [m.content for m in replies]
        models = [c["arrays"].to_numpy_ndarrays() for c in contents]
        weights = [float(c["metrics"][self.weighted_by_key]) for c in contents]
        stats = self._stats(server_round)
        stats["bytes_to_root"] += payload_bytes(models)
        stats["examples"] = int(sum(weights))  # this round's examples, never a running total
        self._record_clusters(stats, contents, payload_bytes(models[:1]))
        arrays = ArrayRecord(weighted_average(models, weights))
        metrics = self.train_metrics_aggr_fn(
            contents, self.weighted_by_key
        )
        stats["train"] = {k: v for k, v in dict(metrics).items() if not k.startswith(CLUSTER_KEY_PREFIX)}
        return arrays, metrics

    @staticmethod
    def _record_clusters(stats: dict, contents: list, model_bytes: int) -> None:
        """Per-cluster accounting carried in a cluster aggregator's reply (hierarchical runs only)."""
        for content in contents:
            metrics = dict(content["metrics"])
            if CLUSTER_INDEX not in metrics:
                continue
            cluster = {k[len(CLUSTER_KEY_PREFIX):]: v for k, v in metrics.items() if k.startswith(CLUSTER_KEY_PREFIX)}
            cluster.update(bytes_to_root=model_bytes, bytes_from_root=model_bytes,
                           examples=int(metrics["num-examples"]))
            stats.setdefault("clusters", {})[str(int(metrics[CLUSTER_INDEX]))] = cluster

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = self._check(server_round, list(replies), "evaluate")
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self._stats(server_round)["evaluate"] = dict(metrics)
        return metrics
