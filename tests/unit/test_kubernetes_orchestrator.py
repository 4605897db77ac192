"""The kubernetes orchestrator's API calls through the official client, against a recorded API contract.

No API server can run here: the official client runs unchanged down to its REST layer, whose requests go to
an in-memory stand-in that answers as the Kubernetes API does (201 on create, 409 on a name taken, label
selectors on list and collection delete, a Deployment's pod appearing). It records every call.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from flops.errors import DeployError
from flops.orchestrators.k8s_manifests import RUN_LABEL
from flops.orchestrators.kubernetes import KubernetesOrchestrator

from test_k8s_manifests import HIERARCHICAL, IMAGE, RUN_ID, make_plan

import kubernetes  # noqa: E402 - in the test extra

# No arch pin: the image index check (skopeo, a registry) belongs to the integration tests.
FLAT = {"learners": [{"name": "learner-0", "tolerations": [{"key": "edge", "operator": "Exists"}]}, {"name": "learner-1"}]}
COLLECTIONS = {"configmaps": "ConfigMap", "secrets": "Secret", "services": "Service", "deployments": "Deployment",
               "pods": "Pod"}


class Response:
    """What the client's REST layer hands back (kubernetes.client.rest.RESTResponse's interface)."""

    def __init__(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        self.status = status
        self.reason = {200: "OK", 201: "Created", 404: "Not Found", 409: "Conflict"}.get(status, "")
        # Bytes, as urllib3 hands them over: the client decodes JSON bodies itself. (A text body asked for as
        # `str` is not decoded by kubernetes 36: read_namespaced_pod_log would return "b'...'"; FLOps reads it raw.)
        self.data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.headers = {"content-type": content_type}

    def getheaders(self) -> dict[str, str]:
        return self.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


def selected(obj: dict, selector: str | None) -> bool:
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in (selector or "").split(",") if term))


class FakeApiServer:
    """The REST layer of kubernetes.client, answering from memory; `calls` is the recorded contract."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}  # (collection, name) -> object
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.pod_state: dict[str, Any] = {"running": {"startedAt": "2026-12-02T05:00:00Z"}}
        self.ready = "True"

    def request(self, method: str, url: str, query_params: Any = None, headers: Any = None, body: Any = None,
                post_params: Any = None, _preload_content: bool = True, _request_timeout: Any = None) -> Response:
        path = urlparse(url).path
        query = dict(query_params or [])
        self.calls.append((method, path, query))
        response = self._answer(method, path, query, body)
        if not 200 <= response.status <= 299:  # as kubernetes.client.rest does
            raise kubernetes.client.exceptions.ApiException(http_resp=response)
        return response

    def _answer(self, method: str, path: str, query: dict[str, str], body: Any) -> Response:
        match = re.fullmatch(r"/(?:api/v1|apis/apps/v1)/namespaces/([^/]+)/(\w+)(?:/([^/]+))?(?:/(log))?", path)
        assert match, path
        _namespace, collection, name, log = match.groups()
        if log:
            return Response(200, f"log of {name}/{query.get('container')}\n", "text/plain")
        if method == "POST":
            key = (collection, body["metadata"]["name"])
            if key in self.objects:
                return Response(409, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409})
            return Response(201, self._store(collection, body))
        if method == "PATCH":
            return Response(200, self._store(collection, body))
        if method == "GET":
            items = [o for (c, _), o in self.objects.items() if c == collection and selected(o, query.get("labelSelector"))]
            return Response(200, {"kind": f"{COLLECTIONS[collection]}List", "apiVersion": "v1", "metadata": {}, "items": items})
        if method == "DELETE":
            doomed = [(c, n) for (c, n), o in self.objects.items() if c == collection
                      and (n == name if name else selected(o, query.get("labelSelector")))]
            for key in doomed:
                removed = self.objects.pop(key)
                if collection == "deployments":  # the garbage collector takes the Deployment's pods
                    for pod_key in [k for k, o in self.objects.items() if k[0] == "pods"
                                    and selected(o, ",".join(f"{a}={b}" for a, b in removed["spec"]["selector"]["matchLabels"].items()))]:
                        del self.objects[pod_key]
            return Response(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        raise AssertionError(f"unexpected {method} {path}")

    def _store(self, collection: str, body: dict) -> dict:
        obj = json.loads(json.dumps(body))
        if collection == "services":
            obj["spec"]["clusterIP"] = f"10.43.0.{len(self.objects) + 10}"
        if collection == "deployments":
            template = obj["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{obj['metadata']['name']}-5d8f7-x2x9k", "labels": template["metadata"]["labels"]},
                   "spec": template["spec"],
                   "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": self.ready}],
                              "containerStatuses": [{"name": c["name"], "image": IMAGE, "imageID": IMAGE,
                                                     "ready": self.ready == "True", "restartCount": 0,
                                                     "state": self.pod_state} for c in template["spec"]["containers"]]}}
            self.objects[("pods", pod["metadata"]["name"])] = pod
        self.objects[(collection, obj["metadata"]["name"])] = obj
        return obj

    # kubernetes.client.ApiClient calls the REST layer by method name.
    def GET(self, url: str, **kw: Any) -> Response:  # noqa: N802
        return self.request("GET", url, **kw)

    def POST(self, url: str, **kw: Any) -> Response:  # noqa: N802
        return self.request("POST", url, **kw)

    def PATCH(self, url: str, **kw: Any) -> Response:  # noqa: N802
        return self.request("PATCH", url, **kw)

    def DELETE(self, url: str, **kw: Any) -> Response:  # noqa: N802
        return self.request("DELETE", url, **kw)


