"""podman-kube orchestrator: the kubernetes orchestrator's manifests played on this machine by `podman kube play`."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import Any

from flops.credentials import write_private
from flops.errors import DeployError
from flops.orchestrators.base import Deployment, wait_for_port
from flops.orchestrators.k8s_manifests import (
    ManifestBuilder,
    component_ports,
    object_name,
    run_selector,
    to_yaml,
)
from flops.orchestrators.kubernetes import KubernetesOrchestrator, PodView
from flops.orchestrators.local import free_port
from flops.plan import RunPlan

# podman's container states -> the pod phases the kubernetes orchestrator reasons about.
PHASES = {"running": "Running", "created": "Pending", "configured": "Pending", "initialized": "Pending",
          "stopping": "Running", "paused": "Running"}
STOP_TIMEOUT_S = "5"
LISTING_TTL_S = 2.0
STOP_ATTEMPTS = 3


def _podman(*args: str) -> str:
    """Run podman with an argument list; its failure becomes a DeployError with its last line."""
    try:
        done = subprocess.run(["podman", *args], capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL, timeout=600)
    except FileNotFoundError:
        raise DeployError("podman is not installed: apt-get install podman runc (or run .ci/setup-containers.sh)") from None
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        raise DeployError(f"podman {' '.join(args[:2])} exited with {done.returncode}: {last}")
    return done.stdout


def _loopback_registry(image: str) -> bool:
    host = image.split("/", 1)[0]
    return "/" in image and host.split(":")[0] in ("127.0.0.1", "localhost")


class PodmanKubeOrchestrator(KubernetesOrchestrator):
    """The same objects as the kubernetes orchestrator, on the host network (podman 4.3 implements no
    Services), each Deployment a pod of this machine. For trying manifests without a cluster, and CI."""

    name = "podman-kube"
    host_network = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing: dict[str, tuple[float, list[PodView]]] = {}  # run id -> (when, its containers)
        self._config_maps: dict[str, list[dict[str, Any]]] = {}  # run id -> its ConfigMaps, played with each stage

    def _ports(self, plan: RunPlan) -> dict[str, int]:
        return component_ports(plan, free_port)

    def _apply(self, objects: list[dict[str, Any]], plan: RunPlan) -> None:
        """Play the Deployments among OBJECTS with the run's ConfigMaps (podman reads them from the same file);
        Secrets become podman secrets first."""
        kept = self._config_maps.setdefault(plan.run_id, [])
        kept += [o for o in objects if o["kind"] == "ConfigMap"]
        for secret in (o for o in objects if o["kind"] == "Secret"):
            self._create_secret(plan, secret)
        deployments = [o for o in objects if o["kind"] == "Deployment"]
        if not deployments:
            return
        image = self.image or plan.image or ""
        tls = ["--tls-verify=false"] if _loopback_registry(image) else []  # the plain-HTTP test registry
        stage = plan.run_dir / "podman-stage.yaml"
        stage.write_text(to_yaml([*kept, *deployments]))
        _podman("kube", "play", *tls, str(stage))

    @staticmethod
    def _create_secret(plan: RunPlan, secret: dict[str, Any]) -> None:
        """podman 4.3 mounts a Secret's `data` as its base64 text and ignores `stringData` (fixed in podman 4.4,
        containers/podman#16625). Our credentials are PEM text: the podman secret gets them decoded, which 4.3
        mounts as they are. (A cluster gets the Secret object itself.)"""
        name = secret["metadata"]["name"]
        decoded = {**secret, "data": {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}}
        path = plan.run_dir / "credentials" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, to_yaml([decoded]).encode())
        subprocess.run(["podman", "secret", "rm", name], capture_output=True, stdin=subprocess.DEVNULL)
        _podman("secret", "create", name, str(path))

    def _reach(self, builder: ManifestBuilder, superlink: str) -> str:
        return builder.address(superlink)

    def _wait_ready(self, deployment: Deployment, component: str, address: str, timeout_s: float) -> None:
        """No readiness reporting in podman: wait for the SuperLink's port, fail at once if its container exits."""
        record = next(c for c in deployment.components if c.name == component)

        def exit_reason() -> str | None:
            pod = next((p for p in self._pods(deployment.run_id) if p.of(component)), None)
            if pod is None or not pod.stuck:
                return None
            self._save_log(deployment, record)
            return f"exited ({pod.phase}) while starting"

        wait_for_port(int(address.rsplit(":", 1)[1]), record, timeout_s, exit_reason)

    def _pods(self, run_id: str) -> list[PodView]:
        # The controller asks every 0.5 s and a podman call is a heavy process: a listing serves for a while.
        cached = self._listing.get(run_id)
        if cached is not None and time.monotonic() - cached[0] < LISTING_TTL_S:
            return cached[1]
        listed = json.loads(_podman("ps", "-a", "--pod", "--filter", f"label={run_selector(run_id)}", "--format", "json")
                            or "[]")
        views = []
        for container in listed:
            state, name, pod = container.get("State", ""), container["Names"][0], container.get("PodName") or ""
            phase = PHASES.get(state, "Failed" if container.get("ExitCode") else "Succeeded")
            # kube play names a pod's container "<pod>-<container>": the manifest's container name is the rest.
            views.append(PodView(component=name.removeprefix(f"{pod}-"), name=pod, phase=phase,
                                 ready=state == "running", restarts=int(container.get("Restarts") or 0), container=name))
        self._listing[run_id] = (time.monotonic(), views)
        return views

    def _pod_log(self, pod: PodView) -> str:
        done = subprocess.run(["podman", "logs", pod.container], capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL)
        # podman logs replays the container's stdout and stderr on its own two streams.
        return done.stdout + done.stderr if done.returncode == 0 else ""

    def _delete_all(self, run_id: str) -> None:
        self._listing.pop(run_id, None)
        self._config_maps.pop(run_id, None)
        # podman 4.3 can refuse a pod removal while it is still taking the pod's containers down
        # ("a container that depends on ... still exists"): list again and retry before giving up.
        for attempt in range(STOP_ATTEMPTS):
            pods = _podman("pod", "ps", "-q", "--filter", f"label={run_selector(run_id)}").split()
            if not pods:
                break
            try:
                _podman("pod", "rm", "-f", "-t", STOP_TIMEOUT_S, *pods)
            except DeployError:
                if attempt == STOP_ATTEMPTS - 1:
                    raise
                time.sleep(2)
        # kube play turns Secret objects into podman secrets, which kube down and pod rm leave behind.
        prefix = object_name(run_id, "")
        for secret in _podman("secret", "ls", "--format", "{{.Name}}").split():
            if secret.startswith(prefix):
                _podman("secret", "rm", secret)
