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

from flops.app_image import APP_WORKDIR, IMAGE_STATE_DIR, IMAGE_UID
from flops.config import ResourceRequirements
from flops.flower_run_config import root_overrides
from flops.credentials import LOOPBACK_NAMES
from flops.orchestrators.base import aggregator_node_config, node_config_text
from flops.plan import RunPlan
from flops.topology import Placement

RUN_LABEL = "flops.run-id"
COMPONENT_LABEL = "flops.component"
SUPERLINK_PORT = 9092  # Fleet, Control and Runtime APIs share one port in Flower 1.42
SUPERNODE_PORT = 9094  # a SuperNode's ClientAppIo API, inside its own pod
CREDENTIALS_DIR = "/etc/flops/credentials"  # a component's own Secret: the run's CA and its certificate or key
CA_FILE, CERT_FILE, KEY_FILE, NODE_KEY_FILE = "ca.pem", "server.pem", "server.key", "node.key"
CONFIG_DIR = "/etc/flops/config"
# A pod's own folder (an emptyDir): the root's checkpoint; in a cluster's gateway pod, the per-round hand-over
# between its SuperLink's ServerApp and its aggregator. The image makes it the non-root user's, so the emptyDir
# is writable on runtimes that copy a mount point's owner (podman) as on those that make it 0777 (kubelet).
STATE_DIR = IMAGE_STATE_DIR
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
    """One container: a SuperLink (with a Service) or a SuperNode (learner or cluster aggregator)."""

    name: str  # FLOps' component name, as in the run state: superlink, learner-0, cluster-0-superlink, ...
    role: str  # the image's first argument: root-aggregator, cluster-superlink, learner, cluster-aggregator
    args: list[str]
    port: int
    superlink: bool
    joins: str = ""  # a SuperNode: the SuperLink it joins (its key is registered there)

    @property
    def container(self) -> str:
        return container_name(self.name)


@dataclass
class Workload:
    """One Deployment and its pod: a component alone, or a cluster's gateway (its SuperLink and its aggregator,
    two containers sharing the pod's folder for the per-round hand-over)."""

    name: str  # superlink, learner-0, cluster-0-gateway
    role: str  # app.kubernetes.io/component: root-aggregator, learner, cluster-gateway
    components: list[Component]
    placement: Placement | None = None
    keeps_state: bool = False  # gets STATE_DIR (an emptyDir)


def dns_label(text: str) -> str:
    """A DNS-1123 label: lowercase, '-' for other characters, at most 63 (a long one keeps a digest of the rest)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def object_name(run_id: str, component: str) -> str:
    """The name of the component's objects."""
    return dns_label(f"flops-{run_id}-{component}")