@pytest.fixture
def server() -> FakeApiServer:
    return FakeApiServer()


def orchestrator_for(server: FakeApiServer, namespace: str = "edge") -> KubernetesOrchestrator:
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="https://k3s.invalid:6443"))
    client.rest_client = server
    return KubernetesOrchestrator(image=IMAGE, namespace=namespace, api_client=client)


def test_deploy_creates_every_object_and_controls_the_root_through_its_service(server: FakeApiServer, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, HIERARCHICAL)
    plan.run_dir.mkdir(parents=True)
    deployment = orchestrator_for(server).deploy(plan)
    posts = [path for method, path, _ in server.calls if method == "POST"]
    assert posts[:2] == ["/api/v1/namespaces/edge/configmaps"] * 2
    assert posts.count("/api/v1/namespaces/edge/services") == 3
    assert posts.count("/apis/apps/v1/namespaces/edge/deployments") == 7  # root, 2 cluster gateways, 4 learners
    root_service = server.objects[("services", f"flops-{RUN_ID}-superlink")]
    assert deployment.control_address == f"{root_service['spec']['clusterIP']}:9092"
    assert deployment.settings == {"namespace": "edge"}
    assert {c.name for c in deployment.components} >= {"superlink", "cluster-0-superlink", "cluster-1-aggregator", "a"}
    assert (plan.run_dir / "kubernetes.yaml").is_file()
    # Readiness was read from the pods, by the run's label.
    assert ("GET", "/api/v1/namespaces/edge/pods", {"labelSelector": f"{RUN_LABEL}={RUN_ID}"}) in server.calls
    # A cluster's SuperLink and aggregator are two containers of one gateway pod, each its own component.
    orchestrator = orchestrator_for(server)
    pods = orchestrator.describe(deployment)
    gateway = f"flops-{RUN_ID}-cluster-0-gateway-5d8f7-x2x9k"
    assert pods["cluster-0-superlink"].name == pods["cluster-0-aggregator"].name == gateway
    assert orchestrator.logs(deployment, "cluster-0-aggregator").read_text() == f"log of {gateway}/cluster-0-aggregator\n"


def test_status_logs_and_stop_work_from_another_shell_with_the_recorded_namespace(server: FakeApiServer, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FLAT)
    plan.run_dir.mkdir(parents=True)
    deployment = orchestrator_for(server).deploy(plan)
    other_shell = orchestrator_for(server, namespace="default")  # `flops stop` does not know the namespace
    assert other_shell.status(deployment) == {"superlink": True, "learner-0": True, "learner-1": True}
    log = other_shell.logs(deployment, "learner-1")
    assert log.read_text() == f"log of flops-{RUN_ID}-learner-1-5d8f7-x2x9k/learner-1\n"
    with pytest.raises(DeployError, match="no component 'learner-7'"):
        other_shell.logs(deployment, "learner-7")
    other_shell.stop(deployment)
    assert server.objects == {}
    deletes = {path for method, path, _ in server.calls if method == "DELETE"}
    assert "/apis/apps/v1/namespaces/edge/deployments" in deletes and all("/edge/" in p for p in deletes)
    other_shell.stop(deployment)  # twice is safe


def test_a_crash_looping_pod_is_a_dead_component(server: FakeApiServer, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FLAT)
    plan.run_dir.mkdir(parents=True)
    orchestrator = orchestrator_for(server)
    deployment = orchestrator.deploy(plan)
    pod = server.objects[("pods", f"flops-{RUN_ID}-learner-0-5d8f7-x2x9k")]
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    pod["status"]["containerStatuses"][0]["restartCount"] = 4
    assert orchestrator.status(deployment)["learner-0"] is False
    view = orchestrator.describe(deployment)["learner-0"]
    assert view is not None and view.restarts == 4 and view.waiting_reason == "CrashLoopBackOff"


