"""Kubernetes objects of a run plan (plain dicts): what `flops submit --orchestrator kubernetes` creates and `flops export` writes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flops.config import ResourceRequirements
from flops.flower_run_config import root_overrides
from flops.orchestrators.base import node_config_text
from flops.plan import RunPlan
from flops.topology import Placement

RUN_LABEL = "flops.run-id"
COMPONENT_LABEL = "flops.component"
SUPERLINK_PORT = 9092  # Fleet, Control and Runtime APIs share one port in Flower 1.42
SUPERNODE_PORT = 9094  # a SuperNode's ClientAppIo API, inside its own pod
CREDENTIALS_DIR = "/etc/flops/credentials"
CONFIG_DIR = "/etc/flops/config"
# component name -> {file name: contents}; the lead's per-run TLS material and SuperNode keys go here.
Credentials = Mapping[str, Mapping[str, bytes]]


@dataclass
class ManifestOptions:
    """How the run's objects are addressed and placed.

    host_network: every pod on the node's network, components addressed as 127.0.0.1:PORT with distinct
    ports (podman kube play implements no Services); otherwise a Service per SuperLink, addressed by name.
    """

    image: str
    namespace: str = "default"
    host_network: bool = False
    ports: Mapping[str, int] = field(default_factory=dict)  # host_network: component name -> its port
    credentials: Credentials = field(default_factory=dict)


@dataclass
class Component:
    """One Deployment: a SuperLink (with a Service) or a SuperNode (learner or cluster aggregator)."""

    name: str  # FLOps' component name, as in the run state: superlink, learner-0, cluster-0-superlink, ...
    role: str  # the image's first argument: root-aggregator, cluster-superlink, learner, cluster-aggregator
    args: list[str]
    port: int
    superlink: bool
    placement: Placement | None = None


def object_name(run_id: str, component: str) -> str:
    """A DNS-1123 label for the component's objects: lowercase, '-' for other characters, at most 63."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"flops-{run_id}-{component}".lower()).strip("-")
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def component_ports(plan: RunPlan, free_port: Any) -> dict[str, int]:
    """host_network: one free loopback port per component (SuperLinks and SuperNodes share the host)."""
    return {component: free_port() for component in component_names(plan)}


def component_names(plan: RunPlan) -> list[str]:
    names = ["superlink"]
    if not plan.hierarchical:
        names += [learner.name for learner in plan.learners]
    for cluster in plan.clusters:
        names += [f"{cluster.dir_name}-superlink", *(l.name for l in cluster.learners), f"{cluster.dir_name}-aggregator"]
    return names


def labels(run_id: str, component: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "flops", "app.kubernetes.io/instance": run_id,
        "app.kubernetes.io/component": role, "app.kubernetes.io/part-of": "flops-federation",
        "app.kubernetes.io/managed-by": "flops", RUN_LABEL: run_id, COMPONENT_LABEL: label_value(component),
    }


