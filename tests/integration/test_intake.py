"""Fetching sources from real git repositories (file:// URLs and local paths) and pinning them to commits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import run_git, write_files
from flops import intake
from flops.errors import IntakeError
from flops.intake import fetch_source, host_of, is_remote, repo_name

pytestmark = pytest.mark.slow


@pytest.fixture
def history(git_repo) -> dict:
    """A repo 'digits-cnn' with main (2 commits, tag v1 on the first) and a branch dev (one more commit)."""
    repo = git_repo({"task.py": "VERSION = 1\n"}, name="digits-cnn")
    first = run_git(repo, "rev-parse", "HEAD")
    run_git(repo, "tag", "v1")
    write_files(repo, {"task.py": "VERSION = 2\n"})
    run_git(repo, "commit", "-qam", "second")
    second = run_git(repo, "rev-parse", "HEAD")
    run_git(repo, "checkout", "-qb", "dev")
    write_files(repo, {"task.py": "VERSION = 3\n"})
    run_git(repo, "commit", "-qam", "third")
    third = run_git(repo, "rev-parse", "HEAD")
    run_git(repo, "checkout", "-q", "main")
    return {"repo": repo, "url": f"file://{repo}", "v1": first, "main": second, "dev": third}


def version_in(source) -> str:
    return (source.path / "task.py").read_text().strip()


def test_file_url_defaults_to_remote_head(history, tmp_path: Path) -> None:
    source = fetch_source(history["url"], None, tmp_path / "cache")
    assert source.commit == history["main"]
    assert source.name == "digits-cnn"
    assert source.url == history["url"]
    assert version_in(source) == "VERSION = 2"
    assert not (source.path / ".git").exists()
    assert source.path == tmp_path / "cache" / "checkouts" / history["main"]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("dev", "dev"), ("v1", "v1"), ("full-sha", "dev"), ("short-sha", "v1")],
)
def test_ref_may_be_branch_tag_full_or_short_sha(history, tmp_path: Path, ref: str, expected: str) -> None:
    given = {"full-sha": history["dev"], "short-sha": history["v1"][:8]}.get(ref, ref)
    source = fetch_source(history["url"], given, tmp_path / "cache")
    assert source.commit == history[expected]
    assert source.ref == given
    assert version_in(source) == {"main": "VERSION = 2", "v1": "VERSION = 1", "dev": "VERSION = 3"}[expected]


def test_local_path_is_read_in_place_and_made_absolute(history, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(history["repo"].parent)
    source = fetch_source("digits-cnn", "v1", tmp_path / "cache")
    assert source.url == str(history["repo"])
    assert source.commit == history["v1"]
    assert source.name == "digits-cnn"
    assert not source.dirty
    assert not (tmp_path / "cache" / "repos").exists()  # nothing cloned for a local path


def test_local_path_with_uncommitted_changes_uses_head_and_is_marked_dirty(history, tmp_path: Path) -> None:
    write_files(history["repo"], {"task.py": "VERSION = 'edited'\n"})
    source = fetch_source(str(history["repo"]), None, tmp_path / "cache")
    assert source.dirty
    assert source.commit == history["main"]
    assert version_in(source) == "VERSION = 2"


def test_unknown_ref_lists_branches_and_tags(history, tmp_path: Path) -> None:
    with pytest.raises(IntakeError) as raised:
        fetch_source(history["url"], "nope", tmp_path / "cache")
    assert str(raised.value) == f"ref 'nope' not found in {history['url']} (branches: dev, main; tags: v1)"


def test_non_git_directory_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(IntakeError, match=rf"^not a git repository: {plain}"):
        fetch_source(str(plain), None, tmp_path / "cache")


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IntakeError, match=rf"^path does not exist: {tmp_path / 'nowhere'}$"):
        fetch_source(str(tmp_path / "nowhere"), None, tmp_path / "cache")


def test_missing_file_url_repository_is_reported(tmp_path: Path) -> None:
    with pytest.raises(IntakeError, match=r"^repository not found: file://.*does not appear to be a git repository"):
        fetch_source(f"file://{tmp_path / 'nowhere'}", None, tmp_path / "cache")


def test_unreachable_host_fails_fast_without_prompting(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(IntakeError, match=r"^cannot reach host nonexistent.invalid for https://nonexistent.invalid/x.git: "):
        fetch_source("https://nonexistent.invalid/x.git", None, tmp_path / "cache", timeout_s=20)
    assert time.monotonic() - started < 20
    assert not list((tmp_path / "cache" / "repos").glob("*/HEAD"))  # the failed clone left no cache entry


def test_second_fetch_reuses_the_mirror_and_sees_new_commits(history, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = fetch_source(history["url"], None, cache)
    mirrors = list((cache / "repos").iterdir())
    write_files(history["repo"], {"task.py": "VERSION = 4\n"})
    run_git(history["repo"], "commit", "-qam", "fourth")
    clones = []
    monkeypatch.setattr(intake, "_clone", lambda *args: clones.append(args))
    second = fetch_source(history["url"], None, cache)
    assert clones == []  # fetched into the existing mirror, not cloned again
    assert list((cache / "repos").iterdir()) == mirrors
    assert second.commit == run_git(history["repo"], "rev-parse", "HEAD") != first.commit
    assert version_in(second) == "VERSION = 4"


def test_existing_checkout_is_reused(history, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = fetch_source(history["url"], "v1", cache)
    marker = first.path / "left-by-first-export"
    marker.write_text("")
    assert fetch_source(str(history["repo"]), "v1", cache).path == first.path
    assert marker.exists()


@pytest.mark.parametrize(
    ("url", "remote", "host", "name"),
    [
        ("https://git.example.org/team/digits-cnn.git", True, "git.example.org", "digits-cnn"),
        ("ssh://git@git.example.org:2222/team/digits-cnn", True, "git.example.org", "digits-cnn"),
        ("git@github.com:team/digits-cnn.git", True, "github.com", "digits-cnn"),
        ("file:///srv/git/digits-cnn.git/", True, "localhost", "digits-cnn"),
        ("../digits-cnn", False, None, "digits-cnn"),
    ],
)
def test_url_kinds_hosts_and_names(url: str, remote: bool, host: str | None, name: str) -> None:
    assert is_remote(url) is remote
    assert repo_name(url) == name
    if host:
        assert host_of(url) == host


def test_symlink_escaping_the_repo_is_refused_on_export(git_repo, tmp_path: Path) -> None:
    repo = git_repo({"task.py": "x = 1\n"})
    (repo / "data").symlink_to("/etc/passwd")
    run_git(repo, "add", "data")
    run_git(repo, "commit", "-qm", "link out")
    with pytest.raises(IntakeError, match=r"^cannot export commit [0-9a-f]{12} of .*repo0"):
        fetch_source(str(repo), None, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "checkouts").iterdir())  # no partial tree left behind
