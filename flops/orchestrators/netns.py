"""Hosts on one machine: each a Linux network namespace with its own address on one bridge.

The local orchestrator's `--network namespaces` mode. Every component sees only its own interfaces, so the
addresses it dials and listens on are what separate machines would use; nothing of a run is on the host's
loopback. The bridge (and the .1 address on it) lives in the host's namespace: that is where the controller
and `flops status` reach the root SuperLink from. Needs root and iproute2's `ip`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from flops.errors import ConfigError, DeployError
from flops.topology import is_ip_address

MODES = ("loopback", "namespaces")
# /24 subnets are drawn from here; one that overlaps a route of this machine is skipped.
SUBNET_POOL = ipaddress.ip_network("10.144.0.0/12")
IP_TIMEOUT_S = 30


def check_namespaces_usable() -> None:
    """Refuse `--network namespaces` up front where it cannot work (bad input, exit 2)."""
    if os.geteuid() != 0:
        raise ConfigError("--network namespaces: needs root (it creates network namespaces, veth pairs and a bridge)")
    if shutil.which("ip") is None:
        raise ConfigError("--network namespaces: iproute2's `ip` is not installed")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; a failure becomes DeployError naming the command and ip's message."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeployError(f"ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise DeployError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def placed_address(host: str) -> ipaddress.IPv4Address | None:
    """HOST as an IPv4 address, or None for a name."""
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        return None


def placement_problem(host: str) -> str | None:
    """Why a topology file's `host:` cannot be a namespace's address here, or None: an IPv6 or loopback address,
    or an address in a network this machine already routes (traffic to it would leave the run's bridge)."""
    placed = placed_address(host)
    if placed is None:  # a name gets an address of the run's own /24
        return "--network namespaces gives hosts IPv4 addresses only" if is_ip_address(host) else None
    if placed.is_loopback or placed.is_multicast or placed.is_unspecified:
        return "not an address a host of the run can have"
    subnet = ipaddress.ip_network(f"{placed}/24", strict=False)
    clash = next((net for net in _used_networks() if subnet.overlaps(net)), None)
    return f"its /24 overlaps {clash}, a network this machine routes" if clash else None


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
    used = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                used.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                continue
    return used


def _free_subnet(seed: str) -> ipaddress.IPv4Network:
    subnets = list(SUBNET_POOL.subnets(new_prefix=24))
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(subnets)
    used = _used_networks()
    for offset in range(len(subnets)):
        subnet = subnets[(start + offset) % len(subnets)]
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise DeployError(f"--network namespaces: every /24 of {SUBNET_POOL} is in use on this machine")


@dataclass
class NamespaceNetwork:
    """One run's hosts: a bridge with the controller's address (.1) and a namespace per host (.2 upwards).

    What exists is kept in `settings` (the deployment's orchestrator settings), so `flops stop` in another
    shell can remove it.
    """

    run_id: str
    tag: str = ""
    subnet: ipaddress.IPv4Network | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> its address
    # /24s of addresses a topology file chose (`host: 10.0.0.5`), besides the run's own subnet
    placed_subnets: list[ipaddress.IPv4Network] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Interface names have 15 characters at most: a short tag of the run id names the bridge and the veths.
        self.tag = self.tag or hashlib.sha256(self.run_id.encode()).hexdigest()[:6]

    @property
    def bridge(self) -> str:
        return f"flb{self.tag}"

    def namespace(self, host: str) -> str:
        return f"flops-{self.tag}-{host}"

    def _veth(self, index: int) -> str:
        return f"flv{self.tag}{index:02x}"

    def up(self) -> None:
        self.teardown()  # what a killed controller of this run left: a resume deploys again under the same names
        self.subnet = _free_subnet(self.run_id)
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet[1]}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def address(self, host: str) -> str:
        """The address of HOST, creating its namespace and link on first use. A HOST that is an IPv4 address (a
        topology file's `host: 10.0.0.5`) gets exactly that address; any other name the next one of the run's /24."""
        if host in self.hosts:
            return self.hosts[host]
        if self.subnet is None:
            raise DeployError("--network namespaces: the bridge is not up")
        placed = placed_address(host)
        if placed is not None:
            address, subnet = str(placed), self._reach(placed)
        else:
            taken = set(self.hosts.values())
            address = next(str(a) for a in self.subnet.hosts() if a != self.subnet[1] and str(a) not in taken)
            subnet = self.subnet
        index = len(self.hosts)
        namespace, veth = self.namespace(host), self._veth(index)
        ip("netns", "add", namespace)
        self.hosts[host] = address
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", veth, "master", self.bridge, "up")
        ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        for other in [self.subnet, *self.placed_subnets]:
            if other != subnet:  # one bridge, one link: every /24 of the run is reached directly on eth0
                ip("-n", namespace, "route", "add", str(other), "dev", "eth0")
        return address

    def _reach(self, placed: ipaddress.IPv4Address) -> ipaddress.IPv4Network:
        """The /24 of a placed address, on the bridge and routed from every namespace made so far."""
        subnet = ipaddress.ip_network(f"{placed}/24", strict=False)
        if subnet == self.subnet or subnet in self.placed_subnets:
            return subnet
        self.placed_subnets.append(subnet)
        taken = {ipaddress.IPv4Address(a) for a in self.hosts.values()}
        controller = next(a for a in (subnet[1], subnet[254]) if a != placed and a not in taken)
        ip("addr", "add", f"{controller}/24", "dev", self.bridge)
        for host in self.hosts:
            ip("-n", self.namespace(host), "route", "add", str(subnet), "dev", "eth0")
        return subnet

    def exec_prefix(self, host: str) -> list[str]:
        """argv prefix that runs a command on HOST (same pid: `ip netns exec` execs it)."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def veth_of(self, host: str) -> str:
        """The host-side interface of HOST's link (shape it with tc, read its counters)."""
        return self._veth(list(self.hosts).index(host))

    def settings(self) -> dict[str, str]:
        return {"network": "namespaces", "netns-tag": self.tag, "netns-subnet": str(self.subnet or ""),
                "netns-hosts": json.dumps(self.hosts), "netns-placed": json.dumps([str(s) for s in self.placed_subnets])}

    @classmethod
    def from_settings(cls, run_id: str, settings: dict[str, str]) -> NamespaceNetwork | None:
        if settings.get("network") != "namespaces":
            return None
        subnet = settings.get("netns-subnet")
        return cls(run_id=run_id, tag=settings["netns-tag"],
                   subnet=ipaddress.ip_network(subnet) if subnet else None,
                   hosts=json.loads(settings.get("netns-hosts", "{}")),
                   placed_subnets=[ipaddress.ip_network(s) for s in json.loads(settings.get("netns-placed", "[]"))])

    def teardown(self) -> None:
        """Remove every namespace named for this run, recorded or half-made, and the bridge (their veth pairs go
        with them); safe to call twice."""
        prefix = self.namespace("")
        for name in ip("netns", "list").stdout.split():
            if name.startswith(prefix):
                ip("netns", "delete", name, check=False)
        ip("link", "delete", self.bridge, check=False)
