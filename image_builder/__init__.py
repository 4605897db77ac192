"""Multi-arch container images without emulation: dependencies resolved per target on the host, laid as layers.

Public API: `BuildSpec`, `build_image(spec, progress=None) -> BuildResult`, `ProgressEvent`.
"""

from image_builder.build import build_image
from image_builder.spec import (
    SUPPORTED_PLATFORMS,
    BuildResult,
    BuildSpec,
    ProgressCallback,
    ProgressEvent,
)

__all__ = ["SUPPORTED_PLATFORMS", "BuildResult", "BuildSpec", "ProgressCallback", "ProgressEvent", "build_image"]
