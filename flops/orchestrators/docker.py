"""Docker orchestrator: the local orchestrator's SuperLink and SuperNodes, each a container of the FLOps image."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from flops.errors import DeployError
from flops.orchestrators.base import (
    ComponentRecord,
    ComponentRole,
    Deployment,
    Orchestrator,
    hand_run_dir_to_image_user,
    host_port,
    node_config_text,
    place_on_this_machine,
    port_open,
    wait_for_port,
)
from flops.orchestrators.local import RUN_ID_ENV, free_port
from flops.plan import RunPlan

IMAGE_ENV = "FLOPS_IMAGE"
RUN_LABEL = "io.flops.run-id"
COMPONENT_LABEL = "io.flops.component"
STOP_GRACE_S = 5


def _docker_client() -> Any:
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a declared dependency of the docker extra
        raise DeployError("the docker orchestrator needs the `docker` package: pip install 'flops[docker]'") from exc
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types for "no daemon"
        raise DeployError(
            f"cannot reach the Docker daemon ({exc}); start dockerd (see .ci/setup-containers.sh) or set DOCKER_HOST"
        ) from exc
    return client


def container_name(run_id: str, component: str) -> str:
    return f"flops-{run_id}-{component}"


class DockerOrchestrator(Orchestrator):
    """Containers on the host network, labelled with the run id, one per component; the image's first argument
    picks the role (root-aggregator, cluster-superlink, cluster-aggregator, learner)."""

    name = "docker"

    def __init__(self, image: str | None = None, client: Any = None) -> None:
        self.image = image or os.environ.get(IMAGE_ENV)
        self._client = client
        self._followers: dict[str, threading.Thread] = {}  # component -> thread copying its logs to log_path

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _docker_client()
        return self._client

    def _ensure_image(self) -> str:
        if not self.image:
            raise DeployError(
                f"the docker orchestrator runs a FLOps image: build one with `flops build SOURCE --registry HOST` "
                f"and set {IMAGE_ENV} to the image it prints"
            )
        import docker.errors

        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            try:
                self.client.images.pull(self.image)
            except docker.errors.APIError as exc:
                raise DeployError(f"cannot pull {self.image}: {exc.explanation or exc}") from exc
        return self.image

    @staticmethod
    def _mounts(plan: RunPlan, host: str, args: list[str]) -> dict[str, dict[str, str]]:
        """What one container receives from this machine: its host's own folder, and read-only the credential
        files its command names (its certificate and key, or the CA and its SuperNode key), at the same paths.
        The app is in the image; no container sees another host's files or another component's key."""
        mounts = {str(plan.host_dir(host)): {"bind": str(plan.host_dir(host)), "mode": "rw"}}
        for arg in args:
            path = Path(arg)
            if path.is_absolute() and path.is_relative_to(plan.run_dir) and path.is_file():
                mounts[arg] = {"bind": arg, "mode": "ro"}
        return mounts

    def _app_dir(self, plan: RunPlan) -> str:
        from flops.app_image import APP_WORKDIR  # the image step's constant; imported late (app_image -> orchestrators)

        return APP_WORKDIR

    def _run(self, plan: RunPlan, record: ComponentRecord, role: str, args: list[str], host: str) -> ComponentRecord:
        import docker.errors

        record.log_path.parent.mkdir(parents=True, exist_ok=True)
        host_dir = plan.host_dir(host)
        host_dir.mkdir(parents=True, exist_ok=True)
        user = hand_run_dir_to_image_user(plan)  # per container: the key files made for this one included
        try:
            container = self.client.containers.run(
                self.image, command=[role, *args], detach=True, name=container_name(plan.run_id, record.name),
                network_mode="host", labels={RUN_LABEL: plan.run_id, COMPONENT_LABEL: record.name},
                environment={"FLWR_HOME": str(host_dir / "flwr_home" / record.name), RUN_ID_ENV: plan.run_id,
                             "PYTHONUNBUFFERED": "1"},
                volumes=self._mounts(plan, host, args), working_dir=str(host_dir), **({"user": user} if user else {}),
            )
        except docker.errors.APIError as exc:
            raise DeployError(f"cannot start {record.name}: {exc.explanation or exc}") from exc
        record.container_id = container.id
        follower = threading.Thread(target=self._follow_logs, args=(container, record.log_path), daemon=True)
        follower.start()
        self._followers[record.name] = follower
        return record

    @staticmethod
    def _follow_logs(container: Any, log_path: Path) -> None:
        try:
            with open(log_path, "ab") as log:
                for chunk in container.logs(stream=True, follow=True):
                    log.write(chunk)
                    log.flush()
        except Exception:  # the container went away: stop() writes the final copy
            return

    def _container(self, record: ComponentRecord) -> Any | None:
        import docker.errors

        try:
            return self.client.containers.get(record.container_id or container_name("", record.name))
        except docker.errors.NotFound:
            return None

    def _exit_reason(self, record: ComponentRecord) -> str | None:
        container = self._container(record)
        if container is not None:
            container.reload()
            if container.status not in ("exited", "dead"):
                return None
        tail = " | ".join(container.logs(tail=5).decode(errors="replace").strip().splitlines()) if container else ""
        code = container.attrs["State"]["ExitCode"] if container else "?"
        return f"exited with code {code} while starting: {tail}"

    def _start_superlink(self, plan: RunPlan, name: str, role: ComponentRole, host: str) -> tuple[ComponentRecord, str]:
        place = place_on_this_machine(plan, host, free_port)  # every container is on the host network: this machine
        record = ComponentRecord(name=name, role=role, log_path=plan.logs_dir / f"{name}.log")
        image_role = "root-aggregator" if role == "root-aggregator" else "cluster-superlink"
        self._run(plan, record, image_role, [*self.security.superlink_args(name, place.names), "--host", place.listen,
                                             "--port", str(place.port)], host)
        wait_for_port(place.port, record, plan.config.startup_timeout_s, lambda: self._exit_reason(record),
                      lambda: port_open(place.port, place.listen))
        return record, host_port(place.dial, place.port)

    def _start_supernode(self, plan: RunPlan, record: ComponentRecord, superlink: str,
                         node_config: dict[str, str | int], host: str) -> ComponentRecord:
        args = [*self.security.supernode_args(record.name, superlink), "--superlink", superlink, "--port", str(free_port()),
                "--node-config", node_config_text(node_config), "--max-retries", "5", "--max-wait-time", "30"]
        return self._run(plan, record, record.role, args, host)

    def _before_deploy(self, plan: RunPlan) -> None:
        self._ensure_image()

    def _restart(self, plan: RunPlan, record: ComponentRecord) -> None:
        """The same container (command, ports, mounts) started again; its log stream is followed anew."""
        import docker.errors

        container = self._container(record)
        if container is None:
            raise DeployError(f"cannot restart {record.name}: its container is gone")
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise DeployError(f"cannot restart {record.name}: {exc.explanation or exc}") from exc
        follower = threading.Thread(target=self._follow_logs, args=(container, record.log_path), daemon=True)
        follower.start()
        self._followers[record.name] = follower

    def status(self, deployment: Deployment) -> dict[str, bool]:
        alive = {}
        for record in deployment.components:
            container = self._container(record)
            alive[record.name] = container is not None and container.status == "running"
        return alive

    def logs(self, deployment: Deployment, component: str) -> Path:
        for record in deployment.components:
            if record.name == component:
                self._save_logs(record)
                return record.log_path
        known = ", ".join(c.name for c in deployment.components)
        raise DeployError(f"no component '{component}' in run {deployment.run_id} (components: {known})")

    def _save_logs(self, record: ComponentRecord) -> None:
        """Write the container's whole log to log_path, unless this process is already copying it there."""
        follower = self._followers.get(record.name)
        if follower is not None and (follower.is_alive() or record.log_path.exists()):
            return
        container = self._container(record)
        if container is not None:
            record.log_path.parent.mkdir(parents=True, exist_ok=True)
            record.log_path.write_bytes(container.logs())

    def stop(self, deployment: Deployment) -> None:
        """Stop and remove every container labelled with the run id, recorded or not; safe to call twice."""
        containers = self.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={deployment.run_id}"})
        for container in containers:
            try:
                container.stop(timeout=STOP_GRACE_S)
            except Exception:  # already gone or already stopped
                pass
        for follower in self._followers.values():
            follower.join(timeout=2)  # a stopped container ends its log stream
        for record in deployment.components:
            self._save_logs(record)
        for container in containers:
            try:
                container.remove(force=True)
            except Exception:
                pass
        self._followers.clear()
