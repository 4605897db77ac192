"""Components on hosts of their own: `--network namespaces` gives the root, each learner and each cluster gateway
a Linux network namespace with its own address on one bridge (root only). One flat federation checks the
addresses, the listeners, a shaped link, the wire and the answer; the hierarchical exact run of test_hfl runs
in namespaces too. Deploy-only checks (no app) cover the certificate refusals."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES_DIR, PacketCapture, assert_no_process_left, git_repo_of, run_flops, run_state, wait_for
from flops.orchestrators.local import listening_sockets
from flops.orchestrators.netns import NamespaceNetwork
from flops.runstate import TERMINAL

pytestmark = pytest.mark.slow

LEARNERS, ROUNDS = 3, 2
SHAPED = "learner-1"
SHAPED_RATE = "24mbit"  # 3 MB/s: each 1.6 MB copy of the model takes ~0.5 s on that link
WEIGHTS = 400_000  # tests/fixtures/netns_link_task
MODEL_BYTES = WEIGHTS * 4
# Per round a learner receives the model twice (train and evaluate messages) and sends it back once.
MODEL_COPIES_PER_LEARNER_ROUND = 3
# Examples 10, 20, 30 with steps 1, 2, 3: FedAvg moves every weight by (10 + 40 + 90) / 60 per round (1 epoch).
STEP = (10 * 1 + 20 * 2 + 30 * 3) / 60


def _initial_weights() -> np.ndarray:
    return np.arange(WEIGHTS, dtype=np.float32) / np.float32(WEIGHTS)


def _host_veth(namespace: str) -> str:
    """The host-side name of the veth whose peer is eth0 in NAMESPACE."""
    inner = json.loads(subprocess.run(["ip", "-n", namespace, "-j", "link", "show", "eth0"], capture_output=True,
                                      text=True, check=True).stdout)
    peer_index = inner[0]["link_index"]
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    return next(link["ifname"] for link in links if link["ifindex"] == peer_index)


def _shape(namespace: str, veth: str) -> None:
    """tbf both ways: towards the learner on the host-side veth, from it on its eth0."""
    tbf = ["root", "tbf", "rate", SHAPED_RATE, "burst", "64kb", "latency", "500ms"]
    subprocess.run(["tc", "qdisc", "add", "dev", veth, *tbf], check=True)
    subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", "eth0", *tbf], check=True)


def _namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_a_flat_run_across_namespaces_over_tls_with_a_shaped_link(tmp_path: Path) -> None:
    repo = git_repo_of(FIXTURES_DIR / "netns_link_task", tmp_path / "netns-link-task")
    workdir = tmp_path / "work"
    capture = PacketCapture(lambda interface, _source, _destination: interface.startswith("flv"))  # the run's veths
    result = run_flops("submit", repo.as_uri(), "--learners", str(LEARNERS), "--rounds", str(ROUNDS), "--epochs", "1",
                       "--network", "namespaces", "--round-timeout", "600", "--workdir", str(workdir),
                       "--detach", "--json")
    assert result.returncode == 0, result.output
    run_id = result.last_json()["run_id"]
    network = NamespaceNetwork(run_id=run_id)
    shaped_ns = network.namespace(SHAPED)
    try:
        # Shape the learner's link as soon as its host exists: its SuperNode registers and the run starts later.
        wait_for(lambda: shaped_ns in _namespaces() or run_state(workdir, run_id)["status"] in TERMINAL, 900,
                 f"{shaped_ns} to exist")
        shaped_veth = _host_veth(shaped_ns)
        _shape(shaped_ns, shaped_veth)

        state = wait_for(lambda: (s := run_state(workdir, run_id))["phase"] in ("training", "done") and s, 900,
                         "the run to start training")
        deployment = state["deployment"]
        hosts = json.loads(deployment["settings"]["netns-hosts"])
        assert sorted(hosts) == sorted(["root", "learner-0", "learner-1", "learner-2"]), hosts
        subnet = ipaddress.ip_network(deployment["settings"]["netns-subnet"])
        assert all(ipaddress.ip_address(address) in subnet for address in hosts.values()), hosts
        root_host, root_port = deployment["control_address"].rsplit(":", 1)
        assert root_host == hosts["root"] and not ipaddress.ip_address(root_host).is_loopback
        # Nobody listens on every address: the SuperLink on its host's address, each SuperNode's Runtime API on
        # its own host's loopback.
        for component in deployment["components"]:
            listeners = listening_sockets(component["pid"])
            assert listeners, component["name"]
            assert all(address not in ("0.0.0.0", "::") for address, _ in listeners), (component["name"], listeners)
            if component["role"] == "learner":
                assert {address for address, _ in listeners} == {"127.0.0.1"}, (component["name"], listeners)
        superlink = next(c for c in deployment["components"] if c["name"] == "superlink")
        assert (root_host, int(root_port)) in listening_sockets(superlink["pid"])

        final = wait_for(lambda: (s := run_state(workdir, run_id))["status"] in TERMINAL and s, 1200, "the run to end")
    finally:
        drops = capture.stop()
        if run_state(workdir, run_id)["status"] not in TERMINAL:
            run_flops("stop", run_id, "--workdir", str(workdir))
    assert final["status"] == "FINISHED", final
    assert_no_process_left(run_id)
    assert not {ns for ns in _namespaces() if ns.startswith(f"flops-{network.tag}-")}
    assert network.bridge not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout

    # Same answer as anywhere else: the hand-computed FedAvg of the three learners' steps.
    with np.load(Path(final["run_dir"]) / "output" / "final_model.npz") as npz:
        np.testing.assert_allclose(npz["arr_0"], _initial_weights() + ROUNDS * STEP, rtol=1e-6)

    # Nothing shared between hosts: the controller's record of the root's events and its copy of the model came
    # over the root's Control API (log stream); the root's host folder keeps the checkpoint, which nobody copied.
    run_dir, root_host = Path(final["run_dir"]), Path(final["run_dir"]) / "hosts" / "root"
    assert (root_host / "checkpoint.npz").exists() and not (run_dir / "output" / "checkpoint.npz").exists()
    assert _rounds(run_dir / "output" / "events.jsonl") == _rounds(root_host / "events.jsonl") == list(range(ROUNDS + 1))

    # The shaped link carried what Flower sent that learner, and nothing readable.
    assert drops == 0
    wire = capture.payload[shaped_veth]
    sent = ROUNDS * MODEL_COPIES_PER_LEARNER_ROUND * MODEL_BYTES
    print(f"{SHAPED}'s link: {len(wire)} bytes of TCP payload for {sent} bytes of model copies "
          f"({len(wire) / sent - 1:+.2%})")
    assert abs(len(wire) - sent) <= 0.05 * sent, (len(wire), sent)
    needle = _initial_weights()[1000:1016].tobytes()  # what round 1 sends every learner, were it in clear
    assert all(needle not in bytes(payload) for payload in capture.payload.values())
    assert b"\x17\x03\x03" in wire  # TLS application data records


def _rounds(events_path: Path) -> list[int]:
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    return [e["round"] for e in events if e["event"] == "round"]
