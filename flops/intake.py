"""Fetch the submitted source (git URL or local path) and pin it to one commit, exported without .git."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import git
from pydantic import BaseModel

from flops.errors import IntakeError
from flops.filelock import locked
from flops.redaction import git_credentials

# Never let git wait for a human: no password prompt, no ssh host-key question, bounded connect time.
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10",
    "GIT_ASKPASS": "",
    "SSH_ASKPASS": "",
}

_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:(?!/)")  # git@host:org/repo.git, not a Windows drive
_UNABLE_TO_ACCESS = re.compile(r"^unable to access '[^']*': ")  # the URL is already in our message
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")

_UNREACHABLE = (
    "could not resolve host",
    "could not resolve hostname",
    "name or service not known",
    "temporary failure in name resolution",
    "connection refused",
    "connection timed out",
    "failed to connect",
    "network is unreachable",
    "no route to host",
    "operation timed out",
)
_AUTH = (
    "authentication failed",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "permission denied (publickey",
    "host key verification failed",
    "http basic: access denied",
    "returned error: 401",
    "returned error: 403",
)
_NOT_FOUND = ("repository not found", "does not appear to be a git repository", "not found")


class Source(BaseModel):
    """The submitted code pinned to one commit: where it came from and where its exported tree lies."""

    url: str  # as given; a local path becomes its absolute path
    ref: str | None
    commit: str  # full 40-hex SHA
    path: Path  # export of exactly that commit, no .git; treat as read-only
    name: str
    dirty: bool = False  # local path with uncommitted changes: HEAD was used, not the working tree
    subdir: str = ""  # the submitted folder inside the repository ("" = its root)


def fetch_source(source: str, ref: str | None, cache_dir: Path, timeout_s: float = 120) -> Source:
    """Resolve SOURCE (git URL or local path) and REF to a commit and export its tree under cache_dir."""
    cache_dir = Path(cache_dir).resolve()
    if is_remote(source):
        url, secret_env = git_credentials(source)  # url: without user:token, recorded everywhere downstream
        repo = _mirror(url, ref, cache_dir / "repos", timeout_s, secret_env)
        dirty, subdir = False, ""
    else:
        url = str(Path(source).expanduser().resolve())
        repo = _open_local(url)
        # A folder inside a repository (e.g. examples/digits-cnn) is submitted as that folder's tree.
        subdir = "" if repo.bare else Path(url).relative_to(Path(repo.working_tree_dir).resolve()).as_posix()
        subdir = "" if subdir == "." else subdir
        # Only the default (HEAD) can silently differ from what the user sees in their editor.
        dirty = ref is None and not repo.bare and repo.is_dirty(untracked_files=True, path=subdir or None)
    commit = resolve_ref(repo, ref, url)
    path = _export(repo, commit, cache_dir / "checkouts", url, subdir)
    return Source(url=url, ref=ref, commit=commit, path=path, name=repo_name(url), dirty=dirty, subdir=subdir)


def is_remote(source: str) -> bool:
    """True for anything git must reach over a transport (including file://), False for a plain path."""
    return bool(_URL_SCHEME.match(source) or _SCP_LIKE.match(source))


def repo_name(url: str) -> str:
    """The repository's short name: 'digits-cnn' from '.../digits-cnn.git', 'git@h:o/digits-cnn' or a folder."""
    tail = re.split(r"[/:]", url.rstrip("/"))[-1]
    return tail.removesuffix(".git") or "source"


def resolve_ref(repo: git.Repo, ref: str | None, url: str) -> str:
    """Full SHA of REF (branch, tag, full or abbreviated commit) or of HEAD when REF is None."""
    candidates = ["HEAD"] if ref is None else [f"refs/heads/{ref}", f"refs/tags/{ref}", ref]
    for candidate in candidates:
        try:
            return repo.git.rev_parse("--verify", "--quiet", f"{candidate}^{{commit}}")
        except git.GitCommandError:
            continue
    if ref is None:
        raise IntakeError(f"{url} has no commits (HEAD does not point to a commit)")
    branches = ", ".join(h.name for h in repo.heads) or "none"
    tags = ", ".join(t.name for t in repo.tags) or "none"
    raise IntakeError(f"ref '{ref}' not found in {url} (branches: {branches}; tags: {tags})")


def _open_local(path: str) -> git.Repo:
    if not Path(path).exists():
        raise IntakeError(f"path does not exist: {path}")
    try:
        return git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise IntakeError(f"not a git repository: {path} (run `git init` and commit, or pass a git URL)") from None


def _mirror(url: str, ref: str | None, repos_dir: Path, timeout_s: float, env: dict[str, str]) -> git.Repo:
    """A bare mirror of URL in the cache: cloned on first use, fetched afterwards."""
    dest = repos_dir / hashlib.sha256(url.encode()).hexdigest()
    repos_dir.mkdir(parents=True, exist_ok=True)
    with locked(dest.with_suffix(".lock")):
        if not (dest / "HEAD").exists():
            _clone(url, dest, timeout_s, env)
            return git.Repo(dest)
        repo = git.Repo(dest)
        if ref is not None and _FULL_SHA.match(ref) and _has_commit(repo, ref):
            return repo  # a commit never changes: no need to ask the remote
        _git(repo.git, "fetch", url, timeout_s, "fetch", "--prune", "--tags", "origin", env=env)
        return repo


def _clone(url: str, dest: Path, timeout_s: float, env: dict[str, str]) -> None:
    # Clone beside the final place and rename, so an interrupted clone never looks like a cache entry.
    tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=dest.parent))
    try:
        _git(git.Git(str(dest.parent)), "clone", url, timeout_s, "clone", "--mirror", "--", url, str(tmp), env=env)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _has_commit(repo: git.Repo, sha: str) -> bool:
    try:
        repo.git.cat_file("-e", f"{sha}^{{commit}}")
        return True
    except git.GitCommandError:
        return False


