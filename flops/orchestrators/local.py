"""Local orchestrator, the embedded default: a real SuperLink and one SuperNode per learner on loopback."""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

from flops.errors import DeployError
from flops.orchestrators.base import (
    ComponentRecord,
    ComponentRole,
    Deployment,
    Orchestrator,
    SuperLinkPlace,
    host_port,
    node_config_text,
    place_on_this_machine,
    wait_for_port,
)
from flops.orchestrators.netns import NamespaceNetwork, placement_problem
from flops.plan import RunPlan
from flops.topology import Topology

# Every process of a run carries this variable (children inherit it), so stop() also finds
# processes that left their group, such as a flower-superexec re-parented to init.
RUN_ID_ENV = "FLOPS_RUN_ID"
STOP_GRACE_S = 5.0
# Set to 1 for Flower's own one-process-per-message ClientApps instead of warm learners (benchmarks and the
# cold-vs-warm equality test compare the two).
COLD_LEARNERS_ENV = "FLOPS_COLD_LEARNERS"


# Ports are chosen below Linux's ephemeral range (32768-60999): a port the kernel hands out for an
# outgoing connection could be taken between our check and the child binding it seconds later.
PORT_RANGE = (20000, 32767)


def free_port() -> int:
    """A loopback port that is free now, outside the range outgoing connections draw from."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise DeployError(f"no free loopback port in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


_TCP_LISTEN = "0A"


def _proc_net_address(hex_address: str) -> str:
    """An address as /proc/net/tcp* prints it (host byte order per 32-bit word) in dotted or colon form."""
    raw = bytes.fromhex(hex_address)
    return str(ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))))


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket in PID's network namespace, from /proc/PID/net/tcp and tcp6
    (they show the namespace of that process, so this works for a component in its own network namespace too)."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == _TCP_LISTEN:
                address, port = fields[1].rsplit(":", 1)
                found.append((_proc_net_address(address), int(port, 16)))
    return found


def listens(pid: int, port: int) -> bool:
    """Whether a socket in PID's network namespace listens on PORT (any address)."""
    return any(found == port for _address, found in listening_sockets(pid))


def processes_of_run(run_id: str) -> list[int]:
    """PIDs of live processes whose environment carries FLOPS_RUN_ID=run_id."""
    marker = f"{RUN_ID_ENV}={run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are already dead
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def groups_of_run(run_id: str) -> set[int]:
    """Process groups holding a live process of the run. A recorded pid is only signalled as a group while it is
    one of these: after its component died, the number may belong to anyone (pids wrap at pid_max, 32768 here)."""
    groups = set()
    for pid in processes_of_run(run_id):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    return groups


