"""Slim the dependency folder before it becomes a layer: delete what never runs, drop symbol tables.

Both are opt-in per image (BuildSpec.prune / BuildSpec.strip): only the image's author knows which of a
package's files its entrypoint needs. Pip-style wheels ship tests, headers and unstripped C++ libraries
(torch: 83 MB of tests, 62 MB of headers, 90 MB of symbol tables), all of which every edge device would pull.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from image_builder.errors import ToolError
from image_builder.tools import ToolRunner, tool_path

# GNU strip understands only its own target's ELF files; binutils-<arch>-linux-gnu packages these.
STRIP_TOOLS = {"linux/amd64": "x86_64-linux-gnu-strip", "linux/arm64": "aarch64-linux-gnu-strip"}
ELF_MAGIC = b"\x7fELF"


def prune(site: Path, patterns: list[str]) -> int:
    """Delete every file and folder under `site` matching a pattern; return the bytes removed."""
    removed = 0
    for pattern in patterns:
        for path in sorted(site.glob(pattern), reverse=True):
            if path.is_dir() and not path.is_symlink():
                removed += _tree_bytes(path)
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                removed += path.lstat().st_size
                path.unlink()
    return removed


def strip_libraries(
    site: Path, patterns: list[str], platform: str, runner: ToolRunner, report: Callable[..., None]
) -> tuple[int, int]:
    """Strip the ELF files matching `patterns` with the target's strip; return (files, bytes saved).

    Stripping only saves space: without the target's strip the layer keeps its symbol tables, with a warning.
    """
    try:
        tool_path(STRIP_TOOLS[platform])
    except ToolError as exc:
        report("warning", "dependency layer", f"not stripping shared libraries: {exc}", platform)
        return 0, 0
    files = sorted({
        path for pattern in patterns for path in site.glob(pattern)
        if path.is_file() and not path.is_symlink() and _is_elf(path)
    })
    if not files:
        return 0, 0
    before = 0
    for path in files:
        before += path.stat().st_size
        if path.stat().st_nlink > 1:
            # uv hard-links wheels' files from its cache: stripping in place would edit the cached copy too.
            _unshare(path)
    runner.run([STRIP_TOOLS[platform], "--strip-unneeded", *map(str, files)], quiet=True)
    return len(files), before - sum(path.stat().st_size for path in files)


def _unshare(path: Path) -> None:
    copy = path.with_name(path.name + ".flops-unshared")
    shutil.copy2(path, copy)
    os.replace(copy, path)


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == ELF_MAGIC


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() or p.is_symlink())
