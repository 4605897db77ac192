"""MLflow tracking of a run: one experiment per source repository, one MLflow run per submission."""

from __future__ import annotations

import json
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from flops.errors import FlopsError
from flops.slug import slug
from flops.plan import RunPlan
from flops.curve_plot import draw_curve
from flops.topology_plot import draw_topology
from flops.tracking_logs import write_clean_logs
from flops.tracking_names import (
    EXPERIMENT_KIND_TAG, LOCAL_ROUND_PREFIX, MODEL_TRAINING_KIND, SOURCE_URL_TAG, cluster_prefix, cluster_run_name,
    experiment_name, metric_key, redact_url, run_name,
)

MODEL_ARTIFACT = "model"
COMM_COST_UNIT = "MB x link cost per MB (1 per MB on links without a cost)"


def default_tracking_uri(workdir: Path) -> str:
    """The embedded store: SQLite in the work dir (artifacts beside it, see experiment_artifact_root)."""
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def registered_model_name(source_name: str) -> str:
    return slug(source_name, fallback="model")


def round_metrics(event: dict[str, Any], cluster_names: dict[str, str] | None = None) -> dict[str, float]:
    """Flatten an aggregator's round event into MLflow metric names.

    central_*, train_*, evaluate_* (aggregated learner metrics), bytes per link and the round's cost;
    for a hierarchical round also `cluster-<name>/<quantity>` per cluster and bytes_total over every link.
    """
    metrics: dict[str, float] = {}
    for group in ("central", "train", "evaluate"):
        for key, value in (event.get(group) or {}).items():
            name = key if key.startswith(f"{group}_") else f"{group}_{key}"
            metrics[metric_key(name.replace("-", "_"))] = float(value)
    for key, name in (("bytes_to_root", "bytes_to_root"), ("bytes_from_root", "bytes_from_root"),
                      ("duration_s", "round_duration_s"), ("cost", "comm_cost"), ("examples", "examples")):
        if key in event:
            metrics[name] = float(event[key])
    learner_link_bytes = 0.0
    for index, cluster in (event.get("clusters") or {}).items():
        prefix = cluster_prefix((cluster_names or {}).get(index, index))
        to_cluster = float(cluster.get("bytes-learners-to-cluster", 0.0))
        from_cluster = float(cluster.get("bytes-cluster-to-learners", 0.0))
        learner_link_bytes += to_cluster + from_cluster
        metrics[f"{prefix}/bytes_learners_to_cluster"] = to_cluster
        metrics[f"{prefix}/bytes_cluster_to_learners"] = from_cluster
        metrics[f"{prefix}/bytes_to_root"] = float(cluster.get("bytes_to_root", 0.0))
        metrics[f"{prefix}/examples"] = float(cluster.get("examples", 0.0))
    metrics["bytes_total"] = metrics.get("bytes_to_root", 0.0) + metrics.get("bytes_from_root", 0.0) + learner_link_bytes
    return metrics


def _millis(event: dict[str, Any]) -> int:
    """The event's own wall time; an event without one is logged at the time FLOps read it (never 0)."""
    return int(float(event.get("time") or time.time()) * 1000)


def run_params(plan: RunPlan) -> dict[str, Any]:
    """Parameters of the parent run; a cluster's child run repeats the shared ones under the same names."""
    cfg = plan.config
    params: dict[str, Any] = {
        "source_url": redact_url(plan.source_url), "commit": plan.commit, "ref": plan.source_ref or "",
        "rounds": cfg.rounds, "learners": len(plan.learners), "epochs": cfg.training.local_epochs,
        "batch_size": cfg.training.batch_size, "learning_rate": cfg.training.learning_rate,
        "strategy": cfg.strategy.name, "fraction_train": cfg.strategy.fraction_train,
        "fraction_evaluate": cfg.strategy.fraction_evaluate, "flwr_version": version("flwr"),
        "orchestrator": plan.orchestrator, "comm_cost_unit": COMM_COST_UNIT,
    }
    if plan.hierarchical:
        params.update(clusters=len(plan.clusters), local_rounds=cfg.local_rounds,
                      assignment=plan.topology.assignment if plan.topology else "")
    return params


