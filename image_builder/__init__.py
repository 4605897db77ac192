"""Multi-arch container images without emulation: dependencies resolved per target on the host, laid as layers.

Public API: `BuildSpec`, `build_image(spec, progress=None) -> BuildResult`, `ProgressEvent`, and the exceptions in
`image_builder.errors` (base `ImageBuilderError`). It depends on nothing else of FLOps.
"""

from image_builder.build import build_image
from image_builder.errors import BaseImageError, BuildError, ImageBuilderError, SpecError, ToolError
from image_builder.spec import (
    SUPPORTED_PLATFORMS,
    BuildResult,
    BuildSpec,
    ProgressCallback,
    ProgressEvent,
)

__all__ = [
    "SUPPORTED_PLATFORMS", "BaseImageError", "BuildError", "BuildResult", "BuildSpec", "ImageBuilderError",
    "ProgressCallback", "ProgressEvent", "SpecError", "ToolError", "build_image",
]
