"""The MLflow UI on a work dir's store: a checked port, artifacts under the work dir, and no orphan server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from flops.errors import BadInputError, FlopsError
from flops.tracking import default_tracking_uri

# MLflow 3.17's UI picks the experiment view from the `workflowType` URL parameter (or the browser's last choice),
# not from the experiment's tags: a link with it opens on model training instead of the GenAI traces view.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
STARTUP_TIMEOUT_S = 300.0  # a loaded machine needs minutes for a first start (store migrations)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (a user would otherwise open someone else's server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise BadInputError(f"--port {port}: {host}:{port} is already in use; choose another port") from None


def ui_argv(tracking_uri: str, workdir: Path, host: str, port: int) -> list[str]:
    """`mlflow ui` on the store, with uploaded and default artifacts under the work dir."""
    artifacts = (workdir / "mlartifacts").resolve()
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--default-artifact-root", (artifacts / "default").as_uri(),
            "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
            "--workers", "1"]  # one user, one browser: no need for four servers


class MlflowUI:
    """One `mlflow ui` process group, started in the work dir and stopped as a whole."""

    def __init__(self, workdir: Path, tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000) -> None:
        self.workdir = workdir.resolve()
        self.tracking_uri = tracking_uri or default_tracking_uri(self.workdir)
        self.host, self.port = host, port
        self.log_path = self.workdir / "mlflow-ui.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.url}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"

    def start(self) -> None:
        check_port_free(self.host, self.port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tracking_uri.startswith("sqlite:"):
            from flops.tracking import Tracker

            Tracker(self.tracking_uri, self.workdir / "mlartifacts")  # a new store's Default experiment: work dir
        with open(self.log_path, "ab") as log:
            # Its own process group, so stop() reaches the server's workers too; cwd: nothing lands where flops ran.
            self.process = subprocess.Popen(ui_argv(self.tracking_uri, self.workdir, self.host, self.port),
                                            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_until_serving()

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-2:])
                raise FlopsError(f"the MLflow UI exited with code {self.process.returncode}: {tail} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise FlopsError(f"the MLflow UI did not answer on {self.url} within {STARTUP_TIMEOUT_S:.0f}s (log: {self.log_path})")

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that ignored SIGTERM, or outlived the server
        except ProcessLookupError:
            pass
        self.process.wait()


def latest_experiments(tracking_uri: str) -> list[tuple[str, str]]:
    """(experiment id, name) of the store's experiments that hold runs, most recently updated first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = sorted(client.search_experiments(), key=lambda e: e.last_update_time or 0, reverse=True)
    return [(e.experiment_id, e.name) for e in experiments if e.name != "Default"]


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def serve_ui(workdir: Path, tracking_uri: str | None, port: int, announce: Callable[[str], None]) -> int:
    """Start the UI, announce its URLs once it answers, serve until stopped; returns the exit code.

    SIGTERM and SIGINT are caught from the first moment, so the server never outlives this call.
    """
    ui = MlflowUI(workdir, tracking_uri, port=port)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ui.start()
        announce(f"MLflow UI for {ui.tracking_uri} on {ui.url} (Ctrl-C stops it)")
        for experiment_id, name in latest_experiments(ui.tracking_uri)[:5]:
            announce(f"  {name}: {ui.experiment_url(experiment_id)}")
        return ui.process.wait() if ui.process is not None else 0
    except KeyboardInterrupt:
        return 0
    finally:
        ui.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
