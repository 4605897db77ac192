"""MLflow tracking of a run: one experiment per source repository, one MLflow run per submission."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from flops.errors import FlopsError
from flops.plan import RunPlan

MODEL_ARTIFACT = "model"


def default_tracking_uri(workdir: Path) -> str:
    """The embedded store: SQLite in the work dir (artifacts beside it, see experiment_artifact_root)."""
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def registered_model_name(source_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in source_name) or "model"


def round_metrics(event: dict[str, Any]) -> dict[str, float]:
    """Flatten a root aggregator round event into MLflow metric names (central_*, train_*, evaluate_*)."""
    metrics: dict[str, float] = {}
    for group in ("central", "train", "evaluate"):
        for key, value in (event.get(group) or {}).items():
            name = key if key.startswith(f"{group}_") else f"{group}_{key}"
            metrics[name.replace("-", "_")] = float(value)
    for key in ("bytes_to_root", "bytes_from_root", "duration_s"):
        if key in event:
            metrics[key if key != "duration_s" else "round_duration_s"] = float(event[key])
    return metrics


class Tracker:
    """Writes one submission into MLflow through the client API (no global active-run state)."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.mlflow_run_id: str | None = None

    def _experiment_id(self, source_url: str) -> str:
        experiment = self.client.get_experiment_by_name(source_url)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (self.artifact_root / source_url.replace("/", "_").replace(":", "_")).resolve().as_uri()
        return self.client.create_experiment(source_url, artifact_location=location)

    def start(self, plan: RunPlan) -> str:
        experiment_id = self._experiment_id(plan.source_url)
        run = self.client.create_run(
            experiment_id,
            run_name=plan.run_id,
            tags={"flops.run_id": plan.run_id, "mlflow.source.git.commit": plan.commit,
                  "mlflow.source.name": plan.source_url, "flops.orchestrator": plan.orchestrator},
        )
        self.mlflow_run_id = run.info.run_id
        cfg = plan.config
        params = {
            "source_url": plan.source_url, "commit": plan.commit, "ref": plan.source_ref or "",
            "rounds": cfg.rounds, "learners": cfg.learners, "epochs": cfg.training.local_epochs,
            "batch_size": cfg.training.batch_size, "learning_rate": cfg.training.learning_rate,
            "strategy": cfg.strategy.name, "fraction_train": cfg.strategy.fraction_train,
            "fraction_evaluate": cfg.strategy.fraction_evaluate, "flwr_version": version("flwr"),
            "orchestrator": plan.orchestrator,
        }
        self.client.log_batch(self.mlflow_run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.log_dict(self.mlflow_run_id, json.loads(cfg.model_dump_json()), "config/run_config.json")
        self.client.log_artifacts(self.mlflow_run_id, str(plan.app_dir), "flower_app")
        return self.mlflow_run_id

    def log_round(self, event: dict[str, Any]) -> dict[str, float]:
        metrics = round_metrics(event)
        step = int(event["round"])
        timestamp = int(float(event.get("time", 0)) * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, timestamp, step) for k, v in metrics.items()]
        )
        return metrics

    def log_initial(self, event: dict[str, Any]) -> None:
        """Round 0 (the initial model) as initial_* metrics, so per-round series hold one point per round."""
        metrics = {f"initial_{k}": float(v) for k, v in (event.get("central") or {}).items()}
        self.log_summary(metrics)

    def log_summary(self, summary: dict[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, 0, 0) for k, v in summary.items()])

    def log_logs(self, logs_dir: Path) -> None:
        if logs_dir.is_dir():
            self.client.log_artifacts(self.run_id, str(logs_dir), "logs")

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow's names)."""
        self.client.set_terminated(self.run_id, status=status)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    @property
    def run_id(self) -> str:
        if self.mlflow_run_id is None:
            raise RuntimeError("Tracker.start() was not called")
        return self.mlflow_run_id


def log_final_model(plan: RunPlan, mlflow_run_id: str, task_module: str, dependencies: list[str]) -> dict[str, str]:
    """Log and register the final model from the run's own environment (it imports the user's code).

    Returns {"model_uri", "registered_model", "version"}.
    """
    request = {
        "tracking_uri": plan.tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "code_dir": str(plan.app_dir / "user"),
        "task_module": task_module,
        "weights": str(plan.output_dir / "final_model.npz"),
        "input_example": str(plan.output_dir / "input_example.npy"),
        "registered_model_name": registered_model_name(plan.source_name),
        "pip_requirements": dependencies,
        "artifact_name": MODEL_ARTIFACT,
    }
    log_path = plan.logs_dir / "model_logging.log"
    with open(log_path, "w") as log:
        done = subprocess.run(
            [str(plan.python), "-m", "flops.model_logger"],
            input=json.dumps(request), stdout=subprocess.PIPE, stderr=log, text=True, timeout=600,
        )
    if done.returncode != 0:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        raise FlopsError(f"logging the model to MLflow failed: {tail} (log: {log_path})")
    return json.loads(done.stdout.strip().splitlines()[-1])