def label_value(text: str) -> str:
    """A valid label value: letters, digits, '.', '_', '-', starting and ending alphanumeric, at most 63."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("._-")


def run_selector(run_id: str) -> str:
    """The one label selector that finds every object of a run (stop deletes by it)."""
    return f"{RUN_LABEL}={run_id}"


class ManifestBuilder:
    """Walks the plan's topology the way Orchestrator.deploy does, producing objects instead of processes."""

    def __init__(self, plan: RunPlan, options: ManifestOptions) -> None:
        self.plan = plan
        self.options = options

    def address(self, superlink: str) -> str:
        if self.options.host_network:
            return f"127.0.0.1:{self._port(superlink)}"
        return f"{object_name(self.plan.run_id, superlink)}.{self.options.namespace}.svc:{SUPERLINK_PORT}"

    def control_address(self) -> str:
        """Where the controller reaches the root's Control API (host network; else the Service's cluster IP)."""
        return self.address("superlink")

    def _port(self, component: str) -> int:
        if not self.options.host_network:
            return SUPERNODE_PORT
        try:
            return self.options.ports[component]
        except KeyError:
            raise ValueError(f"host_network needs a port for every component; none for '{component}'") from None

    def components(self) -> list[Component]:
        plan = self.plan
        found = [self._superlink("superlink", "root-aggregator", self._placement(plan.topology.root if plan.topology else ""))]
        if not plan.hierarchical:
            found += [self._learner(learner.name, learner.partition_id, learner.num_partitions, "superlink")
                      for learner in plan.learners]
        for cluster in plan.clusters:
            link = f"{cluster.dir_name}-superlink"
            placement = self._placement(cluster.name)
            found.append(self._superlink(link, "cluster-superlink", placement))
            found += [self._learner(l.name, l.partition_id, l.num_partitions, link) for l in cluster.learners]
            aggregator = f"{cluster.dir_name}-aggregator"
            found.append(self._supernode(aggregator, "cluster-aggregator", "superlink", {
                "cluster-name": cluster.name, "cluster-index": cluster.index,
                "cluster-size": len(cluster.learners), "cluster-superlink": self.address(link),
                "cluster-dir": str(plan.host_dir(cluster.dir_name)), "app-dir": _image_app_dir(),
            }, placement))
        return found

    def _placement(self, node_name: str) -> Placement | None:
        topology = self.plan.topology
        return topology.placement_of(node_name) if topology is not None else None

    def _superlink(self, name: str, role: str, placement: Placement | None = None) -> Component:
        port = self._port(name) if self.options.host_network else SUPERLINK_PORT
        host = "127.0.0.1" if self.options.host_network else "0.0.0.0"
        return Component(name, role, ["--host", host, "--port", str(port)], port, True, placement)

    def _learner(self, name: str, partition_id: int, num_partitions: int, superlink: str) -> Component:
        config = {"partition-id": partition_id, "num-partitions": num_partitions}
        return self._supernode(name, "learner", superlink, config, self._placement(name))

    def _supernode(self, name: str, role: str, superlink: str, node_config: dict[str, str | int],
                   placement: Placement | None) -> Component:
        port = self._port(name)
        # No retry bound here (unlike the local orchestrator): a SuperNode rescheduled before its SuperLink
        # is ready keeps trying, and the Deployment restarts one that gives up.
        args = ["--superlink", self.address(superlink), "--port", str(port),
                "--node-config", node_config_text(node_config)]
        return Component(name, role, args, port, False, placement)

    # --- objects ---

    def objects(self) -> list[dict[str, Any]]:
        """Every object of the run, in the order they are created: ConfigMaps, Secrets, Services, Deployments."""
        components = self.components()
        objects: list[dict[str, Any]] = self.config_maps()
        objects += [self.secret(c) for c in components if self.options.credentials.get(c.name)]
        if not self.options.host_network:
            objects += [self.service(c) for c in components if c.superlink]
        objects += [self.deployment(c) for c in components]
        return objects

    def _metadata(self, name: str, component: str, role: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.options.namespace,
                "labels": labels(self.plan.run_id, component, role)}

    def config_maps(self) -> list[dict[str, Any]]:
        """The run's environment (envFrom) and its plan and Flower run config (files under /etc/flops/config)."""
        plan = self.plan
        env = {
            "FLWR_HOME": str(plan.run_dir / "flwr_home"),
            "FLOPS_RUN_ID": plan.run_id,
            "PYTHONUNBUFFERED": "1",
            # Flower's SuperExec looks for tasks once a second by default: latency at each hop of a round.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
            # The image holds no bytecode: the first component to import a module compiles it for the others.
            "PYTHONPYCACHEPREFIX": str(plan.run_dir / "pycache"),
        }
        files = {"plan.json": plan.model_dump_json(indent=2),
                 "run-config.json": json.dumps(root_overrides(plan, str(plan.host_dir("root"))), indent=2, sort_keys=True)}
        return [{"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": self._metadata(object_name(plan.run_id, part), part, "config"), "data": data}
                for part, data in (("env", env), ("config", files))]

    def secret(self, component: Component) -> dict[str, Any]:
        files = self.options.credentials[component.name]
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": self._metadata(object_name(self.plan.run_id, f"{component.name}-credentials"),
                                           component.name, component.role),
                "data": {name: base64.b64encode(content).decode() for name, content in sorted(files.items())}}

    def service(self, component: Component) -> dict[str, Any]:
        name = object_name(self.plan.run_id, component.name)
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": self._metadata(name, component.name, component.role),
                "spec": {"type": "ClusterIP", "selector": self._selector(component),
                         "ports": [{"name": "flower", "port": SUPERLINK_PORT, "targetPort": "flower", "protocol": "TCP"}]}}

    def _selector(self, component: Component) -> dict[str, str]:
        all_labels = labels(self.plan.run_id, component.name, component.role)
        return {RUN_LABEL: all_labels[RUN_LABEL], COMPONENT_LABEL: all_labels[COMPONENT_LABEL]}

    def deployment(self, component: Component) -> dict[str, Any]:
        name = object_name(self.plan.run_id, component.name)
        pod_labels = labels(self.plan.run_id, component.name, component.role)
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": self._metadata(name, component.name, component.role),
            "spec": {
                "replicas": 1,
                # One identity per component: the old pod is gone before its replacement joins the federation.
                "strategy": {"type": "Recreate"},
                "revisionHistoryLimit": 1,
                "selector": {"matchLabels": self._selector(component)},
                "template": {"metadata": {"labels": pod_labels}, "spec": self._pod_spec(component)},
            },
        }

    def _pod_spec(self, component: Component) -> dict[str, Any]:
        plan = self.plan
        container: dict[str, Any] = {
            "name": "flower", "image": self.options.image, "imagePullPolicy": "IfNotPresent",
            "args": [component.role, *component.args, *self._credential_args(component)],
            "workingDir": str(plan.run_dir),
            "envFrom": [{"configMapRef": {"name": object_name(plan.run_id, "env")}}],
            "volumeMounts": [{"name": "run-dir", "mountPath": str(plan.run_dir)},
                             {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        }
        # Only a SuperLink has a port others use. A SuperNode's Runtime API listens on loopback for its own
        # executor (a probe from the kubelet cannot reach it); a SuperNode that fails exits and is restarted.
        if component.superlink:
            probe = {"tcpSocket": {"port": component.port}}
            if not self.options.host_network:  # podman 4.3 refuses port mappings on the host network
                container["ports"] = [{"name": "flower", "containerPort": component.port, "protocol": "TCP"}]
            container["readinessProbe"] = {**probe, "periodSeconds": 2, "failureThreshold": 3}
            container["livenessProbe"] = {**probe, "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6}
        resources = self._resources(component)
        if resources:
            container["resources"] = resources
        volumes: list[dict[str, Any]] = [
            # The run directory, shared by every component (events, cluster results): one node only, see README.
            {"name": "run-dir", "hostPath": {"path": str(plan.run_dir), "type": "Directory"}},
            {"name": "config", "configMap": {"name": object_name(plan.run_id, "config")}},
        ]
        if self.options.credentials.get(component.name):
            container["volumeMounts"].append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
            # optional set explicitly: podman 4.3's kube play dereferences it without a nil check.
            volumes.append({"name": "credentials", "secret": {
                "secretName": object_name(plan.run_id, f"{component.name}-credentials"),
                "defaultMode": 0o400, "optional": False}})
        spec: dict[str, Any] = {"containers": [container], "volumes": volumes, "restartPolicy": "Always",
                                "terminationGracePeriodSeconds": 10, "enableServiceLinks": False}
        if self.options.host_network:
            spec["hostNetwork"] = True
            spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        if component.placement is not None:
            if component.placement.node_selector:
                spec["nodeSelector"] = dict(component.placement.node_selector)
            if component.placement.tolerations:
                spec["tolerations"] = [t.manifest() for t in component.placement.tolerations]
        return spec

    def _credential_args(self, component: Component) -> list[str]:
        """Hook for the TLS wiring: today's Kubernetes runs are --insecure (refused otherwise before deploy)."""
        return ["--insecure"] if self.plan.insecure else []

    def _resources(self, component: Component) -> dict[str, dict[str, str]]:
        resources = self.plan.config.resources
        if resources is None:
            return {}
        chosen: ResourceRequirements | None = resources.learner if component.role == "learner" else resources.aggregator
        if chosen is None:
            return {}
        return {key: dict(value) for key, value in (("requests", chosen.requests), ("limits", chosen.limits)) if value}


def _image_app_dir() -> str:
    """Where the app is inside the run's image: a cluster aggregator starts its local rounds from there."""
    from flops.app_image import APP_WORKDIR  # the image step's constant; imported late (app_image -> orchestrators)

    return APP_WORKDIR


def build_objects(plan: RunPlan, options: ManifestOptions) -> list[dict[str, Any]]:
    """Every Kubernetes object of the run: the one code path for `submit` and `export`."""
    return ManifestBuilder(plan, options).objects()


class _PlainDumper(yaml.SafeDumper):
    """Writes a shared sub-object (the probes) out twice instead of as a YAML anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream for `kubectl apply -f` or `podman kube play`."""
    return yaml.dump_all(objects, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


def write_manifests(objects: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# FLOps run {objects[0]['metadata']['labels'][RUN_LABEL]}: kubectl apply -f {path.name}\n"
                    + to_yaml(objects))
    return path
