"""Flower's strategies by name, with FLOps' failure handling, update validation and byte accounting."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from flops_app.aggregation import cast_like, payload_bytes, update_problem, weighted_average

# Metric keys a cluster aggregator adds to its reply: accounting, not model metrics.
CLUSTER_KEY_PREFIX = "cluster-"
CLUSTER_INDEX = "cluster-index"
LOCAL_ROUNDS_KEY = "local-rounds"  # a cluster aggregator's reply: its local rounds' events (JSON), in record "flops"
# Metric key a learner adds to its replies: which member of the federation it is (its partition id).
MEMBER_KEY = "flops-member"
# Flower's error codes (flwr.common.constant.ErrorCode) that mean the user's code failed, not the device.
CODE_FAILURE_CODES = frozenset({1, 2})  # LOAD_CLIENT_APP_EXCEPTION, CLIENT_APP_RAISED_EXCEPTION

FLOWER_STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedmedian": FedMedian, "trimmed-mean": FedTrimmedAvg,
    "krum": Krum, "fedadam": FedAdam,
}


class LearnerFailed(RuntimeError):
    """The user's code raised on the learners (a code failure), or the quorum was missed too often."""


def quorum_size(fraction: float, members: int) -> int:
    """Replies a round needs: the fraction of the members, rounded up, at least 1."""
    return max(1, math.ceil(fraction * members - 1e-9))


