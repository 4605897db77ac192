"""Resolve the user's requirements over FLOps' own packages with uv: refuse conflicts up front, pin the rest."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flops.errors import ContractError, EnvironmentSetupError
from image_builder.commands import uv_index_env

# Packages the run env must take from FLOps unchanged: FLOps' own dependency closure, and the host's torch
# (a CPU build from local wheels; a user's torch pin must never pull another build, e.g. CUDA's, over it).
ROOT_DISTRIBUTIONS = ("flops", "torch")


def flops_packages() -> dict[str, tuple[str, list[str]]]:
    """canonical name -> (installed version, who needs it: ["flwr 1.42.0 (numpy<3,>=1.26)"]) of FLOps' closure."""
    found: dict[str, tuple[str, list[str]]] = {}
    queue = [(name, "FLOps") for name in ROOT_DISTRIBUTIONS]
    while queue:
        name, needed_by = queue.pop()
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        key = canonicalize_name(name)
        if key in found:
            found[key][1].append(needed_by)
            continue
        found[key] = (distribution.version, [needed_by])
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an optional extra's dependency, or another platform's
            spec = f" ({requirement.specifier})" if requirement.specifier else ""
            queue.append((requirement.name, f"{distribution.metadata['Name']} {distribution.version}{spec}"))
    return found


def requirements_beyond_flops(requirements: list[str], origins: dict[str, str]) -> list[str]:
    """The requirements FLOps' packages do not already satisfy; ContractError for one that would replace them."""
    provided = flops_packages()
    beyond = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # for another Python or platform
        key = canonicalize_name(requirement.name)
        if key not in provided:
            beyond.append(text)
            continue
        installed, needed_by = provided[key]
        if not requirement.specifier.contains(installed, prereleases=True):
            where = origins.get(text, "dependencies")
            raise ContractError(
                f"{where}: '{text}' would replace {requirement.name} {installed}, which FLOps needs "
                f"(required by {', '.join(sorted(set(needed_by))[:3])}); relax the pin to allow {installed}"
            )
    return beyond


def resolve(requirements: list[str], log_path: Path, origins: dict[str, str]) -> list[str]:
    """name==version of every package REQUIREMENTS add to FLOps' environment, resolved by uv with FLOps'
    packages held at their installed versions; ContractError with uv's explanation when they do not fit."""
    provided = flops_packages()
    with tempfile.TemporaryDirectory(prefix="flops-resolve-") as tmp:
        requirements_file = Path(tmp) / "requirements.txt"
        requirements_file.write_text("\n".join(requirements) + "\n")
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, (version, _) in sorted(provided.items())))
        # A dry run against FLOps' own interpreter: uv sees its installed packages and prefers them.
        command = [
            uv_executable(), "pip", "install", "--dry-run", "--python", sys.executable, "--no-config",
            *index_options(), "-r", str(requirements_file), "-c", str(constraints),
        ]  # fmt: skip
        code, output = run_logged(command, log_path)
    if code != 0:
        declared = ", ".join(f"{text} ({origins.get(text, 'dependencies')})" for text in requirements)
        raise ContractError(f"cannot install {declared}: {uv_error(output)}")
    # uv lists what it would add (" + name==version") and what it would replace (" - name==version").
    return [line.strip()[2:] for line in output.splitlines() if line.startswith(" + ")]


def index_options() -> list[str]:
    """uv's package-index options from pip's environment variables, so uv and pip look in the same places.
    Index URLs (which may carry credentials) go to uv through its environment instead: see index_environment."""
    options: list[str] = []
    if os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        options.append("--no-index")
    for links in os.environ.get("PIP_FIND_LINKS", "").split():
        options += ["--find-links", links]
    return options


def index_environment() -> dict[str, str]:
    """pip's index URLs (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL) as uv's environment, never on its command line."""
    return uv_index_env(os.environ.get("PIP_INDEX_URL"), os.environ.get("PIP_EXTRA_INDEX_URL", "").split())


def uv_executable() -> str:
    """uv beside FLOps' interpreter (it is one of FLOps' dependencies), else on PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if found is None:
        raise EnvironmentSetupError("uv not found: install FLOps with pip (uv is one of its dependencies)")
    return found


def run_logged(command: list[str], log_path: Path) -> tuple[int, str]:
    """Run COMMAND (uv's index URLs in its environment), append it and its output to LOG_PATH; (exit code, output)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, **index_environment()})
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done.returncode, done.stdout + done.stderr


def uv_error(output: str) -> str:
    """uv's resolver explanation on one line (the "Because ... unsatisfiable" text), else its error line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("error: No solution found"):
            cause = " ".join(part for part in lines[index + 1:] if not part.startswith("hint:"))
            return cause.removeprefix("cause:").strip().lstrip("╰─▶ ").strip() or line
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1] if errors else (lines[-1] if lines else "uv printed nothing")).removeprefix("error:").strip()