class LocalOrchestrator(Orchestrator):
    """Processes on this machine, each in its own process group, with logs in the run directory.

    Components talk over loopback by default. With the plan's network "namespaces" every host of the run (the
    root, each cluster's gateway, each learner) is a network namespace with its own address on one bridge.
    """

    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen] = {}  # reaped by this process when it started them
        self._pending_ports: list[tuple[int, ComponentRecord]] = []  # SuperNode Runtime APIs not yet seen up
        self._network: NamespaceNetwork | None = None

    def _env(self, plan: RunPlan) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{plan.python.parent}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(plan.run_dir / "flwr_home")
        env[RUN_ID_ENV] = plan.run_id
        env["PYTHONUNBUFFERED"] = "1"
        # Flower's SuperExec looks for new tasks once a second by default; a task waiting up to a
        # second at each of a round's hops is pure latency on loopback.
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
        return env

    @classmethod
    def check_placement(cls, topology: Topology, network: str) -> None:
        """With --network namespaces each `host:` becomes a namespace: an IPv4 address is given to it as it is, a
        name gets one of the run's addresses. On loopback, every `host:` must be this machine."""
        if network != "namespaces":
            super().check_placement(topology, network)
            return
        for field, host in topology.placed_hosts():
            problem = placement_problem(host)
            if problem:
                raise topology.config_error(field, f"{host}: {problem}")

    @staticmethod
    def _machine(plan: RunPlan, host: str) -> str:
        """The namespace HOST's components run in: the topology file's `host:` (shared by every component given
        it), else HOST's own."""
        return plan.placed_at(host)[0] or host

    def _on_host(self, plan: RunPlan, host: str, argv: list[str]) -> list[str]:
        """ARGV run on HOST: in its namespace (made on first use) with --network namespaces, else as it is."""
        if self._network is None:
            return argv
        machine = self._machine(plan, host)
        self._network.address(machine)
        return [*self._network.exec_prefix(machine), *argv]

    def _spawn(self, plan: RunPlan, record: ComponentRecord, argv: list[str]) -> ComponentRecord:
        record.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(record.log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self._env(plan),
                    cwd=plan.run_dir,
                    start_new_session=True,  # own process group: stop() takes the whole tree
                )
            except OSError as exc:
                raise DeployError(f"cannot start {record.name}: {argv[0]}: {exc.strerror}") from exc
        self._children[proc.pid] = proc
        record.pid = proc.pid
        record.argv = argv
        return record

    def _restart(self, plan: RunPlan, record: ComponentRecord) -> None:
        # Whatever the dead process left behind in its group (a flower-superexec, a ClientApp) goes first.
        if record.pid is not None:
            if record.pid in groups_of_run(plan.run_id):
                try:
                    os.killpg(record.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            old = self._children.pop(record.pid, None)
            if old is not None:
                old.wait()
        self._spawn(plan, record, record.argv)

    def _exit_reason(self, record: ComponentRecord) -> str | None:
        proc = self._children.get(record.pid or -1)
        if proc is None or proc.poll() is None:
            return None
        return f"exited with code {proc.returncode} while starting: {_tail(record.log_path)}"

    def _start_superlink(self, plan: RunPlan, name: str, role: ComponentRole, host: str) -> tuple[ComponentRecord, str]:
        if self._network is None:
            place = place_on_this_machine(plan, host, free_port)
        else:  # its namespace's address; the others dial that address, the certificate also holds a placed name
            machine, port = self._machine(plan, host), plan.placed_at(host)[1] or free_port()
            address = self._network.address(machine)
            place = SuperLinkPlace(address, address, port, tuple(dict.fromkeys([address, machine])))
        record = self._spawn(
            plan,
            ComponentRecord(name=name, role=role, log_path=plan.logs_dir / f"{name}.log"),
            self._on_host(plan, host, [str(plan.python.parent / "flower-superlink"),
                                       *self.security.superlink_args(name, place.names),
                                       "--disable-runtime-dependency-installation", "--host", place.listen,
                                       "--port", str(place.port)]),
        )
        wait_for_port(place.port, record, plan.config.startup_timeout_s, lambda: self._exit_reason(record),
                      lambda: listens(record.pid, place.port))
        return record, host_port(place.dial, place.port)

    def _start_supernode(self, plan: RunPlan, record: ComponentRecord, superlink: str,
                         node_config: dict[str, str | int], host: str) -> ComponentRecord:
        port = free_port()  # its Runtime API, on the loopback of its own host
        # Bounded reconnects: a SuperNode whose SuperLink is gone exits instead of retrying forever.
        argv = [str(plan.python.parent / "flower-supernode"), *self.security.supernode_args(record.name, superlink),
                "--superlink", superlink, "--port", str(port),
                "--node-config", node_config_text(node_config), "--max-retries", "5", "--max-wait-time", "30"]
        if os.environ.get(COLD_LEARNERS_ENV) != "1":
            # One component, one process group: the launcher runs the SuperNode and the run's warm worker.
            argv = [str(plan.python), str(plan.app_dir / "flops_app" / "warm_executor.py"), "--", *argv]
        self._spawn(plan, record, self._on_host(plan, host, argv))
        self._pending_ports.append((port, record))
        return record

    def _before_deploy(self, plan: RunPlan) -> None:
        self._pending_ports.clear()
        if plan.network == "namespaces":
            self._network = NamespaceNetwork(plan.run_id)
            try:
                self._network.up()
            except BaseException:
                self._network.teardown()  # up() is not deploy()'s to undo: it runs before deploy()'s try
                raise

    def _settings(self) -> dict[str, str]:
        return self._network.settings() if self._network else {}

    def _after_supernodes_started(self, plan: RunPlan) -> None:
        """A SuperNode that cannot bind its Runtime API fails the deployment here, not mid-round."""
        while self._pending_ports:
            port, record = self._pending_ports.pop(0)
            wait_for_port(port, record, plan.config.startup_timeout_s, lambda r=record: self._why_ended(r),
                          lambda r=record, p=port: listens(r.pid, p))

    def status(self, deployment: Deployment) -> dict[str, bool]:
        alive = {}
        groups: set[int] | None = None  # read from /proc once, and only for components started elsewhere
        for component in deployment.components:
            proc = self._children.get(component.pid or -1)
            if proc is not None:
                alive[component.name] = proc.poll() is None
            else:
                groups = groups_of_run(deployment.run_id) if groups is None else groups
                alive[component.name] = component.pid in groups
        return alive

    def logs(self, deployment: Deployment, component: str) -> Path:
        for record in deployment.components:
            if record.name == component:
                return record.log_path
        known = ", ".join(c.name for c in deployment.components)
        raise DeployError(f"no component '{component}' in run {deployment.run_id} (components: {known})")

    def stop(self, deployment: Deployment) -> None:
        groups = [c.pid for c in deployment.components if c.pid is not None]
        self._signal_all(groups, deployment.run_id, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and self._any_alive(groups, deployment.run_id):
            time.sleep(0.1)
        self._signal_all(groups, deployment.run_id, signal.SIGKILL)
        for pid in groups:
            proc = self._children.pop(pid, None)
            if proc is not None:
                proc.wait()
        network = self._network or NamespaceNetwork.from_settings(deployment.run_id, deployment.settings)
        if network is not None:
            network.teardown()

    def _any_alive(self, groups: list[int], run_id: str) -> bool:
        for pid in groups:
            proc = self._children.get(pid)
            if proc is not None:
                proc.poll()  # reap our own child so its group can empty
        return bool(processes_of_run(run_id))

    @staticmethod
    def _signal_all(groups: list[int], run_id: str, sig: signal.Signals) -> None:
        live = groups_of_run(run_id)
        for pgid in groups:
            if pgid not in live:
                continue  # that component is gone; its number may be someone else's now
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in processes_of_run(run_id):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
