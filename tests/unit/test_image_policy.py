"""What FLOps adds around image_builder: CPU torch pins, CUDA detection, the machine's build defaults, and a
builder that imports nothing of FLOps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flops.app_image import _pin_cpu_torch
from flops.build_defaults import load_build_defaults
from flops.errors import ConfigError
from image_builder import BuildSpec
from image_builder.cuda import find_cuda_libraries
from image_builder.torch_cpu import PYTORCH_CPU_INDEX, torch_constraints

BOTH = ["linux/amd64", "linux/arm64"]
REPO = Path(__file__).resolve().parents[2]


def wheel_folder(tmp_path: Path, *names: str) -> str:
    folder = tmp_path / "wheels"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return str(folder)


def test_torch_is_pinned_to_the_cpu_wheel_a_find_links_folder_holds(tmp_path: Path) -> None:
    links = wheel_folder(tmp_path, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    pins, warnings = torch_constraints("2.13.0+cpu", BOTH, [links], [])
    assert pins["linux/amd64"] == ["torch==2.13.0+cpu"]
    # No aarch64 +cpu wheel there: PyPI's last CPU-only aarch64 release, said out loud.
    assert pins["linux/arm64"] == ["torch<=2.10"]
    assert len(warnings) == 1 and "linux/arm64" in warnings[0]


def test_the_pytorch_cpu_index_gives_every_platform_the_training_version() -> None:
    pins, warnings = torch_constraints("2.13.0", BOTH, [], ["https://pypi.org/simple", PYTORCH_CPU_INDEX + "/"])
    assert pins == {p: ["torch==2.13.0+cpu"] for p in BOTH} and warnings == []


def test_without_a_cpu_source_amd64_warns_that_pypi_gives_the_cuda_build() -> None:
    pins, warnings = torch_constraints("2.9.1", BOTH, [], [])
    assert pins == {"linux/amd64": ["torch==2.9.1"], "linux/arm64": ["torch==2.9.1"]}
    assert len(warnings) == 1 and "linux/amd64" in warnings[0] and "CUDA" in warnings[0]


def test_version_comparison_is_numeric_not_textual() -> None:
    # "2.9" < "2.10" as versions, though not as strings: 2.9 is still CPU-only for aarch64 on PyPI.
    assert torch_constraints("2.9.0", ["linux/arm64"], [], [])[0] == {"linux/arm64": ["torch==2.9.0"]}
    assert torch_constraints("2.11.0", ["linux/arm64"], [], [])[0] == {"linux/arm64": ["torch<=2.10"]}


def test_a_users_torch_constraint_is_kept_and_other_platforms_are_pinned(tmp_path: Path) -> None:
    links = wheel_folder(tmp_path, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    spec = BuildSpec(name="a", context_dir=tmp_path, registry="r", platforms=BOTH, pip_find_links=[links],
                     platform_constraints={"linux/arm64": ["torch==2.8.0", "numpy<3"]})
    pinned = _pin_cpu_torch(spec, "2.13.0", None)
    assert pinned.platform_constraints == {"linux/amd64": ["torch==2.13.0+cpu"],
                                           "linux/arm64": ["torch==2.8.0", "numpy<3"]}


def test_cuda_packages_and_libraries_are_found(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "nvidia_cublas_cu12-12.8.4.1.dist-info").mkdir(parents=True)
    (site / "torch" / "lib").mkdir(parents=True)
    (site / "torch" / "lib" / "libcudart.so.12").write_bytes(b"")
    (site / "torch" / "lib" / "libtorch_cpu.so").write_bytes(b"")
    assert find_cuda_libraries(site) == ["libcudart", "nvidia-cublas-cu12"]
    (site / "torch" / "lib" / "libcudart.so.12").unlink()
    (site / "nvidia_cublas_cu12-12.8.4.1.dist-info").rmdir()
    assert find_cuda_libraries(site) == []


def test_build_defaults_fill_only_what_the_user_left_unset(tmp_path: Path) -> None:
    links = tmp_path / "wheels"
    links.mkdir()
    path = tmp_path / "build-defaults.toml"
    path.write_text(f'base_image = "127.0.0.1:5000/flops/python-base:3.11"\npip_find_links = ["{links}"]\n'
                    '[platform_constraints]\n"linux/arm64" = ["torch<=2.10"]\n')
    defaults = load_build_defaults(path)
    spec = BuildSpec(name="a", context_dir=tmp_path, registry="r", platforms=BOTH)
    filled = defaults.apply(spec)
    assert filled.base_image == "127.0.0.1:5000/flops/python-base:3.11"
    assert filled.pip_find_links == [str(links)]
    assert filled.platform_constraints == {"linux/arm64": ["torch<=2.10"]}
    mine = defaults.apply(spec.model_copy(update={"base_image": "mine:1", "platform_constraints": {
        "linux/arm64": ["torch==2.9.0"]}}))
    assert mine.base_image == "mine:1" and mine.platform_constraints == {"linux/arm64": ["torch==2.9.0"]}


def test_a_bad_build_defaults_file_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "build-defaults.toml"
    path.write_text('base_imag = "x"\n')
    with pytest.raises(ConfigError, match=rf"{path}: base_imag: Extra inputs"):
        load_build_defaults(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_build_defaults(path)


def test_image_builder_imports_nothing_of_flops() -> None:
    probe = (
        "import sys, pkgutil, importlib, image_builder\n"
        "for m in pkgutil.iter_modules(image_builder.__path__): importlib.import_module('image_builder.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'flops' or n.startswith('flops.')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_refused_build_with_json_still_ends_stdout_with_a_failed_object(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    out = CliRunner().invoke(cli, ["build", str(tmp_path), "--registry", "r:5000", "--platform-constraint", "torch",
                                   "--json"])
    assert out.exit_code == 2, out.output
    assert [line for line in out.stderr.splitlines() if line.startswith("error: ")] == [
        "error: --platform-constraint 'torch': expected PLATFORM=REQUIREMENT with PLATFORM one of "
        "linux/amd64, linux/arm64"
    ]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last == {"status": "FAILED", "message": last["message"], "exit_code": 2}
    assert "--platform-constraint 'torch'" in last["message"]
