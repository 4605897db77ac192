"""The run's virtual environment: built over FLOps' packages with uv, cached by key, rebuilt when half-built;
requirements that would replace FLOps' packages or cannot be resolved are refused before anything is built."""

from __future__ import annotations

import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from flops import environment
from flops.environment import COMPLETE_MARKER, ensure_run_env, lock_file
from flops.errors import ContractError, EnvironmentSetupError

pytestmark = pytest.mark.slow


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A real, minimal pure-Python wheel of NAME with one module, written for these tests."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: flops-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    with zipfile.ZipFile(directory / f"{module}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in {**files, f"{dist_info}/RECORD": record}.items():
            wheel.writestr(path, text)


@pytest.fixture(autouse=True)
def local_wheels(monkeypatch, tmp_path: Path) -> Path:
    # Never reach an index (and never pull a CUDA torch): new packages come from wheels made here.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "flops-demo-dep", "1.0", ("numpy>=1.20",))
    make_wheel(wheels, "flops-old-numpy-user", "1.0", ("numpy<1.20",))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


@pytest.fixture
def pip_calls(monkeypatch) -> list[list[str]]:
    """Requirements of every pip install ensure_run_env runs (the real install still happens)."""
    calls: list[list[str]] = []
    real_install = environment.install

    def counting_install(python: Path, requirements: list[str], log_path: Path) -> None:  # the resolved pins
        calls.append(requirements)
        real_install(python, requirements, log_path)

    monkeypatch.setattr(environment, "install", counting_install)
    return calls


def run_in(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_requirements_flops_already_satisfies_install_nothing(tmp_path: Path, pip_calls) -> None:
    python = ensure_run_env(["torch", "numpy>=1.26", "torch==2.13.0"], tmp_path / "cache", tmp_path / "env.log")
    assert python.is_file() and python.parent.parent.parent == tmp_path / "cache" / "envs"
    assert pip_calls == []  # the host's CPU torch and FLOps' numpy serve: nothing is downloaded
    version, flwr = run_in(python, "import torch, flwr; print(torch.__version__); print(flwr.__version__)").split()
    assert version.startswith("2.13.0")
    assert flwr.startswith("1.42")
    lock = lock_file(python).read_text().splitlines()
    assert any(line.startswith("torch==2.13.0") for line in lock) and any(l.startswith("flwr==1.42") for l in lock)


def test_a_new_package_is_resolved_by_uv_installed_and_locked(tmp_path: Path, pip_calls) -> None:
    log = tmp_path / "env.log"
    python = ensure_run_env(["flops-demo-dep", "numpy"], tmp_path / "cache", log_path=log)
    assert pip_calls == [["flops-demo-dep==1.0"]]  # numpy comes from FLOps' env, not installed again
    assert run_in(python, "import flops_demo_dep, numpy; print(flops_demo_dep.VERSION)") == "1.0"
    assert "flops-demo-dep==1.0" in lock_file(python).read_text().splitlines()
    log_after_first = log.read_text()
    assert ensure_run_env(["numpy", "flops-demo-dep"], tmp_path / "cache", log_path=log) == python  # same set
    assert pip_calls == [["flops-demo-dep==1.0"]]
    assert log.read_text() == log_after_first


def test_different_deps_get_different_environments(tmp_path: Path, pip_calls) -> None:
    assert ensure_run_env([], tmp_path / "cache") != ensure_run_env(["flops-demo-dep"], tmp_path / "cache")
    assert pip_calls == [["flops-demo-dep==1.0"]]  # no dependencies: no installer at all


def test_half_built_environment_is_rebuilt(tmp_path: Path, pip_calls) -> None:
    python = ensure_run_env(["flops-demo-dep"], tmp_path / "cache")
    env_dir = python.parent.parent
    (env_dir / COMPLETE_MARKER).unlink()  # as if the first build was interrupted before finishing
    leftover = env_dir / "leftover-from-interrupted-build"
    leftover.write_text("")
    assert ensure_run_env(["flops-demo-dep"], tmp_path / "cache") == python
    assert len(pip_calls) == 2
    assert (env_dir / COMPLETE_MARKER).is_file()
    assert not leftover.exists()


def test_concurrent_builds_of_the_same_env_install_once(tmp_path: Path, pip_calls) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_run_env(["flops-demo-dep"], tmp_path / "cache")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert pip_calls == [["flops-demo-dep==1.0"]]


def test_unavailable_requirement_is_refused_with_uvs_reason(tmp_path: Path) -> None:
    with pytest.raises(ContractError) as raised:
        ensure_run_env(["nosuchpkg-flops-test==9"], tmp_path / "cache", tmp_path / "env.log",
                       {"nosuchpkg-flops-test==9": "requirements.txt:4"})
    assert raised.value.exit_code == 2
    assert str(raised.value).startswith(
        "cannot install nosuchpkg-flops-test==9 (requirements.txt:4): Because nosuchpkg-flops-test was not found")
    assert not list((tmp_path / "cache" / "envs").glob(f"*/{COMPLETE_MARKER}"))  # nothing built


def test_a_pin_that_would_replace_flops_numpy_is_refused_naming_who_needs_it(tmp_path: Path) -> None:
    with pytest.raises(ContractError) as raised:
        ensure_run_env(["numpy==1.21.0"], tmp_path / "cache", None, {"numpy==1.21.0": "requirements.txt:2"})
    message = str(raised.value)
    assert message.startswith("requirements.txt:2: 'numpy==1.21.0' would replace numpy ")
    assert "which FLOps needs (required by " in message and "flwr 1.42" in message
    assert not (tmp_path / "cache" / "envs").exists()


def test_a_dependency_conflicting_with_flops_packages_is_refused_with_uvs_explanation(tmp_path: Path) -> None:
    with pytest.raises(ContractError) as raised:
        ensure_run_env(["flops-old-numpy-user"], tmp_path / "cache", tmp_path / "env.log")
    message = str(raised.value)
    assert message.startswith("cannot install flops-old-numpy-user (dependencies): Because ")
    assert "numpy<1.20" in message and "unsatisfiable" in message


def test_torch_pins_never_replace_the_hosts_torch(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=r"'torch==2.1.0' would replace torch 2.13.0"):
        ensure_run_env(["torch==2.1.0"], tmp_path / "cache")


def test_invalid_requirement_string_is_refused_before_building(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentSetupError, match=r"invalid requirement"):
        ensure_run_env(["torch>>2"], tmp_path / "cache")
    assert not (tmp_path / "cache" / "envs").exists()