class Tracker:
    """Writes one submission into MLflow through the client API (no global active-run state)."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        if artifact_root is not None:
            _create_embedded_store(tracking_uri, artifact_root)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.mlflow_run_id: str | None = None
        self.plan: RunPlan | None = None
        self.cluster_runs: dict[str, str] = {}  # cluster name -> nested MLflow run id
        self.cluster_ended_ms: dict[str, int] = {}
        self.training_started_ms: int | None = None  # the root's round 0: clusters start working after it
        self.central_history: list[dict[str, float]] = []  # {"round", "accuracy", "loss"} from round 0 on
        self.final_metrics: list[Metric] = []  # the last round's central metrics: what the final model scored
        self.final_step = 0  # the last global round logged

    def _experiment_id(self, plan: RunPlan) -> str:
        url = redact_url(plan.source_url)
        named = self.client.get_experiment_by_name(plan.source_name)
        owner = None if named is None else named.tags.get(SOURCE_URL_TAG, url)
        name = experiment_name(plan.source_name, url, owner)
        experiment = named if name == plan.source_name and named is not None else self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (self.artifact_root / name).resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location, tags={
            SOURCE_URL_TAG: url, EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND,
            "mlflow.note.content": f"FLOps runs of {url}: one run per `flops submit`, newest first.",
        })

    def start(self, plan: RunPlan) -> str:
        self.plan = plan
        url = redact_url(plan.source_url)
        run = self.client.create_run(
            self._experiment_id(plan),
            run_name=run_name(plan),
            tags={"flops.run_id": plan.run_id, "mlflow.source.git.commit": plan.commit,
                  "mlflow.source.name": url, "mlflow.source.git.repoURL": url, "mlflow.source.type": "PROJECT",
                  "flops.orchestrator": plan.orchestrator, "flops.hierarchical": str(plan.hierarchical).lower(),
                  "mlflow.note.content": f"RUNNING: {run_name(plan)} on {url} at {plan.commit[:12]}."},
        )
        self.mlflow_run_id = run.info.run_id
        params = run_params(plan)
        self.client.log_batch(self.mlflow_run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.log_dict(self.mlflow_run_id, json.loads(plan.config.model_dump_json()), "config/run_config.json")
        self.client.log_artifacts(self.mlflow_run_id, str(plan.app_dir), "flower_app")
        return self.mlflow_run_id

    def _cluster_run(self, cluster_name: str, start_ms: int) -> str:
        """The cluster's nested run (mlflow.parentRunId), created when its work starts, with its topology slice."""
        if cluster_name in self.cluster_runs:
            return self.cluster_runs[cluster_name]
        plan = self._plan
        cluster = next(c for c in plan.clusters if c.name == cluster_name)
        run = self.client.create_run(
            self.client.get_run(self.run_id).info.experiment_id, run_name=cluster_run_name(plan, cluster.name),
            start_time=start_ms,
            tags={"mlflow.parentRunId": self.run_id, "flops.run_id": plan.run_id, "flops.cluster": cluster.name,
                  "mlflow.source.name": redact_url(plan.source_url), "mlflow.source.git.commit": plan.commit,
                  "mlflow.note.content": f"Cluster {cluster.name} of {run_name(plan)}: learners "
                                         f"{', '.join(l.name for l in cluster.learners)}; {plan.config.local_rounds} "
                                         "local rounds per global round (steps count local rounds)."},
        )
        self.cluster_runs[cluster.name] = run.info.run_id
        shared = {k: v for k, v in run_params(plan).items() if k not in ("clusters", "learners")}
        params = {**shared, "cluster": cluster.name, "learners": len(cluster.learners),
                  "learner_names": ",".join(l.name for l in cluster.learners),
                  "cost_to_root": cluster.cost_to_root, "learner_link_cost": cluster.learner_link_cost}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.log_dict(run.info.run_id, json.loads(cluster.model_dump_json()), "topology/cluster.json")
        return run.info.run_id

    def log_local_round(self, cluster: str, event: dict[str, Any], local_rounds: int) -> dict[str, float]:
        """A cluster's local round on its child run, stepped across global rounds: (global - 1) * local_rounds + local.

        Names start with `local_round/`, so no chart puts local rounds on the parent's global-round axis; the
        cluster's last local round of each global round also goes to the parent as `cluster-<name>/evaluate_*`.
        """
        metrics = round_metrics(event)
        metrics.pop("bytes_total", None)
        global_round, local_round = int(event["global_round"]), int(event["local_round"])
        step = (global_round - 1) * local_rounds + local_round
        timestamp = _millis(event)
        run_id = self._cluster_run(cluster, min(self.training_started_ms or timestamp, timestamp))
        renamed = {k.replace("bytes_to_root", "bytes_learners_to_cluster").replace("bytes_from_root", "bytes_cluster_to_learners"): v
                   for k, v in metrics.items()}
        renamed["global_round"] = float(global_round)
        self.client.log_batch(run_id, metrics=[Metric(LOCAL_ROUND_PREFIX + k, v, timestamp, step) for k, v in renamed.items()])
        self.cluster_ended_ms[cluster] = timestamp
        if local_round == local_rounds:
            evaluated = {f"{cluster_prefix(cluster)}/{k}": v for k, v in metrics.items() if k.startswith("evaluate_")}
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, timestamp, global_round) for k, v in evaluated.items()])
        return metrics

    def log_initial(self, event: dict[str, Any]) -> None:
        """Round 0, the initial model's central evaluation: step 0 of the same central_* curves as every round."""
        self.training_started_ms = _millis(event)
        self.log_round(event)
        for cluster in self._plan.clusters:
            self._cluster_run(cluster.name, self.training_started_ms)

    def log_round(self, event: dict[str, Any], cluster_names: dict[str, str] | None = None) -> dict[str, float]:
        """A global round at step = global round; round 0 carries only the initial model's central metrics."""
        step = int(event["round"])
        metrics = round_metrics(event, cluster_names)
        if step == 0:
            metrics = {k: v for k, v in metrics.items() if k.startswith("central_")}
        timestamp = _millis(event)
        logged = [Metric(k, v, timestamp, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=logged)
        self.final_metrics = [m for m in logged if m.key.startswith("central_")]
        self.final_step = step
        central = event.get("central") or {}
        self.central_history.append({"round": step, **{k: float(v) for k, v in central.items()}})
        return metrics

    def log_summary(self, summary: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, timestamp, step) for k, v in summary.items()])

    def log_logs(self, logs_dir: Path, clean_dir: Path) -> None:
        """The run's logs without colour codes and polling lines (the originals stay in the work dir)."""
        if logs_dir.is_dir():
            self.client.log_artifacts(self.run_id, str(write_clean_logs(logs_dir, clean_dir)), "logs")

    def log_topology(self, plan: RunPlan) -> None:
        """The assignment (JSON) and a picture of root, clusters, learners and link costs (PNG)."""
        if plan.topology is None:
            return
        assignment = {c.name: [l.name for l in c.learners] for c in plan.clusters} or {
            plan.topology.root: [l.name for l in plan.learners]}
        strategy = plan.topology.assignment if plan.hierarchical else "none (flat: every learner joins the root)"
        self.client.log_dict(self.run_id, {"assignment": strategy, "clusters": assignment,
                                           "comm_cost_unit": COMM_COST_UNIT}, "topology/assignment.json")
        self.client.log_dict(self.run_id, json.loads(plan.topology.model_dump_json()), "topology/topology.json")
        self.log_file(draw_topology(plan.topology, plan.run_dir / "topology.png"), "topology")

    def log_curves(self, plots_dir: Path) -> None:
        """plots/accuracy.png and plots/loss.png: central evaluation from round 0 (the initial model) on."""
        for quantity in ("accuracy", "loss"):
            points = [(h["round"], h[quantity]) for h in self.central_history if quantity in h]
            if points:
                self.log_file(draw_curve(points, quantity, run_name(self._plan), plots_dir / f"{quantity}.png"), "plots")

    def log_file(self, path: Path, artifact_dir: str) -> None:
        if path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def describe(self, text: str) -> None:
        self.set_tag("mlflow.note.content", text)

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow's names). A child run ends with its cluster's last local round."""
        now = int(time.time() * 1000)
        for cluster, run_id in self.cluster_runs.items():
            ended = self.cluster_ended_ms.get(cluster, now) if status == "FINISHED" else now
            self.client.set_terminated(run_id, status=status, end_time=ended)
        self.client.set_terminated(self.run_id, status=status)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    @property
    def run_id(self) -> str:
        if self.mlflow_run_id is None:
            raise RuntimeError("Tracker.start() was not called")
        return self.mlflow_run_id

    @property
    def _plan(self) -> RunPlan:
        if self.plan is None:
            raise RuntimeError("Tracker.start() was not called")
        return self.plan


def _create_embedded_store(tracking_uri: str, artifact_root: Path) -> None:
    """Create the SQLite store with its Default experiment's artifacts under the work dir (not the caller's cwd)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    artifact_root.mkdir(parents=True, exist_ok=True)
    SqlAlchemyStore(tracking_uri, (artifact_root / "default").resolve().as_uri())


