"""The docker orchestrator with a real dockerd and a real FLOps image: a flat federation trains and is torn down."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from flops.app_image import app_requirements
from flops.config import RunConfig
from flops.errors import DeployError
from flops.flower_control import FlowerControl
from flops.orchestrators.docker import COMPONENT_LABEL, RUN_LABEL, DockerOrchestrator
from flops.plan import LearnerSpec, RunPlan
from flops.preparation import augment_source
from flops.workdir import cache_dir
from flops.flower_run_config import root_overrides
from image_builder import build_image
from flops.app_image import flower_app_spec

from containers.support import BASE, CONSTRAINTS, FIND_LINKS, HERE, REGISTRY, docker_missing, require_containers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_and_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny task, augmented by FLOps, and its amd64 image in the local registry."""
    require_containers(docker_missing())
    work = tmp_path_factory.mktemp("docker-app")
    repo = work / "tiny"
    shutil.copytree(HERE / "tiny_task", repo)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    app = augment_source(str(repo), None, RunConfig(), cache_dir(work), work / "app")
    app_dir = app.app_dir
    spec = flower_app_spec(app_dir, name="flops-test/docker-orchestrator", requirements=app_requirements(app.dependencies),
                           platforms=["linux/amd64"], registry=REGISTRY, base_image=BASE, tls_verify=False,
                           pip_find_links=FIND_LINKS, platform_constraints=CONSTRAINTS)
    return app_dir, build_image(spec).image


def make_plan(tmp_path: Path, app_dir: Path, learners: int = 2) -> RunPlan:
    run_id = f"rtest-{uuid.uuid4().hex[:6]}"
    config = RunConfig(rounds=1, learners=learners)
    return RunPlan(
        run_id=run_id, run_dir=tmp_path / run_id, source_url="test", source_ref=None, commit="0" * 40,
        source_name="tiny", app_dir=app_dir, python=Path("/usr/bin/python3"), config=config,
        orchestrator="docker", tracking_uri="", task_module="task", dependencies=["torch"],
        learners=[LearnerSpec(name=f"learner-{i}", partition_id=i, num_partitions=learners) for i in range(learners)],
    )


def labelled(run_id: str) -> list:
    import docker

    return docker.from_env().containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})


def test_a_flat_federation_trains_in_containers_and_stop_removes_them(
    app_and_image: tuple[Path, str], tmp_path: Path
) -> None:
    app_dir, image = app_and_image
    plan = make_plan(tmp_path, app_dir)
    orchestrator = DockerOrchestrator(image=image)
    deployment = orchestrator.deploy(plan)
    try:
        assert set(orchestrator.status(deployment).values()) == {True}
        containers = labelled(plan.run_id)
        assert len(containers) == 3
        assert all(c.attrs["HostConfig"]["NetworkMode"] == "host" for c in containers)
        # TLS and SuperNode authentication in containers too: the flags come from the orchestrator.
        commands = {c.labels[COMPONENT_LABEL]: c.attrs["Config"]["Cmd"] for c in containers}
        assert "--enable-supernode-auth" in commands["superlink"] and "--insecure" not in commands["superlink"]
        assert "--auth-supernode-private-key" in commands["learner-0"]
        # No shared run folder: each container gets its host's own folder and the credential files its command
        # names, read-only; never another component's key.
        mounts = {c.labels[COMPONENT_LABEL]: {m["Destination"]: m["RW"] for m in c.attrs["Mounts"]} for c in containers}
        for name, mounted in mounts.items():
            host = "root" if name == "superlink" else name
            assert mounted.pop(str(plan.host_dir(host))) is True, (name, mounted)
            assert all(not rw and path.startswith(str(plan.run_dir / "credentials")) for path, rw in mounted.items())
            assert all(f"/{other}/" not in path for other in mounts if other != name for path in mounted), mounted
        control = FlowerControl(deployment.control_address, deployment.ca_cert)
        try:
            flower_run = control.start_run(plan.app_dir, {**root_overrides(plan, deployment.root_state_dir),
                                                              "num-server-rounds": 1})
            deadline = time.monotonic() + 600
            status = control.run_status(flower_run)
            while not status.finished and time.monotonic() < deadline:
                time.sleep(1)
                status = control.run_status(flower_run)
        finally:
            control.close()
        assert status.completed, (status, orchestrator.logs(deployment, "superlink").read_text()[-3000:])
        assert (plan.host_dir("root") / "events.jsonl").exists()  # the root's own record, on its host
    finally:
        orchestrator.stop(deployment)
    assert labelled(plan.run_id) == []
    assert "learner" in " ".join(c.name for c in deployment.components)
    assert orchestrator.logs(deployment, "learner-0").read_text()
    orchestrator.stop(deployment)  # twice is fine


class SuperLinkWithUnknownRole(DockerOrchestrator):
    """Starts the SuperLink container with a role the entrypoint rejects (exit 2): a component dying at start."""

    def _run(self, plan, record, role, args, host):  # type: ignore[no-untyped-def]
        return super()._run(plan, record, "no-such-role" if record.name == "superlink" else role, args, host)


def test_a_component_that_dies_at_start_is_reported_and_nothing_is_left(
    app_and_image: tuple[Path, str], tmp_path: Path
) -> None:
    app_dir, image = app_and_image
    plan = make_plan(tmp_path, app_dir)
    with pytest.raises(DeployError, match="superlink exited with code 2 while starting: .*unknown role"):
        SuperLinkWithUnknownRole(image=image).deploy(plan)
    assert labelled(plan.run_id) == []


def test_no_image_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOPS_IMAGE", raising=False)
    plan = make_plan(tmp_path, tmp_path)
    with pytest.raises(DeployError, match="flops build"):
        DockerOrchestrator(client=object()).deploy(plan)
