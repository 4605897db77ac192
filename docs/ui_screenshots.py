"""Screenshots of the MLflow UI for a finished FLOps run (run page, logged-model page), taken with headless Chromium.

Optional; needs Debian's chromium (`apt-get install -y chromium`). Usage, after `make demo` or any `flops submit`:

    python docs/ui_screenshots.py --workdir .flops [--out docs/img]

It starts `flops ui`'s server (flops/ui.py) on a free port, opens the newest FLOps run as a new user would,
saves docs/img/mlflow-run.png and docs/img/mlflow-model.png, and stops the server. Exit 0 on success,
2 when chromium or a finished run is missing.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from flops.tracking import default_tracking_uri
from flops.ui import MODEL_TRAINING_VIEW, MlflowUI

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--window-size=1500,1100",
                  # The metric charts load after the page: 30 s of virtual time left them as spinners.
                  "--virtual-time-budget=120000", "--run-all-compositor-stages-before-draw"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def newest_finished_run(tracking_uri: str) -> tuple[str, str, str]:
    """(experiment id, MLflow run id, logged model id) of the newest finished FLOps run with a model."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(experiments, filter_string="attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"]):
        if "flops.model_uri" not in run.data.tags:
            continue
        name, version = run.data.tags["flops.model_uri"].removeprefix("models:/").split("/")
        # A version registered from a logged model names it in its source (models:/m-...); model_id may be unset.
        model_version = client.get_model_version(name, version)
        model_id = model_version.model_id or model_version.source.removeprefix("models:/")
        return run.info.experiment_id, run.info.run_id, model_id
    raise LookupError(f"no finished FLOps run with a model in {tracking_uri}")


def screenshot(browser: str, url: str, path: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=180)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".flops"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    args = parser.parse_args()
    browser = chromium()
    if browser is None:
        print("error: chromium not found; install it with `apt-get install -y chromium`", file=sys.stderr)
        return 2
    try:
        experiment_id, run_id, model_id = newest_finished_run(default_tracking_uri(args.workdir.resolve()))
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = MlflowUI(args.workdir, None, port=port)
    ui.start()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        pages = {
            "mlflow-run.png": f"{ui.url}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}",
            "mlflow-model.png": f"{ui.url}/#/experiments/{experiment_id}/models/{model_id}?{MODEL_TRAINING_VIEW}",
            "mlflow-metrics.png": f"{ui.url}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{MODEL_TRAINING_VIEW}",
        }
        for name, url in pages.items():
            screenshot(browser, url, args.out / name)
            print(f"{args.out / name}: {url}")
    finally:
        ui.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
