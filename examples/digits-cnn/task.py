"""A small CNN on scikit-learn's bundled 8x8 digits, in the task.py shape of Flower's PyTorch tutorials.

Plain PyTorch: nothing here knows about federated learning.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def get_weights(net: nn.Module) -> list[np.ndarray]:
    return [v.cpu().numpy() for v in net.state_dict().values()]


def set_weights(net: nn.Module, parameters: list[np.ndarray]) -> None:
    keys = net.state_dict().keys()
    net.load_state_dict(OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters)), strict=True)


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """Partition `partition_id` of `num_partitions` (IID, fixed seed): 80/20 train/test split."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(42).permutation(len(x))
    part = np.array_split(order, num_partitions)[partition_id]
    x_train, x_test, y_train, y_test = train_test_split(x[part], y[part], test_size=0.2, random_state=42)
    train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    test = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=batch_size)


def train(net, trainloader, valloader, epochs, learning_rate, device):
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    val_loss, val_acc = test(net, valloader, device)
    return {"train_loss": running_loss / max(1, epochs * len(trainloader)), "val_loss": val_loss, "val_accuracy": val_acc}


def test(net, testloader, device):
    net.to(device)
    net.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(device))
            loss += F.cross_entropy(outputs, labels.to(device), reduction="sum").item()
            correct += (outputs.argmax(1) == labels.to(device)).sum().item()
    n = len(testloader.dataset)
    return loss / n, correct / n
