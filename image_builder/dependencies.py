"""The dependency layer: wheels resolved for the target platform on the host, laid on the target-arch base."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import NamedTuple, Protocol

from image_builder.errors import BuildError, ToolError
from image_builder import commands as cmd
from image_builder import slim
from image_builder.cuda import CUDA_LABEL, find_cuda_libraries, label_value, parse_label
from image_builder.keys import dependency_key
from image_builder.spec import PLATFORM_MACHINES, BuildSpec, host_platform
from image_builder.tools import ToolRunner

CACHE_REPO = "flops-cache/deps"
# Platforms build side by side, but copying, committing and pushing a dependency layer (hundreds of MB)
# one at a time: on a small machine two at once thrash the disk. Resolving and downloading overlap freely.
STORAGE_LOCK = threading.Lock()
# uv's wording when --only-binary leaves a requirement without a usable wheel for the target.
NO_WHEEL_MARKERS = ("wheel", "only-binary", "source distribution", "platform tag")


class Report(Protocol):
    def __call__(self, kind: str, step: str = "", message: str = "", platform: str | None = None) -> None: ...


def deps_env() -> dict[str, str]:
    return {"PYTHONPATH": cmd.DEPS_DIR, "PATH": f"{cmd.DEPS_DIR}/bin:{cmd.DEFAULT_PATH}"}


class DependencyLayer(NamedTuple):
    """A local image holding base + dependency layer, whether pip ran under QEMU, and CUDA libraries found in it."""

    image: str
    emulated: bool
    cuda_libraries: list[str]


def warn_cuda(report: Report, platform: str, libraries: list[str]) -> None:
    if libraries:
        shown = ", ".join(libraries[:6]) + (f" and {len(libraries) - 6} more" if len(libraries) > 6 else "")
        report("warning", "dependency layer",
               f"CUDA LIBRARIES IN A CPU IMAGE ({shown}): some requirement resolved to a CUDA build "
               "(PyPI's torch on x86_64 is one); pin torch's CPU variant (a +cpu wheel from a find-links folder "
               "or the PyTorch CPU index) to drop GBs from the image", platform)


def install_dependencies(
    spec: BuildSpec,
    platform: str,
    base_ref: str,
    base_digest: str,
    runner: ToolRunner,
    report: Report,
    tmp: Path,
) -> DependencyLayer:
    """The local image holding base + dependency layer for `platform`, built or found in a cache.

    Reuse order: local storage, then the registry's cache repository, then build.
    """
    key = dependency_key(spec, platform, base_digest)[:32]
    local = f"localhost/{CACHE_REPO}:{key}"
    remote = f"{spec.registry}/{CACHE_REPO}:{key}" if spec.registry else None
    step = "dependency layer"
    if not spec.no_cache:
        if runner.run(cmd.buildah_image_exists(local), quiet=True, check=False)[0] == 0:
            report("done", step, f"cached ({key[:12]})", platform)
            return _cached_layer(local, platform, runner, report)
        if remote and runner.run(cmd.skopeo_inspect_raw(remote, spec.tls_verify), quiet=True, check=False)[0] == 0:
            report("step", step, f"pulling cached {remote}", platform)
            runner.run(cmd.buildah_pull(remote, spec.tls_verify), quiet=True)
            runner.run(["buildah", "tag", remote, local], quiet=True)
            report("done", step, f"cached in registry ({key[:12]})", platform)
            return _cached_layer(local, platform, runner, report)

    report("step", step, f"resolving {len(spec.requirements)} requirement(s) for {platform}", platform)
    arch = platform.split("/")[1]
    work = tmp / f"deps-{arch}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    requirements = work / "requirements.txt"
    requirements.write_text("\n".join(spec.requirements) + "\n")
    constraint_lines = spec.platform_constraints.get(platform, [])
    constraints = work / "constraints.txt" if constraint_lines else None
    if constraints is not None:
        constraints.write_text("\n".join(constraint_lines) + "\n")

    container = runner.run(cmd.buildah_from(base_ref, tls_verify=spec.tls_verify), quiet=True)[1].strip()
    emulated = False
    try:
        target = work / "site"
        try:
            if spec.requirements:
                runner.run(cmd.uv_install_for_platform(spec, platform, target, requirements, constraints),
                           env=cmd.uv_index_env(spec.pip_index_url, spec.pip_extra_index_urls))
        except ToolError as exc:
            if not any(marker in exc.output.lower() for marker in NO_WHEEL_MARKERS):
                raise
            if spec.no_emulation:
                raise BuildError(
                    f"no wheel for {platform} for some requirement and --no-emulation is set: {exc}"
                ) from exc
            report("warning", step, f"no wheel for {platform}: installing under QEMU emulation (slow)", platform)
            _emulated_install(spec, platform, container, work, requirements, constraints, runner)
            emulated = True
        else:
            if spec.requirements:
                _portable_scripts(target / "bin")
        cuda = _slim_and_scan(spec, platform, target if not emulated else None, container, runner, report)
        warn_cuda(report, platform, cuda)
        with STORAGE_LOCK:
            if spec.requirements and not emulated:
                runner.run(cmd.buildah_copy(container, target, cmd.DEPS_DIR), quiet=True)
            runner.run(cmd.buildah_config(container, env=deps_env(), labels={CUDA_LABEL: label_value(cuda)}),
                       quiet=True)
            runner.run(cmd.buildah_commit(container, local), quiet=True)
    except BaseException:
        runner.run(["buildah", "rm", container], quiet=True, check=False)
        raise
    if remote:
        report("step", step, f"caching as {remote}", platform)
        with STORAGE_LOCK:
            runner.run(cmd.buildah_push(local, f"docker://{remote}", spec.tls_verify), quiet=True)
    report("done", step, f"built ({key[:12]}){' under emulation' if emulated else ''}", platform)
    return DependencyLayer(local, emulated, cuda)


def _cached_layer(image: str, platform: str, runner: ToolRunner, report: Report) -> DependencyLayer:
    code, value = runner.run(cmd.buildah_image_label(image, CUDA_LABEL), quiet=True, check=False)
    cuda = parse_label(value) if code == 0 else []
    warn_cuda(report, platform, cuda)
    return DependencyLayer(image, False, cuda)


def _slim_and_scan(
    spec: BuildSpec, platform: str, target: Path | None, container: str, runner: ToolRunner, report: Report
) -> list[str]:
    """Prune and strip the installed dependencies, then list CUDA libraries left: on the host (`target`), or
    inside the container's filesystem after an emulated install."""
    mount = None
    if target is None:
        mount = runner.run(["buildah", "mount", container], quiet=True)[1].strip()
        target = Path(mount) / cmd.DEPS_DIR.lstrip("/")
    try:
        if spec.prune or spec.strip:
            removed = slim.prune(target, spec.prune)
            stripped, saved = slim.strip_libraries(target, spec.strip, platform, runner, report)
            report("step", "dependency layer",
                   f"slimmed: pruned {removed / 1e6:.1f} MB, stripped {stripped} "
                   f"librar{'y' if stripped == 1 else 'ies'} (-{saved / 1e6:.1f} MB)", platform)
        return find_cuda_libraries(target)
    finally:
        if mount is not None:
            runner.run(["buildah", "umount", container], quiet=True, check=False)


