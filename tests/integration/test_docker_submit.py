"""`flops submit --orchestrator docker`: the example trains in containers of its `flops build` image."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import FlopsResult, run_flops
from containers.support import BASE, FIND_LINKS, REGISTRY, docker_missing, require_containers
from flops.orchestrators.docker import RUN_LABEL

pytestmark = pytest.mark.slow


def submit_in_docker(
    repo: Path, workdir: Path, *run_args: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[FlopsResult, dict]:
    """`flops submit --orchestrator docker --registry R` with no other image flag: base image and wheel folder come
    from a build defaults file as .ci/setup-containers.sh writes it, TLS from registries.conf, torch's CPU pin
    from the wheel folder. It builds the app's image for this machine in the test registry (or finds it by its
    hash) and runs it. Checks it succeeded and left no container behind."""
    require_containers(docker_missing())
    import docker

    defaults = workdir.parent / "build-defaults.toml"
    defaults.write_text(f"base_image = {json.dumps(BASE)}\npip_find_links = {json.dumps(FIND_LINKS)}\n")
    monkeypatch.setenv("FLOPS_BUILD_DEFAULTS", str(defaults))
    run = run_flops(
        "submit", repo.as_uri(), *run_args, "--orchestrator", "docker", "--registry", REGISTRY,
        "--workdir", str(workdir), "--json", timeout_s=1800,
    )
    assert run.returncode == 0, run.output
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    left = docker.from_env().containers.list(all=True, filters={"label": f"{RUN_LABEL}={summary['run_id']}"})
    assert left == []
    return run, summary


def test_the_example_trains_in_containers_as_it_does_locally(
    example_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same settings as the local orchestrator's example test, which must reach 0.85.
    run, summary = submit_in_docker(example_repo, tmp_path / "work", "--learners", "3", "--rounds", "3",
                                    monkeypatch=monkeypatch)
    # The image step's line: "[all] image done: REGISTRY/flops/NAME:TAG[ (cached)]"
    image = next(line.split("image done: ")[1].split()[0] for line in run.stderr.splitlines()
                 if f"image done: {REGISTRY}/flops/" in line)
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"docker://{image}"],
                                       capture_output=True, text=True, check=True).stdout)
    assert config["config"]["User"] not in ("", "0", "root") and not config["config"]["User"].startswith("0:")
    assert "CUDA LIBRARIES" not in run.stderr, run.stderr
    assert summary["status"] == "FINISHED"
    assert summary["rounds_completed"] == 3
    assert summary["final_metrics"]["accuracy"] >= 0.85
    assert summary["model_uri"]


def test_hierarchical_run_in_containers_drives_each_cluster_from_its_aggregator_container(
    example_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root SuperLink, two cluster SuperLinks, two cluster aggregators and four learners: nine containers of one
    # image; each cluster aggregator runs its cluster's local rounds through the Control API from inside its own.
    _, summary = submit_in_docker(
        example_repo, tmp_path / "work", "--learners", "4", "--clusters", "2", "--rounds", "2", "--local-rounds", "1",
        monkeypatch=monkeypatch,
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
