"""Subprocess entry run in the run's environment: build Net, load the final weights, log and register it.

Reads one JSON request on stdin, prints one JSON line: {"model_uri", "logged_model_uri", "model_id",
"registered_model", "version", "requirements"}. It runs where the user's code and packages are, so the model's
requirements are the versions the run used and the partitions' datasets are read through the user's load_data.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# Always pinned, whatever the user's requirements say: what a PyTorch model needs to load (MLflow adds itself).
BASE_REQUIREMENTS = ("torch", "numpy", "cloudpickle")
DIGEST_SAMPLE_LIMIT = 10_000  # examples hashed per partition (MLflow's own dataset digests also sample)


def _code_paths(code_dir: Path) -> list[str]:
    """Top-level modules and packages of the user's code, so the pickled Net imports as it did here."""
    return sorted(
        str(p) for p in code_dir.iterdir()
        if (p.suffix == ".py" and p.is_file()) or (p.is_dir() and (p / "__init__.py").exists())
    )


def pinned_requirements(requirements: list[str]) -> list[str]:
    """name==version for torch, numpy, cloudpickle and every requirement, as installed in this environment.

    Local version labels (2.13.0+cpu) are dropped as MLflow does, so the pin installs from PyPI; a requirement
    that is not installed here (a marker excluded it) is kept as the user wrote it.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pins: dict[str, str] = {}
    for line in [*BASE_REQUIREMENTS, *requirements]:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # pip options (--index-url ...) and URLs: not a package pin
        key = canonicalize_name(req.name)
        if key in pins:
            continue
        try:
            installed = Version(version(req.name)).public
        except PackageNotFoundError:
            pins[key] = line
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        pins[key] = f"{req.name}{extras}=={installed}"
    return list(pins.values())


def _dataset_digest(dataset: Any) -> str:
    """sha256 over the first examples' tensors: the same data gives the same digest, other data another."""
    import numpy as np

    digest = hashlib.sha256()
    for i in range(min(len(dataset), DIGEST_SAMPLE_LIMIT)):
        item = dataset[i]
        for part in item if isinstance(item, (tuple, list)) else [item]:
            if isinstance(part, dict):
                part = [part[k] for k in sorted(part)]
            digest.update(np.asarray(part).tobytes())
    return digest.hexdigest()[:12]


def _log_partition_datasets(client: Any, run_id: str, task: Any, spec: dict[str, Any], model_id: str) -> None:
    """One dataset per learner partition (train split) and the central test split, read through load_data."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag, LoggedModelInput

    class PartitionDataset(MetaDataset):
        """Metadata only (the data stays with the learners); the profile carries the example count."""

        def __init__(self, source: Any, name: str, digest: str, examples: int) -> None:
            self._examples = examples
            super().__init__(source, name=name, digest=digest)

        @property
        def profile(self) -> dict[str, int]:
            return {"num_rows": self._examples}

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    source = CodeDatasetSource({**spec["source_tags"], "flops.loader": "task.load_data"})
    num, batch = int(spec["num_partitions"]), int(spec["batch_size"])
    splits = [(f"partition {i} of {num} (train)", "learner-train", task.load_data(i, num, batch)[0].dataset)
              for i in range(num)]
    splits.append(("central test split", "central-evaluation", task.load_data(0, 1, batch)[1].dataset))

    inputs = []
    for name, context, dataset in splits:
        try:
            logged = PartitionDataset(source, name, _dataset_digest(dataset), len(dataset))
        except TypeError as exc:  # an IterableDataset has no len() or indexing: FLOps cannot tell, so it says nothing
            print(f"dataset {name!r} not logged: {exc}", file=sys.stderr)
            continue
        inputs.append(DatasetInput(logged._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    client.log_inputs(run_id, datasets=inputs, models=[LoggedModelInput(model_id)])


def main(argv: list[str]) -> int:
    """argv: CODE_DIR TASK_MODULE. Everything slow (imports, the user's task) happens before the request is read
    from stdin, so the controller can start this process while the rounds run."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from flops.contract.probe import load_adapter

    code_dir = Path(argv[0])
    sys.path.append(str(code_dir.parent))  # the app's flops_app package (contract shims), after the user's code
    # The generated app's own adapter: default weight functions and errors located in the user's code.
    task = load_adapter().load_task(argv[1], code_dir)
    request = json.loads(sys.stdin.read())
    net = task.build_net()
    with np.load(request["weights"]) as npz:
        task.set_weights(net, [npz[f"arr_{i}"] for i in range(len(npz.files))])
    net.eval()
    example = np.load(request["input_example"])
    with torch.no_grad():
        output = net(torch.from_numpy(example)).numpy()
    requirements = pinned_requirements(request["requirements"])
    mlflow.set_tracking_uri(request["tracking_uri"])
    with mlflow.start_run(run_id=request["mlflow_run_id"]):
        info = mlflow.pytorch.log_model(
            net,
            name=request["artifact_name"],
            signature=infer_signature(example, output),
            input_example=example,
            code_paths=_code_paths(code_dir),
            pip_requirements=requirements,
            registered_model_name=request["registered_model_name"],
            # Explicit tags win over MLflow's context tags, which would name this file and FLOps' own commit.
            tags=request["model_tags"],
            params=request["model_params"],
            model_type="pytorch-task",
            step=int(request["step"]),
        )
    if request.get("datasets"):
        try:
            _log_partition_datasets(MlflowClient(request["tracking_uri"]), request["mlflow_run_id"], task,
                                    request["datasets"], info.model_id)
        except Exception as exc:  # noqa: BLE001 - datasets describe the run; a loader FLOps cannot read must not lose the model
            print(f"partition datasets not logged: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(json.dumps({
        "model_uri": f"models:/{request['registered_model_name']}/{info.registered_model_version}",
        "logged_model_uri": info.model_uri,
        "model_id": info.model_id,
        "registered_model": request["registered_model_name"],
        "version": str(info.registered_model_version),
        "requirements": requirements,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
