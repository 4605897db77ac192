"""Unit tests of the inference server: request validation, responses and probes, on a bundle made with torch alone."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from flops.errors import ConfigError
from inference.bundle import METADATA_FILE, BundleMetadata, TensorSchema, read_metadata, write_metadata
from inference.errors import BundleError
from inference.model import ServedModel
from inference.server import create_app
from inference.settings import ServerSettings

LIMIT = 64 * 1024
NET_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))
    """
)


def make_bundle(root: Path, serialization: str = "pt2") -> Path:
    """A bundle the way export_bundle lays it out, for a [N, 2, 2] -> [N, 3] classifier, without MLflow."""
    bundle = root / f"bundle-{serialization}"
    (bundle / "code").mkdir(parents=True)
    (bundle / "model").mkdir()
    (bundle / "code" / "tinynet_task.py").write_text(NET_SOURCE)
    sys.path.insert(0, str(bundle / "code"))
    try:
        from tinynet_task import TinyNet  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(bundle / "code"))
    torch.manual_seed(0)
    net = TinyNet().eval()
    if serialization == "pt2":
        weights = "model/model.pt2"
        example = (torch.rand(2, 2, 2),)
        program = torch.export.export(net, example, dynamic_shapes=[{0: torch.export.Dim.AUTO}])
        torch.export.save(program, str(bundle / weights))
    else:
        weights = "model/model.pth"
        torch.save(net, bundle / weights)
    write_metadata(
        bundle,
        BundleMetadata(
            model_name="tiny",
            model_version="3",
            run_id="r123",
            source_url="https://example.invalid/tiny.git",
            source_commit="c0ffee",
            serialization=serialization,  # type: ignore[arg-type]
            weights_file=weights,
            code_dir="code",
            inputs=TensorSchema(dtype="float32", shape=[-1, 2, 2]),
            outputs=TensorSchema(dtype="float32", shape=[-1, 3]),
            classifier=True,
        ),
    )
    return bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def client(bundle: Path) -> Iterator[TestClient]:
    app = create_app(ServerSettings(bundle_dir=bundle, max_request_bytes=LIMIT), load_in_background=False)
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


def test_predict_returns_every_rows_outputs_in_order_and_argmax_labels(client: TestClient, bundle: Path) -> None:
    rows = np.random.default_rng(1).random((5, 2, 2), dtype=np.float32)
    response = client.post("/predict", json={"inputs": rows.tolist()})
    assert response.status_code == 200, response.text
    expected = ServedModel(bundle).predict(torch.from_numpy(rows)).numpy()
    predictions = np.asarray(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(predictions, expected)
    assert response.json()["labels"] == expected.argmax(axis=1).tolist()


def test_predict_accepts_integers_for_a_float_model_and_mlflow_instances_key(client: TestClient) -> None:
    response = client.post("/predict", json={"instances": [[[0, 1], [1, 0]]]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


def test_pickled_model_bundle_serves_the_same_outputs_as_the_module(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, serialization="pickle")
    rows = np.random.default_rng(2).random((3, 2, 2), dtype=np.float32)
    with torch.no_grad():
        expected = torch.load(bundle / "model" / "model.pth", weights_only=False)(torch.from_numpy(rows)).numpy()
    np.testing.assert_array_equal(ServedModel(bundle).predict(torch.from_numpy(rows)).numpy(), expected)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"inputs=1", "application/x-www-form-urlencoded", 415, "application/json"),
        (b'{"inputs": [[[1, 2], [3, 4]]]}', "text/plain", 415, "text/plain"),
        (b"[1, 2]", "application/json", 422, "JSON object"),
        (b'{"rows": []}', "application/json", 422, 'no "inputs"'),
        (b'{"inputs": 5}', "application/json", 422, "must be a list"),
        (b'{"inputs": []}', "application/json", 422, "empty"),
        (b'{"inputs": [[1, 2, 3, 4]]}', "application/json", 422, "shape [N, 2, 2], got shape [1, 4]"),
        (b'{"inputs": [[[1, 2], [3]]]}', "application/json", 422, "ragged"),
        (b'{"inputs": [[[1, 2], [3, null]]]}', "application/json", 422, "ragged or mixed"),
        (b'{"inputs": [[["a", "b"], ["c", "d"]]]}', "application/json", 422, "got strings"),
        (b'{"inputs": [[[true, false], [true, true]]]}', "application/json", 422, "got booleans"),
        (b'{"inputs": [[[1e300, 0], [0, 0]]]}', "application/json", 422, "out of range for float32"),
        (b'{"inputs": [[[1, 2], [3, 4]]], "x": NaN}', "application/json", 400, "not valid JSON"),
    ],
)
def test_bad_request_gets_its_4xx_and_a_message(
    client: TestClient, body: bytes, content_type: str, status: int, message: str
) -> None:
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_body_over_the_limit_is_refused_with_413_by_declared_length(client: TestClient) -> None:
    body = json.dumps({"inputs": [[[0.5, 0.5], [0.5, 0.5]]] * 5000}).encode()
    assert len(body) > LIMIT
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]


