"""The builder's own exceptions, so image_builder can be used without the rest of FLOps."""

from __future__ import annotations


class ImageBuilderError(Exception):
    """Base of every error image_builder raises on purpose."""


class SpecError(ImageBuilderError):
    """A BuildSpec field is invalid; the message names the field."""


class BuildError(ImageBuilderError):
    """A build failed (a missing platform, no wheel without emulation, a tool that exited non-zero)."""


class BaseImageError(BuildError):
    """The base image cannot be read from its registry, or lacks a target platform."""

    def __init__(self, ref: str, message: str) -> None:
        self.ref = ref
        super().__init__(message)


class ToolError(ImageBuilderError):
    """An external tool (buildah, skopeo, podman, uv, strip) is missing or failed; carries its last lines."""

    def __init__(self, tool: str, message: str, output: str = "") -> None:
        self.tool = tool
        self.output = output
        super().__init__(f"{tool}: {message}")
