"""The run's virtual environment: built over FLOps' packages, cached by key, rebuilt when half-built."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from flops import environment
from flops.environment import COMPLETE_MARKER, ensure_run_env
from flops.errors import EnvironmentSetupError

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline_pip(monkeypatch) -> None:
    # Everything these tests need is already installed: never reach an index (and never pull a CUDA torch).
    monkeypatch.setenv("PIP_NO_INDEX", "1")


@pytest.fixture
def pip_calls(monkeypatch) -> list[list[str]]:
    """Requirements of every pip install ensure_run_env runs (the real install still happens)."""
    calls: list[list[str]] = []
    real_install = environment.install

    def counting_install(python: Path, requirements: list[str], log_path: Path) -> None:
        calls.append(requirements)
        real_install(python, requirements, log_path)

    monkeypatch.setattr(environment, "install", counting_install)
    return calls


def run_in(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_bare_torch_is_satisfied_by_the_installed_cpu_torch(tmp_path: Path, pip_calls) -> None:
    log = tmp_path / "pip.log"
    python = ensure_run_env(["torch", "numpy>=1.26"], tmp_path / "cache", log_path=log)
    assert python.is_file() and python.parent.parent.parent == tmp_path / "cache" / "envs"
    assert pip_calls == [["numpy>=1.26", "torch"]]
    installed = [line for line in log.read_text().splitlines() if line.startswith("Successfully installed")]
    assert installed == []  # pip found everything already there
    version, flwr = run_in(python, "import torch, flwr; print(torch.__version__); print(flwr.__version__)").split()
    assert version.startswith("2.13.0")
    assert flwr.startswith("1.42")


def test_second_call_with_the_same_deps_does_not_run_pip(tmp_path: Path, pip_calls) -> None:
    log = tmp_path / "pip.log"
    first = ensure_run_env(["numpy"], tmp_path / "cache", log_path=log)
    log_after_first = log.read_text()
    second = ensure_run_env(["numpy"], tmp_path / "cache", log_path=log)
    assert first == second
    assert pip_calls == [["numpy"]]
    assert log.read_text() == log_after_first


def test_different_deps_get_different_environments(tmp_path: Path, pip_calls) -> None:
    assert ensure_run_env([], tmp_path / "cache") != ensure_run_env(["numpy"], tmp_path / "cache")
    assert pip_calls == [["numpy"]]  # no dependencies: no pip at all


def test_half_built_environment_is_rebuilt(tmp_path: Path, pip_calls) -> None:
    python = ensure_run_env(["numpy"], tmp_path / "cache")
    env_dir = python.parent.parent
    (env_dir / COMPLETE_MARKER).unlink()  # as if the first build was interrupted before finishing
    leftover = env_dir / "leftover-from-interrupted-build"
    leftover.write_text("")
    assert ensure_run_env(["numpy"], tmp_path / "cache") == python
    assert len(pip_calls) == 2
    assert (env_dir / COMPLETE_MARKER).is_file()
    assert not leftover.exists()


def test_concurrent_builds_of_the_same_env_run_pip_once(tmp_path: Path, pip_calls) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_run_env(["numpy"], tmp_path / "cache")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert pip_calls == [["numpy"]]


def test_unavailable_requirement_reports_pips_error_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    with pytest.raises(EnvironmentSetupError) as raised:
        ensure_run_env(["nosuchpkg-flops-test==9"], tmp_path / "cache", log_path=log)
    assert str(raised.value) == (
        f"installing dependencies failed: ERROR: No matching distribution found for nosuchpkg-flops-test==9 (log: {log})"
    )
    assert not list((tmp_path / "cache" / "envs").glob(f"*/{COMPLETE_MARKER}"))  # not marked complete


def test_invalid_requirement_string_is_refused_before_building(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentSetupError, match=r"invalid requirement"):
        ensure_run_env(["torch>>2"], tmp_path / "cache")
    assert not (tmp_path / "cache" / "envs").exists()
