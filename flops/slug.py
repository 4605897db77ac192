"""The one way FLOps turns a source or model name into a name for a package, image or registered model."""

from __future__ import annotations

import re

_NOT_NAME = re.compile(r"[^a-z0-9]+")


def slug(name: str | None, fallback: str = "app") -> str:
    """Lower-case letters and digits joined by single dashes: valid as a Python project, image and model name."""
    cleaned = _NOT_NAME.sub("-", (name or "").lower()).strip("-")
    return cleaned or fallback