def test_an_image_that_cannot_be_pulled_fails_deploy_at_once_and_leaves_nothing(server: FakeApiServer, tmp_path: Path) -> None:
    server.pod_state = {"waiting": {"reason": "ImagePullBackOff"}}
    server.ready = "False"
    plan = make_plan(tmp_path, FLAT)
    plan.run_dir.mkdir(parents=True)
    with pytest.raises(DeployError, match="superlink cannot start: .*ImagePullBackOff"):
        orchestrator_for(server).deploy(plan)
    assert server.objects == {}


def test_objects_left_from_an_earlier_attempt_are_patched(server: FakeApiServer, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FLAT)
    plan.run_dir.mkdir(parents=True)
    orchestrator_for(server).deploy(plan)
    server.calls.clear()
    orchestrator_for(server).deploy(plan)
    methods = [(m, p) for m, p, _ in server.calls if m in ("POST", "PATCH")]
    assert ("PATCH", f"/apis/apps/v1/namespaces/edge/deployments/flops-{RUN_ID}-learner-0") in methods


def test_a_namespace_that_is_not_a_dns_label_is_bad_input_before_any_call(server: FakeApiServer, tmp_path: Path) -> None:
    from flops.errors import ConfigError

    plan = make_plan(tmp_path, FLAT)
    with pytest.raises(ConfigError, match="--namespace 'Edge_Lab'"):
        orchestrator_for(server, namespace="Edge_Lab").deploy(plan)
    assert server.calls == []


def test_the_namespace_and_context_travel_with_the_plan_to_every_later_command(tmp_path: Path) -> None:
    """`flops stop` or `status` from another shell builds the orchestrator from the saved plan: same namespace."""
    from flops.orchestrators import orchestrator_for
    from flops.plan import KubernetesTarget, RunPlan

    plan = make_plan(tmp_path, FLAT).model_copy(update={"kubernetes": KubernetesTarget(namespace="edge-lab",
                                                                                       context="k3s-site")})
    plan.run_dir.mkdir(parents=True)
    plan.save()
    orchestrator = orchestrator_for(RunPlan.load(plan.run_dir))
    assert isinstance(orchestrator, KubernetesOrchestrator)
    assert (orchestrator.namespace, orchestrator.context, orchestrator.image) == ("edge-lab", "k3s-site", IMAGE)
    assert orchestrator_for(make_plan(tmp_path, FLAT)).namespace == "default"  # a plan without a target


def test_a_tls_run_registers_each_key_with_its_superlink_before_the_pod_that_holds_it_exists(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of the recorded calls: no Flower SuperLink answers here, so registration (a Control API call,
    run for real in test_kubernetes_podman) is recorded instead, with what existed in the cluster at that moment."""
    import base64

    from cryptography import x509

    from flops.orchestrators.link_security import LinkSecurity

    registered: list[tuple[str, str, set[str]]] = []

    def register(self: LinkSecurity, name: str, address: str):  # noqa: ANN202
        registered.append((name, address, {n for c, n in server.objects if c == "deployments"}))
        self._registered.setdefault(address, {})[name] = len(registered)
        return self.authority.node_key(name)

    monkeypatch.setattr(LinkSecurity, "register", register)
    monkeypatch.setattr(LinkSecurity, "wait_until_online", lambda self, *a: None)
    plan = make_plan(tmp_path, HIERARCHICAL, insecure=False)
    plan.run_dir.mkdir(parents=True)
    deployment = orchestrator_for(server).deploy(plan)
    ip = {n.removeprefix(f"flops-{RUN_ID}-"): o["spec"]["clusterIP"] for (c, n), o in server.objects.items() if c == "services"}
    by_name = {name: (address, existing) for name, address, existing in registered}
    assert set(by_name) == {"cluster-0-aggregator", "cluster-1-aggregator", "a", "b", "c", "d"}
    # An aggregator's key is registered at the root, before its gateway pod exists; a learner's at its cluster's
    # SuperLink (dialled at its Service's cluster IP), once that gateway exists and before the learner's pod does.
    address, existing = by_name["cluster-0-aggregator"]
    assert address == f"{ip['superlink']}:9092" and existing == {f"flops-{RUN_ID}-superlink"}
    address, existing = by_name["a"]
    assert address == f"{ip['cluster-0-superlink']}:9092"
    assert f"flops-{RUN_ID}-cluster-0-gateway" in existing and f"flops-{RUN_ID}-a" not in existing
    assert deployment.node_ids == {"cluster-0-aggregator": 1, "cluster-1-aggregator": 2}
    assert deployment.ca_cert is not None and deployment.ca_cert.is_file()
    # The root's certificate names its Service's cluster IP (the controller dials it) and its DNS names.
    secret = server.objects[("secrets", f"flops-{RUN_ID}-superlink-credentials")]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["server.pem"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ip["superlink"] in {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert f"flops-{RUN_ID}-superlink.edge.svc" in names.get_values_for_type(x509.DNSName)
    learner = server.objects[("secrets", f"flops-{RUN_ID}-a-credentials")]
    assert set(learner["data"]) == {"ca.pem", "node.key"}