def test_chunked_body_over_the_limit_is_refused_with_413_while_streaming(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ['
        for _ in range(LIMIT // 16 + 1):
            yield b"[[0, 0], [0, 0]],"
        yield b"[[0, 0], [0, 0]]]}"

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_missing_content_type_is_read_as_json(client: TestClient) -> None:
    response = client.post("/predict", content=b'{"inputs": [[[1, 2], [3, 4]]]}')
    assert response.status_code == 200, response.text


def test_metadata_names_model_run_source_and_schema(client: TestClient) -> None:
    metadata = client.get("/metadata").json()
    assert metadata["model_name"] == "tiny"
    assert metadata["model_version"] == "3"
    assert metadata["run_id"] == "r123"
    assert metadata["source_commit"] == "c0ffee"
    assert metadata["inputs"] == {"dtype": "float32", "shape": [-1, 2, 2]}
    assert metadata["outputs"] == {"dtype": "float32", "shape": [-1, 3]}


def test_health_and_ready_answer_200_once_loaded(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/ready").json() == {"status": "ready", "model": "tiny:3"}


def test_metrics_count_requests_by_path_and_status(client: TestClient) -> None:
    client.post("/predict", content=b"nope", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    assert 'flops_inference_requests_total{path="/predict",status="400"}' in text
    assert "flops_inference_ready 1.0" in text
    assert 'flops_inference_model_info{model_name="tiny"' in text


def test_openapi_documents_the_predict_body_and_error_statuses(client: TestClient) -> None:
    predict = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert "inputs" in predict["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"400", "413", "415", "422"} <= set(predict["responses"])


def test_unloadable_weights_make_health_and_ready_fail_with_the_reason(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "model" / "model.pt2").write_bytes(b"not a model")
    app = create_app(ServerSettings(bundle_dir=bundle), load_in_background=False)
    with TestClient(app) as broken:
        assert broken.get("/health").status_code == 503
        ready = broken.get("/ready")
        assert ready.status_code == 503 and "cannot load the model" in ready.json()["detail"]
        assert broken.post("/predict", json={"inputs": [[[1, 2], [3, 4]]]}).status_code == 503


def test_bundle_with_an_input_dtype_json_cannot_fill_is_refused_at_startup(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    metadata = read_metadata(bundle)
    write_metadata(bundle, metadata.model_copy(update={"inputs": TensorSchema(dtype="complex64", shape=[-1, 2, 2])}))
    with pytest.raises(BundleError, match="complex64"):
        create_app(ServerSettings(bundle_dir=bundle), load_in_background=False)


def test_directory_without_metadata_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=METADATA_FILE):
        read_metadata(tmp_path)


def test_settings_from_environment_name_the_bad_variable() -> None:
    settings = ServerSettings.from_environment({"PORT": "9000", "FLOPS_BUNDLE": "/b"})
    assert settings.port == 9000 and settings.bundle_dir == Path("/b")
    with pytest.raises(ConfigError, match=r"\$PORT='http'"):
        ServerSettings.from_environment({"PORT": "http"})


# Runs in a fresh interpreter where `import numpy` raises ImportError, as in the serving image (no numpy there).
NO_NUMPY_SERVER = textwrap.dedent(
    """
    import sys
    sys.modules["numpy"] = None  # before anything else: every later `import numpy` raises ImportError

    import json
    from pathlib import Path

    from fastapi.testclient import TestClient

    import inference.__main__  # the image's entrypoint module, with everything it imports
    from inference.server import create_app
    from inference.settings import ServerSettings

    app = create_app(ServerSettings(bundle_dir=Path(sys.argv[1])), load_in_background=False)
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200, client.get("/ready").text
        good = client.post("/predict", content=sys.argv[2], headers={"content-type": "application/json"})
        bad = client.post("/predict", json={"inputs": [[["a", "b"], ["c", "d"]]]})
    print(json.dumps({"good": [good.status_code, good.json()], "bad": [bad.status_code, bad.json()]}))
    """
)


def test_server_predicts_without_numpy_installed(bundle: Path) -> None:
    rows = np.random.default_rng(3).random((4, 2, 2), dtype=np.float32)
    expected = ServedModel(bundle).predict(torch.from_numpy(rows)).numpy()
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", NO_NUMPY_SERVER, str(bundle), json.dumps({"inputs": rows.tolist()})],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    status, body = result["good"]
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["predictions"], dtype=np.float32), expected)
    assert body["labels"] == expected.argmax(axis=1).tolist()
    assert result["bad"][0] == 422 and "got strings" in result["bad"][1]["detail"]


SERVER_MODULES = ("server", "payload", "model", "safe_load", "bundle", "metrics", "settings", "errors", "__main__")


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_server_modules_never_import_numpy(module: str) -> None:
    # Also catches an import inside a function the subprocess test above does not reach.
    path = Path(__file__).resolve().parents[2] / "inference" / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert "numpy" not in imported
