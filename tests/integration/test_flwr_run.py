"""Flower's own CLI accepts the app `flops augment` writes: `flwr run` on a hand-started SuperLink and SuperNodes."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import run_flops, wait_for
from flops.orchestrators.local import RUN_ID_ENV, free_port, processes_of_run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_flwr_run_runs_the_generated_app_for_one_round(tiny_task_repo: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    augmented = run_flops("augment", str(tiny_task_repo), "-o", str(app), "--workdir", str(tmp_path / "work"))
    assert augmented.returncode == 0, augmented.output
    assert augmented.stdout.strip() == str(app)
    assert tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]

    port = free_port()
    flwr_home = tmp_path / "flwr_home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    # Every process (and what it starts, e.g. superexec re-parented to init) carries a marker to find it by.
    marker = f"flwr-run-test-{secrets.token_hex(4)}"
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           RUN_ID_ENV: marker, "PYTHONUNBUFFERED": "1"}
    started: list[subprocess.Popen] = []

    def start(argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(tmp_path / log_name, "wb")  # noqa: SIM115 - closed with the test's tmp dir
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=tmp_path, start_new_session=True)
        started.append(proc)
        return proc

    try:
        superlink = start([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                           "--port", str(port)], "superlink.log")
        wait_for(lambda: superlink.poll() is not None or _port_open(port), 60, "the SuperLink's port")
        assert superlink.poll() is None, (tmp_path / "superlink.log").read_text()
        for partition in range(2):
            start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                   "--port", str(free_port()), "--node-config", f"partition-id={partition} num-partitions=2"],
                  f"supernode-{partition}.log")
        done = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), "local", "--stream", "--run-config",
             "num-server-rounds=1 min-train-nodes=2 min-evaluate-nodes=2 min-available-nodes=2"],
            capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
        )
    finally:
        for proc in started:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in processes_of_run(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "[ROUND 1/1]" in output, output
    assert "Received 2 results and 0 failures" in output, output
    # The root aggregator's own events, printed to the streamed log when no output dir is set.
    assert '[flops] {"event": "round"' in output and '"round": 1,' in output, output
    assert '[flops] {"event": "finished"' in output, output
    wait_for(lambda: not processes_of_run(marker), 10, "the Flower processes to exit")