def _git(runner: git.Git, action: str, url: str, timeout_s: float, *args: str, env: dict[str, str] | None = None) -> str:
    """Run one network git command without prompts and with a deadline; map failures to IntakeError."""
    try:
        return runner.execute(["git", *args], env={**GIT_ENV, **(env or {})}, kill_after_timeout=timeout_s)
    except git.GitCommandError as exc:
        raise IntakeError(describe_git_failure(action, url, _stderr_of(exc), timeout_s)) from None


def _stderr_of(exc: git.GitCommandError) -> str:
    # GitPython wraps stderr as "\n  stderr: '...'"; keep git's own text only.
    text = exc.stderr.strip()
    text = text.removeprefix("stderr:").strip()
    return text.strip("'").strip()


def describe_git_failure(action: str, url: str, stderr: str, timeout_s: float) -> str:
    """One line saying what failed and where, from git's stderr."""
    lowered = stderr.lower()
    if "timeout:" in lowered and "did not complete" in lowered:
        return f"git {action} of {url} timed out after {timeout_s:g}s (is the host reachable?)"
    if line := _line_with(stderr, _UNREACHABLE):
        return f"cannot reach host {host_of(url)} for {url}: {_UNABLE_TO_ACCESS.sub('', line)}"
    if line := _line_with(stderr, _AUTH):
        return f"authentication failed for {url}: {line} (FLOps never prompts: use an ssh agent or a credential helper)"
    if line := _line_with(stderr, _NOT_FOUND):
        return f"repository not found: {url}: {line}"
    return f"git {action} failed for {url}: {_most_telling_line(stderr)}"


def _line_with(stderr: str, markers: tuple[str, ...]) -> str:
    """The first line of git's stderr naming one of the markers, without git's 'fatal: ' prefix."""
    for line in stderr.splitlines():
        if any(marker in line.lower() for marker in markers):
            return line.strip().removeprefix("fatal: ").strip()
    return ""


def _most_telling_line(stderr: str) -> str:
    """git's first 'fatal:'/'error:' line, else its last line: the follow-up lines are generic advice."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line.split(":", 1)[1].strip()
    return lines[-1] if lines else "no output from git"


def host_of(url: str) -> str:
    """The host part of a git URL ('localhost' for file://)."""
    if _SCP_LIKE.match(url):
        return url.split("@", 1)[1].split(":", 1)[0]
    rest = _URL_SCHEME.sub("", url)
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
    return host or "localhost"


def _export(repo: git.Repo, commit: str, checkouts_dir: Path, url: str, subdir: str = "") -> Path:
    """The commit's tree (or its SUBDIR) under checkouts_dir (reused when present), without .git."""
    dest = checkouts_dir / (commit if not subdir else f"{commit}-{hashlib.sha256(subdir.encode()).hexdigest()[:12]}")
    if dest.is_dir():
        return dest
    checkouts_dir.mkdir(parents=True, exist_ok=True)
    # Extract beside the final place and rename, so a half-written tree never looks like a checkout.
    tmp = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=checkouts_dir))
    try:
        _extract_tree(repo, f"{commit}:{subdir}" if subdir else commit, tmp, url)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # else another submit exporting the same commit won the race: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_tree(repo: git.Repo, commit: str, target: Path, url: str) -> None:
    try:
        with tempfile.TemporaryFile() as archive:
            repo.archive(archive, commit, format="tar")
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                # The "data" filter refuses absolute paths, links out of the tree and device files.
                tar.extractall(target, filter="data")
    except git.GitCommandError:
        raise IntakeError(f"{url} is not committed at {commit.split(':')[0][:12]} (commit it, or pass --ref)") from None
    except tarfile.TarError as exc:
        raise IntakeError(f"cannot export commit {commit[:12]} of {url}: {exc}") from None
