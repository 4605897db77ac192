"""A source URL carrying user:token: git uses the token, nothing FLOps writes or prints keeps it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import assert_one_line_error, run_flops
from git_http import serve_repo

TOKEN = "tok-s3cr3t-for-the-fetch-only"


def _grep(token: str, *roots: Path) -> list[str]:
    found = subprocess.run(["grep", "-r", "-a", "-l", token, *map(str, roots)], capture_output=True, text=True)
    return found.stdout.split()


def test_augment_from_an_authenticated_url_records_it_without_the_token(tiny_task_repo: Path, tmp_path: Path) -> None:
    workdir, app = tmp_path / "work", tmp_path / "app"
    with serve_repo(tiny_task_repo, tmp_path / "served", "alice", TOKEN) as url:
        result = run_flops("augment", url, "-o", str(app), "--workdir", str(workdir))
        wrong = run_flops("augment", url.replace(TOKEN, "not-the-token"), "-o", str(tmp_path / "app2"),
                          "--workdir", str(tmp_path / "work2"))
    assert result.returncode == 0, result.output
    clean = url.replace(f"alice:{TOKEN}@", "")
    # The fetch used the token (the server refuses anything else) and the generated app names the clean URL.
    assert f"from {clean} at" in (app / "pyproject.toml").read_text()
    assert _grep(TOKEN, workdir, app) == [] and TOKEN not in result.output
    # The git mirror in the cache keeps the clean URL as its remote: a later fetch needs the token again.
    mirrors = list((workdir / "cache" / "repos").glob("*/config"))
    assert mirrors and all(clean in m.read_text() for m in mirrors)
    # A refused fetch says so in one line, naming the URL without what was given as the token.
    line = assert_one_line_error(wrong)
    assert "authentication failed for " + clean in line and "not-the-token" not in wrong.output
