"""Shared fixtures: throwaway git repositories and the text of a minimal valid task.py."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "FLOps Test",
    "GIT_AUTHOR_EMAIL": "test@flops.invalid",
    "GIT_COMMITTER_NAME": "FLOps Test",
    "GIT_COMMITTER_EMAIL": "test@flops.invalid",
    # Fixed dates make commit SHAs reproducible between runs.
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}

GitRepoFactory = Callable[..., Path]


def run_git(repo: Path, *args: str) -> str:
    """Run git in REPO with the fixed test identity, ignoring the user's global config; return stdout."""
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1", **GIT_IDENTITY}
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def write_files(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepoFactory:
    """Factory: write FILES into a new dir, `git init -b main`, add and commit them; returns the repo path."""
    counter = iter(range(1000))

    def make(files: dict[str, str], name: str | None = None, message: str = "initial") -> Path:
        repo = tmp_path / (name or f"repo{next(counter)}")
        repo.mkdir(parents=True)
        write_files(repo, files)
        run_git(repo, "init", "-q", "-b", "main")
        run_git(repo, "add", "-A")
        run_git(repo, "commit", "-q", "-m", message)
        return repo

    return make


def valid_task_source() -> str:
    """A minimal task.py that fits the pytorch-task contract: a tiny model on generated data."""
    return textwrap.dedent(
        '''\
        """Tiny linear classifier on generated data, shaped like Flower's PyTorch tutorial task.py."""

        from collections import OrderedDict

        import numpy as np
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(x)


        def get_weights(net):
            return [val.cpu().numpy() for _, val in net.state_dict().items()]


        def set_weights(net, parameters):
            params_dict = zip(net.state_dict().keys(), parameters)
            state_dict = OrderedDict({k: torch.tensor(v) for k, v in params_dict})
            net.load_state_dict(state_dict, strict=True)


        def load_data(partition_id, num_partitions, batch_size):
            generator = torch.Generator().manual_seed(partition_id)
            x = torch.randn(64, 4, generator=generator)
            y = (x.sum(dim=1) > 0).long()
            train_set, test_set = TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])
            return DataLoader(train_set, batch_size=batch_size, shuffle=True), DataLoader(test_set, batch_size=batch_size)


        def train(net, trainloader, valloader, epochs, learning_rate, device):
            net.to(device)
            optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate)
            criterion = nn.CrossEntropyLoss()
            net.train()
            for _ in range(epochs):
                for x, y in trainloader:
                    optimizer.zero_grad()
                    criterion(net(x.to(device)), y.to(device)).backward()
                    optimizer.step()
            val_loss, val_accuracy = test(net, valloader, device)
            return {"val_loss": val_loss, "val_accuracy": val_accuracy}


        def test(net, testloader, device):
            net.to(device)
            criterion = nn.CrossEntropyLoss()
            loss, correct, total = 0.0, 0, 0
            net.eval()
            with torch.no_grad():
                for x, y in testloader:
                    out = net(x.to(device))
                    loss += criterion(out, y.to(device)).item()
                    correct += (out.argmax(1) == y.to(device)).sum().item()
                    total += len(y)
            return loss / max(len(testloader), 1), correct / max(total, 1)
        '''
    )


@pytest.fixture(name="valid_task_source")
def valid_task_source_fixture() -> str:
    return valid_task_source()
