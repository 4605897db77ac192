"""The inference image: a build context holding the server and one bundle, and the BuildSpec for image_builder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from flops.slug import slug
from flops.app_image import IMAGE_USER, NON_ROOT_ENV, checked_spec, flops_labels
from image_builder import BuildSpec
from inference.bundle import BundleMetadata, read_metadata

IMAGE_WORKDIR = "/app"
IMAGE_BUNDLE_DIR = f"{IMAGE_WORKDIR}/bundle"
# What the server imports at run time, and nothing else: no MLflow, pandas or YAML in the image.
SERVER_REQUIREMENTS = [
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "uvloop>=0.19",
    "httptools>=0.6",
    "orjson>=3.9",
    "prometheus-client>=0.20",
    "pydantic>=2.6",
    # No numpy: the server parses and answers with torch alone (numpy + OpenBLAS are ~15 MB of the image).
    "torch",
    # No cloudpickle: pickled models load weights-only (inference/safe_load.py), never through cloudpickle.
]
# Installed files the server never loads (checked: an exported model loads and predicts without them, on both
# platforms): torch's C++ tests, headers, CMake files and test binaries, other packages' test suites, type stubs,
# and setuptools (torch lists it for building C++ extensions). torch.testing._internal and torchgen stay: torch
# imports them at start-up.
PRUNED_FILES = [
    "torch/test", "torch/include", "torch/share", "torch/bin/test_*", "torch/bin/*Test", "torch/bin/protoc*",
    "torch/lib/libjitbackend_test.so", "torch/lib/libtorchbind_test.so", "torch/lib/libbackend_with_compiler.so",
    "sympy/**/tests", "networkx/**/tests", "mpmath/tests", "numpy/**/tests",
    "**/*.pyi", "setuptools", "pkg_resources", "_distutils_hack",
]
# Symbol tables of compiled libraries (90 MB of libtorch_cpu.so alone). Libraries auditwheel vendored into
# `<package>.libs/` are left alone: stripping a library patchelf rewrote can make it unloadable.
STRIPPED_LIBRARIES = [
    "torch/lib/*.so*", "torch/*.so", "uvloop/*.so", "httptools/parser/*.so", "pydantic_core/*.so", "orjson/*.so",
]
# Modules of inference/ the server runs; export (MLflow) and launch (host side) stay out of the image.
SERVER_MODULES = (
    "__init__.py", "__main__.py", "bundle.py", "errors.py", "metrics.py", "model.py", "payload.py", "safe_load.py",
    "server.py", "settings.py",
)
# The error hierarchy the server's errors derive from; dependency-free, so it is copied rather than installed.
CORE_MODULES = ("__init__.py", "errors.py")


def stage_context(bundle_dir: Path, dest: Path) -> Path:
    """Copy the server modules, flops/errors.py and the bundle into `dest`, the image's /app."""
    package_root = Path(__file__).resolve().parent
    (dest / "inference").mkdir(parents=True)
    for name in SERVER_MODULES:
        shutil.copy2(package_root / name, dest / "inference" / name)
    (dest / "flops").mkdir()
    for name in CORE_MODULES:
        shutil.copy2(package_root.parent / "flops" / name, dest / "flops" / name)
    shutil.copytree(bundle_dir, dest / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def image_requirements(metadata: BundleMetadata) -> list[str]:
    """The server's requirements, plus for a pickled model the model's other ones as MLflow recorded them.

    Where the model names a package the server also needs (torch) the server's line wins:
    torch's version is then pinned per platform at build time to the model's torch in its CPU build
    (flops.app_image.build_image), not to whatever build the training machine had.
    """
    if metadata.serialization == "pt2":
        # An exported graph runs on torch alone: the user's code (and what it imports, e.g. scikit-learn
        # for data loading) is never imported to load or run it.
        return list(SERVER_REQUIREMENTS)
    ours = {_requirement_name(line) for line in SERVER_REQUIREMENTS}
    extra = [line for line in metadata.requirements if _requirement_name(line) not in ours]
    return [*SERVER_REQUIREMENTS, *extra]


def default_image_name(metadata: BundleMetadata) -> str:
    return f"flops/{slug(metadata.model_name, fallback='model')}-inference"


def inference_image_spec(context_dir: Path, *, name: str | None = None, **build_options: Any) -> BuildSpec:
    """Spec of the serving image for the context `stage_context` made; build_options are other BuildSpec fields."""
    metadata = read_metadata(context_dir / "bundle")
    labels = {
        **flops_labels(metadata.source_url, metadata.source_commit),
        "io.flops.model.name": metadata.model_name or "",
        "io.flops.model.version": metadata.model_version or "",
        "io.flops.run-id": metadata.run_id or "",
        **build_options.pop("labels", {}),
    }
    return checked_spec(
        name=name or default_image_name(metadata),
        context_dir=context_dir,
        requirements=image_requirements(metadata),
        prune=PRUNED_FILES,
        strip=STRIPPED_LIBRARIES,
        entrypoint=["python3", "-m", "inference"],
        cmd=[],
        env={"FLOPS_BUNDLE": IMAGE_BUNDLE_DIR, "PORT": "8080", "PYTHONUNBUFFERED": "1", **NON_ROOT_ENV},
        workdir=IMAGE_WORKDIR,
        user=IMAGE_USER,  # the bundle and server stay root's, read-only to the server
        labels={key: value for key, value in labels.items() if value},
        **build_options,
    )


def _requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