class ModelLogger:
    """The run environment's model-logging process (`python -m flops.model_logger`, it imports the user's code),
    started ahead: it imports torch, MLflow and the user's task while the rounds run, then waits on its stdin for
    the request naming the final model. close() ends it if it was never used (a failed or stopped run)."""

    def __init__(self, plan: RunPlan) -> None:
        self.log_path = plan.logs_dir / "model_logging.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(plan.python), "-m", "flops.model_logger", str(plan.app_dir / "user"), plan.task_module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )

    def log(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            stdout, _ = self.proc.communicate(json.dumps(request), timeout=600)
        except subprocess.TimeoutExpired:
            self.close()
            raise FlopsError(f"logging the model to MLflow took over 600 s (log: {self.log_path})") from None
        except BrokenPipeError:  # it died before reading the request (its import failed): its log says why
            self.proc.wait()
            stdout = ""
        if self.proc.returncode != 0:
            self._log.flush()
            tail = " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise FlopsError(f"logging the model to MLflow failed: {tail} (log: {self.log_path})")
        return json.loads(stdout.strip().splitlines()[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def log_final_model(plan: RunPlan, tracker: Tracker, logger: ModelLogger | None = None) -> dict[str, Any]:
    """Log and register the final model from the run's own environment (it imports the user's code), with the
    user's repository and commit as its source, pinned requirements, partition datasets and final metrics;
    through LOGGER when one was started ahead, else a new one.

    Returns {"model_uri", "logged_model_uri", "model_id", "registered_model", "version", "requirements"}.
    """
    url = redact_url(plan.source_url)
    source_tags = {"mlflow.source.name": url, "mlflow.source.git.repoURL": url,
                   "mlflow.source.git.commit": plan.commit, "mlflow.source.type": "PROJECT",
                   "mlflow.source.git.branch": plan.source_ref or ""}
    experiment = tracker.client.get_experiment(tracker.client.get_run(tracker.run_id).info.experiment_id)
    request = {
        "tracking_uri": plan.tracking_uri,
        "mlflow_run_id": tracker.run_id,
        "weights": str(plan.output_dir / "final_model.npz"),
        "input_example": str(plan.output_dir / "input_example.npy"),
        "registered_model_name": registered_model_name(experiment.name),
        "requirements": plan.dependencies,
        "artifact_name": MODEL_ARTIFACT,
        "model_tags": {**source_tags, "flops.run_id": plan.run_id},
        # MLflow links the run's metrics of this step to the model: the final round's, not round 0's.
        "step": tracker.final_step,
        "model_params": {k: str(v) for k, v in run_params(plan).items()},
        "datasets": {"num_partitions": len(plan.learners), "batch_size": plan.config.training.batch_size,
                     "source_tags": source_tags},
    }
    logger = logger or ModelLogger(plan)
    try:
        return logger.log(request)
    finally:
        logger.close()
