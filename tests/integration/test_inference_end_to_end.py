"""Integration tests of inference: a real MLflow store, real server processes over loopback HTTP, the CLI."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from flops.model_ref import resolve_model_ref
from flops.orchestrators.local import free_port
from inference import launch
from inference.errors import BundleError
from inference.export import export_bundle
from inference.model import ServedModel

pytestmark = pytest.mark.slow

MODEL_NAME = "digits-example"
TASK_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(x.flatten(1))
    """
)


@dataclass
class LoggedModel:
    tracking_uri: str
    model_uri: str
    run_id: str
    images: np.ndarray  # sklearn digits as float32 [N, 1, 8, 8]


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[:, None, :, :], digits.target


def log_digits_model(workdir: Path, serialization_format: str | None = None) -> LoggedModel:
    """Train a small CNN briefly and log it the way a FLOps run does, into `workdir`'s sqlite store."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    (workdir / "task.py").write_text(TASK_SOURCE)
    sys.path.insert(0, str(workdir))
    sys.modules.pop("task", None)
    try:
        task = importlib.import_module("task")
    finally:
        sys.path.remove(str(workdir))
    images, targets = digits_images()
    torch.manual_seed(0)
    model = task.Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(targets))
        loss.backward()
        optimizer.step()
    model.eval()
    example = images[:4]
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()

    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("flops") or mlflow.get_experiment(
        mlflow.create_experiment("flops", artifact_location=str(workdir / "mlartifacts"))
    )
    extra = {"serialization_format": serialization_format} if serialization_format else {}
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        mlflow.log_params({"source_url": "https://example.invalid/digits.git", "commit": "0123abcd"})
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name=MODEL_NAME,
            signature=infer_signature(example, output),
            input_example=example,
            code_paths=[str(workdir / "task.py")],
            **extra,
        )
    return LoggedModel(tracking_uri, f"models:/{MODEL_NAME}/{info.registered_model_version}", run.info.run_id, images)


def pyfunc_predict(model: LoggedModel, inputs: np.ndarray) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(model.tracking_uri)
    mlflow.set_registry_uri(model.tracking_uri)
    return mlflow.pyfunc.load_model(model.model_uri).predict(inputs)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> LoggedModel:
    return log_digits_model(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def bundle(logged: LoggedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("bundle") / "bundle"
    export_bundle(logged.model_uri, dest, tracking_uri=logged.tracking_uri)
    return dest


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[str]:
    port = free_port()
    process = launch.start_local_server(bundle, port, extra_env={"FLOPS_MAX_REQUEST_BYTES": str(256 * 1024)})
    base_url = f"http://127.0.0.1:{port}"
    try:
        launch.wait_until_ready(base_url, process, timeout_s=120)
        yield base_url
    finally:
        launch.stop(process)


def test_served_predictions_equal_mlflow_pyfunc_exactly(logged: LoggedModel, server: str) -> None:
    inputs = logged.images[:300]
    expected = pyfunc_predict(logged, inputs)
    response = httpx.post(f"{server}/predict", json={"inputs": inputs.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["predictions"], dtype=np.float32)
    assert served.shape == expected.shape
    np.testing.assert_array_equal(served, expected)  # tolerance 0
    assert response.json()["labels"] == expected.argmax(axis=1).tolist()


def test_single_row_requests_equal_pyfunc_on_that_row(logged: LoggedModel, server: str) -> None:
    for row in (0, 17, 1000):
        expected = pyfunc_predict(logged, logged.images[row : row + 1])
        response = httpx.post(f"{server}/predict", json={"inputs": logged.images[row : row + 1].tolist()})
        np.testing.assert_array_equal(np.asarray(response.json()["predictions"], dtype=np.float32), expected)


def test_metadata_over_http_names_registered_model_run_and_commit(logged: LoggedModel, server: str) -> None:
    metadata = httpx.get(f"{server}/metadata").json()
    assert (metadata["model_name"], metadata["model_version"]) == (MODEL_NAME, "1")
    assert metadata["run_id"] == logged.run_id
    assert metadata["source_commit"] == "0123abcd"
    assert metadata["source_url"] == "https://example.invalid/digits.git"
    assert metadata["inputs"] == {"dtype": "float32", "shape": [-1, 1, 8, 8]}
    assert metadata["outputs"] == {"dtype": "float32", "shape": [-1, 10]}


def test_bad_requests_over_http_get_4xx_and_never_a_500(server: str) -> None:
    cases = [
        (b"{", "application/json", 400),
        (b"a=1", "application/x-www-form-urlencoded", 415),
        (json.dumps({"inputs": [[0.0] * 64]}).encode(), "application/json", 422),
        (json.dumps({"inputs": [[[["x"] * 8] * 8]]}).encode(), "application/json", 422),
        (json.dumps({"inputs": [[[[0.5] * 8] * 8]] * 2000}).encode(), "application/json", 413),
    ]
    for body, content_type, status in cases:
        response = httpx.post(f"{server}/predict", content=body, headers={"content-type": content_type})
        assert response.status_code == status, (body[:60], response.text)
        assert response.json()["detail"]
    metrics = httpx.get(f"{server}/metrics").text
    assert 'path="/predict",status="5' not in metrics
    assert "flops_inference_ready 1.0" in metrics


def test_openapi_docs_are_served(server: str) -> None:
    assert httpx.get(f"{server}/docs").status_code == 200
    assert "/predict" in httpx.get(f"{server}/openapi.json").json()["paths"]


def test_pickle_serialized_model_bundle_equals_pyfunc_exactly(tmp_path: Path) -> None:
    import torch

    logged = log_digits_model(tmp_path, serialization_format="pickle")
    dest = tmp_path / "bundle"
    metadata = export_bundle(logged.model_uri, dest, tracking_uri=logged.tracking_uri)
    assert metadata.serialization == "pickle"
    inputs = logged.images[:64]
    served = ServedModel(dest).predict(torch.from_numpy(inputs)).numpy()
    np.testing.assert_array_equal(served, pyfunc_predict(logged, inputs))


def test_run_uri_and_bare_run_id_export_the_same_registered_model(logged: LoggedModel, tmp_path: Path) -> None:
    by_uri = export_bundle(f"runs:/{logged.run_id}/model", tmp_path / "a", tracking_uri=logged.tracking_uri)
    by_id = export_bundle(resolve_model_ref(logged.run_id), tmp_path / "b", tracking_uri=logged.tracking_uri)
    for metadata in (by_uri, by_id):
        assert (metadata.model_name, metadata.model_version, metadata.source_commit) == (MODEL_NAME, "1", "0123abcd")


def test_unknown_model_version_is_a_bundle_error_naming_it(logged: LoggedModel, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"models:/{MODEL_NAME}/99"):
        export_bundle(f"models:/{MODEL_NAME}/99", tmp_path / "x", tracking_uri=logged.tracking_uri)


def test_flops_serve_runs_the_model_until_terminated(logged: LoggedModel) -> None:
    port = free_port()
    # The command object alone, so this test does not depend on every other command module importing.
    serve = "import sys; from cli.inference import serve_command; serve_command(sys.argv[1:])"
    process = subprocess.Popen(
        [sys.executable, "-c", serve, logged.model_uri, "--tracking-uri", logged.tracking_uri, "--port", str(port)],
        stdin=subprocess.DEVNULL,
    )
    try:
        launch.wait_until_ready(f"http://127.0.0.1:{port}", process, timeout_s=180)
        response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": logged.images[:2].tolist()})
        assert response.status_code == 200 and len(response.json()["labels"]) == 2
    finally:
        launch.stop(process, grace_s=120)  # a graceful uvicorn shutdown; slow only on a loaded machine
    assert process.returncode == 0  # uvicorn's re-raised SIGTERM would make it -15
