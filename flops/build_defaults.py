"""This machine's image build settings (base image, wheel folders, constraints), written once by the set-up script.

`.ci/setup-containers.sh` writes /etc/flops/build-defaults.toml; $FLOPS_BUILD_DEFAULTS names another file. Flags
given on the command line win; a default fills only what the user left unset.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flops.errors import ConfigError
from image_builder import BuildSpec

DEFAULTS_ENV = "FLOPS_BUILD_DEFAULTS"
SYSTEM_DEFAULTS = Path("/etc/flops/build-defaults.toml")


class BuildDefaults(BaseModel):
    """What a user on this machine would otherwise pass as --base-image, --pip-find-links, --platform-constraint."""

    model_config = ConfigDict(extra="forbid")

    base_image: str | None = None
    pip_find_links: list[str] = Field(default_factory=list)
    platform_constraints: dict[str, list[str]] = Field(default_factory=dict)
    source: str | None = Field(default=None, exclude=True, description="the file these came from")

    def apply(self, spec: BuildSpec) -> BuildSpec:
        """`spec` with unset fields filled from these defaults."""
        constraints = {
            **{p: c for p, c in self.platform_constraints.items() if p in spec.platforms},
            **spec.platform_constraints,
        }
        links = [*spec.pip_find_links, *(d for d in self.pip_find_links if d not in spec.pip_find_links)]
        return spec.model_copy(update={
            "base_image": spec.base_image or self.base_image,
            "pip_find_links": [d for d in links if Path(d).is_dir() or "://" in d],
            "platform_constraints": constraints,
        })


def defaults_path() -> Path:
    return Path(os.environ[DEFAULTS_ENV]) if os.environ.get(DEFAULTS_ENV) else SYSTEM_DEFAULTS


def load_build_defaults(path: Path | None = None) -> BuildDefaults:
    """The defaults file's settings; none when it does not exist; ConfigError naming file and field when invalid."""
    path = path or defaults_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if os.environ.get(DEFAULTS_ENV):
            raise ConfigError(f"${DEFAULTS_ENV}={path}: no such file") from None
        return BuildDefaults()
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return BuildDefaults.model_validate(raw).model_copy(update={"source": str(path)})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "top level"
        raise ConfigError(f"{path}: {field}: {first['msg']}") from None
