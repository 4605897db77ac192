"""Find CUDA libraries in an installed dependency folder: a CPU image that carries them is GBs too large."""

from __future__ import annotations

from pathlib import Path

# The label a dependency layer carries naming what was found, so a cached layer reports it without a scan.
CUDA_LABEL = "io.flops.image-builder.cuda-libraries"
# PyPI's CUDA torch pulls nvidia-* wheels (installed under nvidia/) and triton; other stacks vendor libcudart.
_CUDA_LIBRARY_PREFIXES = ("libcudart", "libcublas", "libcudnn", "libnccl", "libcusparse", "libcufft")


def find_cuda_libraries(site: Path) -> list[str]:
    """Names of CUDA distributions (nvidia-*) and CUDA shared libraries under `site`, sorted."""
    if not site.is_dir():
        return []
    found = {
        path.name.split("-")[0].replace("_", "-")
        for path in site.glob("nvidia_*.dist-info")
    }
    for path in site.rglob("lib*.so*"):
        if path.name.startswith(_CUDA_LIBRARY_PREFIXES):
            found.add(path.name.split(".so")[0])
    return sorted(found)


def label_value(libraries: list[str]) -> str:
    return ",".join(libraries)


def parse_label(value: str) -> list[str]:
    # buildah prints "<no value>" for a label the image does not have.
    value = value.strip()
    return [] if not value or value == "<no value>" else value.split(",")
