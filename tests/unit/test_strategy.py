"""The generated app's strategies (templates/flower_app/flops_app/strategy.py) on real Flower messages:
update validation, quorum, code failure vs lost device, byte accounting, robust aggregation by name."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

APP_DIR = Path(__file__).resolve().parents[2] / "templates" / "flower_app"
sys.path.insert(0, str(APP_DIR))  # the template package flops_app, as the generated app imports it

from flops_app.strategy import LearnerFailed, build_strategy, quorum_size  # noqa: E402

MEMBERS = {"0": "learner-0", "1": "learner-1", "2": "learner-2"}


@pytest.fixture(autouse=True)
def _server_app_identity():  # noqa: ANN202
    """Message() takes run, node and task ids from the process-wide TaskIdentity, as inside a ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
GLOBAL = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32), np.array(4, np.int64)]


class ThreeNodeGrid(Grid):
    """Just enough of a Grid for configure_train/evaluate: three connected nodes, ids 10, 11, 12."""

    def set_run(self, run_id: int) -> None: ...
    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError
    def create_message(self, *a, **k): raise NotImplementedError  # noqa: ANN002, ANN003, ANN201, E704
    def get_node_ids(self) -> Iterable[int]:
        return [10, 11, 12]
    def push_messages(self, messages): raise NotImplementedError  # noqa: ANN001, ANN201, E704
    def pull_messages(self, message_ids): raise NotImplementedError  # noqa: ANN001, ANN201, E704
    def send_and_receive(self, messages, *, timeout=None): raise NotImplementedError  # noqa: ANN001, ANN201, E704


def _strategy(name: str = "fedavg", params: dict | None = None, **kwargs):  # noqa: ANN202
    strategy = build_strategy(name, params or {}, members=MEMBERS, min_fit_fraction=kwargs.pop("fraction", 0.5),
                              max_failed_rounds=kwargs.pop("max_failed_rounds", 2), first_round_wait_s=0.0, **kwargs)
    return strategy


def _sent(strategy, server_round: int = 1) -> list[Message]:  # noqa: ANN001
    return list(strategy.configure_train(server_round, ArrayRecord(GLOBAL), ConfigRecord(), ThreeNodeGrid()))


def _reply(sent: Message, member: int, arrays: list[np.ndarray], examples: int = 10) -> Message:
    metrics = MetricRecord({"num-examples": examples, "flops-member": member, "loss": 1.0})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=sent)


def _error(sent: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=sent)


def _model(value: float) -> list[np.ndarray]:
    return [np.full((2, 3), value, np.float32), np.full(3, value, np.float32), np.array(int(value) + 4, np.int64)]


def test_quorum_is_the_fraction_rounded_up_and_at_least_one() -> None:
    assert [quorum_size(0.5, n) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]
    assert quorum_size(0.01, 10) == 1 and quorum_size(1.0, 3) == 3


@pytest.mark.parametrize("bad, why", [
    ([np.full((2, 3), np.nan, np.float32), np.zeros(3, np.float32), np.array(4, np.int64)], "non-finite"),
    ([np.zeros((2, 3), np.float32), np.zeros(3, np.float32)], "wrong number of arrays"),
    ([np.zeros((3, 2), np.float32), np.zeros(3, np.float32), np.array(4, np.int64)], "shape"),
    ([np.zeros((2, 3), np.float64), np.zeros(3, np.float32), np.array(4, np.int64)], "dtype"),
])
def test_an_invalid_update_is_rejected_counted_and_never_averaged(bad: list[np.ndarray], why: str) -> None:
    strategy = _strategy()
    sent = _sent(strategy)
    replies = [_reply(sent[0], 0, _model(1.0)), _reply(sent[1], 1, _model(3.0)), _reply(sent[2], 2, bad)]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = arrays.to_numpy_ndarrays()
    np.testing.assert_allclose(out[0], 2.0)  # the mean of the two valid updates only
    assert out[2].dtype == np.int64 and int(out[2]) == 6
    stats = strategy.round_stats[1]
    assert why in stats["rejected"]["learner-2"], stats
    assert stats["rejected_total"] == {"learner-2": 1} and stats["train"]["updates_rejected"] == 1
    assert stats["accepted"] == ["learner-0", "learner-1"] and stats["missing"] == []


