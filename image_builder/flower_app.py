"""The BuildSpec for an augmented Flower app: one image, every role, entrypoint and selfcheck from templates/image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flops import __version__ as flops_version
from flops_templates import render
from flops.redaction import redact_url
from image_builder.commands import DEPS_DIR
from image_builder.spec import BuildSpec

ENTRYPOINT_PATH = "/opt/flops/entrypoint.sh"
SELFCHECK_PATH = "/opt/flops/selfcheck.py"
APP_WORKDIR = "/app"
ROLES = ("learner", "cluster-aggregator", "cluster-superlink", "root-aggregator", "selfcheck")
# A cluster aggregator's ClientApp drives its cluster's SuperLink with FLOps' Control API client: these
# dependency-free (flwr aside) modules of flops/ go into the image, on PYTHONPATH after the dependencies.
FLOPS_PYTHON_DIR = "/opt/flops/python"
CLUSTER_AGGREGATOR_MODULES = ("__init__.py", "errors.py", "flower_control.py")
FLOPS_PACKAGE_DIR = Path(__file__).resolve().parent.parent / "flops"


def render_image_template(name: str, **context: Any) -> str:
    """Render templates/image/<name> with the one template renderer."""
    return render(f"image/{name}", **context)


def runtime_files(workdir: str = APP_WORKDIR) -> dict[str, str]:
    context = {"flops_version": flops_version, "workdir": workdir, "selfcheck_path": SELFCHECK_PATH}
    modules = {
        f"{FLOPS_PYTHON_DIR}/flops/{name}": (FLOPS_PACKAGE_DIR / name).read_text()
        for name in CLUSTER_AGGREGATOR_MODULES
    }
    return {
        ENTRYPOINT_PATH: render_image_template("entrypoint.sh.j2", **context),
        SELFCHECK_PATH: render_image_template("selfcheck.py.j2", **context),
        **modules,
    }


def oci_labels(source_url: str | None, commit: str | None) -> dict[str, str]:
    labels = {}
    if source_url:
        labels["org.opencontainers.image.source"] = redact_url(source_url)  # labels are public to any puller
    if commit:
        labels["org.opencontainers.image.revision"] = commit
    return labels


def flower_app_spec(
    app_dir: Path,
    *,
    name: str,
    requirements: list[str],
    source_url: str | None = None,
    commit: str | None = None,
    **build_options: Any,
) -> BuildSpec:
    """Spec of the image for an augmented Flower app in app_dir (its pyproject.toml at the top).

    build_options are the remaining BuildSpec fields (platforms, registry, base_image, pip options, ...).
    """
    labels = {**oci_labels(source_url, commit), **build_options.pop("labels", {})}
    return BuildSpec.checked(
        name=name,
        context_dir=app_dir,
        requirements=requirements,
        entrypoint=[ENTRYPOINT_PATH],
        cmd=["selfcheck"],
        runtime_files=runtime_files(APP_WORKDIR),
        env={"FLWR_HOME": "/var/lib/flops/flwr", "PYTHONUNBUFFERED": "1",
             "PYTHONPATH": f"{DEPS_DIR}:{FLOPS_PYTHON_DIR}"},
        workdir=APP_WORKDIR,
        labels=labels,
        **build_options,
    )
