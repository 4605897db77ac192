"""Which trained model a user means: a FLOps run id, an MLflow run id, a model URI or a model directory."""

from __future__ import annotations

import re
from pathlib import Path

from flops.errors import BadInputError
from flops.runstate import load_state, runs_dir

_MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_model_ref(ref: str) -> str:
    """MODEL_URI (models:/, runs:/, a model dir) as given; a bare MLflow run id becomes runs:/<id>/model."""
    if ":/" in ref or Path(ref).is_dir() or not _MLFLOW_RUN_ID.match(ref):
        return ref
    return f"runs:/{ref}/model"


def resolve_model(ref: str, tracking_uri: str | None, workdir: Path) -> tuple[str, str | None]:
    """(model URI, tracking URI) for a FLOps RUN_ID in `workdir`, an MLflow run id, or a model URI or dir.

    A FLOps run names the model it registered and the store it used; otherwise the store is --tracking-uri,
    else the embedded one in `workdir`.
    """
    from flops.tracking import default_tracking_uri  # MLflow: imported only when a store is needed

    if Path(ref).is_dir():
        return ref, tracking_uri  # a model directory carries everything; provenance only from a named store
    if ":/" not in ref and (runs_dir(workdir) / ref / "state.json").is_file():
        state = load_state(workdir, ref)
        if not state.model_uri:
            raise BadInputError(
                f"run {ref} has no registered model (status {state.status}, phase {state.phase});"
                " a run registers its model when it completes"
            )
        return state.model_uri, tracking_uri or state.tracking_uri or default_tracking_uri(workdir)
    return resolve_model_ref(ref), tracking_uri or default_tracking_uri(workdir)
