"""The model bundle: a directory holding weights, user code and a metadata JSON, readable without MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from inference.errors import BundleError

BUNDLE_FORMAT_VERSION = 1
METADATA_FILE = "flops-bundle.json"
WEIGHTS_DIR = "model"
CODE_DIR = "code"

# numpy dtype names MLflow writes in tensor specs that the server can accept from JSON numbers.
SUPPORTED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)


class TensorSchema(BaseModel):
    """One tensor of the model's signature: dtype and shape, -1 marking a free dimension."""

    dtype: str
    shape: list[int]


class BundleMetadata(BaseModel):
    """What the server needs to load the model and describe it on /metadata."""

    format_version: int = BUNDLE_FORMAT_VERSION
    model_name: str | None
    model_version: str | None
    run_id: str | None
    source_url: str | None = None
    source_commit: str | None = None
    serialization: Literal["pt2", "pickle"]
    weights_file: str
    code_dir: str | None
    inputs: TensorSchema
    outputs: TensorSchema
    classifier: bool
    torch_version: str | None = None
    python_version: str | None = None
    requirements: list[str] = []

    @property
    def display_name(self) -> str:
        return f"{self.model_name or 'model'}:{self.model_version or 'unversioned'}"


def read_metadata(bundle_dir: Path) -> BundleMetadata:
    """Read and validate `<bundle_dir>/flops-bundle.json`; raise BundleError saying what is wrong."""
    path = bundle_dir / METADATA_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(
            f"{path}: not a model bundle (no {METADATA_FILE}); create one with `flops bundle MODEL_URI DEST`"
        ) from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    try:
        metadata = BundleMetadata.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise BundleError(f"{path}: field {field!r}: {first['msg']}") from None
    if metadata.format_version != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {metadata.format_version}, this server reads {BUNDLE_FORMAT_VERSION};"
            " re-export the bundle with this FLOps version"
        )
    for field in ("weights_file", "code_dir"):
        _check_inside(bundle_dir, path, field, getattr(metadata, field))
    weights = bundle_dir / metadata.weights_file
    if not weights.is_file():
        raise BundleError(f"{weights}: weights file named in {METADATA_FILE} is missing")
    return metadata


def _check_inside(bundle_dir: Path, path: Path, field: str, relative: str | None) -> None:
    """A path the metadata names must stay inside the bundle: no absolute paths, '..' or symlinks leading out."""
    if relative is None:
        return
    root = bundle_dir.resolve()
    if Path(relative).is_absolute() or not (root / relative).resolve().is_relative_to(root):
        raise BundleError(f"{path}: field {field!r}: {relative!r} points outside the bundle")


def write_metadata(bundle_dir: Path, metadata: BundleMetadata) -> Path:
    path = bundle_dir / METADATA_FILE
    path.write_text(metadata.model_dump_json(indent=2) + "\n")
    return path