def _portable_scripts(bin_dir: Path) -> None:
    """Console scripts installed with --target name the host's interpreter: point them at the image's."""
    if not bin_dir.is_dir():
        return
    for script in bin_dir.iterdir():
        if not script.is_file():
            continue
        with open(script, "rb") as handle:
            first = handle.readline()
        if first.startswith(b"#!") and b"python" in first:
            rest = script.read_bytes()[len(first):]
            script.write_bytes(b"#!/usr/bin/env python3\n" + rest)
            script.chmod(0o755)


def qemu_ready(platform: str) -> bool:
    if platform == host_platform():
        return True
    machine = PLATFORM_MACHINES[platform]
    status = Path(f"/proc/sys/fs/binfmt_misc/qemu-{machine}")
    return status.exists() and "enabled" in status.read_text()


def _emulated_install(
    spec: BuildSpec,
    platform: str,
    container: str,
    work: Path,
    requirements: Path,
    constraints: Path | None,
    runner: ToolRunner,
) -> None:
    """pip inside the target-arch container: runs under QEMU on a foreign host."""
    if not qemu_ready(platform):
        raise BuildError(
            f"installing for {platform} needs QEMU emulation but binfmt_misc has no enabled "
            f"qemu-{PLATFORM_MACHINES[platform]}: run .ci/setup-containers.sh (or apt-get install qemu-user-static)"
        )
    mounts = [(str(work), "/flops-deps-input")]
    env: dict[str, str] = {}
    ca = spec.ca_bundle or (Path(os.environ["SSL_CERT_FILE"]) if os.environ.get("SSL_CERT_FILE") else None)
    if ca is not None and ca.exists():
        mounts.append((str(ca), "/flops-ca.crt"))
        env["PIP_CERT"] = "/flops-ca.crt"
    mounts += [(links, links) for links in spec.pip_find_links if Path(links).is_dir()]
    index_config = cmd.pip_index_config(spec)
    if index_config is not None:  # in the mounted input folder: read by this pip, never part of the image
        fd = os.open(work / "pip.conf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf:
            conf.write(index_config)
        env["PIP_CONFIG_FILE"] = "/flops-deps-input/pip.conf"
    pip = cmd.emulated_pip_install(
        spec,
        "/flops-deps-input/requirements.txt",
        "/flops-deps-input/constraints.txt" if constraints is not None else None,
    )
    runner.run(cmd.buildah_run(container, pip, mounts, env))
