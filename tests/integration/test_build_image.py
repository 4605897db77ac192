"""Real image builds: buildah, skopeo, podman (arm64 under QEMU) and the local registry from .ci/setup-containers.sh."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from containers.support import BASE, CONSTRAINTS, FIND_LINKS, REGISTRY, require_containers
from packaging.version import Version

from flops.app_image import IMAGE_FLWR_HOME, app_requirements, flower_app_spec
from image_builder import BuildError, BuildResult, BuildSpec, build_image

pytestmark = pytest.mark.slow

CONTAINERS = Path(__file__).parent / "containers"
# The same requirement lines `flops build` uses for a task needing torch, so every test shares one deps layer.
REQUIREMENTS = app_requirements(["torch"])
BOTH = ["linux/amd64", "linux/arm64"]
PODMAN_RUN = ["podman", "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=1000:1000", "--network", "host", "--tls-verify=false", "-q"]


@pytest.fixture(scope="module")
def containers() -> None:
    require_containers()


def app_copy(tmp: Path) -> Path:
    dest = tmp / "app"
    shutil.copytree(CONTAINERS / "app", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def spec_for(app_dir: Path, name: str, **options: object) -> BuildSpec:
    values: dict = {"platforms": BOTH, "registry": REGISTRY, "base_image": BASE, "tls_verify": False,
                    "pip_find_links": FIND_LINKS, "platform_constraints": CONSTRAINTS}
    return flower_app_spec(app_dir, name=name, requirements=REQUIREMENTS, source_url="https://example.org/app.git",
                           commit="0" * 40, **{**values, **options})


def skopeo_json(*args: str) -> dict:
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *args], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def multiarch(containers: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildSpec, BuildResult]:
    """One two-platform build of the fixture app under a name unique to this test session."""
    app_dir = app_copy(tmp_path_factory.mktemp("multiarch"))
    spec = spec_for(app_dir, f"flops-test/app-{uuid.uuid4().hex[:8]}")
    return spec, build_image(spec)


def test_manifest_list_holds_amd64_and_arm64_with_oci_labels(multiarch: tuple[BuildSpec, BuildResult]) -> None:
    spec, result = multiarch
    assert not result.cached and result.platforms == BOTH
    index = skopeo_json("--raw", f"docker://{result.image}")
    arches = {m["platform"]["architecture"] for m in index["manifests"]}
    assert arches == {"amd64", "arm64"}
    arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    repo = result.image.split("@")[0]
    config = skopeo_json("--config", f"docker://{repo}@{arm['digest']}")
    assert config["architecture"] == "arm64"
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == "0" * 40
    assert labels["org.opencontainers.image.source"] == "https://example.org/app.git"
    assert labels["org.opencontainers.image.created"] and labels["io.flops.version"]
    assert all(size > 50_000_000 for size in result.size_bytes.values())


def test_amd64_selfcheck_imports_task_builds_net_and_loads_the_flower_app(
    multiarch: tuple[BuildSpec, BuildResult],
) -> None:
    _, result = multiarch
    done = subprocess.run([*PODMAN_RUN, "--platform", "linux/amd64", result.image, "selfcheck"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["machine"] == "x86_64" and report["python"].startswith("3.11")
    assert report["flwr"].startswith("1.42") and report["net_parameters"] == 58
    assert report["components"] == {"serverapp": "ServerApp", "clientapp": "ClientApp"}
    assert report["cluster_control"] == "flops_app.control"  # the app's own client: the image holds nothing of FLOps


def test_arm64_image_selfcheck_prints_aarch64_under_qemu(multiarch: tuple[BuildSpec, BuildResult]) -> None:
    _, result = multiarch
    done = subprocess.run([*PODMAN_RUN, "--platform", "linux/arm64", result.image, "selfcheck"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "machine: aarch64" in done.stdout
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # PyPI's last CPU-only aarch64 torch is 2.10: compared as versions ("2.9" < "2.10", unlike the strings).
    assert Version(report["torch"]).release[:2] <= (2, 10), report["torch"]


def test_the_image_runs_as_a_non_root_user_who_can_write_flowers_home(
    multiarch: tuple[BuildSpec, BuildResult],
) -> None:
    _, result = multiarch
    probe = f'id -u; touch {IMAGE_FLWR_HOME}/probe && echo writable; touch /app/probe 2>/dev/null || echo app-read-only'
    done = subprocess.run([*PODMAN_RUN, "--platform", "linux/amd64", result.image, "sh", "-c", probe],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    uid, *rest = done.stdout.split()
    assert int(uid) != 0 and rest == ["writable", "app-read-only"], done.stdout


def test_entrypoint_rejects_an_unknown_role(multiarch: tuple[BuildSpec, BuildResult]) -> None:
    _, result = multiarch
    done = subprocess.run([*PODMAN_RUN, "--platform", "linux/amd64", result.image, "conductor"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "roles: learner" in done.stderr


def test_unchanged_rebuild_is_a_registry_lookup(multiarch: tuple[BuildSpec, BuildResult]) -> None:
    spec, first = multiarch
    lines: list[str] = []
    again = build_image(spec, progress=lambda event: lines.append(f"{event.kind} {event.step}"))
    assert again.cached and again.image == first.image
    assert again.layers == first.layers
    assert not any("layer" in line for line in lines), lines  # nothing built, only looked up


def test_code_only_change_rebuilds_only_the_code_layer(
    multiarch: tuple[BuildSpec, BuildResult], tmp_path: Path
) -> None:
    spec, first = multiarch
    app_dir = app_copy(tmp_path)
    task = app_dir / "user" / "task.py"
    task.write_text(task.read_text() + "\n# a code-only change\n")
    changed = build_image(spec.model_copy(update={"context_dir": app_dir}))
    assert not changed.cached and changed.image != first.image
    assert changed.dependency_layer == first.dependency_layer
    for platform in BOTH:
        assert changed.layers[platform][:-1] == first.layers[platform][:-1]  # base, deps, runtime unchanged
        assert changed.layers[platform][-1] != first.layers[platform][-1]
    assert changed.duration_s < 60


def test_oci_archive_without_registry(containers: None, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    # No requirements: the archive path is what is checked, without compressing torch once more.
    spec = BuildSpec(name="flops-test/archive", context_dir=app_copy(tmp_path), platforms=BOTH, base_image=BASE,
                     tls_verify=False, output=f"oci-archive:{archive}", entrypoint=["python3"])
    result = build_image(spec)
    assert result.image.startswith(f"oci-archive:{archive}@sha256:")
    assert set(result.size_bytes) == set(BOTH) and all(s > 20_000_000 for s in result.size_bytes.values())
    assert archive.stat().st_size > 40_000_000
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert index["manifests"]


def sdist_only_package(links: Path) -> str:
    """A pure-Python package published only as an sdist: no wheel for any platform."""
    name = f"flops-nowheel-{uuid.uuid4().hex[:6]}"
    module = name.replace("-", "_")
    files = {
        "pyproject.toml": f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
                          f'[project]\nname = "{name}"\nversion = "0.1"\n',
        f"{module}.py": "VALUE = 42\n",
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
    }
    links.mkdir(parents=True, exist_ok=True)
    with tarfile.open(links / f"{module}-0.1.tar.gz", "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{module}-0.1/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return name


def test_no_wheel_with_no_emulation_is_a_clear_error(containers: None, tmp_path: Path) -> None:
    links = tmp_path / "links"
    name = sdist_only_package(links)
    spec = BuildSpec(name="flops-test/nowheel", context_dir=app_copy(tmp_path), requirements=[name],
                     platforms=["linux/arm64"], registry=REGISTRY, base_image=BASE, tls_verify=False,
                     pip_find_links=[str(links)], no_emulation=True)
    with pytest.raises(BuildError, match="no wheel for linux/arm64.*--no-emulation"):
        build_image(spec)


def test_no_wheel_falls_back_to_an_emulated_install_with_a_warning(containers: None, tmp_path: Path) -> None:
    links = tmp_path / "links"
    name = sdist_only_package(links)
    warnings: list[str] = []
    spec = BuildSpec(name="flops-test/emulated", context_dir=app_copy(tmp_path), requirements=[name],
                     platforms=["linux/arm64"], registry=REGISTRY, base_image=BASE, tls_verify=False,
                     pip_find_links=[str(links)])
    result = build_image(spec, progress=lambda e: warnings.append(e.message) if e.kind == "warning" else None)
    assert result.emulated == ["linux/arm64"]
    assert any("QEMU" in w for w in warnings)
    done = subprocess.run([*PODMAN_RUN, "--platform", "linux/arm64", "--entrypoint", "python3", result.image,
                           "-c", f"import {name.replace('-', '_')} as m, platform; print(m.VALUE, platform.machine())"],
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["42", "aarch64"], done.stderr[-2000:]


def test_flops_build_cli_prints_one_json_line(containers: None, tmp_path: Path) -> None:
    from cli.main import cli

    repo = tmp_path / "tiny"
    shutil.copytree(CONTAINERS / "tiny_task", repo)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    args = ["build", str(repo), "--platform", "linux/amd64", "--registry", REGISTRY, "--no-tls-verify",
            "--base-image", BASE, "--platform-constraint", "linux/amd64=torch==2.13.0+cpu", "--json",
            "--name", f"flops-test/cli-{uuid.uuid4().hex[:8]}"]
    for links in FIND_LINKS:
        args += ["--pip-find-links", links]
    out = CliRunner().invoke(cli, args, env={"FLOPS_CACHE_DIR": str(tmp_path / "cache")})
    assert out.exit_code == 0, out.output[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"image", "platforms", "size_bytes", "duration_s", "cached"}
    assert summary["image"].startswith(f"{REGISTRY}/flops-test/cli-") and "@sha256:" in summary["image"]
    assert summary["platforms"] == ["linux/amd64"] and summary["cached"] is False


def test_an_unreachable_base_image_names_base_image_and_json_still_gets_its_object(
    containers: None, tmp_path: Path
) -> None:
    from cli.main import cli

    repo = tmp_path / "tiny"
    shutil.copytree(CONTAINERS / "tiny_task", repo)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    out = CliRunner().invoke(
        cli, ["build", str(repo), "--platform", "linux/amd64", "--registry", REGISTRY,
              "--base-image", "no-such-registry.invalid/python:3.11", "--json"],
        env={"FLOPS_CACHE_DIR": str(tmp_path / "cache"), "FLOPS_BUILD_DEFAULTS": str(tmp_path / "none.toml")},
    )
    assert out.exit_code == 2, out.output  # $FLOPS_BUILD_DEFAULTS names a missing file: bad input, nothing built
    assert "none.toml: no such file" in out.stderr
    (tmp_path / "none.toml").write_text("")
    out = CliRunner().invoke(
        cli, ["build", str(repo), "--platform", "linux/amd64", "--registry", REGISTRY,
              "--base-image", "no-such-registry.invalid/python:3.11", "--json"],
        env={"FLOPS_CACHE_DIR": str(tmp_path / "cache"), "FLOPS_BUILD_DEFAULTS": str(tmp_path / "none.toml")},
    )
    assert out.exit_code == 1, out.output
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no-such-registry.invalid" in errors[0] and "--base-image" in errors[0], out.stderr
    assert "Traceback" not in out.output
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["status"] == "FAILED" and "--base-image" in last["message"]