def container_name(component: str) -> str:
    """The name of a component's container (topology names may hold capitals, '_' or '.')."""
    return dns_label(component)


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

    def _port(self, component: str) -> int:
        if not self.options.host_network:
            return SUPERNODE_PORT
        try:
            return self.options.ports[component]
        except KeyError:
            raise ValueError(f"host_network needs a port for every component; none for '{component}'") from None

    def components(self) -> list[Component]:
        """Every component (container) of the run, in the order of its workloads."""
        return [component for workload in self.workloads() for component in workload.components]

    def workloads(self) -> list[Workload]:
        plan = self.plan
        found = [Workload("superlink", "root-aggregator", [self._superlink("superlink", "root-aggregator")],
                          self._placement(plan.topology.root if plan.topology else ""), keeps_state=True)]
        if not plan.hierarchical:
            found += [self._learner(learner.name, learner.partition_id, learner.num_partitions, "superlink")
                      for learner in plan.learners]
        for cluster in plan.clusters:
            link = f"{cluster.dir_name}-superlink"
            ca = "" if plan.insecure else f"{CREDENTIALS_DIR}/{CA_FILE}"
            aggregator = self._supernode(f"{cluster.dir_name}-aggregator", "cluster-aggregator", "superlink",
                                         aggregator_node_config(cluster, self._gateway_address(link), STATE_DIR,
                                                                APP_WORKDIR, ca))
            found.append(Workload(f"{cluster.dir_name}-gateway", "cluster-gateway",
                                  [self._superlink(link, "cluster-superlink"), aggregator],
                                  self._placement(cluster.name), keeps_state=True))
            found += [self._learner(l.name, l.partition_id, l.num_partitions, link) for l in cluster.learners]
        return found

    def _gateway_address(self, superlink: str) -> str:
        """The aggregator dials its cluster's SuperLink inside their shared pod: loopback, no Service hop."""
        return f"127.0.0.1:{self._superlink_port(superlink)}"

    def _superlink_port(self, name: str) -> int:
        """Where a SuperLink listens: its own port on the host network, else the one port of every SuperLink pod."""
        return self._port(name) if self.options.host_network else SUPERLINK_PORT

    def _placement(self, node_name: str) -> Placement | None:
        topology = self.plan.topology
        return topology.placement_of(node_name) if topology is not None else None

    def _superlink(self, name: str, role: str) -> Component:
        port = self._superlink_port(name)
        host = "127.0.0.1" if self.options.host_network else "0.0.0.0"
        return Component(name, role, ["--host", host, "--port", str(port)], port, True)

    def _learner(self, name: str, partition_id: int, num_partitions: int, superlink: str) -> Workload:
        config = {"partition-id": partition_id, "num-partitions": num_partitions}
        return Workload(name, "learner", [self._supernode(name, "learner", superlink, config)], self._placement(name))

    def _supernode(self, name: str, role: str, superlink: str, node_config: dict[str, str | int]) -> Component:
        port = self._port(name)
        # No retry bound here (unlike the local orchestrator): a SuperNode rescheduled before its SuperLink
        # is ready keeps trying, and the Deployment restarts one that gives up.
        args = ["--superlink", self.address(superlink), "--port", str(port),
                "--node-config", node_config_text(node_config)]
        return Component(name, role, args, port, False, joins=superlink)

    def stages(self) -> list[list[Workload]]:
        """The workloads in the order a SuperNode's SuperLink is up before it: the root; then (hierarchical) the
        cluster gateways, whose aggregators join the root; then the learners."""
        workloads = self.workloads()
        root, rest = workloads[:1], workloads[1:]
        gateways = [w for w in rest if w.role == "cluster-gateway"]
        learners = [w for w in rest if w.role != "cluster-gateway"]
        return [stage for stage in (root, gateways, learners) if stage]

    def superlink_hosts(self, superlink: str) -> list[str]:
        """The names a SuperLink's certificate must carry: its Service's DNS names for pods; loopback for the
        aggregator beside it in its pod, for `kubectl port-forward`, and for the host network."""
        if self.options.host_network:
            return list(LOOPBACK_NAMES)
        service, namespace = object_name(self.plan.run_id, superlink), self.options.namespace
        return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
                f"{service}.{namespace}.svc.cluster.local", *LOOPBACK_NAMES]

    # --- objects ---

    def objects(self) -> list[dict[str, Any]]:
        """Every object of the run, in the order they are created: ConfigMaps, Secrets, Services, Deployments."""
        workloads = self.workloads()
        objects: list[dict[str, Any]] = self.config_maps()
        objects += [self.secret(c) for w in workloads for c in w.components if self.options.credentials.get(c.name)]
        objects += self.services()
        objects += [self.deployment(w) for w in workloads]
        return objects

    def services(self) -> list[dict[str, Any]]:
        """A Service per SuperLink (none on the host network, where podman implements no Services)."""
        if self.options.host_network:
            return []
        return [self.service(w, c) for w in self.workloads() for c in w.components if c.superlink]

    def _metadata(self, name: str, component: str, role: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.options.namespace,
                "labels": labels(self.plan.run_id, component, role)}

    def config_maps(self) -> list[dict[str, Any]]:
        """The run's environment (envFrom) and its plan and Flower run config (files under /etc/flops/config)."""
        plan = self.plan
        env = {
            "FLOPS_RUN_ID": plan.run_id,
            "PYTHONUNBUFFERED": "1",
            # Flower's SuperExec looks for tasks once a second by default: latency at each hop of a round.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        }
        files = {"plan.json": plan.model_dump_json(indent=2),
                 "run-config.json": json.dumps(root_overrides(plan, STATE_DIR), indent=2, sort_keys=True)}
        return [{"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": self._metadata(object_name(plan.run_id, part), part, "config"), "data": data}
                for part, data in (("env", env), ("config", files))]

    def secret(self, component: Component) -> dict[str, Any]:
        files = self.options.credentials[component.name]
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": self._metadata(self._secret_name(component), component.name, component.role),
                "data": {name: base64.b64encode(content).decode() for name, content in sorted(files.items())}}

    def _secret_name(self, component: Component) -> str:
        return object_name(self.plan.run_id, f"{component.name}-credentials")

    def service(self, workload: Workload, component: Component) -> dict[str, Any]:
        """A SuperLink's Service, named after the SuperLink, selecting the pod it runs in."""
        name = object_name(self.plan.run_id, component.name)
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": self._metadata(name, component.name, component.role),
                "spec": {"type": "ClusterIP", "selector": self._selector(workload),
                         "ports": [{"name": "flower", "port": SUPERLINK_PORT, "targetPort": "flower", "protocol": "TCP"}]}}

    def _selector(self, workload: Workload) -> dict[str, str]:
        all_labels = labels(self.plan.run_id, workload.name, workload.role)
        return {RUN_LABEL: all_labels[RUN_LABEL], COMPONENT_LABEL: all_labels[COMPONENT_LABEL]}

    def deployment(self, workload: Workload) -> dict[str, Any]:
        name = object_name(self.plan.run_id, workload.name)
        pod_labels = labels(self.plan.run_id, workload.name, workload.role)
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": self._metadata(name, workload.name, workload.role),
            "spec": {
                "replicas": 1,
                # One identity per component: the old pod is gone before its replacement joins the federation.
                "strategy": {"type": "Recreate"},
                "revisionHistoryLimit": 1,
                "selector": {"matchLabels": self._selector(workload)},
                "template": {"metadata": {"labels": pod_labels}, "spec": self._pod_spec(workload)},
            },
        }

    def _pod_spec(self, workload: Workload) -> dict[str, Any]:
        plan = self.plan
        volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": object_name(plan.run_id, "config")}}]
        if workload.keeps_state:
            # Lives as long as the pod: a container restarted in place finds it again, a rescheduled pod starts empty.
            volumes.append({"name": "state", "emptyDir": {}})
        containers = []
        for index, component in enumerate(workload.components):
            container = self._container(component, workload.keeps_state)
            if self.options.credentials.get(component.name):
                volume = f"credentials-{index}"  # one per container: a gateway's two components hold different keys
                container["volumeMounts"].append({"name": volume, "mountPath": CREDENTIALS_DIR, "readOnly": True})
                # optional set explicitly: podman 4.3's kube play dereferences it without a nil check.
                volumes.append({"name": volume, "secret": {"secretName": self._secret_name(component),
                                                           "defaultMode": 0o400, "optional": False}})
            containers.append(container)
        spec: dict[str, Any] = {
            "containers": containers, "volumes": volumes, "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 10, "enableServiceLinks": False,
            # The image's own non-root user; fsGroup makes the pod's volumes (and Secret files) its group's.
            "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID,
                                "fsGroup": IMAGE_UID},
        }
        if self.options.host_network:
            spec["hostNetwork"] = True
            spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        if workload.placement is not None:
            if workload.placement.node_selector:
                spec["nodeSelector"] = dict(workload.placement.node_selector)
            if workload.placement.tolerations:
                spec["tolerations"] = [t.manifest() for t in workload.placement.tolerations]
        return spec

    def _container(self, component: Component, keeps_state: bool) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": component.container, "image": self.options.image, "imagePullPolicy": "IfNotPresent",
            "args": [component.role, *component.args, *self._credential_args(component)],
            "envFrom": [{"configMapRef": {"name": object_name(self.plan.run_id, "env")}}],
            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        }
        if keeps_state:
            container["volumeMounts"].append({"name": "state", "mountPath": STATE_DIR})
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
        return container

    def _credential_args(self, component: Component) -> list[str]:
        """TLS with the run's CA on every link; a SuperNode proves itself with its key (registered by the
        controller before its pod is created). The files are its Secret, mounted at CREDENTIALS_DIR."""
        if self.plan.insecure:
            return ["--insecure"]
        ca = f"{CREDENTIALS_DIR}/{CA_FILE}"
        if component.superlink:
            return ["--ssl-ca-certfile", ca, "--ssl-certfile", f"{CREDENTIALS_DIR}/{CERT_FILE}",
                    "--ssl-keyfile", f"{CREDENTIALS_DIR}/{KEY_FILE}", "--enable-supernode-auth"]
        return ["--root-certificates", ca, "--auth-supernode-private-key", f"{CREDENTIALS_DIR}/{NODE_KEY_FILE}"]

    def _resources(self, component: Component) -> dict[str, dict[str, str]]:
        resources = self.plan.config.resources
        if resources is None:
            return {}
        chosen: ResourceRequirements | None = resources.learner if component.role == "learner" else resources.aggregator
        if chosen is None:
            return {}
        return {key: dict(value) for key, value in (("requests", chosen.requests), ("limits", chosen.limits)) if value}


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
