"""The image step: a source's augmented Flower app as a multi-arch image (`flops build`, submit's own build): its
BuildSpec (every role, from templates/image) and the build call that adds FLOps' defaults (non-root user, CPU torch,
this machine's build settings) and maps the builder's errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from flops_templates import render

from flops import __version__ as flops_version
from flops.build_defaults import BuildDefaults, load_build_defaults
from flops.config import RunConfig
from flops.errors import BuildError, ConfigError, ToolError
from flops.plan import RunPlan
from flops.redaction import redact_url
from flops.slug import slug
from flops.workdir import build_log_file, cache_dir
from image_builder import SUPPORTED_PLATFORMS, BuildResult, BuildSpec, ProgressCallback, ProgressEvent
from image_builder import build_image as builder_build
from image_builder import errors as builder_errors
from image_builder.commands import DEPS_DIR
from image_builder.prune import Pruned
from image_builder.spec import host_platform, oci_labels
from image_builder.torch_cpu import names_torch, torch_constraints

if TYPE_CHECKING:
    from flops.preparation import AugmentedSource

ENTRYPOINT_PATH = "/opt/flops/entrypoint.sh"
SELFCHECK_PATH = "/opt/flops/selfcheck.py"
APP_WORKDIR = "/app"
ROLES = ("learner", "cluster-aggregator", "cluster-superlink", "root-aggregator", "selfcheck")
# Every image FLOps builds runs as this user (numeric: the base image needs no passwd entry for it). The Docker
# orchestrator hands it the run directory it mounts.
IMAGE_UID = 10001
IMAGE_USER = f"{IMAGE_UID}:{IMAGE_UID}"
# Flower's home when no orchestrator sets FLWR_HOME: owned by IMAGE_USER.
IMAGE_FLWR_HOME = "/var/lib/flops/flwr"
# A folder of the component's own (the root's checkpoint, a cluster gateway's hand-over), owned by IMAGE_USER: an
# orchestrator mounts a volume here (an emptyDir in Kubernetes pods) and it stays writable for that user.
IMAGE_STATE_DIR = "/var/lib/flops/state"
# The non-root user cannot write __pycache__ next to the root-owned dependencies: without a writable prefix every
# process (Flower starts one per message) would compile torch's Python files again at import.
NON_ROOT_ENV = {"HOME": "/tmp", "PYTHONPYCACHEPREFIX": "/tmp/flops-pycache"}


def render_image_template(name: str, **context: Any) -> str:
    """Render templates/image/<name> with the one template renderer."""
    return render(f"image/{name}", **context)


def runtime_files(workdir: str = APP_WORKDIR) -> dict[str, str]:
    context = {"flops_version": flops_version, "workdir": workdir, "selfcheck_path": SELFCHECK_PATH}
    return {
        ENTRYPOINT_PATH: render_image_template("entrypoint.sh.j2", **context),
        SELFCHECK_PATH: render_image_template("selfcheck.py.j2", **context),
    }


def flops_labels(source_url: str | None, commit: str | None) -> dict[str, str]:
    # Labels are public to anyone who pulls the image: never a credential from the source URL.
    return {**oci_labels(redact_url(source_url) if source_url else None, commit), "io.flops.version": flops_version}


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
        env={"FLWR_HOME": IMAGE_FLWR_HOME, "PYTHONUNBUFFERED": "1", "PYTHONPATH": DEPS_DIR,
             **NON_ROOT_ENV},
        workdir=APP_WORKDIR,
        user=IMAGE_USER,
        writable_dirs=[IMAGE_FLWR_HOME, IMAGE_STATE_DIR],
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


class ImageOptions(BaseModel):
    """How to build: where to push, what to build on, where wheels come from."""

    registry: str | None = None
    base_image: str | None = None
    pip_index_url: str | None = None
    pip_extra_index_urls: list[str] = []
    pip_find_links: list[str] = []
    platform_constraints: list[str] = []  # PLATFORM=REQUIREMENT, as given on the command line
    tls_verify: bool | None = None  # None: as registries.conf says for the registry
    no_cache: bool = False
    no_emulation: bool = False
    output: str | None = None

    @classmethod
    def checked(cls, **options: Any) -> ImageOptions:
        """The options, with --platform-constraint values checked before any work starts."""
        image_options = cls(**options)
        parse_platform_constraints(image_options.platform_constraints, list(SUPPORTED_PLATFORMS))
        return image_options


def parse_platform_constraints(values: Iterable[str], platforms: list[str]) -> dict[str, list[str]]:
    """'linux/arm64=torch<=2.10' pairs -> {platform: [constraint, ...]}.

    torch is pinned to its CPU build per platform at build time (build_image) unless a constraint names it.
    """
    given: dict[str, list[str]] = {}
    for value in values:
        platform, sep, constraint = value.partition("=")
        if not sep or platform not in SUPPORTED_PLATFORMS:
            raise ConfigError(
                f"--platform-constraint {value!r}: expected PLATFORM=REQUIREMENT with PLATFORM one of "
                f"{', '.join(SUPPORTED_PLATFORMS)}"
            )
        given.setdefault(platform, [])
        if constraint.strip():
            given[platform].append(constraint.strip())
    return {p: c for p, c in given.items() if c and p in platforms}


def image_name(source_name: str) -> str:
    """Repository name of a source's app image in the registry."""
    return f"flops/{slug(source_name)}"


