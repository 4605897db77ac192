"""What to build (BuildSpec), what came out (BuildResult) and the progress events in between."""

from __future__ import annotations

import platform as host
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from image_builder.errors import SpecError

SUPPORTED_PLATFORMS = ("linux/amd64", "linux/arm64")

# Debian bookworm (python:3.11-slim and our mmdebstrap base) ships glibc 2.36: wheels up to that tag run.
PLATFORM_WHEEL_TAGS = {
    "linux/amd64": "x86_64-manylinux_2_36",
    "linux/arm64": "aarch64-manylinux_2_36",
}
PLATFORM_MACHINES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
# Other names machines give themselves for the same architectures (macOS says arm64).
_MACHINE_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}


def oci_labels(source_url: str | None, commit: str | None) -> dict[str, str]:
    """The OCI annotations naming where an image's code came from."""
    labels = {}
    if source_url:
        labels["org.opencontainers.image.source"] = source_url
    if commit:
        labels["org.opencontainers.image.revision"] = commit
    return labels


def host_platform() -> str | None:
    """The supported platform this machine runs natively (its images need no emulation), or None."""
    machine = _MACHINE_ALIASES.get(host.machine().lower(), host.machine())
    return next((p for p, m in PLATFORM_MACHINES.items() if m == machine), None)


class BuildSpec(BaseModel):
    """One multi-arch image to build: base, dependency, runtime and code layers, in that order."""

    name: str = Field(description="repository name inside the registry, e.g. 'flops/mnist'")
    context_dir: Path = Field(description="files for the code layer, copied to `workdir`")
    requirements: list[str] = Field(default_factory=list, description="pip requirement lines")
    platform_constraints: dict[str, list[str]] = Field(
        default_factory=dict, description="extra constraint lines per platform, e.g. {'linux/arm64': ['torch<=2.10']}"
    )
    prune: list[str] = Field(
        default_factory=list,
        description="glob patterns, relative to the dependency folder, of installed files the image never runs "
        "(e.g. 'torch/test'); deleted before the dependency layer is committed",
    )
    strip: list[str] = Field(
        default_factory=list,
        description="glob patterns of installed shared libraries whose symbol tables are dropped "
        "(strip --strip-unneeded with the target platform's strip)",
    )
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    runtime_files: dict[str, str] = Field(
        default_factory=dict, description="absolute path in the image -> text; the runtime layer, mode 0755"
    )
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/app"
    user: str | None = Field(
        default=None,
        description="UID[:GID] the image runs as (numeric: the base needs no passwd entry); None keeps the base's",
    )
    writable_dirs: list[str] = Field(
        default_factory=list, description="absolute paths created in the runtime layer, owned by `user`"
    )
    platforms: list[str] = Field(default_factory=lambda: ["linux/amd64"])
    registry: str | None = Field(default=None, description="HOST[:PORT] to push the manifest list to")
    base_image: str | None = Field(default=None, description="default: docker.io/library/python:<python_version>-slim")
    python_version: str = "3.11"
    pip_index_url: str | None = None
    pip_extra_index_urls: list[str] = Field(default_factory=list)
    pip_find_links: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    output: str | None = Field(default=None, description="'oci-archive:PATH' to write instead of (or besides) pushing")
    tag: str | None = Field(default=None, description="default: a content hash of every input")
    no_cache: bool = False
    tls_verify: bool | None = Field(
        default=None, description="TLS to registries; None leaves it to registries.conf (its `insecure` entries)"
    )
    no_emulation: bool = False
    log_file: Path | None = None
    ca_bundle: Path | None = Field(
        default=None, description="CA file mounted for pip in an emulated install; default $SSL_CERT_FILE"
    )

    @field_validator("platforms")
    @classmethod
    def _known_platforms(cls, platforms: list[str]) -> list[str]:
        unknown = [p for p in platforms if p not in SUPPORTED_PLATFORMS]
        if unknown or not platforms:
            raise ValueError(f"unsupported platform(s) {unknown}; known: {', '.join(SUPPORTED_PLATFORMS)}")
        return list(dict.fromkeys(platforms))

    @field_validator("user")
    @classmethod
    def _numeric_user(cls, user: str | None) -> str | None:
        if user is not None and not re.fullmatch(r"\d+(:\d+)?", user):
            raise ValueError(f"user {user!r} must be numeric UID or UID:GID (the base image need not know the name)")
        return user

    @field_validator("writable_dirs")
    @classmethod
    def _absolute_dirs(cls, dirs: list[str]) -> list[str]:
        bad = [d for d in dirs if not d.startswith("/") or ".." in Path(d).parts]
        if bad:
            raise ValueError(f"writable_dirs must be absolute paths without '..': {bad}")
        return dirs

    @field_validator("prune", "strip")
    @classmethod
    def _relative_patterns(cls, patterns: list[str]) -> list[str]:
        bad = [p for p in patterns if not p or p.startswith("/") or ".." in Path(p).parts]
        if bad:
            raise ValueError(f"patterns must be relative to the dependency folder, without '..': {bad}")
        return patterns

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", name):
            raise ValueError(f"image name {name!r} is not a valid repository name (lowercase, digits, . _ - /)")
        return name

    @field_validator("python_version")
    @classmethod
    def _major_minor(cls, version: str) -> str:
        if not re.fullmatch(r"3\.\d+", version):
            raise ValueError(f"python_version {version!r} must look like '3.11'")
        return version

    @model_validator(mode="after")
    def _has_destination(self) -> BuildSpec:
        if not self.registry and not self.output:
            raise ValueError("give a registry to push to or an output 'oci-archive:PATH'")
        if self.output and not self.output.startswith("oci-archive:"):
            raise ValueError(f"output {self.output!r} must be 'oci-archive:PATH'")
        return self

    @property
    def resolved_base_image(self) -> str:
        return self.base_image or f"docker.io/library/python:{self.python_version}-slim"

    @classmethod
    def checked(cls, **fields: object) -> BuildSpec:
        """Build a spec from user input, turning validation errors into a SpecError that names the field."""
        from pydantic import ValidationError

        try:
            return cls(**fields)  # type: ignore[arg-type]
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "build spec"
            raise SpecError(f"{where}: {first['msg']}") from exc


class BuildResult(BaseModel):
    """What a build produced; `image` is REF@DIGEST of the manifest list (or oci-archive:PATH@DIGEST)."""

    image: str
    tag: str
    platforms: list[str]
    size_bytes: dict[str, int]
    duration_s: float
    cached: bool
    layers: dict[str, list[str]] = Field(default_factory=dict, description="platform -> layer digests, base first")
    dependency_layer: dict[str, str] = Field(default_factory=dict, description="platform -> digest of the deps layer")
    emulated: list[str] = Field(default_factory=list, description="platforms whose deps were installed under QEMU")
    cuda_libraries: dict[str, list[str]] = Field(
        default_factory=dict, description="platform -> CUDA packages/libraries found in its dependency layer"
    )


class ProgressEvent(BaseModel):
    """A step starting or finishing, or one line of a tool's output."""

    kind: Literal["step", "done", "line", "warning"]
    platform: str | None = None
    step: str = ""
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]
