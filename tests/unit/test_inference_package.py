"""Unit tests of the inference image's build context and spec, the container run command and model references."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_inference_server import make_bundle

from flops.model_ref import resolve_model_ref
from inference.bundle import read_metadata
from inference.launch import container_run_args
from inference.package import SERVER_REQUIREMENTS, image_requirements, inference_image_spec, stage_context


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("package")
    return stage_context(make_bundle(root), root / "context")


def test_context_holds_server_modules_error_hierarchy_and_bundle_but_not_mlflow_export(context: Path) -> None:
    assert (context / "inference" / "__main__.py").is_file()
    assert (context / "inference" / "server.py").is_file()
    assert not (context / "inference" / "export.py").exists()  # the only module importing MLflow
    assert (context / "flops" / "errors.py").is_file()
    assert read_metadata(context / "bundle").model_name == "tiny"


def test_spec_runs_the_server_on_the_bundle_with_model_labels(context: Path) -> None:
    spec = inference_image_spec(context, platforms=["linux/amd64", "linux/arm64"], registry="127.0.0.1:5000")
    assert spec.name == "flops/tiny-inference"
    assert spec.entrypoint == ["python3", "-m", "inference"]
    assert spec.env["FLOPS_BUNDLE"] == "/app/bundle" and spec.workdir == "/app"
    assert spec.labels["io.flops.run-id"] == "r123"
    assert spec.labels["org.opencontainers.image.revision"] == "c0ffee"
    assert not any(line.startswith(("mlflow", "pandas", "numpy")) for line in spec.requirements)
    assert "torch/test" in spec.prune and "torch/lib/*.so*" in spec.strip


def test_model_requirements_add_to_the_servers_and_torch_is_never_pinned(context: Path) -> None:
    metadata = read_metadata(context / "bundle").model_copy(
        update={"requirements": ["torch==2.13.0", "numpy==2.4.6", "einops==0.8.0"], "serialization": "pickle"}
    )
    requirements = image_requirements(metadata)
    assert requirements[: len(SERVER_REQUIREMENTS)] == SERVER_REQUIREMENTS
    # A pickled model may import anything its code does: its own pins come along (numpy too), except torch's.
    assert "einops==0.8.0" in requirements and "numpy==2.4.6" in requirements
    assert "torch" in requirements and "torch==2.13.0" not in requirements


def test_exported_model_needs_only_the_servers_requirements(context: Path) -> None:
    metadata = read_metadata(context / "bundle").model_copy(update={"requirements": ["scikit-learn", "torch"]})
    assert metadata.serialization == "pt2"
    assert image_requirements(metadata) == SERVER_REQUIREMENTS


def test_container_publishes_only_on_the_given_host_and_port() -> None:
    args = container_run_args("podman", "reg/img@sha256:x", 9000, "127.0.0.1", platform="linux/arm64",
                              extra_args=["--runtime=runc"])
    assert args[:3] == ["podman", "run", "--rm"]
    assert "127.0.0.1:9000:8080" in args and args[-1] == "reg/img@sha256:x"
    assert args[args.index("--platform") + 1] == "linux/arm64" and "--runtime=runc" in args


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("0123456789abcdef0123456789abcdef", "runs:/0123456789abcdef0123456789abcdef/model"),
        ("models:/digits/3", "models:/digits/3"),
        ("runs:/abc/model", "runs:/abc/model"),
        ("not-a-run-id", "not-a-run-id"),
    ],
)
def test_bare_mlflow_run_id_names_its_model_and_uris_pass_through(ref: str, expected: str) -> None:
    assert resolve_model_ref(ref) == expected


def test_flops_run_id_resolves_to_the_model_and_store_its_run_registered(tmp_path: Path) -> None:
    from flops.model_ref import resolve_model
    from flops.runstate import RunState

    run_dir = tmp_path / "runs" / "r-42"
    run_dir.mkdir(parents=True)
    RunState(run_id="r-42", run_dir=run_dir, status="FINISHED", tracking_uri="sqlite:///store.db",
             model_uri="models:/digits/7").save()
    assert resolve_model("r-42", None, tmp_path) == ("models:/digits/7", "sqlite:///store.db")
    assert resolve_model("r-42", "sqlite:///other.db", tmp_path) == ("models:/digits/7", "sqlite:///other.db")
    assert resolve_model("models:/x/1", None, tmp_path)[1] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"


def test_flops_run_without_a_model_is_a_bad_input_naming_its_status(tmp_path: Path) -> None:
    from flops.model_ref import resolve_model
    from flops.errors import BadInputError
    from flops.runstate import RunState

    run_dir = tmp_path / "runs" / "r-1"
    run_dir.mkdir(parents=True)
    RunState(run_id="r-1", run_dir=run_dir, status="RUNNING").save()
    with pytest.raises(BadInputError, match="r-1 has no registered model.*RUNNING"):
        resolve_model("r-1", None, tmp_path)
