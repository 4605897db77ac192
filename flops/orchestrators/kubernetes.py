"""Kubernetes orchestrator: a run's SuperLinks and SuperNodes as Deployments (and Services) through the official client."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flops.errors import ConfigError, DeployError
from flops.orchestrators.base import ComponentRecord, ComponentRole, Deployment, Orchestrator
from flops.orchestrators.link_security import LinkSecurity
from flops.orchestrators.k8s_manifests import (
    CA_FILE,
    CERT_FILE,
    COMPONENT_LABEL,
    KEY_FILE,
    NODE_KEY_FILE,
    STATE_DIR,
    SUPERLINK_PORT,
    Component,
    ManifestBuilder,
    ManifestOptions,
    container_name,
    label_value,
    object_name,
    run_selector,
    write_manifests,
)
from flops.plan import RunPlan
from flops.topology import Topology, is_ip_address

# A container waiting for one of these will not start by itself: the run fails instead of waiting it out.
STUCK_REASONS = frozenset({"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                           "CreateContainerConfigError", "CreateContainerError"})
POLL_S = 1.0
ARCH_LABEL = "kubernetes.io/arch"


@dataclass
class PodView:
    """What FLOps needs to know of one component's container and its pod, from either API (kubernetes or podman)."""

    component: str  # the container's name in the manifest: container_name(component)
    name: str  # the pod
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    ready: bool
    restarts: int
    waiting_reason: str | None = None
    container: str = ""  # what the runtime calls the container (its logs are read by this name)

    def of(self, component: str) -> bool:
        return self.component == container_name(component)

    @property
    def stuck(self) -> bool:
        return self.phase in ("Failed", "Succeeded") or self.waiting_reason in STUCK_REASONS


def check_namespace(namespace: str) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
        raise ConfigError(f"--namespace '{namespace}': a namespace is a DNS label (lowercase letters, digits, '-')")


def manifest_path(run_dir: Path) -> Path:
    """Where a run's objects are written (the same YAML `flops export` writes)."""
    return run_dir / "kubernetes.yaml"


def image_arches(image: str) -> set[str]:
    """The architectures an image (index or single manifest) in a registry offers, read with skopeo."""
    from image_builder.commands import skopeo_inspect_config, skopeo_inspect_raw
    from image_builder.tools import ToolRunner

    tls_verify = image.split("/", 1)[0].split(":")[0] not in ("127.0.0.1", "localhost")  # plain-HTTP test registry
    runner = ToolRunner()
    index = json.loads(runner.run(skopeo_inspect_raw(image, tls_verify), quiet=True)[1])
    if "manifests" in index:
        return {m["platform"]["architecture"] for m in index["manifests"] if "platform" in m}
    return {json.loads(runner.run(skopeo_inspect_config(image, tls_verify), quiet=True)[1])["architecture"]}


def check_pinned_arches(plan: RunPlan, image: str) -> None:
    """A component pinned to an architecture needs the image to offer it: say which, before anything starts."""
    topology = plan.topology
    if topology is None:
        return
    pinned = [(kind, i, node.node_selector[ARCH_LABEL]) for kind, nodes in (("learners", topology.learners),
              ("clusters", topology.clusters)) for i, node in enumerate(nodes) if ARCH_LABEL in node.node_selector]
    if not pinned:
        return
    offered = image_arches(image)
    for kind, i, arch in pinned:
        if arch not in offered:
            raise topology.config_error(f"{kind}[{i}].node_selector", f"{ARCH_LABEL}: {arch}, but image {image} "
                                        f"offers {', '.join(sorted(offered))}; build it with --platform linux/{arch}")


def _role(role: str) -> ComponentRole:
    return {"root-aggregator": "root-aggregator", "cluster-superlink": "cluster-aggregator",
            "cluster-aggregator": "cluster-aggregator"}.get(role, "learner")  # type: ignore[return-value]


