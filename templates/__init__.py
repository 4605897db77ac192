"""The one renderer of FLOps' templates (installed as the `flops_templates` package): Jinja2, StrictUndefined."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent


@functools.cache
def environment() -> jinja2.Environment:
    """Every template by its path under templates/; a misspelled variable fails loudly."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Python, TOML and shell, never HTML
    )


def render(name: str, **context: Any) -> str:
    """Render one template, e.g. render("image/entrypoint.sh.j2", ...)."""
    return environment().get_template(name).render(**context)


def render_tree(subdir: str, out_dir: Path, context: dict[str, Any]) -> None:
    """Copy templates/<subdir>: `*.j2` files rendered (without the suffix), other files copied verbatim."""
    root = TEMPLATES_DIR / subdir
    for src in sorted(root.rglob("*")):
        if src.is_dir() or "__pycache__" in src.parts:
            continue
        rel = src.relative_to(root)
        dest = out_dir / (rel.with_suffix("") if src.suffix == ".j2" else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".j2":
            dest.write_text(render(f"{subdir}/{rel.as_posix()}", **context))
        else:
            shutil.copyfile(src, dest)
