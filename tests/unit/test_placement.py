"""A topology file's `host:` and `port:` per component: validated, and refused where an orchestrator cannot honour
them (one line naming the field, before anything starts)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from flops.config import RunConfig
from flops.errors import ConfigError
from flops.orchestrators.base import addresses_of_this_machine, place_on_this_machine
from flops.orchestrators.docker import DockerOrchestrator
from flops.orchestrators.local import LocalOrchestrator
from flops.orchestrators.netns import _used_networks
from flops.plan import RunPlan, plan_clusters
from flops.topology import Topology, topology_from_dict

FLEET = {
    "root_host": "127.0.0.1", "root_port": 9300,
    "clusters": [{"name": "a", "host": "localhost", "port": 9301, "learners": ["l0"]}],
    "learners": [{"name": "l0", "host": "edge-1"}],
}


def test_hosts_and_ports_are_read_per_component() -> None:
    topology = Topology.model_validate(FLEET)
    assert topology.host_of("root") == ("127.0.0.1", 9300)
    assert topology.host_of("a") == ("localhost", 9301)
    assert topology.host_of("l0") == ("edge-1", None)
    assert topology.placed_hosts() == [("root_host", "127.0.0.1"), ("clusters[0].host", "localhost"),
                                       ("learners[0].host", "edge-1")]


@pytest.mark.parametrize(("change", "message"), [
    ({"learners": [{"name": "l0", "host": "edge_1!"}]}, "learners[0].host: .*neither an IP address nor a host name"),
    ({"root_port": 70000}, "root_port: "),
    ({"root_host": None, "clusters": [{"name": "a", "port": 9300, "learners": ["l0"]}]},
     "clusters[0].port: this host:9300 is already the SuperLink address of root_port"),
])
def test_a_bad_host_or_port_is_one_line_naming_the_field(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        topology_from_dict({**FLEET, **change}, origin="fleet.yaml")
    assert "\n" not in str(caught.value)
    assert caught.value.args[0].startswith("fleet.yaml:"), caught.value
    assert re.search(message.replace("[", r"\[").replace("]", r"\]"), str(caught.value))


def test_processes_on_this_machine_take_only_its_own_addresses() -> None:
    assert addresses_of_this_machine("localhost") and addresses_of_this_machine("127.0.0.1") == ["127.0.0.1"]
    assert addresses_of_this_machine("203.0.113.77") == []  # TEST-NET-3: no interface of this machine has it
    ok = Topology.model_validate({"root_host": "localhost", "learners": [{"name": "l0", "host": "127.0.0.1"}]})
    for orchestrator in (LocalOrchestrator, DockerOrchestrator):
        orchestrator.check_placement(ok, "loopback")
        far = Topology.model_validate({"learners": [{"name": "l0"}, {"name": "l1", "host": "203.0.113.77"}]})
        with pytest.raises(ConfigError, match=r"^topology: learners\[1\]\.host: 203\.0\.113\.77 is not an address of this "
                                              rf"machine, and --orchestrator {orchestrator.name} starts every component here"):
            orchestrator.check_placement(far, "loopback")


def test_namespaces_take_ipv4_addresses_and_names_but_not_loopback_or_ipv6_or_a_routed_network() -> None:
    free = next(net for net in ipaddress.ip_network("10.250.0.0/16").subnets(new_prefix=24)
                if not any(net.overlaps(used) for used in _used_networks()))
    LocalOrchestrator.check_placement(Topology.model_validate(
        {"root_host": str(free[10]), "learners": [{"name": "l0", "host": "edge-1"}]}), "namespaces")
    # e.g. this machine's own network: traffic there would leave the run's bridge
    routed = next(net for net in _used_networks() if net.version == 4 and not net.is_loopback and net.prefixlen >= 8)
    with pytest.raises(ConfigError, match=r"^topology: root_host: .*a network this machine routes"):
        LocalOrchestrator.check_placement(Topology.model_validate(
            {"root_host": str(routed.network_address + 1), "learners": [{"name": "l0"}]}), "namespaces")
    for host in ("127.0.0.1", "2001:db8::1"):
        with pytest.raises(ConfigError, match=rf"^topology: learners\[0\]\.host: {host}: "):
            LocalOrchestrator.check_placement(Topology.model_validate({"learners": [{"name": "l0", "host": host}]}),
                                              "namespaces")


def test_a_superlink_placed_on_this_machine_listens_there_on_its_port_and_is_dialled_by_that_name(tmp_path: Path) -> None:
    topology = Topology.model_validate(FLEET)
    learners, clusters = plan_clusters(topology)
    plan = RunPlan(run_id="r1", run_dir=tmp_path, source_url="s", source_ref=None, commit="0" * 40, source_name="s",
                   app_dir=tmp_path, python=Path("/usr/bin/python3"), config=RunConfig(learners=1, clusters=1),
                   orchestrator="local", tracking_uri="", task_module="task", dependencies=[], learners=learners,
                   clusters=clusters, topology=topology)
    root = place_on_this_machine(plan, "root", lambda: 1)
    assert (root.listen, root.dial, root.port) == ("127.0.0.1", "127.0.0.1", 9300)
    cluster = place_on_this_machine(plan, "cluster-0", lambda: 1)
    assert cluster.dial == "localhost" and cluster.port == 9301 and "localhost" in cluster.names
    assert cluster.listen in cluster.names and cluster.listen in addresses_of_this_machine("localhost")
