"""A default run's Flower links under attack from this machine: rogue SuperNodes (no registered key, another
run's CA, no key at all) are refused by Flower and never contribute; a plain-text Control API client gets
nothing; a capture of the SuperLink's port shows no model bytes in clear. One tiny federation for all of it."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PacketCapture, assert_no_process_left, run_flops, run_state, wait_for
from flops.credentials import RunAuthority, new_node_key

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LEARNERS, ROUNDS = 2, 2
TRAIN_EXAMPLES_PER_LEARNER = 48  # conftest's valid task: 64 generated rows, 48 for training


def loopback_capture(port: list[int]) -> PacketCapture:
    """TCP payloads on `lo` to or from port[0], once the test has set it."""
    return PacketCapture(lambda _interface, source, destination: bool(port) and port[0] in (source, destination), "lo")


def test_the_capture_sees_plain_text_on_loopback() -> None:
    """The wire check below can fail: bytes sent in clear on loopback show up in the capture."""
    port: list[int] = []
    capture = loopback_capture(port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port.append(server.getsockname()[1])
        marker = np.arange(12, dtype=np.float32).tobytes()
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            client.sendall(marker)
            conn.recv(64)
            conn.close()
    time.sleep(0.5)
    capture.stop()
    assert marker in capture.all_bytes()


def _supernode(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "flower-supernode"), *argv], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def test_rogue_supernodes_are_refused_and_the_wire_shows_no_model(tiny_task_repo: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    port: list[int] = []
    capture = loopback_capture(port)
    result = run_flops("submit", str(tiny_task_repo), "--learners", str(LEARNERS), "--rounds", str(ROUNDS),
                       "--workdir", str(workdir), "--detach", "--json")
    assert result.returncode == 0, result.output
    run_id = result.last_json()["run_id"]
    rogues: dict[str, subprocess.Popen] = {}
    try:
        state = wait_for(lambda: (s := run_state(workdir, run_id))["phase"] in ("training", "done") and s, 900,
                         "the run to start training")
        assert state["status"] == "RUNNING", state
        address = state["deployment"]["control_address"]
        port.append(int(address.rsplit(":", 1)[1]))
        run_ca = Path(state["deployment"]["ca_cert"])

        # A plain-HTTP Control API client gets no answer from the TLS port.
        from flops.flower_control import FlowerControl

        with pytest.raises(Exception):
            FlowerControl(address).list_nodes()

        other = RunAuthority(tmp_path / "other-run", "other")
        own_key = new_node_key(tmp_path / "rogue" / "node.key")
        env = {**os.environ, "FLWR_HOME": str(tmp_path / "rogue-home"), "PATH": f"{BIN}:{os.environ['PATH']}"}
        common = ["--superlink", address, "--node-config", "partition-id=0 num-partitions=2",
                  "--max-retries", "2", "--max-wait-time", "10"]
        attempts = {
            "unregistered-key": ["--root-certificates", str(run_ca), "--auth-supernode-private-key",
                                 str(own_key.private_key)],
            "no-key": ["--root-certificates", str(run_ca)],
            "other-ca": ["--root-certificates", str(other.ca_cert), "--auth-supernode-private-key",
                         str(other.node_key("rogue").private_key)],
        }
        for port_offset, (name, argv) in enumerate(attempts.items()):
            port = 30000 + (os.getpid() + port_offset * 7) % 2000
            rogues[name] = _supernode([*argv, *common, "--port", str(port)], tmp_path / f"{name}.log", env)
        for name, proc in rogues.items():
            wait_for(lambda p=proc: p.poll() is not None, 120, f"rogue {name} to give up")
            assert proc.returncode != 0, name
        logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in rogues}
        assert "Failed to activate SuperNode" in logs["unregistered-key"], logs["unregistered-key"][-800:]
        assert "must be registered" in logs["no-key"], logs["no-key"][-800:]
        assert "CERTIFICATE_VERIFY_FAILED" in logs["other-ca"], logs["other-ca"][-800:]

        final = wait_for(lambda: (s := run_state(workdir, run_id))["status"] != "RUNNING" and s, 900,
                         "the run to end")
        assert final["status"] == "FINISHED", final
    finally:
        for proc in rogues.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        capture.stop()
        wire = capture.all_bytes()
        if run_state(workdir, run_id)["status"] == "RUNNING":
            run_flops("stop", run_id, "--workdir", str(workdir))
    assert_no_process_left(run_id)

    # Only the run's own learners trained: every round's examples are theirs.
    run_dir = workdir / "runs" / run_id
    events = [json.loads(line) for line in (run_dir / "output" / "events.jsonl").read_text().splitlines()]
    examples = [e["examples"] for e in events if e["event"] == "round" and e["round"] > 0]
    assert examples == [LEARNERS * TRAIN_EXAMPLES_PER_LEARNER] * ROUNDS, examples

    # The final global model went to the learners for evaluation: its bytes must not be readable on the wire.
    assert len(wire) > 10_000, len(wire)
    with np.load(run_dir / "output" / "final_model.npz") as final_model:
        weights = max((final_model[k] for k in final_model.files), key=lambda a: a.nbytes)
    assert weights.nbytes >= 16
    assert weights.tobytes() not in wire
    assert b"\x17\x03\x03" in wire  # TLS 1.2/1.3 application data records


def _bare_plan(tmp_path: Path, name: str):  # noqa: ANN202 - a RunPlan with no app: deploy() never starts a run
    from flops.config import RunConfig
    from flops.plan import RunPlan, plan_learners

    plan = RunPlan(
        run_id=f"{name}-{os.getpid()}", run_dir=tmp_path / "run", source_url="s", source_ref=None,
        commit="0" * 40, source_name="s", app_dir=tmp_path / "app", python=BIN / "python",
        config=RunConfig(learners=2), orchestrator="local", tracking_uri="", task_module="task", dependencies=[],
        learners=plan_learners(2),
    )
    plan.logs_dir.mkdir(parents=True)
    # SuperNodes start through the app's warm launcher and prompt SuperNode (flwr and the standard library only):
    # those files are all the app a deploy needs.
    templates = Path(__file__).resolve().parents[2] / "templates" / "flower_app" / "flops_app"
    (plan.app_dir / "flops_app").mkdir(parents=True)
    for script in ("warm_executor.py", "prompt_supernode.py"):
        shutil.copyfile(templates / script, plan.app_dir / "flops_app" / script)
    return plan


def test_a_refused_component_of_the_run_fails_the_deployment_naming_it(tmp_path: Path, monkeypatch) -> None:
    """Deploy a real SuperLink and two learners; learner-1's key file no longer matches the registered key
    (as if replaced): Flower refuses it, deploy fails naming it and Flower's reason, and stops everything."""
    from flops.errors import DeployError
    from flops.orchestrators.link_security import LinkSecurity
    from flops.orchestrators.local import LocalOrchestrator, processes_of_run

    plan = _bare_plan(tmp_path, "refused")
    register = LinkSecurity.supernode_args

    def replaced_key_for_learner_1(self: LinkSecurity, name: str, superlink_address: str) -> list[str]:
        args = register(self, name, superlink_address)
        if name == "learner-1":
            new_node_key(Path(args[args.index("--auth-supernode-private-key") + 1]))
        return args

    monkeypatch.setattr(LinkSecurity, "supernode_args", replaced_key_for_learner_1)
    with pytest.raises(DeployError) as refused:
        LocalOrchestrator().deploy(plan)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("learner-1 was refused by its SuperLink at 127.0.0.1:"), message
    assert "SuperNode authentication" in message and "learner-1.log" in message, message
    assert not processes_of_run(plan.run_id)


