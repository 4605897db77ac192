"""Remove old images: the builder's local build and cache images, and old tags of built images in a registry."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from pydantic import BaseModel

from image_builder import commands as cmd
from image_builder.build import CACHE_PREFIX, LOCAL_PREFIX
from image_builder.cuda import CUDA_LABEL
from image_builder.errors import ToolError
from image_builder.tools import ToolRunner

# A registry image is one of ours when its config carries one of these labels; nothing else is ever deleted
# (a base image in the same registry, for one).
BUILT_LABELS = ("io.flops.version", CUDA_LABEL)


class Pruned(BaseModel):
    """What a prune removed (or, with dry_run, would remove)."""

    local: list[str] = []
    registry: list[str] = []


def prune_local(runner: ToolRunner, older_than_s: float, dry_run: bool = False) -> list[str]:
    """Remove the builder's local images (build results and layer caches) created more than older_than_s ago."""
    listed = json.loads(runner.run(["buildah", "images", "--json"], quiet=True)[1] or "[]")
    cutoff = time.time() - older_than_s
    old = [
        image for image in listed
        if image.get("created", cutoff) < cutoff
        and any(name.startswith((f"{LOCAL_PREFIX}/", f"{CACHE_PREFIX}/")) for name in image.get("names") or [])
    ]
    removed = [name for image in old for name in image["names"]]
    if old and not dry_run:
        runner.run(cmd.buildah_rm_images(*(image["id"] for image in old)), quiet=True, check=False)
    return removed


def prune_registry(
    runner: ToolRunner,
    registry: str,
    keep: int,
    tls_verify: bool | None = None,
    repository_filter: Callable[[str], bool] = lambda name: True,
    dry_run: bool = False,
) -> list[str]:
    """In each repository of `registry`, delete all but the `keep` newest tags of images this builder made."""
    removed: list[str] = []
    for repository in filter(repository_filter, registry_catalog(registry, tls_verify)):
        listing = runner.run(["skopeo", "list-tags", *cmd.tls_args(tls_verify), f"docker://{registry}/{repository}"],
                             quiet=True, check=False)
        if listing[0] != 0:
            continue
        dated: list[tuple[str, str]] = []
        for tag in json.loads(listing[1]).get("Tags") or []:
            ref = f"{registry}/{repository}:{tag}"
            code, raw = runner.run(cmd.skopeo_inspect_config(ref, tls_verify), quiet=True, check=False)
            config = json.loads(raw) if code == 0 else {}
            labels = (config.get("config") or {}).get("Labels") or {}
            if any(label in labels for label in BUILT_LABELS):
                dated.append((config.get("created", ""), ref))
        for _, ref in sorted(dated, reverse=True)[keep:]:
            if not dry_run:
                runner.run(["skopeo", "delete", *cmd.tls_args(tls_verify), f"docker://{ref}"], quiet=True)
            removed.append(ref)
    return removed


def registry_catalog(registry: str, tls_verify: bool | None) -> list[str]:
    """Repository names from the registry's /v2/_catalog (HTTPS, or plain HTTP unless TLS is required)."""
    schemes = ["https"] if tls_verify else ["https", "http"]
    last: Exception | None = None
    for scheme in schemes:
        try:
            with urllib.request.urlopen(f"{scheme}://{registry}/v2/_catalog?n=1000", timeout=10) as response:
                return list(json.load(response).get("repositories") or [])
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = exc
    raise ToolError("registry", f"cannot list the repositories of {registry}: {last}")
