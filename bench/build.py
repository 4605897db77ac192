"""Benchmark of image builds: FLOps' emulation-free layered build against a naive Containerfile built by buildah.

Run as root after .ci/setup-containers.sh:  /opt/flops-venv/bin/python bench/build.py [--skip-naive]
Cold builds use --no-cache and an empty uv download cache; the naive build uses `buildah build --no-cache`
(pip downloads afresh inside the container). Prints the figures, the ratios against the targets, and one
JSON line with everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flops.app_image import app_requirements  # noqa: E402
from image_builder import BuildResult, BuildSpec, build_image  # noqa: E402
from flops.app_image import flower_app_spec, render_image_template  # noqa: E402

REGISTRY = os.environ.get("FLOPS_REGISTRY", "127.0.0.1:5000")
BASE = f"{REGISTRY}/flops/python-base:3.11"
APP = REPO / "tests" / "integration" / "containers" / "app"
REQUIREMENTS = app_requirements(["torch"])
CONSTRAINTS = {"linux/amd64": ["torch==2.13.0+cpu"], "linux/arm64": ["torch<=2.10"]}
FIND_LINKS = ["/opt/wheels"] if Path("/opt/wheels").is_dir() else []
CA = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")


def spec(app_dir: Path, name: str, platforms: list[str], no_cache: bool) -> BuildSpec:
    return flower_app_spec(
        app_dir, name=name, requirements=REQUIREMENTS, platforms=platforms, registry=REGISTRY, base_image=BASE,
        tls_verify=False, pip_find_links=FIND_LINKS, platform_constraints=CONSTRAINTS, no_cache=no_cache,
        source_url="bench", commit="0" * 40,
    )


def cold(app_dir: Path, name: str, platforms: list[str]) -> BuildResult:
    """No layer cache and an empty uv cache: every wheel downloaded and every layer built."""
    with tempfile.TemporaryDirectory(prefix="flops-bench-uv-") as uv_cache:
        os.environ["UV_CACHE_DIR"] = uv_cache
        try:
            return build_image(spec(app_dir, name, platforms, no_cache=True))
        finally:
            del os.environ["UV_CACHE_DIR"]


def registry_bytes(ref: str) -> int:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, check=True).stdout
    manifest = json.loads(raw)
    return sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]


def base_bytes(platform: str) -> int:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{BASE}"],
                         capture_output=True, text=True, check=True).stdout
    arch = platform.split("/")[1]
    digest = next(m["digest"] for m in json.loads(raw)["manifests"] if m["platform"]["architecture"] == arch)
    return registry_bytes(f"{BASE.rsplit(':', 1)[0]}@{digest}")


def layer_bytes(result: BuildResult, platform: str) -> dict[str, int]:
    repo = result.image.split("@")[0]
    index = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                       f"docker://{result.image}"], capture_output=True, text=True,
                                      check=True).stdout)
    arch = platform.split("/")[1]
    digest = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == arch)
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                          f"docker://{repo}@{digest}"], capture_output=True, text=True,
                                         check=True).stdout)
    sizes = {layer["digest"]: layer["size"] for layer in manifest["layers"]}
    return {"deps": sizes[result.dependency_layer[platform]]}


def naive(app_dir: Path, platform: str, name: str) -> tuple[float, int]:
    """`buildah build --no-cache` of the naive Containerfile for one platform; (seconds, pushed bytes)."""
    context = Path(tempfile.mkdtemp(prefix="flops-bench-naive-"))
    try:
        shutil.copytree(app_dir, context, dirs_exist_ok=True)
        (context / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        for plat, lines in CONSTRAINTS.items():
            (context / f"constraints-{plat.split('/')[1]}.txt").write_text("\n".join(lines) + "\n")
        options = [f"--find-links {links}" for links in FIND_LINKS]
        (context / "Containerfile").write_text(
            render_image_template("Containerfile.naive.j2", base_image=BASE, pip_options=options))
        image = f"localhost/flops-bench/{name}:{platform.split('/')[1]}"
        volumes = ["-v", f"{CA}:/flops-ca.crt:ro"] + [x for links in FIND_LINKS for x in ("-v", f"{links}:{links}:ro")]
        started = time.monotonic()
        subprocess.run(["buildah", "build", "--no-cache", "--layers=false", "--isolation", "chroot",
                        "--tls-verify=false", "--platform", platform, *volumes, "-t", image,
                        "-f", str(context / "Containerfile"), str(context)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        pushed = f"{REGISTRY}/flops-bench/{name}:{platform.split('/')[1]}"
        subprocess.run(["buildah", "push", "--quiet", "--tls-verify=false", image, f"docker://{pushed}"],
                       check=True, stdout=subprocess.DEVNULL)
        return seconds, registry_bytes(pushed)
    finally:
        shutil.rmtree(context, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-naive", action="store_true", help="only FLOps' builds (the naive one takes minutes)")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    both = ["linux/amd64", "linux/arm64"]
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="flops-bench-app-") as tmp:
        app_dir = Path(tmp) / "app"
        shutil.copytree(APP, app_dir, ignore=shutil.ignore_patterns("__pycache__"))

        amd = cold(app_dir, f"flops-bench/amd-{run}", ["linux/amd64"])
        arm = cold(app_dir, f"flops-bench/arm-{run}", ["linux/arm64"])
        multi = cold(app_dir, f"flops-bench/multi-{run}", both)
        print(f"cold amd64-only {amd.duration_s:.1f} s, arm64-only {arm.duration_s:.1f} s, "
              f"multi-arch {multi.duration_s:.1f} s", flush=True)
        task = app_dir / "user" / "task.py"
        task.write_text(task.read_text() + f"\n# bench {run}\n")
        code = build_image(spec(app_dir, f"flops-bench/multi-{run}", both, no_cache=False))
        again = build_image(spec(app_dir, f"flops-bench/multi-{run}", both, no_cache=False))
        assert code.dependency_layer == multi.dependency_layer, "code-only change rebuilt the dependency layer"
        figures.update(
            cold_amd64_s=amd.duration_s, cold_arm64_s=arm.duration_s, cold_multi_s=multi.duration_s,
            code_only_rebuild_s=code.duration_s, unchanged_rebuild_s=again.duration_s, unchanged_cached=again.cached,
            image_bytes=multi.size_bytes,
            base_bytes={p: base_bytes(p) for p in both},
            deps_layer_bytes={p: layer_bytes(multi, p)["deps"] for p in both},
        )
        if not args.skip_naive:
            for platform in both:
                seconds, size = naive(app_dir, platform, f"naive-{run}")
                figures[f"naive_{platform.split('/')[1]}_s"] = round(seconds, 1)
                figures[f"naive_{platform.split('/')[1]}_bytes"] = size
                print(f"naive {platform} {seconds:.1f} s", flush=True)
    report(figures)


def report(f: dict) -> None:
    print("\n| measure | value | target | ratio |")
    print("|---|---|---|---|")
    ratio_arch = f["cold_arm64_s"] / f["cold_amd64_s"]
    print(f"| cold amd64-only build | {f['cold_amd64_s']:.1f} s | | |")
    print(f"| cold arm64-only build | {f['cold_arm64_s']:.1f} s | <= 1.2x amd64 | {ratio_arch:.2f}x |")
    print(f"| cold multi-arch build | {f['cold_multi_s']:.1f} s | | |")
    if "naive_arm64_s" in f:
        naive_total = f["naive_amd64_s"] + f["naive_arm64_s"]
        f["naive_multi_s"] = round(naive_total, 1)
        print(f"| naive amd64 / arm64 (QEMU) | {f['naive_amd64_s']:.1f} s / {f['naive_arm64_s']:.1f} s | | |")
        print(f"| cold multi-arch vs naive both | {f['cold_multi_s']:.1f} s vs {naive_total:.1f} s | <= 1/3 | "
              f"{f['cold_multi_s'] / naive_total:.2f} |")
    print(f"| code-only rebuild (both arches) | {f['code_only_rebuild_s']:.1f} s | <= 10 s | |")
    print(f"| unchanged rebuild | {f['unchanged_rebuild_s']:.2f} s (cached={f['unchanged_cached']}) | lookup | |")
    for p in ("linux/amd64", "linux/arm64"):
        arch = p.split("/")[1]
        ours, base, deps = f["image_bytes"][p], f["base_bytes"][p], f["deps_layer_bytes"][p]
        naive_text = f", naive {f[f'naive_{arch}_bytes'] / 1e6:.1f} MB" if f"naive_{arch}_bytes" in f else ""
        print(f"| image {arch} (compressed) | {ours / 1e6:.1f} MB (base {base / 1e6:.1f} + deps {deps / 1e6:.1f}"
              f"{naive_text}) | <= 1.1x base+deps | {ours / (base + deps):.3f}x |")
    print(json.dumps(f))


if __name__ == "__main__":
    main()
