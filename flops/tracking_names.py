"""What a run is called in MLflow: experiment and run names, redacted source URLs, metric names, descriptions."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

from flops.plan import RunPlan

SOURCE_URL_TAG = "flops.source_url"
# The experiment kind MLflow's UI reads from an experiment's tags (mlflow/server/js: "custom_model_development"
# is the model-training kind; "genai_development" is the traces view a new experiment would otherwise get).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
LOCAL_ROUND_PREFIX = "local_round/"  # child runs: a chart of a local-round metric says so in its name


def redact_url(url: str) -> str:
    """The URL without credentials: https://user:token@host/x -> https://host/x (scp-like git@host:x is kept)."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def experiment_name(repo_name: str, source_url: str, url_owning_name: str | None) -> str:
    """The repository's name; when another URL already owns that name, the name plus a short hash of this URL."""
    if url_owning_name is None or url_owning_name == source_url:
        return repo_name
    return f"{repo_name}-{hashlib.sha256(source_url.encode()).hexdigest()[:6]}"


def run_name(plan: RunPlan) -> str:
    """What ran, readable in the runs table: `digits-cnn 3 learners x 3 rounds fedavg`."""
    cfg = plan.config
    if plan.hierarchical:
        shape = (f"{len(plan.learners)} learners in {len(plan.clusters)} clusters x {cfg.rounds} rounds"
                 f" x {cfg.local_rounds} local")
    else:
        shape = f"{len(plan.learners)} learners x {cfg.rounds} rounds"
    return f"{plan.source_name} {shape} {cfg.strategy.name}"


def cluster_run_name(plan: RunPlan, cluster: str) -> str:
    return f"{plan.source_name} {cluster_prefix(cluster)}"


def cluster_prefix(cluster: str) -> str:
    """`cluster-0` for a cluster named `0` or `cluster-0`; metrics of a cluster are `<prefix>/<quantity>`."""
    return cluster if cluster.startswith("cluster") else f"cluster-{cluster}"


def run_description(plan: RunPlan, status: str, message: str, final: dict[str, float], rounds_completed: int,
                    bytes_to_root: int, model_uri: str | None) -> str:
    """The run's note (mlflow.note.content): what ran on which code, and how it ended."""
    lines = [f"**{status}** after {rounds_completed} of {plan.config.rounds} global rounds.",
             f"Source: {redact_url(plan.source_url)} at commit {plan.commit[:12]}."]
    if plan.hierarchical:
        lines.append(f"Hierarchical: {len(plan.clusters)} clusters ({', '.join(c.name for c in plan.clusters)}), "
                     f"{plan.config.local_rounds} local rounds per global round.")
    if "central_accuracy" in final:
        lines.append(f"Final central accuracy {final['central_accuracy']:.4f}, loss {final.get('central_loss', float('nan')):.4f}.")
    lines.append(f"Bytes to the root: {bytes_to_root}.")
    if model_uri:
        lines.append(f"Model: {model_uri}.")
    if message:
        lines.append(f"Message: {message}")
    return "\n\n".join(lines)


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(name: str) -> str:
    """MLflow allows alphanumerics, _ - . space and /; anything else becomes _."""
    return _UNSAFE.sub("_", name)
