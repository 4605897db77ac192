"""Content hashes that name images and cached layers: same inputs, same key; any changed input, a new key."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from image_builder.spec import BuildSpec

# Bump when the way layers are laid out changes, so old cached layers are not reused.
LAYOUT_VERSION = "1"
SKIPPED_NAMES = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def code_files(root: Path) -> list[Path]:
    """Files of a code directory that go into the image, sorted; caches and VCS folders left out."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_NAMES)
        for name in sorted(filenames):
            if not name.endswith(SKIPPED_SUFFIXES):
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def tree_hash(root: Path) -> str:
    """sha256 over relative path, executable bit and bytes of every code file under `root`."""
    digest = hashlib.sha256()
    for path in code_files(root):
        rel = path.relative_to(root).as_posix()
        executable = os.access(path, os.X_OK)
        digest.update(f"{rel}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def find_links_listing(dirs: Iterable[str]) -> list[str]:
    """Names and sizes of the files in local find-links folders: a new wheel dropped there changes the key."""
    listing: list[str] = []
    for entry in dirs:
        path = Path(entry)
        if path.is_dir():
            listing += [f"{entry}/{p.name}:{p.stat().st_size}" for p in sorted(path.iterdir()) if p.is_file()]
        else:
            listing.append(entry)
    return listing


def dependency_key(spec: BuildSpec, platform: str, base_digest: str) -> str:
    """Key of one platform's dependency layer: base image, platform, Python, requirements and pip options."""
    return _digest(
        {
            "layout": LAYOUT_VERSION,
            "base": base_digest,
            "platform": platform,
            "python": spec.python_version,
            "requirements": sorted(r.strip() for r in spec.requirements if r.strip()),
            "constraints": sorted(spec.platform_constraints.get(platform, [])),
            "index_url": spec.pip_index_url,
            "extra_index_urls": spec.pip_extra_index_urls,
            "find_links": find_links_listing(spec.pip_find_links),
            "prune": sorted(spec.prune),
            "strip": sorted(spec.strip),
        }
    )


def runtime_key(spec: BuildSpec, dep_key: str) -> str:
    """Key of the runtime layer (entrypoint files and image config) laid on a given dependency layer."""
    return _digest(
        {
            "deps": dep_key,
            "files": spec.runtime_files,
            "entrypoint": spec.entrypoint,
            "cmd": spec.cmd,
            "env": spec.env,
            "workdir": spec.workdir,
            "user": spec.user,
            "writable_dirs": spec.writable_dirs,
        }
    )


def image_tag(spec: BuildSpec, base_digests: dict[str, str], code_hash: str) -> str:
    """The image tag: a content hash of every build input (the 'created' label excepted)."""
    return _digest(
        {
            "name": spec.name,
            "deps": {p: dependency_key(spec, p, base_digests[p]) for p in spec.platforms},
            "runtime": runtime_key(spec, ""),
            "code": code_hash,
            "labels": spec.labels,
            "layout": LAYOUT_VERSION,
        }
    )[:24]
