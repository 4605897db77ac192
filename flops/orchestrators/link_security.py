"""TLS and SuperNode authentication for a deployment's Flower links: the argv flags and key registration."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from flops.credentials import LOOPBACK_NAMES, NodeKey, RunAuthority
from flops.errors import DeployError, RunFailedError
from flops.flower_control import FlowerControl, describe_tls_failure
from flops.plan import RunPlan

ONLINE = "online"
UNREGISTERED = "unregistered"  # a node FLOps unregistered (restarted under a new key): it can no longer connect
ONLINE_POLL_S = 0.2
# What a refused SuperNode writes after Flower's "Failed to initialize the connection" (exit code 305).
_REFUSAL_MARKER = "Failed to initialize the connection to the SuperLink."
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def refusal_reason(log_path: Path) -> str | None:
    """Flower's own reason, from a SuperNode's log, why its SuperLink refused it; None if it was not refused."""
    try:
        lines = _ANSI.sub("", log_path.read_text(errors="replace")).splitlines()
    except OSError:
        return None
    for i, line in enumerate(lines):
        if _REFUSAL_MARKER in line and i + 1 < len(lines):
            reason = lines[i + 1].strip()
            tls = describe_tls_failure(reason)
            if tls:
                return tls
            if "code: 2004" in reason or "code: 2001" in reason:
                return f"SuperNode authentication: its key is not registered with the SuperLink ({reason})"
            return reason
    return None


def describe_exit(name: str, log_path: Path) -> str:
    """One line for a component that ended mid-run: Flower's refusal reason when its SuperLink refused it."""
    why = refusal_reason(log_path)
    if why:
        return f"{name} was refused by its SuperLink: {why} (log: {log_path})"
    return f"{name} exited unexpectedly (log: {log_path})"


class LinkSecurity:
    """One run's Flower link security: a CA per run, a server certificate per SuperLink, a registered key pair
    per SuperNode. With plan.insecure, every component gets `--insecure` and nothing else."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.authority = None if plan.insecure else RunAuthority(plan.run_dir, plan.run_id)
        self._registered: dict[str, dict[str, int]] = {}  # SuperLink address -> component -> Flower node id

    @property
    def ca_cert(self) -> Path | None:
        return self.authority.ca_cert if self.authority else None

    def registered(self, superlink_address: str) -> dict[str, int]:
        """Component name -> Flower node id of the SuperNodes registered with that SuperLink."""
        return dict(self._registered.get(superlink_address, {}))

    def superlink_args(self, name: str, hosts: tuple[str, ...] = LOOPBACK_NAMES) -> list[str]:
        """TLS with a certificate for the addresses the SuperLink is reached by; SuperNodes must be registered."""
        if self.authority is None:
            return ["--insecure"]
        creds = self.authority.server_credentials(name, list(hosts))
        return ["--ssl-ca-certfile", str(creds.ca_cert), "--ssl-certfile", str(creds.cert),
                "--ssl-keyfile", str(creds.key), "--enable-supernode-auth"]

    def supernode_args(self, name: str, superlink_address: str) -> list[str]:
        """Trust the run's CA only; make a key pair for NAME and register its public key before it starts."""
        if self.authority is None:
            return ["--insecure"]
        key = self.register(name, superlink_address)
        return ["--root-certificates", str(self.authority.ca_cert), "--auth-supernode-private-key", str(key.private_key)]

    def register(self, name: str, superlink_address: str) -> NodeKey:
        """Make a key pair for the SuperNode NAME and register its public key with the SuperLink at that address
        (over its Control API): the SuperLink then admits a SuperNode holding the private key."""
        assert self.authority is not None, "an --insecure run registers no keys"
        key = self.authority.node_key(name)
        control = FlowerControl(superlink_address, self.authority.ca_cert)
        try:
            node_id = control.register_node(key.public_key_pem, name)
        finally:
            control.close()
        self._registered.setdefault(superlink_address, {})[name] = node_id
        return key

    def renew_identity(self, name: str) -> None:
        """Give the SuperNode NAME, found dead, a fresh registered key at the same path before it starts again.

        Flower counts a dead SuperNode online for two heartbeats (up to a minute) and refuses a second node with
        its key meanwhile; its public key also stays taken after unregistering. So the dead node is unregistered
        (offline at once, out of every round's sample) and a new key is registered: the learner rejoins at the
        next round as itself (its name and partition travel in its node config, not in the Flower node id).
        """
        if self.authority is None:
            return
        address = next((a for a, nodes in self._registered.items() if name in nodes), None)
        if address is None:
            return
        control = FlowerControl(address, self.authority.ca_cert)
        try:
            control.unregister_node(self._registered[address][name], name)
            key = self.authority.node_key(name)
            self._registered[address][name] = control.register_node(key.public_key_pem, name)
        finally:
            control.close()

    def explain_exit(self, name: str, reason: str, log_path: Path) -> str:
        """Why the SuperNode NAME ended while starting: Flower's reason and the SuperLink that refused it (refused
        key, untrusted certificate) when its log says so, else REASON."""
        why = refusal_reason(log_path)
        if not why:
            return reason
        address = next((a for a, nodes in self._registered.items() if name in nodes), "")
        return f"was refused by its SuperLink{f' at {address}' if address else ''}: {why}"

    def wait_until_online(self, timeout_s: float, exit_reason: Callable[[str], str | None],
                          log_path: Callable[[str], Path]) -> None:
        """Return once every registered SuperNode is online at its SuperLink. A SuperNode that exits first
        fails the deployment with exit_reason(name) (see explain_exit) and its log."""
        deadline = time.monotonic() + timeout_s
        for address, nodes in self._registered.items():
            control = FlowerControl(address, self.ca_cert)
            try:
                while True:
                    online = {n.node_id for n in control.list_nodes() if n.status == ONLINE}
                    waiting = [name for name, node_id in nodes.items() if node_id not in online]
                    if not waiting:
                        break
                    for name in waiting:
                        reason = exit_reason(name)
                        if reason is not None:
                            raise DeployError(f"{name} {reason} (log: {log_path(name)})")
                    if time.monotonic() > deadline:
                        raise DeployError(f"{waiting[0]} did not come online at {address} within {timeout_s:.0f}s "
                                          f"(log: {log_path(waiting[0])})")
                    time.sleep(ONLINE_POLL_S)
            finally:
                control.close()


def refuse_intruders(control: FlowerControl, known: dict[str, int]) -> None:
    """Fail the run when the SuperLink lists a SuperNode FLOps did not register. Flower 1.42's open-source
    Control API takes RegisterNode from anyone who reaches it, so authentication alone cannot keep a node
    out; a run that notices one stops rather than train with it. No-op for --insecure runs (known empty)."""
    if not known:
        return
    ours = set(known.values())
    foreign = [n for n in control.list_nodes() if n.node_id not in ours and n.status != UNREGISTERED]
    if foreign:
        node = foreign[0]
        raise RunFailedError(f"SuperNode {node.node_id} ('{node.name}', {node.status}) was registered at the "
                             f"SuperLink {control.address} by someone other than FLOps; run stopped")
