"""The Kubernetes objects of flat and hierarchical runs: valid against the official schemas (strict), labelled, placed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from flops.config import RunConfig
from flops.app_image import IMAGE_UID
from flops.orchestrators.k8s_manifests import (
    COMPONENT_LABEL,
    RUN_LABEL,
    STATE_DIR,
    ManifestOptions,
    build_objects,
    component_names,
    object_name,
    write_manifests,
)
from flops.plan import RunPlan, plan_clusters
from flops.topology import Topology

import kubernetes_validate  # noqa: E402 - in the test extra: a missing validator fails, never skips

RUN_ID = "r20261202-050000-ab12"
IMAGE = "127.0.0.1:5000/flops/app@sha256:" + "a" * 64
VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]


def make_plan(tmp_path: Path, topology: dict, insecure: bool = True, **config: object) -> RunPlan:
    parsed = Topology.model_validate(topology)
    learners, clusters = plan_clusters(parsed)
    run_dir = tmp_path / "runs" / RUN_ID
    return RunPlan(
        run_id=RUN_ID, run_dir=run_dir, source_url="file:///src", source_ref=None, commit="0" * 40,
        source_name="src", app_dir=run_dir / "app", python=Path("/usr/bin/python3"),
        config=RunConfig.model_validate({"learners": len(learners), "clusters": len(clusters), **config}),
        orchestrator="kubernetes", image=IMAGE, tracking_uri="sqlite:///x.db", learners=learners,
        clusters=clusters, topology=parsed, task_module="task", dependencies=["torch"], insecure=insecure,
    )


FLAT = {"learners": [
    {"name": "learner-0", "node_selector": {"kubernetes.io/arch": "arm64"},
     "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]},
    {"name": "learner-1"},
]}
HIERARCHICAL = {
    "assignment": "manual",
    "clusters": [{"name": "lab", "learners": ["a", "b"], "node_selector": {"kubernetes.io/hostname": "gw-1"}},
                 {"name": "Field_Site", "learners": ["c", "d"],
                  "tolerations": [{"key": "flaky", "operator": "Equal", "value": "yes", "effect": "NoExecute",
                                   "toleration_seconds": 60}]}],
    "learners": [{"name": n} for n in ("a", "b", "c", "d")],
}
RESOURCES = {"resources": {"learner": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                           "aggregator": {"limits": {"cpu": "1"}}}}


def objects_of(plan: RunPlan, **options: object) -> list[dict]:
    return build_objects(plan, ManifestOptions(image=IMAGE, **options))


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["labels"][COMPONENT_LABEL]: o for o in objects if o["kind"] == kind}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", ["flat", "hierarchical", "flat-host-network", "hierarchical-credentials"])
def test_every_object_validates_strictly_against_the_kubernetes_schema(tmp_path: Path, case: str, version: str) -> None:
    topology = HIERARCHICAL if case.startswith("hierarchical") else FLAT
    plan = make_plan(tmp_path, topology, **RESOURCES)
    options: dict = {}
    if case.endswith("host-network"):
        options["host_network"] = True
        options["ports"] = {name: 20000 + i for i, name in enumerate(component_names(plan))}
    if case.endswith("credentials"):
        options["credentials"] = {"superlink": {"ca.pem": b"CA", "server.key": b"\x00key"}, "a": {"node.key": b"k"}}
    objects = objects_of(plan, **options)
    # Through the YAML a user would apply, so what is validated is what `flops export` writes.
    written = list(yaml.safe_load_all(write_manifests(objects, tmp_path / "out.yaml").read_text()))
    assert written == objects
    for obj in written:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    # The check above can fail: a misspelt field in a pod spec is caught.
    deployment = by_kind(objects_of(make_plan(tmp_path, FLAT)), "Deployment")["learner-0"]
    deployment["spec"]["template"]["spec"]["nodeSelecter"] = {"kubernetes.io/arch": "arm64"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_flat_run_is_one_superlink_with_a_service_and_a_deployment_per_learner(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FLAT)
    objects = objects_of(plan)
    assert [o["kind"] for o in objects] == ["ConfigMap", "ConfigMap", "Service", "Deployment", "Deployment", "Deployment"]
    services, deployments = by_kind(objects, "Service"), by_kind(objects, "Deployment")
    assert set(services) == {"superlink"} and set(deployments) == {"superlink", "learner-0", "learner-1"}
    root = deployments["superlink"]["spec"]["template"]["spec"]["containers"][0]
    assert root["image"] == IMAGE and root["args"][:1] == ["root-aggregator"]
    assert root["readinessProbe"]["tcpSocket"] == {"port": 9092} and "livenessProbe" in root
    assert root["ports"] == [{"name": "flower", "containerPort": 9092, "protocol": "TCP"}]
    learner = deployments["learner-0"]["spec"]["template"]["spec"]["containers"][0]
    assert "livenessProbe" not in learner and "ports" not in learner  # its Runtime API is on loopback
    # Learners reach the SuperLink through its Service's DNS name, not the host network.
    service_name = services["superlink"]["metadata"]["name"]
    assert learner["args"][learner["args"].index("--superlink") + 1] == f"{service_name}.default.svc:9092"
    assert 'partition-id=0 num-partitions=2' in learner["args"]
    assert all("hostNetwork" not in d["spec"]["template"]["spec"] for d in deployments.values())
    assert all(d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"} for d in deployments.values())


def test_every_object_carries_the_run_labels_and_one_selector_finds_them(tmp_path: Path) -> None:
    objects = objects_of(make_plan(tmp_path, HIERARCHICAL))
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels[RUN_LABEL] == RUN_ID and labels["app.kubernetes.io/instance"] == RUN_ID
        assert labels["app.kubernetes.io/managed-by"] == "flops" and labels["app.kubernetes.io/name"] == "flops"
        assert {"app.kubernetes.io/component", "app.kubernetes.io/part-of", COMPONENT_LABEL} <= set(labels)
        if obj["kind"] == "Deployment":
            pod_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
            assert pod_labels[RUN_LABEL] == RUN_ID
    names = [o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"]
    assert len(set(names)) == len(names) == 1 + 2 + 4  # root, per cluster a gateway, learners


def test_a_cluster_is_one_gateway_pod_its_superlink_and_aggregator_sharing_the_pods_folder(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, HIERARCHICAL, **RESOURCES)
    objects = objects_of(plan)
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    assert set(services) == {"superlink", "cluster-0-superlink", "cluster-1-superlink"}
    assert set(deployments) == {"superlink", "cluster-0-gateway", "cluster-1-gateway", "a", "b", "c", "d"}
    pod = {name: d["spec"]["template"]["spec"] for name, d in deployments.items()}
    # The cluster's Service finds its SuperLink in the gateway pod.
    gateway_labels = deployments["cluster-0-gateway"]["spec"]["template"]["metadata"]["labels"]
    assert services["cluster-0-superlink"]["spec"]["selector"].items() <= gateway_labels.items()
    gateway = pod["cluster-0-gateway"]
    assert [c["name"] for c in gateway["containers"]] == ["cluster-0-superlink", "cluster-0-aggregator"]
    superlink, aggregator = gateway["containers"]
    assert superlink["args"][0] == "cluster-superlink" and "readinessProbe" in superlink
    assert aggregator["args"][0] == "cluster-aggregator" and "readinessProbe" not in aggregator
    # One folder of the pod (an emptyDir, not a folder of some node) holds the per-round hand-over between them.
    assert {"name": "state", "emptyDir": {}} in gateway["volumes"]
    for container in (superlink, aggregator):
        assert {"name": "state", "mountPath": STATE_DIR} in container["volumeMounts"]
    node_config = aggregator["args"][aggregator["args"].index("--node-config") + 1]
    assert f'cluster-dir="{STATE_DIR}"' in node_config
    assert 'cluster-superlink="127.0.0.1:9092"' in node_config  # the SuperLink beside it in the pod
    assert 'app-dir="/app"' in node_config  # the app in the image, not a folder of the controller's machine
    assert gateway["nodeSelector"] == {"kubernetes.io/hostname": "gw-1"}
    assert pod["cluster-1-gateway"]["tolerations"] == [
        {"key": "flaky", "operator": "Equal", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60}]
    # Learners reach their cluster's SuperLink through its Service.
    cluster_service = services["cluster-0-superlink"]["metadata"]["name"]
    learner_a = pod["a"]["containers"][0]
    assert learner_a["args"][learner_a["args"].index("--superlink") + 1] == f"{cluster_service}.default.svc:9092"
    assert learner_a["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    assert pod["superlink"]["containers"][0]["resources"] == {"limits": {"cpu": "1"}}
    assert "nodeSelector" not in pod["superlink"] and "tolerations" not in pod["b"]


def test_credentials_become_one_secret_per_component_mounted_only_into_its_pod(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FLAT)
    assert not [o for o in objects_of(plan) if o["kind"] == "Secret"]  # today's insecure runs: no Secret
    objects = objects_of(plan, credentials={"superlink": {"ca.pem": b"CA"}, "learner-1": {"node.key": b"\x01"}})
    secrets = by_kind(objects, "Secret")
    assert set(secrets) == {"superlink", "learner-1"}
    assert secrets["learner-1"]["data"] == {"node.key": "AQ=="}
    for name, deployment in by_kind(objects, "Deployment").items():
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        mounted = [v["secret"]["secretName"] for v in volumes if "secret" in v]
        assert mounted == ([secrets[name]["metadata"]["name"]] if name in secrets else [])


def test_host_network_addresses_components_on_loopback_with_their_own_ports(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FLAT)
    ports = {name: 21000 + i for i, name in enumerate(component_names(plan))}
    objects = objects_of(plan, host_network=True, ports=ports)
    assert "Service" not in {o["kind"] for o in objects}
    deployments = by_kind(objects, "Deployment")
    assert all(d["spec"]["template"]["spec"]["hostNetwork"] is True for d in deployments.values())
    learner = deployments["learner-1"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert learner[learner.index("--superlink") + 1] == f"127.0.0.1:{ports['superlink']}"
    assert learner[learner.index("--port") + 1] == str(ports["learner-1"])


def test_no_pod_mounts_a_folder_of_a_node_and_each_runs_as_the_images_user(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, HIERARCHICAL)
    objects = objects_of(plan)
    # (the plan itself, in the config ConfigMap, names the controller's run folder: information, not a mount)
    text = yaml.safe_dump_all([o for o in objects if o["metadata"]["labels"][COMPONENT_LABEL] != "config"])
    assert "hostPath" not in text and str(plan.run_dir) not in text
    pods = {name: d["spec"]["template"]["spec"] for name, d in by_kind(objects, "Deployment").items()}
    for name, spec in pods.items():
        assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID,
                                           "fsGroup": IMAGE_UID}
        assert all("workingDir" not in c for c in spec["containers"])  # the image's own (/app)
    # The root keeps its checkpoint in its pod's folder, and is told so.
    assert {"name": "state", "emptyDir": {}} in pods["superlink"]["volumes"]
    config = json.loads(by_kind(objects, "ConfigMap")["config"]["data"]["run-config.json"])
    assert config["flops-output-dir"] == STATE_DIR
    assert all(v["name"] != "state" for v in pods["a"]["volumes"])  # a learner keeps nothing


def test_object_names_are_dns_labels_even_for_long_or_odd_component_names() -> None:
    name = object_name(RUN_ID, "Field_Site.with-a-very-long-name-" + "x" * 40)
    assert len(name) <= 63 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()
    assert object_name(RUN_ID, "a" * 80) != object_name(RUN_ID, "a" * 81)  # truncated names stay distinct


def test_a_bad_toleration_in_the_topology_file_is_one_line_naming_file_line_and_field(tmp_path: Path) -> None:
    from flops.errors import ConfigError
    from flops.topology import load_topology

    path = tmp_path / "fleet.yaml"
    path.write_text("learners:\n  - name: pi-7\n    tolerations:\n      - {key: edge, operator: Maybe}\n")
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:4: learners[0].tolerations[0].operator: ")


def test_resources_in_the_config_take_kubernetes_quantities_only() -> None:
    from flops.config import load_config
    from flops.errors import ConfigError

    assert load_config(None, {"resources.learner.limits.memory": "1Gi"}).resources is not None
    with pytest.raises(ConfigError, match="resources.learner.limits.memory"):
        load_config(None, {"resources.learner.limits.memory": "lots"})


def test_a_host_in_the_topology_file_pins_the_pod_to_that_node_by_name(tmp_path: Path) -> None:
    topology = {"root_host": "dc-1", "learners": [{"name": "a", "host": "pi-7"},
                                                   {"name": "b", "host": "pi-8", "node_selector": {"kubernetes.io/hostname": "pi-9"}}]}
    pod = {name: d["spec"]["template"]["spec"] for name, d in by_kind(objects_of(make_plan(tmp_path, topology)), "Deployment").items()}
    assert pod["superlink"]["nodeSelector"] == {"kubernetes.io/hostname": "dc-1"}
    assert pod["a"]["nodeSelector"] == {"kubernetes.io/hostname": "pi-7"}
    assert pod["b"]["nodeSelector"] == {"kubernetes.io/hostname": "pi-9"}  # the explicit selector wins


@pytest.mark.parametrize(("topology", "field"), [
    ({"learners": [{"name": "a", "host": "10.0.0.5"}]}, "learners[0].host: 10.0.0.5: --orchestrator kubernetes places pods"),
    ({"root_port": 9300, "learners": [{"name": "a"}]}, "root_port: --orchestrator kubernetes: a SuperLink is reached"),
])
def test_kubernetes_refuses_addresses_and_ports_in_the_topology_file(topology: dict, field: str) -> None:
    from flops.errors import ConfigError
    from flops.orchestrators.kubernetes import KubernetesOrchestrator

    with pytest.raises(ConfigError, match="^" + re.escape(f"topology: {field}")):
        KubernetesOrchestrator.check_placement(Topology.model_validate(topology), "loopback")


def test_a_tls_run_gives_each_container_its_own_credentials_and_the_flags_that_use_them(tmp_path: Path) -> None:
    from flops.orchestrators.k8s_manifests import CREDENTIALS_DIR, ManifestBuilder

    plan = make_plan(tmp_path, HIERARCHICAL, insecure=False)
    names = component_names(plan)
    credentials = {name: {"ca.pem": b"CA"} for name in names}
    objects = objects_of(plan, credentials=credentials)
    for version in VERSIONS[:1]:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)
    assert len([o for o in objects if o["kind"] == "Secret"]) == len(names)
    gateway = by_kind(objects, "Deployment")["cluster-0-gateway"]["spec"]["template"]["spec"]
    superlink, aggregator = gateway["containers"]
    assert "--insecure" not in superlink["args"] + aggregator["args"]
    assert superlink["args"][-7:] == ["--ssl-ca-certfile", f"{CREDENTIALS_DIR}/ca.pem", "--ssl-certfile",
                                      f"{CREDENTIALS_DIR}/server.pem", "--ssl-keyfile", f"{CREDENTIALS_DIR}/server.key",
                                      "--enable-supernode-auth"]
    assert aggregator["args"][-4:] == ["--root-certificates", f"{CREDENTIALS_DIR}/ca.pem",
                                       "--auth-supernode-private-key", f"{CREDENTIALS_DIR}/node.key"]
    # The aggregator reaches its cluster's Control API over TLS with the run's CA, from its own Secret.
    node_config = aggregator["args"][aggregator["args"].index("--node-config") + 1]
    assert f'cluster-superlink-ca="{CREDENTIALS_DIR}/ca.pem"' in node_config
    # Two Secrets in one pod: each container mounts only its own.
    mounts = [[m["name"] for m in c["volumeMounts"] if m["mountPath"] == CREDENTIALS_DIR] for c in (superlink, aggregator)]
    assert mounts == [["credentials-0"], ["credentials-1"]]
    secret_of = {v["name"]: v["secret"]["secretName"] for v in gateway["volumes"] if "secret" in v}
    assert secret_of == {"credentials-0": object_name(RUN_ID, "cluster-0-superlink-credentials"),
                         "credentials-1": object_name(RUN_ID, "cluster-0-aggregator-credentials")}
    # A SuperLink's certificate names what its diallers use: its Service for pods, loopback for the pod itself.
    hosts = ManifestBuilder(plan, ManifestOptions(image=IMAGE, namespace="fl")).superlink_hosts("cluster-0-superlink")
    service = object_name(RUN_ID, "cluster-0-superlink")
    assert hosts == [service, f"{service}.fl", f"{service}.fl.svc", f"{service}.fl.svc.cluster.local",
                     "127.0.0.1", "localhost"]


def test_components_are_created_in_stages_each_after_the_superlink_it_joins(tmp_path: Path) -> None:
    from flops.orchestrators.k8s_manifests import ManifestBuilder

    builder = ManifestBuilder(make_plan(tmp_path, HIERARCHICAL), ManifestOptions(image=IMAGE))
    stages = [[w.name for w in stage] for stage in builder.stages()]
    assert stages == [["superlink"], ["cluster-0-gateway", "cluster-1-gateway"], ["a", "b", "c", "d"]]
    joins = {c.name: c.joins for c in builder.components() if not c.superlink}
    assert joins == {"cluster-0-aggregator": "superlink", "cluster-1-aggregator": "superlink",
                     "a": "cluster-0-superlink", "b": "cluster-0-superlink", "c": "cluster-1-superlink",
                     "d": "cluster-1-superlink"}
    flat = ManifestBuilder(make_plan(tmp_path, FLAT), ManifestOptions(image=IMAGE))
    assert [[w.name for w in stage] for stage in flat.stages()] == [["superlink"], ["learner-0", "learner-1"]]
