"""The docker orchestrator's container arguments, with a recording fake client: no daemon, no processes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flops.config import RunConfig
from flops.orchestrators.docker import COMPONENT_LABEL, RUN_LABEL, DockerOrchestrator, node_config_text
from flops.orchestrators.link_security import LinkSecurity
from flops.plan import LearnerSpec, RunPlan


class FakeContainers:
    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []

    def run(self, image: str, **kwargs: Any) -> Any:
        self.started.append({"image": image, **kwargs})
        return SimpleNamespace(id=f"c{len(self.started)}", logs=lambda **_: iter(()))


def plan(tmp_path: Path, app_dir: Path) -> RunPlan:
    return RunPlan(
        run_id="r1", run_dir=tmp_path / "run", source_url="s", source_ref=None, commit="0" * 40, source_name="s",
        app_dir=app_dir, python=Path("/usr/bin/python3"), config=RunConfig(learners=1), orchestrator="docker",
        tracking_uri="", task_module="task", dependencies=[],
        learners=[LearnerSpec(name="learner-0", partition_id=0, num_partitions=1)], insecure=True,
    )


def test_node_config_is_toml_values() -> None:
    assert node_config_text({"partition-id": 0, "cluster-name": "a"}) == 'partition-id=0 cluster-name="a"'


def test_a_learner_container_runs_the_image_role_on_the_host_network_with_run_labels(tmp_path: Path) -> None:
    fake = FakeContainers()
    orchestrator = DockerOrchestrator(image="reg/app@sha256:1", client=SimpleNamespace(containers=fake))
    p = plan(tmp_path, tmp_path / "elsewhere" / "app")
    orchestrator.security = LinkSecurity(p)  # deploy() sets it; an --insecure plan needs no SuperLink to register
    record = orchestrator._start_learners(p, p.learners, "127.0.0.1:9000")[0]  # noqa: SLF001
    started = fake.started[0]
    assert started["image"] == "reg/app@sha256:1" and record.container_id == "c1"
    assert started["command"][:2] == ["learner", "--insecure"]
    assert started["command"][started["command"].index("--superlink") + 1] == "127.0.0.1:9000"
    assert started["network_mode"] == "host" and started["detach"] is True
    assert started["labels"] == {RUN_LABEL: "r1", COMPONENT_LABEL: "learner-0"}
    assert started["name"] == "flops-r1-learner-0"
    # Its own host's folder only: not the run directory, not the app (it is in the image).
    host_dir = str(p.host_dir("learner-0"))
    assert started["volumes"] == {host_dir: {"bind": host_dir, "mode": "rw"}}
    assert started["working_dir"] == host_dir