class FlopsAccounting:
    """Mixed in before a Flower strategy: validate updates, tolerate lost devices, count bytes.

    A reply carrying an error raised by the user's code is a code failure: it ends the run when every
    member that replied failed so, or when the same member fails twice. A member that did not reply
    (process killed, link cut, deadline passed) is left out and named. A round whose accepted updates
    miss the quorum keeps the previous global model; `max_failed_rounds` such rounds in a row end the run.
    """

    flower_base: type[FedAvg]
    members: dict[str, str]
    round_stats: dict[int, dict]

    def setup_flops(self, members: dict[str, str], quorum: int, max_failed_rounds: int,
                    first_round_wait_s: float) -> None:
        self.members = members  # member id (partition id or cluster index) -> name
        self.quorum = quorum
        self.max_failed_rounds = max_failed_rounds
        self.first_round_wait_s = first_round_wait_s
        self.round_stats = {}
        self.rejected_total: dict[str, int] = {}
        self.code_failures: dict[str, str] = {}
        self.failed_in_a_row = 0
        self._reference: list[np.ndarray] = []
        self._node_names: dict[int, str] = {}
        self._sent: dict[str, list[int]] = {}
        self._first_round = True
        self._train_answered: set[int] | None = None  # nodes that replied to this round's train messages

    def _stats(self, server_round: int) -> dict:
        return self.round_stats.setdefault(server_round, {"bytes_to_root": 0, "bytes_from_root": 0})

    def _wait_for_every_member(self, grid: Grid) -> None:
        """The first round waits for the whole federation, so a slow start is not a dropout."""
        deadline = time.monotonic() + self.first_round_wait_s
        while self.members and len(list(grid.get_node_ids())) < len(self.members) and time.monotonic() < deadline:
            time.sleep(0.5)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self._first_round:
            self._wait_for_every_member(grid)
            self._first_round = False
        self._reference = arrays.to_numpy_ndarrays()
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._sent["train"] = [m.metadata.dst_node_id for m in messages]
        self._stats(server_round)["bytes_from_root"] += len(messages) * payload_bytes([self._reference])
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        if self._train_answered is not None:
            # A node that missed this round's training deadline (dead, cut off, straggling) would only
            # make evaluation wait for the deadline a second time.
            messages = [m for m in messages if m.metadata.dst_node_id in self._train_answered]
        self._sent["evaluate"] = [m.metadata.dst_node_id for m in messages]
        # Evaluate messages carry the global model too: every byte on the link counts.
        self._stats(server_round)["bytes_from_root"] += len(messages) * payload_bytes([arrays.to_numpy_ndarrays()])
        return messages

    def _name(self, reply: Message) -> str:
        """The member a reply came from: its id in the reply's metrics, the error reason, or its node."""
        node_id = reply.metadata.src_node_id
        if not reply.has_error():
            metrics = dict(reply.content["metrics"]) if "metrics" in reply.content else {}
            member = metrics.get(CLUSTER_INDEX, metrics.get(MEMBER_KEY))
            if member is not None:
                key = str(int(member))
                self._node_names[node_id] = self.members.get(key, f"learner-{key}")
        elif reply.error.code in CODE_FAILURE_CODES:
            reason = reply.error.reason or ""
            head = reason.split(":", 1)[0].split()
            if len(head) == 2 and head[0] in ("learner", "cluster") and head[1].isdigit():
                self._node_names[node_id] = self.members.get(head[1], f"{head[0]}-{head[1]}")
        return self._node_names.get(node_id, f"node {node_id}")

    def _missing(self, replied: set[str], stage: str) -> list[str]:
        if self.members:
            return sorted(set(self.members.values()) - replied)
        sent = {self._node_names.get(n, f"node {n}") for n in self._sent.get(stage, [])}
        return sorted(sent - replied)

    def _check_code_failures(self, replies: list[Message], stats: dict, stage: str) -> None:
        """A user exception on every member that replied, or twice on one member, ends the run."""
        failures = {self._name(m): m.error.reason for m in replies
                    if m.has_error() and m.error.code in CODE_FAILURE_CODES}
        if not failures:
            return
        answered = {self._name(m) for m in replies if not m.has_error() or m.error.code in CODE_FAILURE_CODES}
        repeated = [name for name in failures if name in self.code_failures]
        if repeated or set(failures) == answered:
            raise LearnerFailed(failures[repeated[0]] if repeated else next(iter(failures.values())))
        self.code_failures.update(failures)
        stats.setdefault("code_failures", {}).update(failures)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        stats = self._stats(server_round)
        self._train_answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        self._check_code_failures(replies, stats, "train")
        answered = [m for m in replies if not m.has_error()]
        stats["bytes_to_root"] += sum(payload_bytes([m.content["arrays"].to_numpy_ndarrays()])
                                      for m in answered if "arrays" in m.content)
        accepted, rejected = [], {}
        for reply in answered:
            problem = self._problem(reply)
            if problem is None:
                accepted.append(reply)
            else:
                rejected[self._name(reply)] = problem
        for name in rejected:
            self.rejected_total[name] = self.rejected_total.get(name, 0) + 1
        replied = {self._name(m) for m in replies if not m.has_error() or m.error.code in CODE_FAILURE_CODES}
        missing = self._missing(replied, "train")
        stats.update(missing=missing, rejected=rejected, rejected_total=dict(self.rejected_total),
                     accepted=sorted(self._name(m) for m in accepted), quorum=self.quorum)
        health = {"updates_accepted": len(accepted), "updates_rejected": len(rejected), "learners_missing": len(missing)}
        if len(accepted) < self.quorum:
            self.failed_in_a_row += 1
            stats.update(quorum_missed=True, train=health, examples=0)
            if self.failed_in_a_row >= self.max_failed_rounds:
                absent = ", ".join(missing + sorted(rejected)) or "none"
                raise LearnerFailed(
                    f"round {server_round}: quorum of {self.quorum} accepted updates missed "
                    f"{self.failed_in_a_row} rounds in a row (max_failed_rounds); missing or rejected: {absent}")
            return None, None
        self.failed_in_a_row = 0
        contents = [m.content for m in accepted]
        stats["examples"] = int(sum(float(c["metrics"][self.weighted_by_key]) for c in contents))  # type: ignore[attr-defined]
        self._record_clusters(stats, contents, payload_bytes([self._reference]))
        self._record_local_rounds(stats, [m.content for m in answered])
        arrays, metrics = self._aggregate(server_round, accepted)
        train = {k: v for k, v in dict(metrics or {}).items()
                 if not k.startswith((CLUSTER_KEY_PREFIX, "flops-"))}
        stats["train"] = {**train, **health}
        return arrays, metrics

    def _problem(self, reply: Message) -> str | None:
        content = reply.content
        if "arrays" not in content or "metrics" not in content:
            return "reply without arrays or metrics"
        weight = dict(content["metrics"]).get(self.weighted_by_key)  # type: ignore[attr-defined]
        if weight is None or not math.isfinite(float(weight)) or float(weight) < 0:
            return f"'{self.weighted_by_key}' missing or invalid: {weight}"  # type: ignore[attr-defined]
        return update_problem(content["arrays"].to_numpy_ndarrays(), self._reference)

    def _aggregate(self, server_round: int, accepted: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg keeps FLOps' dtype-preserving average; other strategies are Flower's own maths."""
        if self.flower_base in (FedAvg, FedProx):
            contents = [m.content for m in accepted]
            models = [c["arrays"].to_numpy_ndarrays() for c in contents]
            weights = [float(c["metrics"][self.weighted_by_key]) for c in contents]  # type: ignore[attr-defined]
            metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)  # type: ignore[attr-defined]
            return ArrayRecord(weighted_average(models, weights)), metrics
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        if arrays is None:
            return None, metrics
        # Flower's robust aggregators work in floats: integer buffers come back as integers.
        return ArrayRecord([cast_like(a, ref.dtype) for a, ref in zip(arrays.to_numpy_ndarrays(), self._reference)]), metrics

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

    @staticmethod
    def _record_local_rounds(stats: dict, contents: list) -> None:
        """Each answering cluster's local rounds, as its aggregator reported them: they reach FLOps with this round."""
        for content in contents:
            if "flops" in content and CLUSTER_INDEX in content["metrics"]:
                index = str(int(content["metrics"][CLUSTER_INDEX]))
                stats.setdefault("local_rounds", {})[index] = json.loads(str(content["flops"][LOCAL_ROUNDS_KEY]))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        stats = self._stats(server_round)
        self._check_code_failures(replies, stats, "evaluate")
        answered = [m for m in replies if not m.has_error() and self._evaluate_ok(m)]
        metrics = super().aggregate_evaluate(server_round, answered)  # type: ignore[misc]
        if metrics is not None:  # FLOps' own bookkeeping keys (a learner's id) are not model metrics
            stats["evaluate"] = {k: v for k, v in dict(metrics).items() if not k.startswith("flops-")}
        return metrics

    def _evaluate_ok(self, reply: Message) -> bool:
        metrics = dict(reply.content["metrics"]) if "metrics" in reply.content else {}
        return all(isinstance(v, int) or math.isfinite(float(v)) for v in metrics.values()
                   if isinstance(v, (int, float)))

    def strategy_state(self) -> dict[str, np.ndarray]:
        """Server-side optimizer state worth a checkpoint (FedAdam's moments), flattened to named arrays."""
        state: dict[str, np.ndarray] = {}
        for attr in ("m_t", "v_t"):
            for key, value in (getattr(self, attr, None) or {}).items():
                state[f"{attr}/{key}"] = np.asarray(value)
        return state

    def restore_strategy_state(self, state: dict[str, np.ndarray]) -> None:
        for attr in ("m_t", "v_t"):
            values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{attr}/")}
            if values:
                setattr(self, attr, values)


def build_strategy(name: str, params: dict[str, Any], members: dict[str, str], min_fit_fraction: float,
                   max_failed_rounds: int, first_round_wait_s: float, **flower_kwargs: Any) -> FedAvg:
    """Flower's strategy NAME with FLOps' accounting mixed in; PARAMS are its own keyword arguments."""
    if name not in FLOWER_STRATEGIES:
        raise ValueError(f"unknown strategy '{name}' (known: {', '.join(sorted(FLOWER_STRATEGIES))})")
    base = FLOWER_STRATEGIES[name]
    expected = len(members) or int(flower_kwargs.get("min_train_nodes", 1))
    quorum = quorum_size(min_fit_fraction, expected)
    for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        flower_kwargs.setdefault(key, quorum)
    cls = type(f"Flops{base.__name__}", (FlopsAccounting, base), {"flower_base": base})
    strategy = cls(**flower_kwargs, **params)
    strategy.setup_flops(members, quorum, max_failed_rounds, first_round_wait_s)
    return strategy