class KubernetesOrchestrator(Orchestrator):
    """Applies the run's objects at once, waits for the root SuperLink to be ready, watches pods by label.

    Unlike the process orchestrators, the scheduler starts components in any order: SuperNodes retry
    until their SuperLink's Service answers, so deploy does not walk the topology one component at a time.
    """

    name = "kubernetes"
    host_network = False

    @classmethod
    def check_placement(cls, topology: Topology, network: str) -> None:
        """A `host:` names the Kubernetes node a pod runs on (kubernetes.io/hostname); nodes are not addressed, and
        a SuperLink is reached through its Service's port."""
        for field, host in topology.placed_hosts():
            if is_ip_address(host):
                raise topology.config_error(field, f"{host}: --orchestrator {cls.name} places pods on nodes by name "
                                            "(kubernetes.io/hostname), not by address")
        for field in topology.placed_ports():
            raise topology.config_error(field, f"--orchestrator {cls.name}: a SuperLink is reached through its "
                                        "Service, whose port FLOps chooses; drop the port")

    def __init__(self, image: str | None = None, namespace: str | None = None, context: str | None = None,
                 api_client: Any = None) -> None:
        self.image = image
        self.namespace = namespace or "default"
        self.context = context
        self._api_client = api_client
        self._cluster_ips: dict[str, str] = {}  # component label -> its Service's cluster IP

    # --- manifests: the one code path behind `submit` and `export` ---

    def manifests(self, plan: RunPlan, ports: dict[str, int] | None = None) -> ManifestBuilder:
        check_namespace(self.namespace)
        image = self.image or plan.image
        if not image:
            raise ConfigError(f"--orchestrator {self.name} runs a FLOps image: pass --image, or --registry to build one")
        return ManifestBuilder(plan, ManifestOptions(image=image, namespace=self.namespace,
                                                     host_network=self.host_network, ports=ports or {}))

    def export(self, plan: RunPlan, path: Path) -> Path:
        """Write the run's objects as YAML: what deploy() would create."""
        builder = self.manifests(plan, self._ports(plan))
        check_pinned_arches(plan, builder.options.image)
        return write_manifests(builder.objects(), path)

    def _ports(self, plan: RunPlan) -> dict[str, int]:
        return {}

    def deploy(self, plan: RunPlan) -> Deployment:
        """Create the run's objects stage by stage (root; cluster gateways; learners), each stage once the
        SuperLinks its SuperNodes join are ready. With TLS, a SuperNode's key is registered with its SuperLink
        before its Secret and pod exist, and the SuperLinks' certificates name their Services (and the root's
        cluster IP, which the controller dials). Returns once the root accepts runs and every SuperNode is online."""
        builder = self.manifests(plan, self._ports(plan))
        check_pinned_arches(plan, builder.options.image)
        plan.logs_dir.mkdir(parents=True, exist_ok=True)
        security = LinkSecurity(plan)
        # The root's folder is its pod's own (an emptyDir): a root pod rescheduled elsewhere starts without it.
        deployment = Deployment(orchestrator=self.name, run_id=plan.run_id, control_address="", ca_cert=security.ca_cert,
                                root_state_dir=STATE_DIR, checkpoint_kept=False, settings=self._settings())
        deployment.components = [
            ComponentRecord(name=c.name, role=_role(c.role), log_path=plan.logs_dir / f"{c.name}.log",
                            partition_id=self._partition(plan, c.name))
            for c in builder.components()
        ]
        credentials: dict[str, dict[str, bytes]] = {}
        builder.options.credentials = credentials  # filled stage by stage, as keys are registered
        try:
            self._apply([*builder.config_maps(), *builder.services()], plan)
            deployment.control_address = self._reach(builder, "superlink")
            for stage in builder.stages():
                components = [c for workload in stage for c in workload.components]
                if security.authority is not None:
                    for component in components:
                        credentials[component.name] = self._credentials(builder, security, component)
                self._apply([*(builder.secret(c) for c in components if c.name in credentials),
                             *(builder.deployment(w) for w in stage)], plan)
                for component in components:
                    if component.superlink:
                        self._wait_ready(deployment, component.name, self._reach(builder, component.name),
                                         plan.config.startup_timeout_s)
            write_manifests(builder.objects(), manifest_path(plan.run_dir))
            if security.authority is not None:
                records = {c.name: c for c in deployment.components}
                security.wait_until_online(plan.config.startup_timeout_s,
                                           lambda name: self._ended(deployment, records[name], security),
                                           lambda name: records[name].log_path)
                deployment.node_ids = security.registered(deployment.control_address)
        except BaseException:
            self.stop(deployment)
            raise
        return deployment

    def _credentials(self, builder: ManifestBuilder, security: LinkSecurity, component: Component) -> dict[str, bytes]:
        """A component's Secret: the run's CA and its server certificate, or its SuperNode key, registered now
        with the SuperLink it joins (which is ready: an earlier stage, or the root)."""
        authority = security.authority
        assert authority is not None
        files = {CA_FILE: authority.ca_cert.read_bytes()}
        if component.superlink:
            ip = self._cluster_ips.get(label_value(component.name))
            made = authority.server_credentials(component.name, [*builder.superlink_hosts(component.name),
                                                                 *([ip] if ip else [])])
            return {**files, CERT_FILE: made.cert.read_bytes(), KEY_FILE: made.key.read_bytes()}
        key = security.register(component.name, self._reach(builder, component.joins))
        return {**files, NODE_KEY_FILE: key.private_key.read_bytes()}

    def _ended(self, deployment: Deployment, record: ComponentRecord, security: LinkSecurity) -> str | None:
        """Why a component's container will not come up by itself (Flower's refusal from its log), or None."""
        pod = next((p for p in self._pods(deployment.run_id) if p.of(record.name)), None)
        if pod is None or not pod.stuck:
            return None
        self._save_log(deployment, record)
        return security.explain_exit(record.name, f"cannot start: pod {pod.name} is {pod.waiting_reason or pod.phase}",
                                     record.log_path)

    @staticmethod
    def _partition(plan: RunPlan, name: str) -> int | None:
        return next((l.partition_id for l in plan.learners if l.name == name), None)

    def _settings(self) -> dict[str, str]:
        return {"namespace": self.namespace, **({"context": self.context} if self.context else {})}

    def _use(self, deployment: Deployment) -> None:
        """status/logs/stop from another shell: the namespace and context the run was deployed with."""
        self.namespace = deployment.settings.get("namespace", self.namespace)
        self.context = deployment.settings.get("context", self.context)

    def _wait_ready(self, deployment: Deployment, component: str, address: str, timeout_s: float) -> None:
        """Until the component's pod reports ready (its probe); a pod that cannot start fails at once."""
        deadline = time.monotonic() + timeout_s
        record = next(c for c in deployment.components if c.name == component)
        while time.monotonic() < deadline:
            pods = [p for p in self._pods(deployment.run_id) if p.of(component)]
            for pod in pods:
                if pod.stuck:
                    raise DeployError(f"{component} cannot start: pod {pod.name} is {pod.waiting_reason or pod.phase}"
                                      f" (flops logs {deployment.run_id} --component {component})")
                if pod.ready:
                    return
            time.sleep(POLL_S)
        self._save_log(deployment, record)
        raise DeployError(f"{component} was not ready within {timeout_s:.0f}s (log: {record.log_path})")

    # --- status, logs, stop ---

    def status(self, deployment: Deployment) -> dict[str, bool]:
        """A component lives while its pod is pending or running; a pod being rescheduled counts as alive."""
        self._use(deployment)
        pods = {p.component: p for p in self._pods(deployment.run_id)}
        return {c.name: not (container_name(c.name) in pods and pods[container_name(c.name)].stuck)
                for c in deployment.components}

    def describe(self, deployment: Deployment) -> dict[str, PodView | None]:
        """Component name -> its pod (phase, readiness, restarts), None while it has none."""
        self._use(deployment)
        pods = {p.component: p for p in self._pods(deployment.run_id)}
        return {c.name: pods.get(container_name(c.name)) for c in deployment.components}

    def logs(self, deployment: Deployment, component: str) -> Path:
        self._use(deployment)
        for record in deployment.components:
            if record.name == component:
                self._save_log(deployment, record)
                return record.log_path
        known = ", ".join(c.name for c in deployment.components)
        raise DeployError(f"no component '{component}' in run {deployment.run_id} (components: {known})")

    def _save_log(self, deployment: Deployment, record: ComponentRecord) -> None:
        pod = next((p for p in self._pods(deployment.run_id) if p.of(record.name)), None)
        if pod is None:
            return
        text = self._pod_log(pod)
        if text:
            record.log_path.parent.mkdir(parents=True, exist_ok=True)
            record.log_path.write_text(text)

    def stop(self, deployment: Deployment) -> None:
        """Keep each component's log, then delete every object carrying the run's label; safe to call twice."""
        self._use(deployment)
        for record in deployment.components:
            try:
                self._save_log(deployment, record)
            except DeployError:
                pass  # a pod that never started has no log; deleting matters more
        self._delete_all(deployment.run_id)

    # --- the API: the official client ---

    @property
    def api_client(self) -> Any:
        if self._api_client is None:
            try:
                from kubernetes import config
            except ImportError as exc:
                raise DeployError("the kubernetes orchestrator needs the client: pip install 'flops[kubernetes]'") from exc
            try:
                self._api_client = config.new_client_from_config(context=self.context)
            except Exception as exc:  # kubeconfig missing, unreadable or without that context
                raise DeployError(f"cannot load the kubeconfig ({exc}); set KUBECONFIG or pass --kube-context") from exc
        return self._api_client

    def _apis(self) -> tuple[Any, Any]:
        from kubernetes import client

        return client.CoreV1Api(self.api_client), client.AppsV1Api(self.api_client)

    def _apply(self, objects: list[dict[str, Any]], plan: RunPlan) -> None:
        """Create each object; one left from an earlier attempt (409) is patched to this run's spec."""
        from kubernetes.client.exceptions import ApiException

        core, apps = self._apis()
        calls = {"ConfigMap": (core, "config_map"), "Secret": (core, "secret"), "Service": (core, "service"),
                 "Deployment": (apps, "deployment")}
        for obj in objects:
            api, kind = calls[obj["kind"]]
            name = obj["metadata"]["name"]
            try:
                created = getattr(api, f"create_namespaced_{kind}")(self.namespace, obj)
            except ApiException as exc:
                if exc.status != 409:
                    raise DeployError(f"cannot create {obj['kind']} {name}: {exc.status} {exc.reason}") from exc
                created = getattr(api, f"patch_namespaced_{kind}")(name, self.namespace, obj)
            if obj["kind"] == "Service":
                self._cluster_ips[obj["metadata"]["labels"][COMPONENT_LABEL]] = created.spec.cluster_ip

    def _reach(self, builder: ManifestBuilder, superlink: str) -> str:
        """Where the controller reaches a SuperLink's Control API: its Service's cluster IP, reachable from a
        cluster node, where the controller runs (see README)."""
        ip = self._cluster_ips.get(label_value(superlink))
        if not ip:
            raise DeployError(f"the Service {object_name(builder.plan.run_id, superlink)} got no cluster IP")
        return f"{ip}:{SUPERLINK_PORT}"

    def _pods(self, run_id: str) -> list[PodView]:
        from kubernetes.client.exceptions import ApiException

        core, _ = self._apis()
        try:
            listed = core.list_namespaced_pod(self.namespace, label_selector=run_selector(run_id))
        except ApiException as exc:
            raise DeployError(f"cannot list the pods of run {run_id}: {exc.status} {exc.reason}") from exc
        return [view for pod in listed.items for view in self._views(pod)]

    @staticmethod
    def _views(pod: Any) -> list[PodView]:
        """One view per container of the pod (a cluster's gateway pod holds two components)."""
        statuses = {s.name: s for s in ((pod.status.container_statuses or []) if pod.status else [])}
        phase = (pod.status.phase if pod.status else None) or "Unknown"
        views = []
        for container in pod.spec.containers:
            status = statuses.get(container.name)
            waiting = status.state.waiting.reason if status and status.state and status.state.waiting else None
            views.append(PodView(component=container.name, name=pod.metadata.name, phase=phase,
                                 ready=bool(status and status.ready), restarts=(status.restart_count or 0) if status else 0,
                                 waiting_reason=waiting, container=container.name))
        return views

    def _pod_log(self, pod: PodView) -> str:
        from kubernetes.client.exceptions import ApiException

        core, _ = self._apis()
        try:
            # Raw: the client (36) turns a `str` body into the repr of its bytes ("b'...'").
            raw = core.read_namespaced_pod_log(pod.name, self.namespace, container=pod.container, _preload_content=False)
            return raw.data.decode(errors="replace")
        except ApiException as exc:
            if exc.status in (400, 404):  # container not started yet, or the pod is gone
                return ""
            raise DeployError(f"cannot read the log of pod {pod.name}: {exc.status} {exc.reason}") from exc

    def _delete_all(self, run_id: str) -> None:
        core, apps = self._apis()
        selector = run_selector(run_id)
        apps.delete_collection_namespaced_deployment(self.namespace, label_selector=selector)
        # Services have no collection delete before Kubernetes 1.31: one by one, found by the same label.
        for service in core.list_namespaced_service(self.namespace, label_selector=selector).items:
            core.delete_namespaced_service(service.metadata.name, self.namespace)
        core.delete_collection_namespaced_config_map(self.namespace, label_selector=selector)
        core.delete_collection_namespaced_secret(self.namespace, label_selector=selector)

    def restart(self, plan: RunPlan, deployment: Deployment, component: str) -> bool:
        """Never restarted from here: the component's Deployment (restartPolicy Always) replaces a failed pod
        itself. A learner whose pod stays stuck is left out of rounds by the aggregator's quorum."""
        return False

    # The process orchestrators start components one by one; here deploy() applies the whole manifest.
    def _restart(self, plan: RunPlan, record: ComponentRecord) -> None:
        raise NotImplementedError("Kubernetes replaces failed pods itself")

    def _start_superlink(self, plan: RunPlan, name: str, role: ComponentRole, host: str) -> tuple[ComponentRecord, str]:
        raise NotImplementedError("KubernetesOrchestrator.deploy applies every object at once")

    def _start_supernode(self, plan: RunPlan, record: ComponentRecord, superlink_address: str,
                         node_config: dict[str, str | int], host: str) -> ComponentRecord:
        raise NotImplementedError("KubernetesOrchestrator.deploy applies every object at once")
