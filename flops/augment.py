"""Augmentation: render a standard Flower app from templates/ beside an unmodified copy of the user's code."""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path

from pydantic import BaseModel

from flops_templates import render_tree

from flops import __version__
from flops.config import RunConfig
from flops.slug import slug

FLOWER_APP_TEMPLATE = "flower_app"  # under templates/
USER_CODE_DIRNAME = "user"
FLOWER_APP_NAME_MAX = 32
# Never copied into the app: VCS data and caches are not the user's code.
_IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv", ".flwr")


class AppSpec(BaseModel):
    """What the templates need to know about the user's project."""

    source_url: str
    source_name: str
    commit: str
    code_dir: Path
    task_module: str
    dependencies: list[str]


def app_name(source_name: str) -> str:
    """A valid Python project name for the generated app."""
    # Flower refuses app names longer than 32 characters (flwr/cli/build.py): a long repo name is cut.
    return f"flops-{slug(source_name)}"[:FLOWER_APP_NAME_MAX].rstrip("-")


def _flwr_version_range() -> tuple[str, str]:
    major, minor, *_ = version("flwr").split(".")
    return f"{major}.{minor}.0", f"{major}.{int(minor) + 1}"


def augment_app(spec: AppSpec, config: RunConfig, out_dir: Path) -> Path:
    """Write the Flower app for `spec` into out_dir (replacing what was there) and return out_dir."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(spec.code_dir, out_dir / USER_CODE_DIRNAME, ignore=_IGNORED)
    flwr_version, flwr_next_minor = _flwr_version_range()
    render_tree(
        FLOWER_APP_TEMPLATE,
        out_dir,
        {
            "flops_version": __version__,
            "app_name": app_name(spec.source_name),
            "source_url": spec.source_url,
            "source_name": spec.source_name,
            "commit": spec.commit,
            "task_module": spec.task_module,
            "dependencies": spec.dependencies,
            "flwr_version": flwr_version,
            "flwr_next_minor": flwr_next_minor,
            "config": config,
        },
    )
    return out_dir
