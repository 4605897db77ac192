"""Argument lists for buildah, skopeo and uv; pure functions so tests can check them without running anything."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from image_builder.spec import PLATFORM_WHEEL_TAGS, BuildSpec

DEPS_DIR = "/opt/flops/deps"
# The base images' own PATH (Debian and python:*-slim) with the dependency layer's scripts first.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tls_args(tls_verify: bool | None) -> list[str]:
    """--tls-verify only when the caller decided; None leaves it to registries.conf (e.g. `insecure = true`)."""
    if tls_verify is None:
        return []
    return [f"--tls-verify={'true' if tls_verify else 'false'}"]


def skopeo_inspect_raw(ref: str, tls_verify: bool | None) -> list[str]:
    """Raw manifest (or manifest list) of an image in a registry: the cheap 'is it there?' look-up."""
    return ["skopeo", "inspect", "--raw", *tls_args(tls_verify), f"docker://{ref}"]


def skopeo_inspect_config(ref: str, tls_verify: bool | None) -> list[str]:
    return ["skopeo", "inspect", "--config", *tls_args(tls_verify), f"docker://{ref}"]


def buildah_from(image: str, *, tls_verify: bool | None = None, pull: str = "missing") -> list[str]:
    """A working container from `image`; pull 'missing' for digests, 'never' for our local cache images."""
    return ["buildah", "from", "--quiet", f"--pull={_pull_value(pull)}", *tls_args(tls_verify), image]


def _pull_value(pull: str) -> str:
    # buildah 1.28 spells "pull when missing" as --pull=false.
    return {"missing": "false", "never": "never", "always": "always"}[pull]


def buildah_copy(container: str, source: Path, dest: str, chown: str | None = None) -> list[str]:
    return ["buildah", "copy", "--quiet", *(["--chown", chown] if chown else []), container, str(source), dest]


def buildah_config(
    container: str,
    *,
    env: dict[str, str] | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    workdir: str | None = None,
    labels: dict[str, str] | None = None,
    user: str | None = None,
) -> list[str]:
    args = ["buildah", "config"]
    if user is not None:
        args += ["--user", user]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    if entrypoint is not None:
        args += ["--entrypoint", json.dumps(entrypoint)]
    if cmd is not None:
        args += ["--cmd", json.dumps(cmd) if cmd else ""]
    if workdir is not None:
        args += ["--workingdir", workdir]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    return [*args, container]


def buildah_commit(container: str, image: str) -> list[str]:
    return ["buildah", "commit", "--quiet", "--rm", container, image]


def buildah_image_exists(image: str) -> list[str]:
    return ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", image]


def buildah_image_label(image: str, label: str) -> list[str]:
    return ["buildah", "inspect", "--type", "image", "--format", f'{{{{index .OCIv1.Config.Labels "{label}"}}}}', image]


def buildah_push(image: str, dest: str, tls_verify: bool | None) -> list[str]:
    return ["buildah", "push", "--quiet", *tls_args(tls_verify), image, dest]


def buildah_pull(image: str, tls_verify: bool | None) -> list[str]:
    return ["buildah", "pull", "--quiet", *tls_args(tls_verify), image]


def buildah_manifest_create(list_name: str) -> list[str]:
    return ["buildah", "manifest", "create", list_name]


def buildah_manifest_rm(list_name: str) -> list[str]:
    """Drop a manifest list left by an earlier build of the same tag (`buildah rmi` does not find lists)."""
    return ["buildah", "manifest", "rm", list_name]


def buildah_manifest_add(list_name: str, image: str) -> list[str]:
    return ["buildah", "manifest", "add", list_name, f"containers-storage:{image}"]


def buildah_manifest_push(list_name: str, dest: str, tls_verify: bool | None, digest_file: Path) -> list[str]:
    return [
        "buildah", "manifest", "push", "--all", "--quiet", *tls_args(tls_verify),
        "--digestfile", str(digest_file), list_name, dest,
    ]


def buildah_rm_images(*images: str) -> list[str]:
    return ["buildah", "rmi", "--force", *images]


def pip_index_config(spec: BuildSpec) -> str | None:
    """The index URLs as a pip configuration file's text, for the emulated install: pip in the container reads
    them from a file mounted for that one command (PIP_CONFIG_FILE), so a `user:token@` in them stays off every
    command line and log; None without index URLs. (uv on the host takes them from uv_index_env.)"""
    lines = [f"index-url = {spec.pip_index_url}"] if spec.pip_index_url else []
    if spec.pip_extra_index_urls:
        lines.append("extra-index-url = " + " ".join(spec.pip_extra_index_urls))
    return "[global]\n" + "\n".join(lines) + "\n" if lines else None


def find_links_options(spec: BuildSpec) -> list[str]:
    """Local wheel folders, for uv on the host and pip in an emulated install alike."""
    return [arg for links in spec.pip_find_links for arg in ("--find-links", links)]


def uv_index_env(index_url: str | None, extra_index_urls: Sequence[str]) -> dict[str, str]:
    """Index URLs for uv as its environment: a `user:token@` in them stays off the command line (readable by
    every user in /proc) and out of the logs, which record each command."""
    env: dict[str, str] = {}
    if index_url:
        env["UV_DEFAULT_INDEX"] = index_url
    if extra_index_urls:
        env["UV_INDEX"] = " ".join(extra_index_urls)
    return env


def uv_install_for_platform(
    spec: BuildSpec,
    platform: str,
    target: Path,
    requirements: Path,
    constraints: Path | None,
) -> list[str]:
    """Resolve and install wheels for the target platform into `target`, on the build host: nothing emulated.

    --python-platform makes uv evaluate markers and pick wheels for the target (pip --platform would
    evaluate markers for the host); --only-binary keeps any build step off the host.

    Index strategy: uv's default, first-index. A package is taken from the first index that has it (extra indexes
    before the main one), so a name on a private extra index can never be shadowed by a higher version someone
    publishes on PyPI (the dependency-confusion attack unsafe-best-match allows). The price: a package present on
    both (e.g. numpy on the PyTorch CPU index) comes only from the extra index's versions. Pinning an index per
    package needs uv's [tool.uv.sources], which `uv pip install` of requirement lines does not read.
    """
    args = [
        "uv", "pip", "install",
        "--target", str(target),
        "--python-platform", PLATFORM_WHEEL_TAGS[platform],
        "--python-version", spec.python_version,
        "--only-binary", ":all:",
        "--no-config",
        "-r", str(requirements),
    ]
    if constraints is not None:
        args += ["-c", str(constraints)]
    return args + find_links_options(spec)


def emulated_pip_install(spec: BuildSpec, requirements: str, constraints: str | None) -> list[str]:
    """pip inside the target-arch container (under QEMU): the fallback for packages without a wheel."""
    args = [
        "python3", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
        "--break-system-packages", "--target", DEPS_DIR, "-r", requirements,
    ]
    if constraints is not None:
        args += ["-c", constraints]
    return args + find_links_options(spec)


def buildah_run(container: str, command: list[str], mounts: list[tuple[str, str]], env: dict[str, str]) -> list[str]:
    args = ["buildah", "run", "--isolation", "chroot"]
    for source, dest in mounts:
        args += ["--volume", f"{source}:{dest}:ro"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, container, "--", *command]
