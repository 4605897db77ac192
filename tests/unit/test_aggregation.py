"""Dtype-preserving FedAvg of the generated app (templates/flower_app/flops_app/aggregation.py)."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

AGGREGATION = Path(__file__).resolve().parents[2] / "templates" / "flower_app" / "flops_app" / "aggregation.py"


def _load_aggregation() -> ModuleType:
    # The template is a file of the generated app, not an importable FLOps module: load it by path.
    spec = importlib.util.spec_from_file_location("flops_app_aggregation_under_test", AGGREGATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


weighted_average = _load_aggregation().weighted_average
payload_bytes = _load_aggregation().payload_bytes


def test_float32_layers_stay_float32_and_are_weighted_by_example_count() -> None:
    a = [np.array([0.0, 4.0], dtype=np.float32)]
    b = [np.array([4.0, 0.0], dtype=np.float32)]
    (out,) = weighted_average([a, b], [30, 10])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.0, 3.0])


def test_int64_scalar_buffer_stays_int64_0d_and_is_the_rounded_weighted_mean() -> None:
    # BatchNorm's num_batches_tracked: a 0-d int64 tensor.
    models = [[np.array(10, dtype=np.int64)], [np.array(13, dtype=np.int64)]]
    (out,) = weighted_average(models, [1, 1])  # mean 11.5 -> rounds to even: 12
    assert out.dtype == np.int64 and out.shape == () and isinstance(out, np.ndarray)
    assert int(out) == 12
    (weighted,) = weighted_average(models, [3, 1])  # 10.75 -> 11
    assert int(weighted) == 11


def test_mixed_layers_keep_each_their_own_dtype() -> None:
    model = [np.ones((2, 3), np.float32), np.array(5, np.int64), np.ones(4, np.float64), np.array([1, 2], np.int32)]
    out = weighted_average([model, model], [1, 2])
    assert [o.dtype for o in out] == [m.dtype for m in model]
    assert [o.shape for o in out] == [m.shape for m in model]
    for o, m in zip(out, model):
        np.testing.assert_array_equal(o, m)


def test_zero_total_weight_and_no_models_are_errors() -> None:
    with pytest.raises(ValueError, match="sum to zero"):
        weighted_average([[np.ones(1)], [np.ones(1)]], [0, 0])
    with pytest.raises(ValueError, match="nothing to aggregate"):
        weighted_average([], [])


def test_payload_bytes_counts_every_array() -> None:
    model = [np.zeros(10, np.float32), np.array(1, np.int64)]
    assert payload_bytes([model, model]) == 2 * (40 + 8)


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _get_weights(net: nn.Module) -> list[np.ndarray]:
    return [v.cpu().numpy() for v in net.state_dict().values()]


def _set_weights(net: nn.Module, parameters: list[np.ndarray]) -> None:
    keys = net.state_dict().keys()
    net.load_state_dict(OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters)), strict=True)


def test_batchnorm_model_round_trips_through_aggregation() -> None:
    nets = []
    for seed, batches in ((0, 3), (1, 5)):
        torch.manual_seed(seed)
        net = BatchNormNet()
        net.train()
        for _ in range(batches):
            net(torch.randn(8, 1, 6, 6))  # updates running stats and num_batches_tracked
        nets.append(net)
    averaged = weighted_average([_get_weights(n) for n in nets], [100, 300])

    target = BatchNormNet()
    _set_weights(target, averaged)  # strict: every key, and the dtypes torch expects
    state = target.state_dict()
    assert state["bn.num_batches_tracked"].dtype == torch.int64
    assert int(state["bn.num_batches_tracked"]) == round(0.25 * 3 + 0.75 * 5)  # 4.5 -> 4 (round half to even)
    assert state["bn.running_mean"].dtype == torch.float32
    expected_mean = 0.25 * nets[0].state_dict()["bn.running_mean"] + 0.75 * nets[1].state_dict()["bn.running_mean"]
    torch.testing.assert_close(state["bn.running_mean"], expected_mean)
    target.eval()
    assert target(torch.randn(2, 1, 6, 6)).shape == (2, 2)


def test_mismatched_shapes_are_refused_not_broadcast() -> None:
    with pytest.raises(ValueError, match=r"model 1 does not match model 0: array 0: shape \(1,\), expected \(3,\)"):
        weighted_average([[np.ones(3, np.float32)], [np.ones(1, np.float32)]], [1, 1])


def test_mismatched_dtypes_and_array_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="dtype float64, expected float32"):
        weighted_average([[np.ones(3, np.float32)], [np.ones(3, np.float64)]], [1, 1])
    with pytest.raises(ValueError, match="wrong number of arrays: 2, expected 1"):
        weighted_average([[np.ones(3, np.float32)], [np.ones(3, np.float32), np.ones(1, np.float32)]], [1, 1])