def test_a_lost_learner_is_left_out_and_named_and_the_round_closes_with_the_others() -> None:
    for lost in ([], ["node unavailable"]):  # no reply by the deadline, or Flower's NODE_UNAVAILABLE reply
        strategy = _strategy()
        sent = _sent(strategy)
        replies = [_reply(sent[0], 0, _model(1.0)), _reply(sent[1], 1, _model(3.0))]
        replies += [_error(sent[2], 5, reason) for reason in lost]
        arrays, _ = strategy.aggregate_train(1, replies)
        np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 2.0)
        assert strategy.round_stats[1]["missing"] == ["learner-2"]
        assert strategy.round_stats[1]["train"]["learners_missing"] == 1


def test_missing_the_quorum_keeps_the_model_and_fails_the_run_after_max_failed_rounds_naming_them() -> None:
    strategy = _strategy(fraction=1.0, max_failed_rounds=2)
    sent = _sent(strategy, 1)
    arrays, _ = strategy.aggregate_train(1, [_reply(sent[0], 0, _model(1.0))])
    assert arrays is None and strategy.round_stats[1]["quorum_missed"]
    sent = _sent(strategy, 2)
    arrays, _ = strategy.aggregate_train(2, [_reply(s, i, _model(1.0)) for i, s in enumerate(sent)])
    assert arrays is not None  # a full round resets the count
    sent = _sent(strategy, 3)
    strategy.aggregate_train(3, [_reply(sent[0], 0, _model(1.0))])
    sent = _sent(strategy, 4)
    with pytest.raises(LearnerFailed, match=r"2 rounds in a row.*learner-1, learner-2"):
        strategy.aggregate_train(4, [_reply(sent[0], 0, _model(1.0))])


def test_a_user_exception_on_one_learner_is_tolerated_once_and_fails_the_run_the_second_time() -> None:
    strategy = _strategy()
    sent = _sent(strategy, 1)
    replies = [_reply(sent[0], 0, _model(1.0)), _reply(sent[1], 1, _model(1.0)),
               _error(sent[2], 2, "learner 2: train: ValueError: boom")]
    assert strategy.aggregate_train(1, replies)[0] is not None
    assert strategy.round_stats[1]["code_failures"] == {"learner-2": "learner 2: train: ValueError: boom"}
    sent = _sent(strategy, 2)
    replies = [_reply(sent[0], 0, _model(1.0)), _reply(sent[1], 1, _model(1.0)),
               _error(sent[2], 2, "learner 2: train: ValueError: boom again")]
    with pytest.raises(LearnerFailed, match="learner 2: train: ValueError: boom again"):
        strategy.aggregate_train(2, replies)


def test_a_user_exception_on_every_learner_that_replied_fails_the_run_at_once() -> None:
    strategy = _strategy()
    sent = _sent(strategy)
    replies = [_error(sent[0], 2, "learner 0: train: ValueError: bad"), _error(sent[1], 2, "learner 1: train: ValueError: bad"),
               _error(sent[2], 5, "node unavailable")]  # a lost device does not count as having replied
    with pytest.raises(LearnerFailed, match="learner 0: train: ValueError: bad"):
        strategy.aggregate_train(1, replies)


