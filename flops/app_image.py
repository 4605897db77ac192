"""The image step: the BuildSpec of an augmented Flower app (every role, from templates/image) and the build call
that adds FLOps' defaults (non-root user, CPU torch, this machine's build settings) and maps the builder's errors."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jinja2

from flops import __version__ as flops_version
from flops.build_defaults import BuildDefaults, load_build_defaults
from flops.errors import BuildError, ConfigError, ToolError
from image_builder import BuildResult, BuildSpec, ProgressCallback, ProgressEvent, build_image as builder_build
from image_builder import errors as builder_errors
from image_builder.commands import DEPS_DIR
from image_builder.prune import Pruned
from image_builder.spec import oci_labels
from image_builder.torch_cpu import names_torch, torch_constraints

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "image"
ENTRYPOINT_PATH = "/opt/flops/entrypoint.sh"
SELFCHECK_PATH = "/opt/flops/selfcheck.py"
APP_WORKDIR = "/app"
ROLES = ("learner", "cluster-aggregator", "cluster-superlink", "root-aggregator", "selfcheck")
# A cluster aggregator's ClientApp drives its cluster's SuperLink with FLOps' Control API client: these
# dependency-free (flwr aside) modules of flops/ go into the image, on PYTHONPATH after the dependencies.
FLOPS_PYTHON_DIR = "/opt/flops/python"
CLUSTER_AGGREGATOR_MODULES = ("__init__.py", "errors.py", "flower_control.py")
FLOPS_PACKAGE_DIR = Path(__file__).resolve().parent
# Every image FLOps builds runs as this user (numeric: the base image needs no passwd entry for it). The Docker
# orchestrator hands it the run directory it mounts.
IMAGE_UID = 10001
IMAGE_USER = f"{IMAGE_UID}:{IMAGE_UID}"
# Flower's home when no orchestrator sets FLWR_HOME: owned by IMAGE_USER.
IMAGE_FLWR_HOME = "/var/lib/flops/flwr"
# The non-root user cannot write __pycache__ next to the root-owned dependencies: without a writable prefix every
# process (Flower starts one per message) would compile torch's Python files again at import.
NON_ROOT_ENV = {"HOME": "/tmp", "PYTHONPYCACHEPREFIX": "/tmp/flops-pycache"}


def render_image_template(name: str, **context: Any) -> str:
    """Render templates/image/<name>; a misspelled variable fails (StrictUndefined)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(name).render(**context)


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


def flops_labels(source_url: str | None, commit: str | None) -> dict[str, str]:
    return {**oci_labels(source_url, commit), "io.flops.version": flops_version}


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
    labels = {**flops_labels(source_url, commit), **build_options.pop("labels", {})}
    return checked_spec(
        name=name,
        context_dir=app_dir,
        requirements=requirements,
        entrypoint=[ENTRYPOINT_PATH],
        cmd=["selfcheck"],
        runtime_files=runtime_files(APP_WORKDIR),
        env={"FLWR_HOME": IMAGE_FLWR_HOME, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{DEPS_DIR}:{FLOPS_PYTHON_DIR}",
             **NON_ROOT_ENV},
        workdir=APP_WORKDIR,
        user=IMAGE_USER,
        writable_dirs=[IMAGE_FLWR_HOME],
        labels=labels,
        **build_options,
    )


def checked_spec(**fields: Any) -> BuildSpec:
    """BuildSpec.checked with its SpecError as FLOps' ConfigError (exit 2)."""
    try:
        return BuildSpec.checked(**fields)
    except builder_errors.SpecError as exc:
        raise ConfigError(str(exc)) from None


def host_torch_version() -> str | None:
    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def build_image(
    spec: BuildSpec,
    progress: ProgressCallback | None = None,
    *,
    torch_version: str | None = None,
    defaults: BuildDefaults | None = None,
) -> BuildResult:
    """Build `spec` with this machine's build defaults filled in and torch pinned to its CPU build.

    torch_version: the version to pin (the training run's); default the host's torch, which the run used.
    The builder's errors become FLOps' (BuildError, ToolError, ConfigError), each on one line.
    """
    defaults = load_build_defaults() if defaults is None else defaults
    spec = defaults.apply(spec)
    spec = _pin_cpu_torch(spec, torch_version or host_torch_version(), progress)
    try:
        result = builder_build(spec, progress=progress)
    except builder_errors.BaseImageError as exc:
        raise BuildError(
            f"{exc}; pass --base-image REF, a registry image with {', '.join(spec.platforms)} variants "
            f"(.ci/setup-containers.sh pushes one and writes it to {defaults.source or 'the build defaults file'})"
        ) from exc
    except builder_errors.SpecError as exc:
        raise ConfigError(str(exc)) from exc
    except builder_errors.ToolError as exc:
        raise ToolError(exc.tool, str(exc).removeprefix(f"{exc.tool}: "), exc.output) from exc
    except builder_errors.ImageBuilderError as exc:
        raise BuildError(str(exc)) from exc
    if result.cuda_libraries and progress is not None:
        platforms = ", ".join(result.cuda_libraries)
        progress(ProgressEvent(kind="warning", step="image",
                               message=f"the image carries CUDA libraries for {platforms}; see the warnings above"))
    return result


def _pin_cpu_torch(spec: BuildSpec, torch_version: str | None, progress: ProgressCallback | None) -> BuildSpec:
    """Add a CPU-torch constraint for each platform the spec does not already constrain torch on."""
    if torch_version is None:
        return spec
    open_platforms = [p for p in spec.platforms if not names_torch(spec.platform_constraints.get(p, []))]
    pins, warnings = torch_constraints(
        torch_version, open_platforms, spec.pip_find_links,
        [url for url in [spec.pip_index_url, *spec.pip_extra_index_urls] if url],
    )
    for warning in warnings:
        if progress is not None:
            progress(ProgressEvent(kind="warning", step="torch", message=warning))
    constraints = {p: [*spec.platform_constraints.get(p, []), *pins.get(p, [])] for p in spec.platforms}
    return spec.model_copy(update={"platform_constraints": {p: c for p, c in constraints.items() if c}})


def prune_images(
    older_than_days: float, registry: str | None, keep: int, tls_verify: bool | None, dry_run: bool,
    repositories: tuple[str, ...] = (),
) -> Pruned:
    """Remove FLOps' local build/cache images older than `older_than_days` and, given a registry, all but the
    `keep` newest tags of each FLOps-built image there (never an image without FLOps' labels)."""
    from image_builder.prune import prune_local, prune_registry
    from image_builder.tools import ToolRunner

    runner = ToolRunner()
    try:
        pruned = Pruned(local=prune_local(runner, older_than_days * 86400, dry_run))
        if registry:
            pruned.registry = prune_registry(
                runner, registry, keep, tls_verify, dry_run=dry_run,
                repository_filter=(lambda name: name in repositories) if repositories else lambda name: True,
            )
    except builder_errors.ToolError as exc:
        raise ToolError(exc.tool, str(exc).removeprefix(f"{exc.tool}: "), exc.output) from exc
    finally:
        runner.close()
    return pruned
