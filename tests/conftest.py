"""Shared fixtures: throwaway git repositories, a minimal valid task.py, and running the real `flops` CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@pytest.fixture(autouse=True)
def _no_mlflow_uri_outlives_its_test() -> object:
    """mlflow.set_tracking_uri/set_registry_uri are process-global (and exported to the environment): a test that
    read one run's store must not point the next test's MlflowClient or pyfunc.load_model at it."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(variable, None)


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


# --- running the real `flops` CLI, as a user meets it ---

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
EXAMPLE_DIR = REPO_ROOT / "examples" / "digits-cnn"
FLOPS = Path(sys.executable).parent / "flops"


def flops_env(**extra: str) -> dict[str, str]:
    """The environment `flops` runs in: never reach a package index (everything is installed already).

    MLflow's set_tracking_uri() exports MLFLOW_TRACKING_URI into this process's environment, so a test that
    read a store in-process would otherwise point every later `flops` at that store instead of its --workdir.
    """
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**inherited, "PIP_NO_INDEX": "1", "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class FlopsResult:
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def last_json(self) -> dict:
        """The --json result: the last line of stdout."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no stdout; stderr:\n{self.stderr}"
        return json.loads(lines[-1])


@dataclass(frozen=True)
class SubmittedRun:
    """A `flops submit --json` that finished: where it worked, what the CLI printed, and its summary."""

    workdir: Path
    result: FlopsResult
    summary: dict
    repo: Path | None = None

    @property
    def client(self):  # noqa: ANN201 - MlflowClient, imported late: most tests never need MLflow
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.summary["tracking_uri"])

    @property
    def mlflow_run_id(self) -> str:
        return self.summary["mlflow_run_id"]


def run_flops(*args: str, timeout_s: float = 600, cwd: Path | None = None) -> FlopsResult:
    """Run the installed `flops` entry point in a subprocess and capture everything it prints."""
    started = time.monotonic()
    done = subprocess.run([str(FLOPS), *args], capture_output=True, text=True, timeout=timeout_s,
                          env=flops_env(), stdin=subprocess.DEVNULL, cwd=cwd)
    return FlopsResult(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def assert_one_line_error(result: FlopsResult, exit_code: int = 2) -> str:
    """The CLI's contract for a known failure: the exit code, one `error:` line on stderr, no traceback."""
    assert result.returncode == exit_code, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def assert_only_error_line_on_stderr(result: FlopsResult, exit_code: int = 2) -> str:
    """Stricter: stderr holds exactly one line, the error (commands that fail before any progress)."""
    line = assert_one_line_error(result, exit_code)
    assert result.stderr.strip().splitlines() == [line], result.stderr
    return line


def run_ids(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "runs").glob("*") if p.is_dir())


def run_state(workdir: Path, run_id: str) -> dict:
    return json.loads((workdir / "runs" / run_id / "state.json").read_text())


def assert_no_process_left(run_id: str, grace_s: float = 10.0) -> None:
    """No live process carries FLOPS_RUN_ID=run_id (what the local orchestrator tags every process with)."""
    from flops.orchestrators.local import processes_of_run

    deadline = time.monotonic() + grace_s
    while (left := processes_of_run(run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    described = {pid: _cmdline(pid) for pid in left}
    assert not left, f"processes of run {run_id} still alive: {described}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def mlflow_run_count(workdir: Path) -> int:
    """MLflow runs in the work dir's embedded store (0 when the store was never created)."""
    db = workdir / "mlflow.db"
    if not db.exists():
        return 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiment_ids)) if experiment_ids else 0


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2) -> object:
    """Poll PREDICATE until it returns something truthy; fail naming WHAT after TIMEOUT_S."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def git_repo_of(directory: Path, dest: Path) -> Path:
    """A git repository (one commit) holding a copy of DIRECTORY's files."""
    shutil.copytree(directory, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run_git(dest, "init", "-q", "-b", "main")
    run_git(dest, "add", "-A")
    run_git(dest, "commit", "-q", "-m", "initial")
    return dest


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository of examples/digits-cnn, as a user would push it."""
    return git_repo_of(EXAMPLE_DIR, tmp_path_factory.mktemp("example") / "digits-cnn")


@pytest.fixture
def tiny_task_repo(git_repo: GitRepoFactory) -> Path:
    """The minimal valid task (fast rounds) with its dependencies, as a git repository."""
    return git_repo({"task.py": valid_task_source(), "requirements.txt": "torch\nnumpy\n"}, name="tiny-task")


class PacketCapture:
    """TCP payloads read with one raw packet socket (root), on INTERFACE or on every interface of this network
    namespace (one that does not exist yet included), kept per interface name for the frames KEEP accepts:
    keep(interface name, source port, destination port)."""

    SOL_PACKET, PACKET_STATISTICS = 263, 6  # linux/socket.h, linux/if_packet.h: struct tpacket_stats

    def __init__(self, keep: Callable[[str, int, int], bool], interface: str | None = None) -> None:
        self.keep = keep
        self.payload: dict[str, bytearray] = {}
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))  # ETH_P_ALL
        if interface is not None:
            self._sock.bind((interface, 0))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame, (interface, *_rest) = self._sock.recvfrom(1 << 18)
            except socket.timeout:
                continue
            ip = frame[14:]  # an Ethernet header (zeroed on loopback), then IPv4 carrying TCP, or skip
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            source, destination = struct.unpack("!HH", tcp[:4])
            if self.keep(interface, source, destination):
                self.payload.setdefault(interface, bytearray()).extend(tcp[(tcp[12] >> 4) * 4:])

    def stop(self) -> int:
        """Stop; return how many frames the kernel dropped for this socket (0: what was kept is whole)."""
        self._stop.set()
        self._thread.join(timeout=5)
        _packets, drops = struct.unpack("II", self._sock.getsockopt(self.SOL_PACKET, self.PACKET_STATISTICS, 8))
        self._sock.close()
        return drops

    def all_bytes(self) -> bytes:
        return b"".join(bytes(chunk) for chunk in self.payload.values())
