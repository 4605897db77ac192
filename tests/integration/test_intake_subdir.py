"""Intake of a folder inside a git repository: only that folder's committed tree is submitted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flops.errors import IntakeError
from flops.intake import fetch_source


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def monorepo(tmp_path: Path) -> Path:
    repo = tmp_path / "mono"
    (repo / "examples" / "demo").mkdir(parents=True)
    (repo / "examples" / "demo" / "task.py").write_text("x = 1\n")
    (repo / "README.md").write_text("top\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init")
    return repo


def test_folder_inside_repo_exports_only_that_folder(monorepo: Path, tmp_path: Path) -> None:
    source = fetch_source(str(monorepo / "examples" / "demo"), None, tmp_path / "cache")
    assert source.subdir == "examples/demo"
    assert source.commit == _git(monorepo, "rev-parse", "HEAD")
    assert sorted(p.name for p in source.path.iterdir()) == ["task.py"]
    assert source.name == "demo"


def test_uncommitted_folder_is_rejected(monorepo: Path, tmp_path: Path) -> None:
    (monorepo / "new").mkdir()
    (monorepo / "new" / "task.py").write_text("x = 2\n")
    with pytest.raises(IntakeError, match="not committed"):
        fetch_source(str(monorepo / "new"), None, tmp_path / "cache")
