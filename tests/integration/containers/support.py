"""Shared by the container tests: is the container tooling set up, and the spec of the fixture app's image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REGISTRY = os.environ.get("FLOPS_REGISTRY", "127.0.0.1:5000")
BASE = f"{REGISTRY}/flops/python-base:3.11"
HERE = Path(__file__).parent
# amd64: the CPU wheel in /opt/wheels; arm64: PyPI's last CPU-only aarch64 torch.
CONSTRAINTS = {"linux/amd64": ["torch==2.13.0+cpu"], "linux/arm64": ["torch<=2.10"]}
FIND_LINKS = ["/opt/wheels"] if Path("/opt/wheels").is_dir() else []


def containers_missing() -> str | None:
    """Why the container tests cannot run here, or None."""
    for tool in ("buildah", "skopeo", "podman"):
        if not shutil.which(tool):
            return f"{tool} is not installed: run .ci/setup-containers.sh"
    if not shutil.which("uv") and not (Path(sys.executable).parent / "uv").exists():
        return "uv is not installed: pip install uv"
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=3).read()
    except OSError as exc:
        return f"no registry on {REGISTRY} ({exc}): run .ci/setup-containers.sh"
    found = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{BASE}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        return f"base image {BASE} is not in the registry: run .ci/setup-containers.sh"
    return None


def require_containers(extra: str | None = None) -> None:
    """Skip when the tooling is missing on a developer machine; fail under CI, which ran the setup script."""
    reason = containers_missing() or extra
    if reason and os.environ.get("CI"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def docker_missing() -> str | None:
    """Why the Docker daemon cannot be used here, or None when it answers."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        return f"no Docker daemon ({exc}): run .ci/setup-containers.sh"
    return None
