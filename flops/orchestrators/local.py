"""Local orchestrator, the embedded default: a real SuperLink and one SuperNode per learner on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

from flops.errors import DeployError
from flops.orchestrators.base import ComponentRecord, Deployment, Orchestrator
from flops.plan import RunPlan

# Every process of a run carries this variable (children inherit it), so stop() also finds
# processes that left their group, such as a flower-superexec re-parented to init.
RUN_ID_ENV = "FLOPS_RUN_ID"
STOP_GRACE_S = 5.0


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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalOrchestrator(Orchestrator):
    """Processes on this machine, each in its own process group, with logs in the run directory."""

    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen] = {}  # reaped by this process when it started them
        self._pending_ports: list[tuple[int, ComponentRecord]] = []  # SuperNode Runtime APIs not yet seen up

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
        return record

    def _wait_for_port(self, port: int, record: ComponentRecord, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self._children.get(record.pid or -1)
            if proc is not None and proc.poll() is not None:
                raise DeployError(
                    f"{record.name} exited with code {proc.returncode} while starting: "
                    f"{_tail(record.log_path)} (log: {record.log_path})"
                )
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise DeployError(f"{record.name} did not open port {port} within {timeout_s:.0f}s (log: {record.log_path})")

    def _start_superlink(self, plan: RunPlan, name: str, role: str) -> tuple[ComponentRecord, int]:
        port = free_port()
        record = self._spawn(
            plan,
            ComponentRecord(name=name, role=role, log_path=plan.logs_dir / f"{name}.log"),
            [str(plan.python.parent / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port)],
        )
        self._wait_for_port(port, record, plan.config.startup_timeout_s)
        return record, port

    def _start_supernode(self, plan: RunPlan, record: ComponentRecord, superlink_port: int,
                         node_config: dict[str, str | int]) -> ComponentRecord:
        # Flower parses node config as TOML values: strings need quotes, numbers must not have them.
        config_text = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
        port = free_port()
        # Bounded reconnects: a SuperNode whose SuperLink is gone exits instead of retrying forever.
        argv = [str(plan.python.parent / "flower-supernode"), "--insecure",
                "--superlink", f"127.0.0.1:{superlink_port}", "--port", str(port),
                "--node-config", config_text, "--max-retries", "5", "--max-wait-time", "30"]
        self._spawn(plan, record, argv)
        self._pending_ports.append((port, record))
        return record

    def _wait_for_supernodes(self, plan: RunPlan) -> None:
        """SuperNodes start in parallel; a failure to bind their Runtime API shows up here, not mid-round."""
        while self._pending_ports:
            port, record = self._pending_ports.pop(0)
            self._wait_for_port(port, record, plan.config.startup_timeout_s)

    def _start_learners(self, plan: RunPlan, learners: list, superlink_port: int) -> list[ComponentRecord]:
        return [
            self._start_supernode(
                plan,
                ComponentRecord(name=learner.name, role="learner", log_path=plan.logs_dir / f"{learner.name}.log",
                                partition_id=learner.partition_id),
                superlink_port,
                {"partition-id": learner.partition_id, "num-partitions": learner.num_partitions},
            )
            for learner in learners
        ]

    def deploy(self, plan: RunPlan) -> Deployment:
        (plan.run_dir / "flwr_home").mkdir(parents=True, exist_ok=True)
        deployment = Deployment(orchestrator=self.name, run_id=plan.run_id, control_address="")
        try:
            root, root_port = self._start_superlink(plan, "superlink", "root-aggregator")
            deployment.components.append(root)
            deployment.control_address = f"127.0.0.1:{root_port}"
            if not plan.hierarchical:
                deployment.components += self._start_learners(plan, plan.learners, root_port)
            for cluster in plan.clusters:
                link, link_port = self._start_superlink(plan, f"{cluster.dir_name}-superlink", "cluster-aggregator")
                deployment.components.append(link)
                deployment.components += self._start_learners(plan, cluster.learners, link_port)
                aggregator = ComponentRecord(name=f"{cluster.dir_name}-aggregator", role="cluster-aggregator",
                                             log_path=plan.logs_dir / f"{cluster.dir_name}-aggregator.log")
                deployment.components.append(self._start_supernode(plan, aggregator, root_port, {
                    "cluster-name": cluster.name, "cluster-index": cluster.index,
                    "cluster-size": len(cluster.learners), "cluster-superlink": f"127.0.0.1:{link_port}",
                    "cluster-dir": str(plan.cluster_dir(cluster)), "app-dir": str(plan.app_dir),
                }))
            self._wait_for_supernodes(plan)
        except BaseException:
            self._pending_ports.clear()
            self.stop(deployment)
            raise
        return deployment

    def status(self, deployment: Deployment) -> dict[str, bool]:
        alive = {}
        for component in deployment.components:
            proc = self._children.get(component.pid or -1)
            if proc is not None:
                alive[component.name] = proc.poll() is None
            else:
                alive[component.name] = component.pid is not None and _group_alive(component.pid)
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

    def _any_alive(self, groups: list[int], run_id: str) -> bool:
        for pid in groups:
            proc = self._children.get(pid)
            if proc is not None:
                proc.poll()  # reap our own child so its group can empty
        return any(_group_alive(g) for g in groups) or bool(processes_of_run(run_id))

    @staticmethod
    def _signal_all(groups: list[int], run_id: str, sig: signal.Signals) -> None:
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in processes_of_run(run_id):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
