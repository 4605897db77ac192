"""`flops images prune` against the real registry: old tags of FLOps-built images go, anything else stays."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

from conftest import run_flops
from containers.support import REGISTRY, require_containers


def push_scratch_image(ref: str, labels: dict[str, str]) -> None:
    """An empty image (no layers) with `labels`, pushed to `ref`: enough for prune to judge it."""
    container = subprocess.run(["buildah", "from", "scratch"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
        subprocess.run(["buildah", "config", *label_args, container], check=True, capture_output=True)
        local = f"localhost/flops-test-prune:{uuid.uuid4().hex[:8]}"
        subprocess.run(["buildah", "commit", "--quiet", "--rm", container, local], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["buildah", "rm", container], capture_output=True)
        raise
    subprocess.run(["buildah", "push", "--quiet", local, f"docker://{ref}"], check=True, capture_output=True)
    subprocess.run(["buildah", "rmi", local], capture_output=True)


def tags(repository: str) -> list[str]:
    done = subprocess.run(["skopeo", "list-tags", f"docker://{REGISTRY}/{repository}"], capture_output=True, text=True)
    return sorted(json.loads(done.stdout)["Tags"] or []) if done.returncode == 0 else []


def test_prune_keeps_the_newest_flops_tags_and_never_touches_foreign_images() -> None:
    require_containers()
    ours = f"flops-test/prune-{uuid.uuid4().hex[:8]}"
    foreign = f"flops-test/foreign-{uuid.uuid4().hex[:8]}"
    for tag in ("first", "second", "third"):
        push_scratch_image(f"{REGISTRY}/{ours}:{tag}", {"io.flops.version": "0.1.0"})
        time.sleep(1.1)  # image configs record their creation to the second: the order must be unambiguous
    push_scratch_image(f"{REGISTRY}/{foreign}:base", {"maintainer": "someone else"})

    # Limited to this test's repositories: the registry is shared with other tests' images.
    scope = ["--registry", REGISTRY, "--keep", "1", "--repository", ours, "--repository", foreign, "--json"]
    dry = run_flops("images", "prune", *scope, "--dry-run")
    assert dry.returncode == 0, dry.output
    assert dry.last_json()["registry"] == [f"{REGISTRY}/{ours}:second", f"{REGISTRY}/{ours}:first"]
    assert tags(ours) == ["first", "second", "third"]

    done = run_flops("images", "prune", *scope)
    assert done.returncode == 0, done.output
    assert tags(ours) == ["third"]
    assert tags(foreign) == ["base"]
    for ref in (f"{REGISTRY}/{ours}:third", f"{REGISTRY}/{foreign}:base"):
        subprocess.run(["skopeo", "delete", f"docker://{ref}"], capture_output=True)
