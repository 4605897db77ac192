"""Read a built image back (registry or OCI archive): digest, per-platform layers and sizes."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from image_builder import commands as cmd
from image_builder.base_image import platform_digests, repository_of
from image_builder.tools import ToolRunner


def summarize(manifest: dict, base_layers: int) -> tuple[list[str], int, str]:
    """(layer digests, compressed bytes incl. config, dependency layer digest) of one platform manifest."""
    layers = [layer["digest"] for layer in manifest.get("layers", [])]
    size = sum(layer.get("size", 0) for layer in manifest.get("layers", [])) + manifest["config"].get("size", 0)
    dependency = layers[base_layers] if len(layers) > base_layers else ""
    return layers, size, dependency


def registry_manifests(
    runner: ToolRunner, ref: str, raw_index: str, tls_verify: bool | None, base_layer_counts: dict[str, int]
) -> dict:
    """Summary of a manifest list already in the registry, from its raw bytes plus one look-up per platform."""
    index = json.loads(raw_index)
    digest = "sha256:" + hashlib.sha256(raw_index.encode()).hexdigest()
    repo = repository_of(ref)
    platforms = list(base_layer_counts)
    summary: dict = {"image": f"{repo}@{digest}", "size_bytes": {}, "layers": {}, "dependency_layer": {}}
    for platform, manifest_digest in platform_digests(index, platforms).items():
        raw = runner.run(cmd.skopeo_inspect_raw(f"{repo}@{manifest_digest}", tls_verify), quiet=True)[1]
        layers, size, dependency = summarize(json.loads(raw), base_layer_counts[platform])
        summary["layers"][platform] = layers
        summary["size_bytes"][platform] = size
        summary["dependency_layer"][platform] = dependency
    return summary


def archive_manifests(path: Path, base_layer_counts: dict[str, int]) -> dict:
    """Summary of an OCI archive written by `buildah manifest push --all ... oci-archive:PATH`."""
    with tarfile.open(path) as archive:

        def blob(digest: str) -> dict:
            member = archive.extractfile(f"blobs/{digest.replace(':', '/')}")
            assert member is not None
            return json.loads(member.read())

        top = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
        list_digest = top["manifests"][0]["digest"]
        index = blob(list_digest)
        if "manifests" not in index:  # a single-platform archive has no inner list
            index, list_digest = top, top["manifests"][0]["digest"]
        summary: dict = {"image": f"oci-archive:{path}@{list_digest}", "size_bytes": {}, "layers": {},
                         "dependency_layer": {}}
        for platform, digest in platform_digests(index, list(base_layer_counts)).items():
            layers, size, dependency = summarize(blob(digest), base_layer_counts[platform])
            summary["layers"][platform] = layers
            summary["size_bytes"][platform] = size
            summary["dependency_layer"][platform] = dependency
    return summary
