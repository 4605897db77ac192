"""The image step: a source's augmented Flower app as a multi-arch image (`flops build`, and submit's own build)."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flops.config import RunConfig
from flops.errors import ConfigError
from flops.plan import RunPlan
from flops.preparation import AugmentedSource, augment_source
from flops.slug import slug
from flops.workdir import build_log_file, cache_dir
from image_builder import SUPPORTED_PLATFORMS, BuildResult, ProgressCallback, build_image
from image_builder.flower_app import flower_app_spec
from image_builder.spec import host_platform

# PyPI's aarch64 torch wheels after 2.10 are CUDA builds (GBs, no CPU-only import): keep arm64 on the last
# CPU-only release unless the user says otherwise with --platform-constraint linux/arm64=...
DEFAULT_PLATFORM_CONSTRAINTS = {"linux/arm64": ["torch<=2.10"]}


class ImageOptions(BaseModel):
    """How to build: where to push, what to build on, where wheels come from."""

    registry: str | None = None
    base_image: str | None = None
    pip_index_url: str | None = None
    pip_extra_index_urls: list[str] = []
    pip_find_links: list[str] = []
    platform_constraints: list[str] = []  # PLATFORM=REQUIREMENT, as given on the command line
    tls_verify: bool = True
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
    """'linux/arm64=torch<=2.10' pairs -> {platform: [constraint, ...]}; defaults for platforms not named."""
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
    merged = {p: list(c) for p, c in DEFAULT_PLATFORM_CONSTRAINTS.items() if p in platforms and p not in given}
    return {**merged, **{p: c for p, c in given.items() if c}}


def image_name(source_name: str) -> str:
    """Repository name of a source's app image in the registry."""
    return f"flops/{slug(source_name)}"


def app_requirements(dependencies: list[str]) -> list[str]:
    """The user's dependencies plus what the image itself runs: Flower at the host's minor release."""
    major, minor, *_ = version("flwr").split(".")
    return [f"flwr>={major}.{minor}.0,<{major}.{int(minor) + 1}", *dependencies]


def _build(app: AugmentedSource, platforms: list[str], options: ImageOptions, name: str, log_file: Path,
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
    if not options.registry and not options.output:
        raise ConfigError("give --registry HOST[:PORT] or --output oci-archive:PATH")
    app = augment_source(source, ref, config, cache_dir(workdir), scratch / "app")
    name = name or image_name(app.name)
    return _build(app, platforms, options, name, build_log_file(workdir, name), progress)


def build_run_image(plan: RunPlan, options: ImageOptions, progress: ProgressCallback | None = None) -> BuildResult:
    """A prepared run's app as an image for this machine's platform, built or found in the registry by its hash.

    The build's full tool output goes to the run's logs (image-build.log).
    """
    app = AugmentedSource(app_dir=plan.app_dir, name=plan.source_name, url=plan.source_url, commit=plan.commit,
                          dependencies=plan.dependencies)
    return _build(app, [host_platform() or "linux/amd64"], options, image_name(plan.source_name),
                  plan.logs_dir / "image-build.log", progress)
