"""image_builder.slim: pruning by pattern, and stripping real shared libraries without breaking them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import markupsafe
import pytest

from image_builder.errors import SpecError
from image_builder import slim
from image_builder.spec import BuildSpec, host_platform
from image_builder.tools import ToolRunner

HOST_PLATFORM = host_platform()


def test_prune_removes_matching_files_and_folders_only(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for rel in ["pkg/__init__.py", "pkg/tests/test_a.py", "pkg/sub/tests/test_b.py", "pkg/core.pyi",
                "pkg/sub/mod.py", "other/tests.py", "torch/test/big.bin"]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(b"x" * 10)

    removed = slim.prune(site, ["pkg/**/tests", "**/*.pyi", "torch/test", "nothing/matches"])

    assert removed == 40
    left = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert left == ["other/tests.py", "pkg/__init__.py", "pkg/sub/mod.py"]


@pytest.mark.skipif(HOST_PLATFORM is None or shutil.which(slim.STRIP_TOOLS.get(HOST_PLATFORM or "", "")) is None,
                    reason="needs the host's binutils strip (.ci/setup-containers.sh installs it)")
def test_strip_shrinks_a_real_extension_that_still_imports_and_spares_hard_links(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(Path(markupsafe.__file__).parent, site / "markupsafe")
    library = next((site / "markupsafe").glob("_speedups*.so"))
    cache_copy = tmp_path / "uv-cache-copy.so"
    os.link(library, cache_copy)  # as uv installs it: hard-linked from its cache
    before = library.read_bytes()

    files, saved = slim.strip_libraries(
        site, ["markupsafe/*.so", "markupsafe/*.py"], HOST_PLATFORM, ToolRunner(), lambda *a, **k: None
    )

    assert files == 1  # the .py files match the pattern but are not ELF
    assert saved > 0 and library.stat().st_size == len(before) - saved
    assert cache_copy.read_bytes() == before, "the hard-linked cache copy was modified"
    probe = "import markupsafe._speedups as s; print(s.__file__, s._escape_inner('<a>'))"
    result = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(site)},
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == [str(library), "&lt;a&gt;"]


def test_patterns_must_stay_inside_the_dependency_folder(tmp_path: Path) -> None:
    for bad in ("/usr/lib", "../outside", "a/../../b"):
        with pytest.raises(SpecError, match="prune"):
            BuildSpec.checked(name="x/y", context_dir=tmp_path, registry="r:5000", prune=[bad])


def test_a_missing_strip_tool_is_a_warning_and_the_libraries_stay_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from image_builder import tools

    site = tmp_path / "site"
    shutil.copytree(Path(markupsafe.__file__).parent, site / "markupsafe")
    library = next((site / "markupsafe").glob("_speedups*.so"))
    before = library.read_bytes()
    warnings: list[tuple] = []
    tools.tool_path.cache_clear()
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    try:
        result = slim.strip_libraries(site, ["markupsafe/*.so"], "linux/arm64", ToolRunner(),
                                      lambda *args, **kwargs: warnings.append(args))
    finally:
        tools.tool_path.cache_clear()
    assert result == (0, 0) and library.read_bytes() == before
    assert warnings[0][0] == "warning" and "aarch64-linux-gnu-strip" in warnings[0][2]
