"""The run's Python environment: a cached venv over FLOps' own packages, with the user's dependencies added."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from flops.errors import EnvironmentSetupError
from flops.filelock import locked
from flops.resolution import index_options, requirements_beyond_flops, resolve, run_logged, uv_error, uv_executable

COMPLETE_MARKER = ".flops-env-complete"
LOCK_FILE = "requirements.lock"


def ensure_run_env(
    dependencies: list[str], cache_dir: Path, log_path: Path | None = None, origins: dict[str, str] | None = None
) -> Path:
    """Python executable of a venv holding DEPENDENCIES on top of FLOps' packages; built once per key, reused.

    Requirements FLOps' own packages already satisfy are not installed again; one that would replace one of
    them, or that uv cannot resolve, is refused (ContractError naming where it was declared) before any env
    is built. The resolved set is written as the env's requirements.lock (see lock_file).
    """
    requirements = normalise(dependencies)
    key = env_key(requirements)
    envs_dir = Path(cache_dir).resolve() / "envs"
    env_dir = envs_dir / key
    python = env_dir / "bin" / "python"
    if (env_dir / COMPLETE_MARKER).is_file():
        return python
    to_resolve = requirements_beyond_flops(requirements, origins or {})
    envs_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else envs_dir / f"{key}.log"
    with locked(envs_dir / f"{key}.lock"):
        # Another submit may have finished the same env while we waited for the lock.
        if not (env_dir / COMPLETE_MARKER).is_file():
            pinned = resolve(to_resolve, log_path, origins or {}) if to_resolve else []
            _build(env_dir, requirements, pinned, log_path)
    return python


def lock_file(python: Path) -> Path:
    """The resolved set of the run env PYTHON belongs to: every package it sees, name==version, one per line."""
    return Path(python).parent.parent / LOCK_FILE


def normalise(dependencies: list[str]) -> list[str]:
    """Sorted, de-duplicated requirement strings in packaging's canonical spelling (the cache key's input)."""
    try:
        return sorted({str(Requirement(d)) for d in dependencies})
    except InvalidRequirement as exc:
        raise EnvironmentSetupError(f"invalid requirement: {exc}") from None


def env_key(requirements: list[str]) -> str:
    """Hash of everything that makes two environments differ: requirements, base interpreter, Flower."""
    material = {
        "requirements": requirements,
        "executable": sys.executable,
        "python": sys.version,
        "flwr": _version_of("flwr"),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def _build(env_dir: Path, requirements: list[str], pinned: list[str], log_path: Path) -> None:
    if env_dir.exists():
        shutil.rmtree(env_dir)  # a half-built env from an interrupted submit: no marker, so start over
    # Reuse pip from FLOps' env when it is visible there (it will be in the run env too): saves ensurepip.
    with_pip = importlib.util.find_spec("pip") is None
    try:
        venv.EnvBuilder(system_site_packages=True, symlinks=True, with_pip=with_pip).create(env_dir)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EnvironmentSetupError(f"creating the run environment {env_dir} failed: {exc}") from None
    _link_flops_site_packages(env_dir)
    _write_flower_scripts(env_dir)
    if pinned:
        install(env_dir / "bin" / "python", pinned, log_path)
    _write_lock(env_dir, pinned)
    _write_marker(env_dir, requirements)


def _link_flops_site_packages(env_dir: Path) -> None:
    """Make FLOps' own site-packages visible in the run env, after the env's own (which pip installs into).

    system_site_packages only reaches the base interpreter's site-packages. When FLOps itself runs in a
    venv (the usual case), its packages (flwr, mlflow, torch, FLOps itself) live in that venv instead, so
    a .pth line adds them with site.addsitedir, which also honours their .pth files (editable installs).
    """
    if sys.prefix == sys.base_prefix:
        return
    own = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in own)
    for target in (env_dir / "lib").glob("python*/site-packages"):
        (target / "_flops_parent_env.pth").write_text(lines)


def _write_flower_scripts(env_dir: Path) -> None:
    """Flower's console scripts (flower-superlink, flwr-clientapp, ...) bound to the run env's Python.

    Flower's processes start each other by name on PATH, so the run env's bin/ must hold them, or the
    ServerApp and ClientApps would run under FLOps' interpreter without the user's dependencies.
    """
    python = env_dir / "bin" / "python"
    for entry in importlib.metadata.distribution("flwr").entry_points.select(group="console_scripts"):
        script = env_dir / "bin" / entry.name
        if script.exists():
            continue
        module, _, attr = entry.value.partition(":")
        script.write_text(
            f"#!{python}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
            f"sys.exit({attr}())\n"
        )
        script.chmod(0o755)


def install(python: Path, pinned: list[str], log_path: Path) -> None:
    """uv-install the resolved PINNED set (name==version, dependencies already resolved) with PYTHON's env."""
    command = [uv_executable(), "pip", "install", "--python", str(python), "--no-config", "--no-deps", *index_options(), *pinned]
    code, output = run_logged(command, log_path)
    if code != 0:
        raise EnvironmentSetupError(f"installing dependencies failed: {uv_error(output)} (log: {log_path})")


def _write_lock(env_dir: Path, pinned: list[str]) -> None:
    """What the run env sees: FLOps' packages overlaid by the run env's own, as name==version lines."""
    seen = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}
    for line in pinned:
        name, _, pinned_version = line.partition("==")
        seen[canonicalize_name(name)] = pinned_version
    lines = [f"{name}=={found}" for name, found in sorted(seen.items())]
    header = "# Resolved with uv over FLOps' own packages; the packages this run's environment imports.\n"
    (env_dir / LOCK_FILE).write_text(header + "\n".join(lines) + "\n")


def _write_marker(env_dir: Path, requirements: list[str]) -> None:
    # Written last and renamed into place: its presence means every step above finished.
    marker = env_dir / COMPLETE_MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"requirements": requirements, "base": sys.executable}) + "\n")
    os.replace(tmp, marker)


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"
