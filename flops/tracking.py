"""MLflow tracking of a run: one experiment per source repository, one MLflow run per submission."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from flops.errors import FlopsError
from flops.slug import slug
from flops.plan import RunPlan
from flops.topology_plot import draw_topology

MODEL_ARTIFACT = "model"


def default_tracking_uri(workdir: Path) -> str:
    """The embedded store: SQLite in the work dir (artifacts beside it, see experiment_artifact_root)."""
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def registered_model_name(source_name: str) -> str:
    return slug(source_name, fallback="model")


def round_metrics(event: dict[str, Any], cluster_names: dict[str, str] | None = None) -> dict[str, float]:
    """Flatten an aggregator's round event into MLflow metric names.

    central_*, train_*, evaluate_* (aggregated learner metrics), bytes per link and the round's cost;
    for a hierarchical round also cluster_<name>_* per cluster and bytes_total over every link.
    """
    metrics: dict[str, float] = {}
    for group in ("central", "train", "evaluate"):
        for key, value in (event.get(group) or {}).items():
            name = key if key.startswith(f"{group}_") else f"{group}_{key}"
            metrics[name.replace("-", "_")] = float(value)
    for key, name in (("bytes_to_root", "bytes_to_root"), ("bytes_from_root", "bytes_from_root"),
                      ("duration_s", "round_duration_s"), ("cost", "comm_cost"), ("examples", "examples")):
        if key in event:
            metrics[name] = float(event[key])
    learner_link_bytes = 0.0
    for index, cluster in (event.get("clusters") or {}).items():
        name = (cluster_names or {}).get(index, f"cluster-{index}")
        to_cluster = float(cluster.get("bytes-learners-to-cluster", 0.0))
        from_cluster = float(cluster.get("bytes-cluster-to-learners", 0.0))
        learner_link_bytes += to_cluster + from_cluster
        metrics[f"cluster_{name}_bytes_learners_to_cluster"] = to_cluster
        metrics[f"cluster_{name}_bytes_cluster_to_learners"] = from_cluster
        metrics[f"cluster_{name}_bytes_to_root"] = float(cluster.get("bytes_to_root", 0.0))
        metrics[f"cluster_{name}_examples"] = float(cluster.get("examples", 0.0))
    metrics["bytes_total"] = metrics.get("bytes_to_root", 0.0) + metrics.get("bytes_from_root", 0.0) + learner_link_bytes
    return metrics


class Tracker:
    """Writes one submission into MLflow through the client API (no global active-run state)."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.mlflow_run_id: str | None = None
        self.cluster_runs: dict[str, str] = {}  # cluster name -> nested MLflow run id

    def _experiment_id(self, source_url: str) -> str:
        experiment = self.client.get_experiment_by_name(source_url)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (self.artifact_root / source_url.replace("/", "_").replace(":", "_")).resolve().as_uri()
        return self.client.create_experiment(source_url, artifact_location=location)

    def start_clusters(self, plan: RunPlan) -> None:
        """One nested run per cluster aggregator (mlflow.parentRunId), holding its local rounds."""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        for cluster in plan.clusters:
            run = self.client.create_run(
                experiment_id, run_name=f"{plan.run_id}/{cluster.name}",
                tags={"mlflow.parentRunId": self.run_id, "flops.run_id": plan.run_id, "flops.cluster": cluster.name},
            )
            self.cluster_runs[cluster.name] = run.info.run_id
            params = {"cluster": cluster.name, "learners": ",".join(l.name for l in cluster.learners),
                      "cost_to_root": cluster.cost_to_root, "learner_link_cost": cluster.learner_link_cost,
                      "local_rounds": plan.config.local_rounds}
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_local_round(self, cluster: str, event: dict[str, Any], local_rounds: int) -> dict[str, float]:
        """A cluster's local round, stepped across global rounds: (global - 1) * local_rounds + local."""
        metrics = round_metrics(event)
        metrics.pop("bytes_total", None)
        step = (int(event["global_round"]) - 1) * local_rounds + int(event["local_round"])
        timestamp = int(float(event.get("time", 0)) * 1000)
        self.client.log_batch(self.cluster_runs[cluster], metrics=[
            Metric(k.replace("bytes_to_root", "bytes_learners_to_cluster").replace("bytes_from_root", "bytes_cluster_to_learners"),
                   v, timestamp, step) for k, v in metrics.items()
        ] + [Metric("global_round", float(event["global_round"]), timestamp, step)])
        return metrics

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

    def log_round(self, event: dict[str, Any], cluster_names: dict[str, str] | None = None) -> dict[str, float]:
        metrics = round_metrics(event, cluster_names)
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

    def log_topology(self, plan: RunPlan) -> None:
        """The assignment (JSON) and a picture of root, clusters, learners and link costs (PNG)."""
        if plan.topology is None:
            return
        assignment = {c.name: [l.name for l in c.learners] for c in plan.clusters} or {
            plan.topology.root: [l.name for l in plan.learners]}
        self.client.log_dict(self.run_id, {"assignment": plan.topology.assignment, "clusters": assignment},
                             "topology/assignment.json")
        self.client.log_dict(self.run_id, json.loads(plan.topology.model_dump_json()), "topology/topology.json")
        self.log_file(draw_topology(plan.topology, plan.run_dir / "topology.png"), "topology")

    def log_accuracy_curve(self, history: list[dict[str, float]], path: Path) -> None:
        rounds = [h for h in history if "accuracy" in h]
        if not rounds:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([h["round"] for h in rounds], [h["accuracy"] for h in rounds], marker="o")
        ax.set_xlabel("global round")
        ax.set_ylabel("central accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        self.log_file(path, "plots")

    def log_file(self, path: Path, artifact_dir: str) -> None:
        if path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow's names)."""
        for run_id in self.cluster_runs.values():
            self.client.set_terminated(run_id, status=status)
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
