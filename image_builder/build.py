"""build_image: base, dependency, runtime and code layers per platform, then one manifest list pushed or archived."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from image_builder.errors import BuildError, ToolError
from image_builder import commands as cmd
from image_builder.base_image import resolve_base
from image_builder.dependencies import DependencyLayer, install_dependencies
from image_builder.keys import code_files, image_tag, runtime_key, tree_hash
from image_builder.manifests import archive_manifests, registry_manifests
from image_builder.spec import BuildResult, BuildSpec, ProgressCallback, ProgressEvent
from image_builder.tools import ToolRunner

LOCAL_PREFIX = "localhost/flops-build"
CACHE_PREFIX = "localhost/flops-cache"


def default_log_file(name: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flops" / "build-logs"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return root / f"{name.replace('/', '_')}-{stamp}.log"


class _Reporter:
    """Sends progress events, tolerating no callback."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress

    def __call__(self, kind: str, step: str = "", message: str = "", platform: str | None = None) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(kind=kind, platform=platform, step=step, message=message))  # type: ignore[arg-type]


def build_image(spec: BuildSpec, progress: ProgressCallback | None = None) -> BuildResult:
    """Build (or find already built) the multi-arch image `spec` describes and push or archive it."""
    started = time.monotonic()
    report = _Reporter(progress)
    log_file = spec.log_file or default_log_file(spec.name)
    runner = ToolRunner(log_file, on_line=lambda line: report("line", message=line))
    try:
        return _build(spec, runner, report, started)
    except ToolError as exc:
        raise BuildError(f"building {spec.name} failed: {exc} (full log: {log_file})") from exc
    finally:
        runner.close()


def _build(spec: BuildSpec, runner: ToolRunner, report: _Reporter, started: float) -> BuildResult:
    if not spec.context_dir.is_dir():
        raise BuildError(f"context_dir {spec.context_dir} is not a directory")
    report("step", "resolve base image", spec.resolved_base_image)
    base = resolve_base(runner, spec.resolved_base_image, spec.platforms, spec.tls_verify)
    report("done", "resolve base image")
    tag = spec.tag or image_tag(spec, base.digests, tree_hash(spec.context_dir))
    target = f"{spec.registry}/{spec.name}:{tag}" if spec.registry else None

    if target and not spec.no_cache and not spec.output:  # an archive asked for is always written
        report("step", "look up", target)
        code, raw = runner.run(cmd.skopeo_inspect_raw(target, spec.tls_verify), quiet=True, check=False)
        report("done", "look up", "found: nothing to build" if code == 0 else "not found")
        if code == 0:
            result = registry_manifests(runner, target, raw, spec.tls_verify, base.layer_counts)
            return _result(spec, result, tag, started, cached=True)

    with tempfile.TemporaryDirectory(prefix="flops-build-") as tmp:

        def one_platform(platform: str) -> tuple[str, DependencyLayer]:
            deps = install_dependencies(
                spec, platform, base.refs[platform], base.digests[platform], runner, report, Path(tmp)
            )
            runtime_image = _runtime_layer(spec, platform, deps.image, runner, report, Path(tmp))
            return _code_layer(spec, platform, runtime_image, tag, runner, report, Path(tmp)), deps

        # Platforms build side by side: one resolves and downloads while the other copies and commits.
        with ThreadPoolExecutor(max_workers=len(spec.platforms)) as pool:
            built = dict(zip(spec.platforms, pool.map(one_platform, spec.platforms)))
        images = {platform: image for platform, (image, _) in built.items()}
        result = _publish(spec, images, tag, target, runner, report, base.layer_counts, started, Path(tmp))
        return result.model_copy(update={
            "emulated": [platform for platform, (_, deps) in built.items() if deps.emulated],
            "cuda_libraries": {platform: deps.cuda_libraries for platform, (_, deps) in built.items()
                               if deps.cuda_libraries},
        })


