"""The orchestrator interface: deploy the Flower processes of a run plan, report on them, stop them."""

from __future__ import annotations

import json
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel

from flops.credentials import LOOPBACK_NAMES
from flops.errors import DeployError
from flops.orchestrators.link_security import LinkSecurity
from flops.plan import ClusterSpec, LearnerSpec, RunPlan
from flops.topology import Topology

ComponentRole = Literal["superlink", "root-aggregator", "cluster-aggregator", "learner"]


class ComponentRecord(BaseModel):
    """One deployed process or container, as recorded in the run state so another shell can find it."""

    name: str  # e.g. "superlink", "learner-0", "cluster-1"
    role: ComponentRole
    log_path: Path
    pid: int | None = None  # local orchestrator: process group leader
    container_id: str | None = None  # docker orchestrator
    partition_id: int | None = None
    argv: list[str] = []  # how it was started: a restart runs exactly this again
    restarts: int = 0


class Deployment(BaseModel):
    """What an orchestrator started for one run: enough to find, watch and stop it later."""

    orchestrator: str
    run_id: str
    control_address: str  # host:port of the root SuperLink's Control API
    ca_cert: Path | None = None  # the run's CA, to reach the Control API over TLS; None: an --insecure run
    root_state_dir: str = ""  # the root host's folder for its checkpoint and events (a path on that host)
    # The root's checkpoint outlives the run's components (a host folder), so `flops resume` can start from it;
    # False where it lives and dies with the root's pod (Kubernetes' emptyDir).
    checkpoint_kept: bool = True
    node_ids: dict[str, int] = {}  # SuperNodes FLOps registered with the root SuperLink: name -> Flower node id
    components: list[ComponentRecord] = []
    settings: dict[str, str] = {}  # orchestrator-specific, e.g. kubernetes: namespace and context


def aggregator_node_config(cluster: ClusterSpec, superlink: str, cluster_dir: str, app_dir: str,
                           superlink_ca: str) -> dict[str, str | int]:
    """What a cluster aggregator is told at start (its node config), whatever starts it: its cluster, where its
    cluster's SuperLink is and the CA that signed it ("" for --insecure), its folder for the per-round hand-over,
    and the app it starts the cluster's rounds from."""
    return {
        "cluster-name": cluster.name, "cluster-index": cluster.index, "cluster-size": len(cluster.learners),
        "cluster-superlink": superlink, "cluster-dir": cluster_dir, "app-dir": app_dir,
        # "id=name,..." not JSON: Flower's --node-config parser cuts values at inner quotes.
        "cluster-members": ",".join(f"{l.partition_id}={l.name}" for l in cluster.learners),
        "cluster-superlink-ca": superlink_ca,
    }


def node_config_text(node_config: dict[str, str | int]) -> str:
    """Flower parses --node-config values as TOML: strings need quotes, numbers must not have them."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())


def host_port(host: str, port: int) -> str:
    """HOST:PORT as Flower's address arguments take it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def addresses_of_this_machine(host: str) -> list[str]:
    """HOST's addresses when every one of them is this machine's (a socket binds to it), else []."""
    try:
        found = sorted({info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})
    except OSError:
        return []
    for address in found:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, 0))
            except OSError:
                return []
    return found


@dataclass(frozen=True)
class SuperLinkPlace:
    """Where a SuperLink on this machine listens, what the others dial, and the names its certificate holds."""

    listen: str
    dial: str
    port: int
    names: tuple[str, ...]


def place_on_this_machine(plan: RunPlan, host: str, free_port: Callable[[], int]) -> SuperLinkPlace:
    """A SuperLink of HOST on this machine's network: on loopback, or where the topology file put it (an address
    or name of this machine, checked at submit), on its port or a free one."""
    placed, port = plan.placed_at(host)
    if placed is None:
        return SuperLinkPlace("127.0.0.1", "127.0.0.1", port or free_port(), LOOPBACK_NAMES)
    addresses = addresses_of_this_machine(placed)
    if not addresses:
        raise DeployError(f"{host}: {placed} is not an address of this machine")
    return SuperLinkPlace(addresses[0], placed, port or free_port(), tuple(dict.fromkeys([placed, *addresses])))