def test_a_supernode_registered_behind_flops_back_stops_the_run(tmp_path: Path) -> None:
    """Flower 1.42's Control API takes RegisterNode from any caller that reaches it (no account auth in the
    open-source SuperLink): FLOps notices a node it did not register and fails the run naming it."""
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=E0611
    from flwr.supercore.control import ControlHttpClient

    from flops.errors import RunFailedError
    from flops.flower_control import FlowerControl
    from flops.orchestrators.link_security import refuse_intruders
    from flops.orchestrators.local import LocalOrchestrator, processes_of_run

    plan = _bare_plan(tmp_path, "intruder")
    orchestrator = LocalOrchestrator()
    deployment = orchestrator.deploy(plan)
    try:
        assert sorted(deployment.node_ids) == ["learner-0", "learner-1"]
        control = FlowerControl(deployment.control_address, deployment.ca_cert)
        refuse_intruders(control, deployment.node_ids)  # only the run's own learners so far
        # The attacker neither has nor checks the run's CA: TLS without a client credential lets it in.
        attacker = ControlHttpClient(f"https://{deployment.control_address}", verify=False)
        key = new_node_key(tmp_path / "attacker" / "node.key")
        attacker.RegisterNode(RegisterNodeRequest(public_key=key.public_key_pem, name="attacker"))
        attacker.close()
        with pytest.raises(RunFailedError, match=r"SuperNode \d+ \('attacker', registered\) was registered at the "
                                                 r"SuperLink 127\.0\.0\.1:\d+ by someone other than FLOps"):
            refuse_intruders(control, deployment.node_ids)
        control.close()
    finally:
        orchestrator.stop(deployment)
    assert not processes_of_run(plan.run_id)


@pytest.mark.parametrize("fault", ["expired", "wrong-name"])
def test_a_superlink_certificate_that_is_expired_or_for_another_name_is_refused(
        fault: str, tmp_path: Path, monkeypatch) -> None:
    """A SuperLink whose certificate expired, or names another host: nothing joins it. FLOps finds out when it
    registers the first SuperNode's key (its Control API client checks the certificate as a SuperNode does) and
    fails the deployment in one line naming that component and the reason; nothing is left running."""
    from flops import credentials
    from flops.errors import DeployError
    from flops.orchestrators.link_security import LinkSecurity
    from flops.orchestrators.local import LocalOrchestrator, processes_of_run

    if fault == "expired":  # issued valid from 5 minutes ago until 1 minute ago
        monkeypatch.setattr(credentials, "VALIDITY", datetime.timedelta(minutes=-1))
    else:
        issue = LinkSecurity.superlink_args
        monkeypatch.setattr(LinkSecurity, "superlink_args",
                            lambda self, name, hosts=(): issue(self, name, ("superlink.invalid",)))
    plan = _bare_plan(tmp_path, fault)
    with pytest.raises(DeployError) as refused:
        LocalOrchestrator().deploy(plan)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("learner-0 cannot be registered with the SuperLink at 127.0.0.1:"), message
    why = {"expired": "TLS: the SuperLink's certificate has expired",
           "wrong-name": "TLS: the SuperLink's certificate is not valid for the address it was reached at"}[fault]
    assert why in message, message
    assert not processes_of_run(plan.run_id)
