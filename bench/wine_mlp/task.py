"""The wine MLP of the memory figures in issue 14: scikit-learn's wine data (178 rows, 13 features, 3 classes),
split by partition, and a two-layer MLP. Written for bench/learner_memory.py."""

import torch
from sklearn.datasets import load_wine
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x):
        return self.layers(x)


def load_data(partition_id, num_partitions, batch_size=16):
    x, y = load_wine(return_X_y=True)
    x = torch.tensor(StandardScaler().fit_transform(x), dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=generator)
    part = order[partition_id::num_partitions]
    cut = max(1, int(0.8 * len(part)))
    train, test = part[:cut], part[cut:] if len(part) > cut else part[:1]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x[test], y[test]), batch_size=batch_size))


def train(net, trainloader, epochs, learning_rate=0.05):
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total = 0.0
    for _ in range(epochs):
        for x, y in trainloader:
            optimizer.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss)
    return total / max(1, epochs * len(trainloader))


def test(net, testloader):
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in testloader:
            out = net(x)
            loss += float(loss_fn(out, y))
            correct += int((out.argmax(1) == y).sum())
            count += len(y)
    return loss / max(1, count), correct / max(1, count)