def test_every_model_byte_sent_with_train_and_evaluate_messages_is_counted() -> None:
    strategy = _strategy(fraction_evaluate=1.0)
    train = _sent(strategy)
    evaluate = list(strategy.configure_evaluate(1, ArrayRecord(GLOBAL), ConfigRecord(), ThreeNodeGrid()))
    # Flower's own messages: the arrays each one carries.
    carried = sum(a.numpy().nbytes for m in train + evaluate for a in m.content["arrays"].values())
    assert carried == 6 * sum(a.nbytes for a in GLOBAL)
    assert strategy.round_stats[1]["bytes_from_root"] == carried
    replies = [_reply(s, i, _model(1.0)) for i, s in enumerate(train)]
    received = sum(a.numpy().nbytes for m in replies for a in m.content["arrays"].values())
    strategy.aggregate_train(1, replies)
    assert strategy.round_stats[1]["bytes_to_root"] == received


@pytest.mark.parametrize("name, params", [("trimmed-mean", {"beta": 0.34}), ("krum", {"num_malicious_nodes": 1}),
                                          ("fedmedian", {})])
def test_robust_strategies_ignore_an_outlier_and_keep_integer_buffers_integer(name: str, params: dict) -> None:
    strategy = _strategy(name, params)
    sent = _sent(strategy)
    replies = [_reply(sent[0], 0, _model(1.0)), _reply(sent[1], 1, _model(1.2)), _reply(sent[2], 2, _model(1000.0))]
    out = strategy.aggregate_train(1, replies)[0].to_numpy_ndarrays()
    assert float(np.max(out[0])) < 2.0, out
    assert out[0].dtype == np.float32 and out[2].dtype == np.int64


def test_fedavg_is_pulled_by_the_outlier() -> None:
    strategy = _strategy()
    sent = _sent(strategy)
    replies = [_reply(sent[0], 0, _model(1.0)), _reply(sent[1], 1, _model(1.2)), _reply(sent[2], 2, _model(1000.0))]
    assert float(np.max(strategy.aggregate_train(1, replies)[0].to_numpy_ndarrays()[0])) > 300


def test_fedadam_moments_survive_a_checkpoint_round_trip(tmp_path: Path) -> None:
    from flops_app.checkpoint import load_checkpoint, save_checkpoint

    strategy = _strategy("fedadam", {"eta": 0.1})
    sent = _sent(strategy)
    strategy.aggregate_train(1, [_reply(s, i, _model(1.0)) for i, s in enumerate(sent)])
    state = strategy.strategy_state()
    assert any(k.startswith("m_t/") for k in state) and any(k.startswith("v_t/") for k in state)
    save_checkpoint(tmp_path, 3, GLOBAL, state)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.round == 3 and [a.dtype for a in checkpoint.arrays] == [a.dtype for a in GLOBAL]
    fresh = _strategy("fedadam", {"eta": 0.1})
    fresh.restore_strategy_state(checkpoint.strategy_state)
    for key, value in state.items():
        np.testing.assert_array_equal(fresh.strategy_state()[key], value)


def test_an_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fedavg, fedmedian, fedprox, krum, trimmed-mean"):
        _strategy("fedsgd")


def test_evaluation_skips_nodes_that_missed_the_training_deadline() -> None:
    strategy = _strategy(fraction_evaluate=1.0)
    sent = _sent(strategy)
    strategy.aggregate_train(1, [_reply(sent[0], 0, _model(1.0)), _reply(sent[1], 1, _model(1.0))])
    evaluate = list(strategy.configure_evaluate(1, ArrayRecord(GLOBAL), ConfigRecord(), ThreeNodeGrid()))
    assert sorted(m.metadata.dst_node_id for m in evaluate) == sorted(s.metadata.dst_node_id for s in sent[:2])


def test_fedprox_adds_its_proximal_gradient_to_any_optimizer_the_user_builds() -> None:
    import torch

    from flops_app.client_app import _add_proximal_term

    net = torch.nn.Linear(2, 1)
    start = [p.detach().clone() for p in net.parameters()]
    _add_proximal_term(net, 0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(2.0)  # as if local training had moved the weights
    (net.weight.sum() * 0.0).backward()  # a loss with no gradient of its own
    torch.testing.assert_close(net.weight.grad, 0.5 * (net.weight.detach() - start[0]))
    assert torch.allclose(net.weight.grad, torch.full_like(net.weight, 1.0))
