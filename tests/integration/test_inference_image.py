"""The inference image: built with image_builder for amd64 and arm64, run with podman (arm64 under QEMU)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from conftest import FLOPS, flops_env, wait_for
from containers.support import BASE, CONSTRAINTS, FIND_LINKS, REGISTRY, require_containers
from test_inference_end_to_end import LoggedModel, free_port, log_digits_model, pyfunc_predict

from image_builder import BuildResult, build_image
from inference import launch
from inference.export import export_bundle
from inference.package import inference_image_spec, stage_context

pytestmark = pytest.mark.slow

BOTH = ["linux/amd64", "linux/arm64"]
# What this sandbox needs for podman to start a container (see tests/integration/test_build_image.py).
RUN_ARGS = ["--runtime=runc", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1000:1000", "--tls-verify=false", "-q"]
QEMU_READY_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> LoggedModel:
    require_containers()
    return log_digits_model(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def built(logged: LoggedModel, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    tmp = tmp_path_factory.mktemp("package")
    export_bundle(logged.model_uri, tmp / "bundle", tracking_uri=logged.tracking_uri)
    spec = inference_image_spec(
        stage_context(tmp / "bundle", tmp / "context"), name=f"flops-test/inference-{uuid.uuid4().hex[:8]}",
        platforms=BOTH, registry=REGISTRY, base_image=BASE, tls_verify=False, pip_find_links=FIND_LINKS,
        platform_constraints=CONSTRAINTS,
    )
    return build_image(spec)


def skopeo_json(*args: str) -> dict:
    done = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture
def container(request: pytest.FixtureRequest, built: BuildResult) -> Iterator[str]:
    platform = request.param
    port = free_port()
    name = f"flops-test-inference-{uuid.uuid4().hex[:8]}"
    process = launch.start_container(built.image, port, name=name, platform=platform, extra_args=RUN_ARGS)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["podman", "stop", "-t", "5", name], capture_output=True, timeout=120)
        launch.stop(process)


def test_manifest_list_has_amd64_and_arm64_with_model_labels(logged: LoggedModel, built: BuildResult) -> None:
    index = skopeo_json("--raw", f"docker://{built.image}")
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}
    amd = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    labels = skopeo_json("--config", f"docker://{built.image.split('@')[0]}@{amd['digest']}")["config"]["Labels"]
    assert labels["io.flops.run-id"] == logged.run_id
    assert labels["io.flops.model.name"] == "digits-example"
    assert labels["org.opencontainers.image.revision"] == "0123abcd"


@pytest.mark.parametrize("container", ["linux/amd64"], indirect=True)
def test_amd64_image_serves_pyfunc_predictions_exactly_without_mlflow(logged: LoggedModel, container: str) -> None:
    launch.wait_until_ready(container, timeout_s=300)
    inputs = logged.images[:100]
    response = httpx.post(f"{container}/predict", json={"inputs": inputs.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(served, pyfunc_predict(logged, inputs))
    assert httpx.get(f"{container}/metadata").json()["run_id"] == logged.run_id


def test_image_holds_no_mlflow_pandas_numpy_or_torch_test_files(built: BuildResult) -> None:
    probe = (
        "import importlib.util as u, os, sys; torch = os.path.dirname(u.find_spec('torch').origin); "
        "found = [m for m in ('mlflow', 'pandas', 'numpy') if u.find_spec(m)] "
        "+ [d for d in ('test', 'include', 'bin/test_api') if os.path.exists(os.path.join(torch, d))]; "
        "print(found); sys.exit(bool(found))"
    )
    done = subprocess.run(
        ["podman", "run", "--rm", *RUN_ARGS, "--platform", "linux/amd64", "--entrypoint", "python3", built.image,
         "-c", probe],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("container", ["linux/arm64"], indirect=True)
def test_arm64_image_answers_health_and_predicts_under_qemu(logged: LoggedModel, container: str) -> None:
    launch.wait_until_ready(container, timeout_s=QEMU_READY_TIMEOUT_S)
    assert httpx.get(f"{container}/health", timeout=30).json() == {"status": "ok"}
    inputs = logged.images[:8]
    response = httpx.post(f"{container}/predict", json={"inputs": inputs.tolist()}, timeout=120)
    assert response.status_code == 200, response.text
    # arm64 runs another torch build (the last CPU-only aarch64 wheel): same labels, float outputs within 1e-5.
    expected = pyfunc_predict(logged, inputs)
    np.testing.assert_allclose(np.asarray(response.json()["predictions"], dtype=np.float32), expected, atol=1e-5)
    assert response.json()["labels"] == expected.argmax(axis=1).tolist()


def test_flops_package_cli_reports_the_cached_image_as_json(logged: LoggedModel, built: BuildResult) -> None:
    # Same model, same inputs: the CLI finds the fixture's image in the registry and builds nothing.
    package = "import sys; from cli.inference import package_command; package_command(sys.argv[1:])"
    args = [logged.model_uri, "--tracking-uri", logged.tracking_uri, "--registry", REGISTRY, "--base-image", BASE,
            "--no-tls-verify", "--name", built.image.split("@")[0].split("/", 1)[1], "--json"]
    args += [f"--pip-find-links={link}" for link in FIND_LINKS]
    args += [f"--platform-constraint={p}={c}" for p, cs in CONSTRAINTS.items() for c in cs]
    done = subprocess.run([sys.executable, "-c", package, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cached"] is True and report["image"] == built.image
    assert report["platforms"] == BOTH and report["model"] == "digits-example:1"


def test_a_killed_flops_serve_image_leaves_no_container_behind(built: BuildResult) -> None:
    """kill -9 of `flops serve --image`: the engine's client is told (parent-death signal), the container stops
    and is removed; nothing keeps answering on the port."""
    port, name = free_port(), f"flops-test-serve-{uuid.uuid4().hex[:8]}"
    serve = subprocess.Popen(
        [str(FLOPS), "serve", "--image", built.image, "--port", str(port), "--platform", "linux/amd64",
         *(f"--run-arg={arg}" for arg in [*RUN_ARGS, f"--name={name}"])],
        env=flops_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        launch.wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=300)
        serve.kill()
        serve.wait()

        def gone() -> bool:
            listed = subprocess.run(["podman", "ps", "-a", "--filter", f"name={name}", "--format", "{{.ID}}"],
                                    capture_output=True, text=True, timeout=60).stdout.strip()
            return not listed

        wait_for(gone, 60, f"container {name} to be stopped and removed")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if serve.poll() is None:
            serve.kill()
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=120)
