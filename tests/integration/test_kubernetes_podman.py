"""The kubernetes orchestrator's manifests, run for real by `podman kube play` (no Kubernetes API server here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error, assert_only_error_line_on_stderr, run_flops, wait_for
from containers.support import BASE, FIND_LINKS, REGISTRY, require_containers
from flops.orchestrators.k8s_manifests import COMPONENT_LABEL, RUN_LABEL

pytestmark = pytest.mark.slow

# Debian's podman 4.3 runs pods here with runc and explicit ulimits (crun and the default ulimits do not).
CONTAINERS_CONF = '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]\n[engine]\nruntime = "runc"\n'


@pytest.fixture
def podman_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    require_containers()
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))  # run_flops passes the environment on
    return conf


def pods_of(run_id: str) -> list[str]:
    done = subprocess.run(["podman", "pod", "ps", "-q", "--filter", f"label={RUN_LABEL}={run_id}"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def shape(manifest: Path) -> list[tuple[str, str]]:
    """Kinds and components of a manifest, in order: what must match between export and submit."""
    return [(o["kind"], o["metadata"]["labels"][COMPONENT_LABEL]) for o in yaml.safe_load_all(manifest.read_text())]


def submit_detached(repo: Path, tmp_path: Path, workdir: Path, *run_args: str) -> str:
    """`flops submit --orchestrator podman-kube --detach` of the fixture app, its image built for this machine;
    returns the run id."""
    # A container's first start compiles its imports (the image holds no bytecode): slow on a busy machine.
    config = tmp_path / "flops.yaml"
    config.write_text("startup_timeout_s: 900\n")
    submit = run_flops(
        "submit", repo.as_uri(), "--config", str(config), *run_args, "--orchestrator", "podman-kube",
        "--registry", REGISTRY, "--base-image", BASE, "--no-tls-verify",
        *(f"--pip-find-links={d}" for d in FIND_LINKS), "--platform-constraint", "linux/amd64=torch==2.13.0+cpu",
        "--workdir", str(workdir), "--json", "--detach", timeout_s=2400,
    )
    assert submit.returncode == 0, submit.output
    return submit.last_json()["run_id"]


@pytest.mark.timeout(3600)  # image build, run environment and a federation in containers on a shared machine
def test_flat_run_reaches_finished_in_podman_pods_and_export_writes_the_same_objects(
    tiny_task_repo: Path, tmp_path: Path, podman_conf: Path
) -> None:
    workdir = tmp_path / "work"
    run_id = submit_detached(tiny_task_repo, tmp_path, workdir, "--learners", "2", "--rounds", "2", "--insecure")

    def status() -> dict:
        return run_flops("status", run_id, "--workdir", str(workdir), "--json").last_json()

    # While it trains, `flops status` and `flops logs` read the pods through the same orchestrator.
    ended = ("FINISHED", "FAILED", "STOPPED")
    wait_for(lambda: status()["phase"] == "training" or status()["status"] in ended, 900, "the run to train")
    shown = run_flops("status", run_id, "--workdir", str(workdir))
    assert "RUNNING" in shown.stdout and "learner-1: Running ready" in shown.stdout, shown.output
    log = run_flops("logs", run_id, "--component", "superlink", "--workdir", str(workdir))
    assert log.returncode == 0 and log.stdout.strip(), log.output
    wait_for(lambda: status()["status"] in ended, 1800, "the run to end", interval_s=2)
    summary = status()
    assert summary["status"] == "FINISHED" and summary["rounds_completed"] == 2, summary
    assert summary["model_uri"] and summary["final_metrics"]["accuracy"] is not None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert client.search_registered_models(), "the trained model is registered"
    assert pods_of(run_id) == []  # the run's pods are gone after it finished
    played = workdir / "runs" / run_id / "kubernetes.yaml"
    assert [kind for kind, _ in shape(played)] == ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "Deployment"]
    # Each component's pod log was kept in the run's log folder before the pods were removed.
    logs = workdir / "runs" / run_id / "logs"
    assert "learner-0" in {p.stem for p in logs.glob("*.log")}
    assert (logs / "superlink.log").read_text().strip()

    # `flops export` of the same run settings: the same objects, which podman plays as they are.
    image = json.loads((workdir / "runs" / run_id / "plan.json").read_text())["image"]
    export = run_flops("export", tiny_task_repo.as_uri(), "--orchestrator", "podman-kube", "--insecure", "--image", image,
                       "--learners", "2", "--rounds", "2", "-o", str(tmp_path / "out"), "--workdir", str(workdir),
                       "--json")
    assert export.returncode == 0, export.output
    exported = Path(export.last_json()["manifests"])
    exported_run = export.last_json()["run_id"]
    assert shape(exported) == shape(played)
    # A TLS run is not exported (its keys are registered as its SuperLinks come up): one line, nothing recorded.
    runs_before = sorted((workdir / "runs").iterdir())
    refused = run_flops("export", tiny_task_repo.as_uri(), "--orchestrator", "podman-kube", "--image", image,
                        "-o", str(tmp_path / "out-tls"), "--workdir", str(workdir))
    assert "--insecure" in assert_only_error_line_on_stderr(refused)
    assert sorted((workdir / "runs").iterdir()) == runs_before and not (tmp_path / "out-tls").exists()
    try:
        subprocess.run(["podman", "kube", "play", "--tls-verify=false", str(exported)], check=True,
                       capture_output=True, text=True)
        assert len(pods_of(exported_run)) == 3
        # The root SuperLink of the exported run comes up and listens on the port its manifest names.
        root = next(o for o in yaml.safe_load_all(exported.read_text())
                    if o["kind"] == "Deployment" and o["metadata"]["labels"][COMPONENT_LABEL] == "superlink")
        port = root["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"]
        from flops.orchestrators.base import port_open

        wait_for(lambda: port_open(port), 120, f"the exported root SuperLink on port {port}")
    finally:
        subprocess.run(["podman", "kube", "down", str(exported)], capture_output=True)
        leftover = pods_of(exported_run)
        if leftover:
            subprocess.run(["podman", "pod", "rm", "-f", *leftover], capture_output=True)
    assert pods_of(exported_run) == []


@pytest.mark.timeout(3600)
def test_hierarchical_tls_run_reaches_finished_with_each_cluster_as_one_gateway_pod_and_no_host_folder(
    tiny_task_repo: Path, tmp_path: Path, podman_conf: Path
) -> None:
    workdir = tmp_path / "work"
    run_id = submit_detached(tiny_task_repo, tmp_path, workdir, "--learners", "2", "--clusters", "1", "--rounds", "2",
                             "--local-rounds", "2")  # TLS and SuperNode keys: the default

    def status() -> dict:
        return run_flops("status", run_id, "--workdir", str(workdir), "--json").last_json()

    ended = ("FINISHED", "FAILED", "STOPPED")
    wait_for(lambda: status()["rounds_completed"] >= 1 or status()["status"] in ended, 1500, "the first global round")
    # The gateway pod's two containers are two components, each with its own state and log.
    shown = run_flops("status", run_id, "--workdir", str(workdir))
    assert "cluster-0-superlink: Running ready" in shown.stdout, shown.output
    assert "cluster-0-aggregator: Running ready" in shown.stdout, shown.output
    pods = subprocess.run(["podman", "ps", "--pod", "--filter", f"label={RUN_LABEL}={run_id}", "--format",
                           "{{.PodName}} {{.Names}}"], capture_output=True, text=True, check=True).stdout.split("\n")
    gateway = {line.split()[0] for line in pods if line.endswith("-cluster-0-superlink") or line.endswith("-cluster-0-aggregator")}
    assert len(gateway) == 1, pods  # one pod holds the cluster's SuperLink and its aggregator
    log = run_flops("logs", run_id, "--component", "cluster-0-aggregator", "--workdir", str(workdir))
    assert log.returncode == 0 and log.stdout.strip(), log.output
    wait_for(lambda: status()["status"] in ended, 1800, "the run to end", interval_s=2)
    summary = status()
    assert summary["status"] == "FINISHED" and summary["rounds_completed"] == 2, summary
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and client.search_registered_models()
    # The cluster's local rounds reached MLflow through the root (no file of a pod was read).
    nested = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(nested) == 1
    history = client.get_metric_history(nested[0].info.run_id, "local_round/evaluate_loss")
    assert len(history) == 2 * 2, history  # 2 global x 2 local rounds
    assert pods_of(run_id) == []
    played = (workdir / "runs" / run_id / "kubernetes.yaml").read_text()
    assert "hostPath" not in played and "emptyDir" in played
    # Every link was TLS with the run's CA and every SuperNode's key was registered (a refused or unregistered
    # SuperNode never comes online, and the run would not have trained): one Secret per component, no --insecure.
    objects = list(yaml.safe_load_all(played))
    assert "--insecure" not in played
    assert {o["metadata"]["labels"][COMPONENT_LABEL] for o in objects if o["kind"] == "Secret"} == {
        "superlink", "cluster-0-superlink", "cluster-0-aggregator", "learner-0", "learner-1"}
    secrets = subprocess.run(["podman", "secret", "ls", "--format", "{{.Name}}"], capture_output=True, text=True).stdout
    assert f"flops-{run_id}" not in secrets  # the podman secrets went with the run


@pytest.mark.timeout(2400)  # a two-platform image build
def test_an_arm64_pinned_learner_carries_the_arch_selector_and_the_image_index_has_arm64(
    tiny_task_repo: Path, tmp_path: Path
) -> None:
    require_containers()
    from flops.app_image import app_requirements
    from image_builder import build_image
    from flops.app_image import flower_app_spec

    # A two-platform image of the fixture app, built by image_builder (Flower only: no arm64 torch to emulate).
    app = tmp_path / "app"
    shutil.copytree(Path(__file__).parent / "containers" / "app", app, ignore=shutil.ignore_patterns("__pycache__"))
    image = build_image(flower_app_spec(
        app, name=f"flops-test/k8s-arch-{uuid.uuid4().hex[:8]}", requirements=app_requirements([]),
        platforms=["linux/amd64", "linux/arm64"], registry=REGISTRY, base_image=BASE, tls_verify=False,
        pip_find_links=FIND_LINKS)).image
    index = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"],
                                      capture_output=True, text=True, check=True).stdout)
    assert "arm64" in {m["platform"]["architecture"] for m in index["manifests"]}

    def export_pinned(arch: str, out: Path) -> tuple:
        topology = tmp_path / f"topology-{arch}.yaml"
        topology.write_text(yaml.safe_dump({"learners": [
            {"name": "pi-7", "node_selector": {"kubernetes.io/arch": arch}}, {"name": "nuc-1"}]}))
        return run_flops("export", tiny_task_repo.as_uri(), "--insecure", "--image", image, "--topology", str(topology),
                         "-o", str(out), "--workdir", str(tmp_path / "work"), "--json", timeout_s=1200)

    pinned = export_pinned("arm64", tmp_path / "arm64")
    assert pinned.returncode == 0, pinned.output
    pods = {o["metadata"]["labels"][COMPONENT_LABEL]: o["spec"]["template"]["spec"]
            for o in yaml.safe_load_all(Path(pinned.last_json()["manifests"]).read_text()) if o["kind"] == "Deployment"}
    assert pods["pi-7"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert "nodeSelector" not in pods["nuc-1"] and pods["pi-7"]["containers"][0]["image"] == image
    # An arch the image does not offer is bad input: one line naming the topology field, nothing written.
    wrong = export_pinned("s390x", tmp_path / "s390x")
    line = assert_one_line_error(wrong)
    assert "learners[0].node_selector" in line and "s390x" in line and "arm64" in line
    assert not (tmp_path / "s390x").exists()