def _runtime_layer(
    spec: BuildSpec, platform: str, deps_image: str, runner: ToolRunner, report: _Reporter, tmp: Path
) -> str:
    """Entrypoint files and image config on top of the dependency layer; cached locally by key."""
    image = f"{CACHE_PREFIX}/runtime:{runtime_key(spec, deps_image)[:32]}"
    if not spec.no_cache and runner.run(cmd.buildah_image_exists(image), quiet=True, check=False)[0] == 0:
        report("done", "runtime layer", "cached", platform)
        return image
    report("step", "runtime layer", "", platform)
    container = runner.run(cmd.buildah_from(deps_image, pull="never"), quiet=True)[1].strip()
    root = tmp / f"runtime-{platform.replace('/', '-')}"
    if spec.runtime_files:
        shutil.rmtree(root, ignore_errors=True)
        for dest, content in spec.runtime_files.items():
            path = root / dest.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(0o755)
        runner.run(cmd.buildah_copy(container, root, "/"), quiet=True)
    if spec.writable_dirs:
        # Empty folders copied with --chown: the non-root user can write there, everything else stays root's.
        writable = tmp / f"writable-{platform.replace('/', '-')}"
        shutil.rmtree(writable, ignore_errors=True)
        for folder in spec.writable_dirs:
            (writable / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
            runner.run(cmd.buildah_copy(container, writable / folder.lstrip("/"), folder, chown=spec.user), quiet=True)
    runner.run(
        cmd.buildah_config(
            container, env=spec.env, entrypoint=spec.entrypoint, cmd=spec.cmd, workdir=spec.workdir, user=spec.user
        ),
        quiet=True,
    )
    runner.run(cmd.buildah_commit(container, image), quiet=True)
    report("done", "runtime layer", "", platform)
    return image


def _code_layer(
    spec: BuildSpec, platform: str, runtime_image: str, tag: str, runner: ToolRunner, report: _Reporter, tmp: Path
) -> str:
    """The user's code last, so a code change rebuilds this layer only; labels go on here too."""
    report("step", "code layer", str(spec.context_dir), platform)
    image = f"{LOCAL_PREFIX}/{spec.name}:{tag}-{platform.split('/')[1]}"
    container = runner.run(cmd.buildah_from(runtime_image, pull="never"), quiet=True)[1].strip()
    runner.run(cmd.buildah_copy(container, _stage_code(spec.context_dir, tmp / f"code-{platform.split('/')[1]}"),
                                spec.workdir), quiet=True)
    labels = {
        "org.opencontainers.image.created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **spec.labels,
    }
    runner.run(cmd.buildah_config(container, labels=labels), quiet=True)
    runner.run(cmd.buildah_commit(container, image), quiet=True)
    report("done", "code layer", image, platform)
    return image


def _stage_code(context_dir: Path, stage: Path) -> Path:
    """Exactly the files the tag hashes (no VCS data, no bytecode caches), copied to a staging folder."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for path in code_files(context_dir):
        dest = stage / path.relative_to(context_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    return stage


def _publish(
    spec: BuildSpec,
    images: dict[str, str],
    tag: str,
    target: str | None,
    runner: ToolRunner,
    report: _Reporter,
    base_layer_counts: dict[str, int],
    started: float,
    tmp: Path,
) -> BuildResult:
    """One manifest list over the per-platform images, pushed to the registry and/or written as OCI archive."""
    list_name = f"{LOCAL_PREFIX}/{spec.name}:{tag}"
    runner.run(cmd.buildah_manifest_rm(list_name), quiet=True, check=False)
    runner.run(cmd.buildah_rm_images(list_name), quiet=True, check=False)
    runner.run(cmd.buildah_manifest_create(list_name), quiet=True)
    for platform in spec.platforms:
        runner.run(cmd.buildah_manifest_add(list_name, images[platform]), quiet=True)
    digest_file = tmp / "digest"
    result = None
    if target:
        report("step", "push", target)
        runner.run(cmd.buildah_manifest_push(list_name, f"docker://{target}", spec.tls_verify, digest_file))
        raw = runner.run(cmd.skopeo_inspect_raw(target, spec.tls_verify), quiet=True)[1]
        result = registry_manifests(runner, target, raw, spec.tls_verify, base_layer_counts)
        report("done", "push", result["image"])
    if spec.output:
        path = Path(spec.output.removeprefix("oci-archive:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        report("step", "write archive", str(path))
        runner.run(cmd.buildah_manifest_push(list_name, f"oci-archive:{path}:{spec.name}:{tag}", True, digest_file))
        archived = archive_manifests(path, base_layer_counts)
        result = result or archived
        report("done", "write archive", f"{path} ({path.stat().st_size} bytes)")
    assert result is not None
    return _result(spec, result, tag, started, cached=False)


def _result(spec: BuildSpec, found: dict, tag: str, started: float, *, cached: bool) -> BuildResult:
    return BuildResult(
        image=found["image"],
        tag=tag,
        platforms=spec.platforms,
        size_bytes=found["size_bytes"],
        duration_s=round(time.monotonic() - started, 2),
        cached=cached,
        layers=found["layers"],
        dependency_layer=found["dependency_layer"],
    )
