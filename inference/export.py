"""Export an MLflow-logged PyTorch model into a bundle; the only inference module that imports MLflow."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from flops.redaction import redact_url

from inference.bundle import (
    CODE_DIR,
    SUPPORTED_DTYPES,
    WEIGHTS_DIR,
    BundleMetadata,
    TensorSchema,
    write_metadata,
)
from inference.errors import BundleError

_PT2_FILE = "model.pt2"
_PICKLE_FILE = "model.pth"
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))$")
_LOGGED_MODEL_URI = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<name>.+?)/?$")
# Requirements MLflow records for its own loader; the bundle's server does not need them.
_LOADER_ONLY_REQUIREMENTS = ("mlflow", "pandas")


def export_bundle(
    model_uri: str,
    dest: Path,
    tracking_uri: str | None = None,
    classifier: bool | None = None,
) -> BundleMetadata:
    """Write a self-contained bundle for `model_uri` (models:/, runs:/ or a local model dir) into `dest`.

    `classifier=None` decides from the output schema: a float output of shape [-1, K>=2] is a classifier,
    so the server adds argmax labels.
    """
    if dest.exists() and any(dest.iterdir()):
        raise BundleError(f"{dest}: bundle destination exists and is not empty; choose an empty directory")
    with tempfile.TemporaryDirectory(prefix="flops-export-") as tmp:
        model_dir = _local_model_dir(model_uri, Path(tmp), tracking_uri)
        mlmodel = _read_mlmodel(model_dir)
        pytorch_conf = mlmodel.get("flavors", {}).get("pytorch")
        if pytorch_conf is None:
            flavors = ", ".join(mlmodel.get("flavors", {})) or "none"
            raise BundleError(
                f"{model_uri}: not an mlflow.pytorch model (flavors: {flavors}); log it with mlflow.pytorch.log_model"
            )
        serialization, weights = _find_weights(model_dir, pytorch_conf, model_uri)
        inputs, outputs = _tensor_schemas(mlmodel, model_uri)

        dest.mkdir(parents=True, exist_ok=True)
        (dest / WEIGHTS_DIR).mkdir()
        shutil.copy2(weights, dest / WEIGHTS_DIR / weights.name)
        code_dir = None
        if pytorch_conf.get("code") and (model_dir / pytorch_conf["code"]).is_dir():
            shutil.copytree(model_dir / pytorch_conf["code"], dest / CODE_DIR)
            code_dir = CODE_DIR

        provenance = _provenance(model_uri, mlmodel, tracking_uri)
        metadata = BundleMetadata(
            **provenance,
            serialization=serialization,
            weights_file=f"{WEIGHTS_DIR}/{weights.name}",
            code_dir=code_dir,
            inputs=inputs,
            outputs=outputs,
            classifier=_is_classifier(outputs) if classifier is None else classifier,
            torch_version=pytorch_conf.get("pytorch_version"),
            python_version=mlmodel.get("flavors", {}).get("python_function", {}).get("python_version"),
            requirements=_serving_requirements(model_dir),
        )
        write_metadata(dest, metadata)
        return metadata


def _local_model_dir(model_uri: str, tmp: Path, tracking_uri: str | None) -> Path:
    local = Path(model_uri)
    if local.is_dir():
        return local
    if ":/" not in model_uri:
        raise BundleError(f"{model_uri}: no such model directory, and not a models:/ or runs:/ URI")
    import mlflow
    from mlflow.exceptions import MlflowException

    where = f" (tracking URI {tracking_uri})" if tracking_uri else ""
    try:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=_artifact_location(model_uri, _client(tracking_uri)),
            dst_path=str(tmp),
            tracking_uri=tracking_uri,
        )
    except (MlflowException, OSError) as exc:
        raise BundleError(f"{model_uri}: cannot fetch the model{where}: {_first_line(exc)}") from None
    return Path(path)


def _artifact_location(model_uri: str, client) -> str:  # type: ignore[no-untyped-def]
    """Turn models:/ and runs:/ URIs into the model's artifact location using `client`'s stores.

    MLflow's own resolution of these URIs consults the process-wide default registry, not the one
    passed in, so a FLOps workdir store would be ignored (and an empty mlflow.db created in the cwd).
    """
    registry = _REGISTRY_URI.match(model_uri)
    if registry:
        version = _registry_version(client, registry)
        return client.get_model_version_download_uri(version.name, version.version)
    logged = _LOGGED_MODEL_URI.match(model_uri)
    if logged:
        return client.get_logged_model(logged["model_id"]).artifact_location
    run = _RUN_URI.match(model_uri)
    if run:
        experiment_id = client.get_run(run["run_id"]).info.experiment_id
        for model in client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"name = '{run['name']}'"
        ):
            if model.source_run_id == run["run_id"]:
                return model.artifact_location
        # A model logged as a plain run artifact (MLflow 2 style) lives in the run's artifact root.
        return f"{client.get_run(run['run_id']).info.artifact_uri}/{run['name']}"
    return model_uri


def _client(tracking_uri: str | None):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _registry_version(client, registry: re.Match[str]):  # type: ignore[no-untyped-def]
    if registry["version"]:
        return client.get_model_version(registry["name"], registry["version"])
    return client.get_model_version_by_alias(registry["name"], registry["alias"])


def _read_mlmodel(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "MLmodel"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise BundleError(f"{model_dir}: no MLmodel file; point at the model directory itself") from None
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: invalid YAML: {_first_line(exc)}") from None


def _find_weights(model_dir: Path, pytorch_conf: dict[str, Any], model_uri: str) -> tuple[str, Path]:
    data_dir = model_dir / pytorch_conf.get("model_data", "data")
    if (data_dir / _PT2_FILE).is_file():
        return "pt2", data_dir / _PT2_FILE
    if (data_dir / _PICKLE_FILE).is_file():
        return "pickle", data_dir / _PICKLE_FILE
    raise BundleError(f"{model_uri}: no {_PT2_FILE} or {_PICKLE_FILE} under {data_dir}")


def _tensor_schemas(mlmodel: dict[str, Any], model_uri: str) -> tuple[TensorSchema, TensorSchema]:
    signature = mlmodel.get("signature") or {}
    if not signature.get("inputs") or not signature.get("outputs"):
        raise BundleError(
            f"{model_uri}: the model has no signature; log it with signature=infer_signature(example, output)"
        )
    return (
        _single_tensor(json.loads(signature["inputs"]), "input", model_uri),
        _single_tensor(json.loads(signature["outputs"]), "output", model_uri),
    )


def _single_tensor(specs: list[dict[str, Any]], role: str, model_uri: str) -> TensorSchema:
    if len(specs) != 1 or specs[0].get("type") != "tensor":
        raise BundleError(
            f"{model_uri}: the {role} signature must be one tensor (infer_signature on a numpy array);"
            f" got {json.dumps(specs)[:200]}"
        )
    spec = specs[0]["tensor-spec"]
    if spec["dtype"] not in SUPPORTED_DTYPES:
        raise BundleError(
            f"{model_uri}: {role} dtype {spec['dtype']} is not servable from JSON;"
            f" use one of {', '.join(sorted(SUPPORTED_DTYPES))}"
        )
    return TensorSchema(dtype=spec["dtype"], shape=list(spec["shape"]))


def _is_classifier(outputs: TensorSchema) -> bool:
    return outputs.dtype.startswith("float") and len(outputs.shape) == 2 and outputs.shape[1] >= 2


def _provenance(model_uri: str, mlmodel: dict[str, Any], tracking_uri: str | None) -> dict[str, str | None]:
    """Model name and version, run id and the source the run trained from, as far as the store knows them."""
    run_id = mlmodel.get("run_id")
    found: dict[str, str | None] = {
        "model_name": None,
        "model_version": None,
        "run_id": run_id,
        "source_url": None,
        "source_commit": None,
    }
    if Path(model_uri).is_dir() and tracking_uri is None:
        return found
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        registry = _REGISTRY_URI.match(model_uri)
        if registry:
            version = _registry_version(client, registry)
            found["model_name"], found["model_version"] = version.name, str(version.version)
        elif run_id:
            versions = client.search_model_versions(f"run_id = '{run_id}'")
            model_id = mlmodel.get("model_id")
            matching = [v for v in versions if getattr(v, "model_id", None) == model_id] or versions
            if matching:
                found["model_name"], found["model_version"] = matching[0].name, str(matching[0].version)
        if run_id:
            data = client.get_run(run_id).data
            found["source_url"] = redact_url(data.params.get("source_url") or data.tags.get("source_url") or "") or None
            found["source_commit"] = data.params.get("commit") or data.tags.get("commit")
    except MlflowException as exc:
        raise BundleError(f"{model_uri}: cannot read the model's run or registry entry: {_first_line(exc)}") from None
    return found


def _serving_requirements(model_dir: Path) -> list[str]:
    path = model_dir / "requirements.txt"
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [
        line
        for line in lines
        if line and not line.startswith("#") and not line.lower().startswith(_LOADER_ONLY_REQUIREMENTS)
    ]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