def app_requirements(dependencies: list[str]) -> list[str]:
    """The user's dependencies plus what the image itself runs: Flower at the host's minor release."""
    major, minor, *_ = version("flwr").split(".")
    return [f"flwr>={major}.{minor}.0,<{major}.{int(minor) + 1}", *dependencies]


def _build(app: "AugmentedSource", platforms: list[str], options: ImageOptions, name: str, log_file: Path,
           progress: ProgressCallback | None) -> BuildResult:
    if not options.registry and not options.output:
        raise ConfigError("give --registry HOST[:PORT] or --output oci-archive:PATH")
    spec_options: dict[str, Any] = options.model_dump(exclude={"platform_constraints"})
    spec_options["pip_find_links"] = [str(Path(p).resolve()) for p in options.pip_find_links]
    spec = flower_app_spec(
        app.app_dir, name=name, requirements=app_requirements(app.dependencies),
        source_url=app.url, commit=app.commit, platforms=platforms, log_file=log_file,
        platform_constraints=parse_platform_constraints(options.platform_constraints, platforms), **spec_options,
    )
    return build_image(spec, progress=progress)


def build_source_image(source: str, ref: str | None, config: RunConfig, workdir: Path, scratch: Path,
                       platforms: list[str], options: ImageOptions, name: str | None = None,
                       progress: ProgressCallback | None = None) -> BuildResult:
    """`flops build`: fetch, check and augment SOURCE in scratch, then one image for every platform.

    The build's full tool output goes to <workdir>/build-logs/.
    """
    from flops.preparation import augment_source  # preparation imports the orchestrators, which import this

    if not options.registry and not options.output:
        raise ConfigError("give --registry HOST[:PORT] or --output oci-archive:PATH")
    app = augment_source(source, ref, config, cache_dir(workdir), scratch / "app")
    name = name or image_name(app.name)
    return _build(app, platforms, options, name, build_log_file(workdir, name), progress)


def run_image_step(options: ImageOptions, progress: ProgressCallback | None = None) -> Callable[[RunPlan], str]:
    """The image step of a run that needs an image and was given none: build (or find) it, say which, return it."""

    def step(plan: RunPlan) -> str:
        result = build_run_image(plan, options, progress)
        if progress is not None:
            progress(ProgressEvent(kind="done", step="image",
                                   message=f"{result.image}{' (cached)' if result.cached else ''}"))
        return result.image

    return step


def build_run_image(plan: RunPlan, options: ImageOptions, progress: ProgressCallback | None = None) -> BuildResult:
    """A prepared run's app as an image for this machine's platform, built or found in the registry by its hash.

    The build's full tool output goes to the run's logs (image-build.log).
    """
    from flops.preparation import AugmentedSource

    app = AugmentedSource(app_dir=plan.app_dir, name=plan.source_name, url=plan.source_url, commit=plan.commit,
                          dependencies=plan.dependencies)
    return _build(app, [host_platform() or "linux/amd64"], options, image_name(plan.source_name),
                  plan.logs_dir / "image-build.log", progress)