def port_open(port: int, address: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ADDRESS:PORT (by default on loopback)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def wait_for_port(port: int, record: ComponentRecord, timeout_s: float, exit_reason: Callable[[], str | None],
                  is_open: Callable[[], bool] | None = None) -> None:
    """Poll until something listens on PORT (by default: on loopback); fail at once if the component died.

    exit_reason() returns None while the component lives, else e.g. "exited with code 1 while starting: ...".
    is_open() replaces the loopback probe where the component's port is not on this host's loopback.
    """
    is_open = is_open or (lambda: port_open(port))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reason = exit_reason()
        if reason is not None:
            raise DeployError(f"{record.name} {reason} (log: {record.log_path})")
        if is_open():
            return
        time.sleep(0.1)
    raise DeployError(f"{record.name} did not open port {port} within {timeout_s:.0f}s (log: {record.log_path})")


RESTART_BACKOFF_S = 1.0  # first wait before restarting a component that died; doubles per restart
RESTART_BACKOFF_MAX_S = 30.0
MAX_RESTARTS = 10  # per component and run: past this, the device is broken, not flaky


class Orchestrator(ABC):
    """Starts and stops the SuperLink(s) and SuperNodes of a run. One module per implementation.

    `deploy` walks the plan's topology the same way for every implementation; an implementation says
    how one SuperLink and one SuperNode are started (a process, a container, a pod).
    """

    name: ClassVar[str]
    # Whether deploy() hands each component the run's TLS material and SuperNode keys.
    carries_credentials: ClassVar[bool] = True

    @classmethod
    def check_placement(cls, topology: Topology, network: str) -> None:
        """Refuse, before anything starts, a topology file that puts components where this orchestrator cannot
        start them (ConfigError naming the field). This one starts every component on this machine."""
        for field, host in topology.placed_hosts():
            if not addresses_of_this_machine(host):
                raise topology.config_error(field, f"{host} is not an address of this machine, and --orchestrator "
                                            f"{cls.name} starts every component here (--orchestrator local --network "
                                            "namespaces gives each host its own address on this machine)")

    def deploy(self, plan: RunPlan) -> Deployment:
        """Start every component of the plan and return once the root SuperLink accepts runs.

        Flat: the learners join the root SuperLink. Hierarchical: per cluster a SuperLink with its
        learners, plus the cluster's aggregator as a SuperNode of the root. On any failure, stop all.
        Every link is TLS with the run's CA and every SuperNode's key is registered before it starts,
        unless the plan is --insecure.
        """
        self._before_deploy(plan)
        (plan.run_dir / "flwr_home").mkdir(parents=True, exist_ok=True)
        self.security = LinkSecurity(plan)
        deployment = Deployment(orchestrator=self.name, run_id=plan.run_id, control_address="",
                                ca_cert=self.security.ca_cert)
        try:
            root, root_address = self._start_superlink(plan, "superlink", "root-aggregator", host="root")
            deployment.components.append(root)
            deployment.control_address = root_address
            deployment.root_state_dir = self._host_dir(plan, "root")
            if not plan.hierarchical:
                deployment.components += self._start_learners(plan, plan.learners, root_address)
            for cluster in plan.clusters:
                # A cluster's SuperLink and its aggregator share a host: the gateway of that cluster.
                link, link_address = self._start_superlink(plan, f"{cluster.dir_name}-superlink",
                                                           "cluster-aggregator", host=cluster.dir_name)
                deployment.components.append(link)
                deployment.components += self._start_learners(plan, cluster.learners, link_address)
                aggregator = ComponentRecord(name=f"{cluster.dir_name}-aggregator", role="cluster-aggregator",
                                             log_path=plan.logs_dir / f"{cluster.dir_name}-aggregator.log")
                deployment.components.append(self._start_supernode(plan, aggregator, root_address, aggregator_node_config(
                    cluster, link_address, self._host_dir(plan, cluster.dir_name), self._app_dir(plan),
                    str(self.security.ca_cert or "")), host=cluster.dir_name))
            self._after_supernodes_started(plan)
            deployment.settings.update(self._settings())
            records = {c.name: c for c in deployment.components}
            self.security.wait_until_online(plan.config.startup_timeout_s,
                                            lambda name: self._why_ended(records[name]),
                                            lambda name: records[name].log_path)
            deployment.node_ids = self.security.registered(deployment.control_address)
        except BaseException:
            self.stop(deployment)
            raise
        return deployment

    def restart(self, plan: RunPlan, deployment: Deployment, component: str) -> bool:
        """Start a dead component again from its recorded argv, with exponential backoff.

        Returns False while the backoff since the last restart of COMPONENT lasts (call again later),
        True once restarted; raises DeployError when it has died MAX_RESTARTS times.
        """
        record = next((c for c in deployment.components if c.name == component), None)
        if record is None:
            raise DeployError(f"no component '{component}' in run {deployment.run_id}")
        if record.restarts >= MAX_RESTARTS:
            raise DeployError(f"{component} died {record.restarts + 1} times; not restarted again (log: {record.log_path})")
        not_before = getattr(self, "_restart_not_before", {})
        self._restart_not_before = not_before
        now = time.monotonic()
        if component not in not_before:
            not_before[component] = now + RESTART_BACKOFF_S * 2 ** record.restarts
        if now < not_before[component]:
            return False
        del not_before[component]
        self.security.renew_identity(component)
        deployment.node_ids = self.security.registered(deployment.control_address)
        self._restart(plan, record)
        record.restarts += 1
        return True

    def _start_learners(self, plan: RunPlan, learners: list[LearnerSpec], superlink_address: str) -> list[ComponentRecord]:
        return [
            self._start_supernode(
                plan,
                ComponentRecord(name=learner.name, role="learner", log_path=plan.logs_dir / f"{learner.name}.log",
                                partition_id=learner.partition_id),
                superlink_address,
                {"partition-id": learner.partition_id, "num-partitions": learner.num_partitions},
                host=learner.name,
            )
            for learner in learners
        ]

    def _before_deploy(self, plan: RunPlan) -> None:
        """Hook: checks and set-up before the first component starts; leaves nothing behind when it fails."""

    def _after_supernodes_started(self, plan: RunPlan) -> None:
        """Hook: SuperNodes start in parallel; an implementation may wait for them here."""

    def _host_dir(self, plan: RunPlan, host: str) -> str:
        """Hook: the folder, on HOST, where that host's components keep their own files (the root's checkpoint, a
        gateway's local rounds). Nothing else reads it: FLOps learns what happens over the network."""
        return str(plan.host_dir(host))

    def _app_dir(self, plan: RunPlan) -> str:
        """Hook: where a cluster aggregator finds the app it starts its local rounds with (in an image: inside it)."""
        return str(plan.app_dir)

    def _settings(self) -> dict[str, str]:
        """Hook: orchestrator-specific facts a later `flops stop` needs (kept in Deployment.settings)."""
        return {}

    @abstractmethod
    def _start_superlink(self, plan: RunPlan, name: str, role: ComponentRole, host: str) -> tuple[ComponentRecord, str]:
        """Start one SuperLink on HOST (a name: "root", "cluster-0"; where it goes is the implementation's choice),
        wait until it listens; return it and the host:port its SuperNodes and the Control API client dial."""

    @abstractmethod
    def _start_supernode(self, plan: RunPlan, record: ComponentRecord, superlink_address: str,
                         node_config: dict[str, str | int], host: str) -> ComponentRecord:
        """Start one SuperNode on HOST connected to the SuperLink at superlink_address, with this node config."""

    @abstractmethod
    def _restart(self, plan: RunPlan, record: ComponentRecord) -> None:
        """Run a dead component again exactly as it was first started (same argv, ports and identity)."""

    def _why_ended(self, record: ComponentRecord) -> str | None:
        """None while the component runs, else why it ended, with Flower's reason when its SuperLink refused it
        (whichever wait notices first: its port or its coming online)."""
        reason = self._exit_reason(record)
        return None if reason is None else self.security.explain_exit(record.name, reason, record.log_path)

    def _exit_reason(self, record: ComponentRecord) -> str | None:
        """None while the component runs, else why it ended (e.g. "exited with code 1 while starting: ...")."""

    @abstractmethod
    def status(self, deployment: Deployment) -> dict[str, bool]:
        """Component name -> whether it is still running."""

    @abstractmethod
    def logs(self, deployment: Deployment, component: str) -> Path:
        """Path of the log file holding the component's output."""

    @abstractmethod
    def stop(self, deployment: Deployment) -> None:
        """Stop every component of the deployment; safe to call twice, leaves nothing running."""


def hand_run_dir_to_image_user(plan: RunPlan) -> str | None:
    """Who a container of a FLOps image runs as. The images run as a non-root user: a non-root FLOps runs them as
    itself (it owns the run directory they write to); FLOps as root hands the run directory to the image's user."""
    from flops.app_image import IMAGE_UID  # the image step's constant; imported late (app_image -> orchestrators)

    if os.geteuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    for path in [plan.run_dir, *plan.run_dir.rglob("*")]:
        if not path.is_symlink():
            os.chown(path, IMAGE_UID, IMAGE_UID)
    return None  # the image's own user
