"""Where FLOps keeps its state: the work dir (runs, the embedded MLflow store) and its one cache."""

from __future__ import annotations

import os
from pathlib import Path


def default_workdir() -> Path:
    """$FLOPS_HOME, else ~/.flops."""
    return Path(os.environ.get("FLOPS_HOME", Path.home() / ".flops"))


def cache_dir(workdir: Path) -> Path:
    """The one cache (git mirrors, checkouts, run environments): <workdir>/cache, or $FLOPS_CACHE_DIR.

    Every command that fetches or installs uses this, so `flops build` and `flops submit` share mirrors.
    """
    override = os.environ.get("FLOPS_CACHE_DIR")
    return Path(override).resolve() if override else Path(workdir).resolve() / "cache"
