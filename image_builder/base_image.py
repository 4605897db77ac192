"""Pin the base image to one digest per target platform, read from the registry without pulling anything."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from image_builder.errors import BaseImageError
from image_builder import commands as cmd
from image_builder.errors import ToolError
from image_builder.tools import ToolRunner

LIST_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


class BaseImage(BaseModel):
    """Per platform: REPO@DIGEST to build from, that digest, and how many layers the base has."""

    refs: dict[str, str]
    digests: dict[str, str]
    layer_counts: dict[str, int]


def repository_of(ref: str) -> str:
    """'host:5000/a/b:tag@sha256:..' -> 'host:5000/a/b'."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref[: len(ref) - len(last)] + last.split(":", 1)[0]


def platform_digests(index: dict, platforms: list[str]) -> dict[str, str]:
    """Pick each platform's manifest digest out of a manifest list / OCI index."""
    found: dict[str, str] = {}
    for entry in index.get("manifests", []):
        plat = entry.get("platform") or {}
        key = f"{plat.get('os')}/{plat.get('architecture')}"
        if key in platforms and key not in found:
            found[key] = entry["digest"]
    return found


def resolve_base(runner: ToolRunner, ref: str, platforms: list[str], tls_verify: bool | None) -> BaseImage:
    """Look the base up in its registry; BaseImageError when it is unreachable or lacks a target platform."""
    try:
        raw = runner.run(cmd.skopeo_inspect_raw(ref, tls_verify), quiet=True)[1]
    except ToolError as exc:
        reason = exc.output.strip().splitlines()[-1] if exc.output.strip() else str(exc)
        raise BaseImageError(ref, f"cannot read base image {ref}: {reason}") from exc
    manifest = json.loads(raw)
    repo = repository_of(ref)
    if manifest.get("mediaType") in LIST_TYPES or "manifests" in manifest:
        digests = platform_digests(manifest, platforms)
    else:
        config = json.loads(runner.run(cmd.skopeo_inspect_config(ref, tls_verify), quiet=True)[1])
        platform = f"{config.get('os')}/{config.get('architecture')}"
        digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
        digests = {platform: digest} if platform in platforms else {}
    missing = [p for p in platforms if p not in digests]
    if missing:
        raise BaseImageError(ref, f"base image {ref} has no {', '.join(missing)} variant")
    layer_counts: dict[str, int] = {}
    for platform, digest in digests.items():
        per_platform = json.loads(runner.run(cmd.skopeo_inspect_raw(f"{repo}@{digest}", tls_verify), quiet=True)[1])
        layer_counts[platform] = len(per_platform.get("layers", []))
    return BaseImage(
        refs={p: f"{repo}@{d}" for p, d in digests.items()}, digests=digests, layer_counts=layer_counts
    )
