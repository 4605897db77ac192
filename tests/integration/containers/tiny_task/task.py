"""A tiny task in the pytorch-task contract's shape, on generated data: the source `flops build` tests build."""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def get_weights(net: Net) -> list[np.ndarray]:
    return [value.cpu().numpy() for value in net.state_dict().values()]


def set_weights(net: Net, parameters: list[np.ndarray]) -> None:
    keys = net.state_dict().keys()
    net.load_state_dict(OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters)), strict=True)


def load_data(partition_id: int, num_partitions: int, batch_size: int) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(partition_id)
    x = torch.randn(96, 4, generator=generator)
    y = (x.sum(dim=1) > 0).long()
    train = TensorDataset(x[:64], y[:64])
    test = TensorDataset(x[64:], y[64:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=batch_size)


def train(net: Net, trainloader: DataLoader, valloader: DataLoader, epochs: int, learning_rate: float,
          device: str) -> dict:
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate)
    net.train()
    for _ in range(epochs):
        for x, y in trainloader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    loss, accuracy = test(net, valloader, device)
    return {"val_loss": loss, "val_accuracy": accuracy}


def test(net: Net, testloader: DataLoader, device: str) -> tuple[float, float]:
    net.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in testloader:
            out = net(x)
            total_loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(dim=1) == y).sum().item()
            count += len(y)
    return total_loss / count, correct / count
