"""The package layout: every package folder and template file ships in the wheel, and nothing imports cli/."""

from __future__ import annotations

import ast
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
LIBRARY_FOLDERS = ("flops", "image_builder", "inference", "templates")


def _python_files(folder: str) -> list[Path]:
    return [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("cli", "flops", "image_builder", "inference")
        for init in (ROOT / top).rglob("__init__.py") if "__pycache__" not in init.parts
    }
    listed = set(SETUPTOOLS["packages"])
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert SETUPTOOLS["package-dir"]["flops_templates"] == "templates"


def test_every_template_file_is_package_data() -> None:
    patterns = SETUPTOOLS["package-data"]["flops_templates"]
    templates = ROOT / "templates"
    files = [p.relative_to(templates) for p in templates.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.parent != templates]
    assert files
    missing = [str(f) for f in files if not any(fnmatch(f.as_posix(), pattern) for pattern in patterns)]
    assert not missing, f"not shipped in the wheel: {missing}"


def test_no_library_module_imports_the_cli() -> None:
    offenders = []
    for folder in LIBRARY_FOLDERS:
        for path in _python_files(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] == "cli"]
    assert not offenders, offenders


def test_the_renderer_renders_every_template_with_strict_undefined() -> None:
    import jinja2
    import pytest

    from flops_templates import environment, render

    assert environment().undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError, match="workdir"):
        render("image/entrypoint.sh.j2", flops_version="0", selfcheck_path="/x")


def test_the_generated_app_imports_nothing_of_flops() -> None:
    """An app image needs nothing of FLOps but the app: the templates import Flower, numpy and their own modules."""
    app = Path(__file__).resolve().parents[2] / "templates" / "flower_app" / "flops_app"
    for source in app.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("flops", "flops_templates", "cli")], (source, names)
