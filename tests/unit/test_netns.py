"""The namespace network's names and its record in the deployment (what `flops stop` in another shell reads)."""

from __future__ import annotations

import ipaddress

from flops.orchestrators.netns import SUBNET_POOL, NamespaceNetwork


def test_names_fit_linux_interface_names_and_differ_per_run() -> None:
    one, other = NamespaceNetwork(run_id="r20261202-120000-ab12"), NamespaceNetwork(run_id="r20261202-120000-ab13")
    assert one.tag != other.tag
    one.hosts = {f"learner-{i}": f"10.144.0.{i + 2}" for i in range(200)}
    veths = {one.veth_of(host) for host in one.hosts}
    assert len(veths) == 200 and all(len(name) <= 15 for name in veths | {one.bridge})  # IFNAMSIZ - 1
    assert one.namespace("cluster-0") == f"flops-{one.tag}-cluster-0"


def test_the_deployment_settings_bring_back_the_same_network() -> None:
    network = NamespaceNetwork(run_id="r1", subnet=ipaddress.ip_network("10.150.3.0/24"),
                               hosts={"root": "10.150.3.2", "learner-0": "10.150.3.3"})
    again = NamespaceNetwork.from_settings("r1", network.settings())
    assert again == network
    assert NamespaceNetwork.from_settings("r1", {}) is None  # a loopback run has no network to remove
    assert ipaddress.ip_network("10.150.3.0/24").subnet_of(SUBNET_POOL)
