"""Where FLOps keeps its state: the work dir (runs, build logs, the embedded MLflow store) and its one cache."""

from __future__ import annotations

import os
import time
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


def build_log_file(workdir: Path, image_name: str) -> Path:
    """Where `flops build` writes an image build's full tool output: <workdir>/build-logs/<name>-<UTC time>.log."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return Path(workdir).resolve() / "build-logs" / f"{image_name.replace('/', '_')}-{stamp}.log"
