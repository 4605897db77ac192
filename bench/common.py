"""Shared helpers of the run benchmarks: example repo, `flops submit`, plain Flower processes, load and medians."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# The same port choice and probe as FLOps' orchestrators, so the plain-Flower baseline starts alike.
from flops.orchestrators.base import port_open
from flops.orchestrators.local import free_port  # noqa: F401 - re-exported for the bench scripts

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
EXAMPLE_DIR = REPO_ROOT / "examples" / "digits-cnn"
FLOPS_CLI = Path(sys.executable).parent / "flops"
STOP_GRACE_S = 5.0


def load_average() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them: noted beside each figure."""
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """Median, minimum and maximum (the spread) of repeated measurements."""
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float], unit: str = "s") -> str:
    med, lo, hi = median_spread(values)
    return f"{med:.2f} {unit} [{lo:.2f}-{hi:.2f}]"


def example_repo(tmp: Path, source: Path = EXAMPLE_DIR) -> str:
    """A git repo holding a copy of SOURCE, committed; returns its file:// URL."""
    repo = tmp / "source-repo"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(source, repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(argv, cwd=repo, env=env, check=True)
    return f"file://{repo}"


def flops_submit(source: str, workdir: Path, args: list[str], env: dict[str, str] | None = None,
                 timeout_s: float = 900.0) -> dict[str, Any]:
    """`flops submit SOURCE ARGS --json`; the JSON summary plus the CLI's wall time and the load."""
    argv = [str(FLOPS_CLI), "submit", source, "--workdir", str(workdir), "--json", *args]
    load_before = load_average()
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout_s)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.strip().startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"flops submit failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    summary = json.loads(lines[-1])
    summary.update(cli_wall_s=wall, load_before=load_before, load_after=load_average())
    return summary


def round_events(run_dir: Path) -> list[dict[str, Any]]:
    """The root aggregator's round events (rounds >= 1), the source of MLflow's round_duration_s."""
    events = []
    for path in run_dir.glob("output/events.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "round" and event["round"] >= 1:
                events.append(event)
    return events


def mlflow_round_durations(tracking_uri: str, mlflow_run_id: str) -> list[float]:
    """round_duration_s per global round, as FLOps logged it to MLflow."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(mlflow_run_id, "round_duration_s")
    return [m.value for m in sorted(history, key=lambda m: m.step) if m.step >= 1]


def wait_for_port(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


class Stamped:
    """A process whose output lines are kept with the wall-clock time they arrived (Flower logs lack times)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.lines: list[tuple[float, str]] = []
        self.log_path = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                now = time.time()
                self.lines.append((now, line.rstrip("\n")))
                log.write(f"{now:.3f} {line}")
                log.flush()

    def wait(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        """SIGTERM to the process group this object started, SIGKILL after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                self.proc.poll()
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)
        self.proc.poll()


def flops_events(lines: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """The `[flops] {...}` events a ServerApp printed, from captured output."""
    events = []
    for _, line in lines:
        if "[flops] {" in line:
            events.append(json.loads(line[line.index("[flops] ") + 8:]))
    return events
