"""`flops ui`: a real MLflow server on the work dir's store that refuses a busy port and leaves no orphan."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import FLOPS, assert_only_error_line_on_stderr, flops_env, run_flops

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ui_refuses_a_busy_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_flops("ui", "--port", str(port), "--workdir", str(tmp_path / "work"), timeout_s=120)
    line = assert_only_error_line_on_stderr(result, exit_code=2)
    assert f"--port {port}" in line and "in use" in line, line


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_serves_the_store_and_stops_its_server_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    workdir, port = tmp_path / "work", _free_port()
    started_in = tmp_path / "elsewhere"
    started_in.mkdir()
    ui = subprocess.Popen([str(FLOPS), "ui", "--port", str(port), "--workdir", str(workdir)], cwd=started_in,
                          env=flops_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Signal once flops has announced the URL (the server answering earlier is not enough: a signal then
        # stops flops before its announcement, as it should, and the test would miss the line).
        announced = ""
        while ui.stderr is not None and "http://" not in announced:
            line = ui.stderr.readline()
            if not line:
                break  # flops ui exited
            announced += line
        assert ui.poll() is None and _answers(port), (announced, ui.communicate())
        groups = {pgid for pgid, argv in _live_processes() if "mlflow" in argv and f"--port {port}" in argv}
        assert groups, "flops ui started no MLflow server"
        ui.send_signal(sig)
        _, stderr = ui.communicate(timeout=300)
    finally:
        if ui.poll() is None:
            ui.kill()
    assert ui.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}" in announced and "Traceback" not in stderr, (announced, stderr)
    # Nothing of the server's process group (server and workers) outlives `flops ui`.
    left = [argv for pgid, argv in _live_processes() if pgid in groups]
    assert not left, left
    assert not _answers(port)
    # The store and every artifact location live in the work dir, nothing where flops was started.
    assert (workdir / "mlflow.db").is_file() and not any(started_in.iterdir())


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _live_processes() -> list[tuple[int, str]]:
    """(process group, argv) of every live process."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":  # a zombie is already dead
            found.append((int(fields[2]), argv))
    return found
