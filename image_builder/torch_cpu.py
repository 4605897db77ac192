"""Pin torch to its CPU build per target platform: PyPI's default torch for x86_64 (and aarch64 after 2.10) is CUDA's.

Where the CPU build comes from, in order: a `+cpu` wheel for the platform in a find-links folder, the PyTorch CPU
index (https://download.pytorch.org/whl/cpu) when the build uses it, and for arm64 PyPI's last CPU-only release.
"""

from __future__ import annotations

import re
from pathlib import Path

from packaging.version import InvalidVersion, Version

PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# PyPI's aarch64 torch wheels after 2.10 are CUDA builds (GBs): 2.10 is the last CPU-only one there.
LAST_CPU_ONLY_AARCH64_ON_PYPI = Version("2.10")
_WHEEL_MACHINES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


def torch_constraints(
    torch_version: str, platforms: list[str], find_links: list[str], index_urls: list[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """({platform: [torch constraint]}, warnings) pinning torch to `torch_version`'s CPU build on each platform.

    A platform whose CPU build of that version has no source gets the closest safe pin and a warning.
    """
    try:
        release = Version(torch_version).public  # "2.13.0+cpu" -> "2.13.0"
    except InvalidVersion:
        return {}, [f"torch version {torch_version!r} is not a version: torch is not pinned"]
    from_index = any(url.rstrip("/") == PYTORCH_CPU_INDEX for url in index_urls)
    constraints: dict[str, list[str]] = {}
    warnings: list[str] = []
    for platform in platforms:
        if from_index or _has_cpu_wheel(find_links, release, platform):
            constraints[platform] = [f"torch=={release}+cpu"]
        elif platform == "linux/arm64" and Version(release) <= LAST_CPU_ONLY_AARCH64_ON_PYPI:
            constraints[platform] = [f"torch=={release}"]
        elif platform == "linux/arm64":
            constraints[platform] = [f"torch<={LAST_CPU_ONLY_AARCH64_ON_PYPI}"]
            warnings.append(
                f"no torch {release}+cpu wheel for {platform} in the find-links folders: using PyPI's last CPU-only "
                f"aarch64 torch (<={LAST_CPU_ONLY_AARCH64_ON_PYPI}); pass the PyTorch CPU index ({PYTORCH_CPU_INDEX}) "
                "or a folder holding that wheel to match the training run"
            )
        else:
            constraints[platform] = [f"torch=={release}"]
            warnings.append(
                f"no torch {release}+cpu wheel for {platform} in the find-links folders: PyPI's torch {release} for "
                f"{platform} is the CUDA build (GBs); pass the PyTorch CPU index ({PYTORCH_CPU_INDEX}) or a folder "
                "holding the +cpu wheel"
            )
    return constraints, warnings


def _has_cpu_wheel(find_links: list[str], release: str, platform: str) -> bool:
    machine = _WHEEL_MACHINES[platform]
    pattern = re.compile(rf"^torch-{re.escape(release)}\+cpu-.*_{machine}\.whl$")
    return any(
        pattern.match(path.name)
        for folder in find_links if Path(folder).is_dir()
        for path in Path(folder).iterdir()
    )


def names_torch(constraint_lines: list[str]) -> bool:
    """Whether the user already constrains torch for a platform (then their line stands alone)."""
    return any(re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower() == "torch" for line in constraint_lines)
