"""`flops submit --orchestrator docker`: the example trains in containers of its `flops build` image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FlopsResult, run_flops
from containers.support import BASE, FIND_LINKS, REGISTRY, docker_missing, require_containers
from flops.orchestrators.docker import RUN_LABEL

pytestmark = pytest.mark.slow


def submit_in_docker(repo: Path, workdir: Path, *run_args: str) -> tuple[FlopsResult, dict]:
    """`flops submit --orchestrator docker` with no --image: it builds the app's image for this machine in the
    test registry (or finds it by its hash) and runs it. Checks it succeeded and left no container behind."""
    require_containers(docker_missing())
    import docker

    run = run_flops(
        "submit", repo.as_uri(), *run_args, "--orchestrator", "docker",
        "--registry", REGISTRY, "--base-image", BASE, "--no-tls-verify",
        *(f"--pip-find-links={d}" for d in FIND_LINKS), "--platform-constraint", "linux/amd64=torch==2.13.0+cpu",
        "--workdir", str(workdir), "--json", timeout_s=1800,
    )
    assert run.returncode == 0, run.output
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    left = docker.from_env().containers.list(all=True, filters={"label": f"{RUN_LABEL}={summary['run_id']}"})
    assert left == []
    return run, summary


def test_the_example_trains_in_containers_as_it_does_locally(example_repo: Path, tmp_path: Path) -> None:
    # The same settings as the local orchestrator's example test, which must reach 0.85.
    run, summary = submit_in_docker(example_repo, tmp_path / "work", "--learners", "3", "--rounds", "3")
    assert f"image {REGISTRY}/flops/" in run.stderr
    assert summary["status"] == "FINISHED"
    assert summary["rounds_completed"] == 3
    assert summary["final_metrics"]["accuracy"] >= 0.85
    assert summary["model_uri"]


def test_hierarchical_run_in_containers_drives_each_cluster_from_its_aggregator_container(
    example_repo: Path, tmp_path: Path
) -> None:
    # Root SuperLink, two cluster SuperLinks, two cluster aggregators and four learners: nine containers of one
    # image; each cluster aggregator runs its cluster's local rounds through the Control API from inside its own.
    _, summary = submit_in_docker(
        example_repo, tmp_path / "work", "--learners", "4", "--clusters", "2", "--rounds", "2", "--local-rounds", "1"
    )
    assert summary["status"] == "FINISHED" and summary["rounds_completed"] == 2, summary
    assert len(summary["clusters"]) == 2, summary
    assert all(cluster["bytes_to_root"] > 0 and cluster["bytes_learners_to_cluster"] > 0
               for cluster in summary["clusters"].values()), summary
    assert summary["final_metrics"]["accuracy"] >= 0.5, summary


def test_docker_without_an_image_is_bad_input(example_repo: Path, tmp_path: Path) -> None:
    result = run_flops("submit", example_repo.as_uri(), "--orchestrator", "docker",
                       "--workdir", str(tmp_path / "work"))
    assert result.returncode == 2, result.output
    assert "--image" in result.stderr and "Traceback" not in result.output
