"""Start and watch a Flower run through the SuperLink's Control API, as `flwr run` does."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import Status, SubStatus
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.supercore.fab import Fab
from flwr.proto.control_pb2 import (  # pylint: disable=E0611
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    UnregisterNodeRequest,
)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

from flops.errors import DeployError, FlopsError


def describe_tls_failure(error: str) -> str | None:
    """What a failed certificate check of a SuperLink means, from the TLS library's message; None if ERROR is not
    one (the same wording reaches a SuperNode's log and this module's client)."""
    if "CERTIFICATE_VERIFY_FAILED" not in error:
        return None
    if "expired" in error:
        return f"TLS: the SuperLink's certificate has expired ({error})"
    if "mismatch" in error or "not valid for" in error:
        return f"TLS: the SuperLink's certificate is not valid for the address it was reached at ({error})"
    return f"TLS: the SuperLink's certificate is not signed by the CA it trusts ({error})"


class ControlUnavailable(FlopsError):
    """The SuperLink's Control API did not answer: the SuperLink is down, unreachable or overloaded."""


@dataclass(frozen=True)
class FlowerRunStatus:
    status: str  # pending, starting, running, finished
    sub_status: str  # completed, failed, stopped (when finished)
    details: str

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    @property
    def completed(self) -> bool:
        return self.finished and self.sub_status == SubStatus.COMPLETED


class FlowerControl:
    """A small client of one SuperLink's Control API: over TLS, trusting only the run's CA, unless
    ca_cert is None (an `--insecure` run)."""

    def __init__(self, address: str, ca_cert: Path | str | None = None) -> None:
        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=ca_cert is None,
            # Bytes, not a path: Flower then builds a context that trusts this CA alone, not the system's.
            root_certificates=Path(ca_cert).read_bytes() if ca_cert is not None else None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        )

    def register_node(self, public_key_pem: bytes, name: str) -> int:
        """Register a SuperNode's public key (what `flwr supernode register` does); returns its node id."""
        try:
            response = self._client.RegisterNode(RegisterNodeRequest(public_key=public_key_pem, name=name))
        except Exception as exc:  # the client raises transport and protocol errors of several types
            why = describe_tls_failure(str(exc)) or str(exc)
            raise DeployError(f"{name} cannot be registered with the SuperLink at {self.address}: {why}") from exc
        return int(response.node_id)

    def unregister_node(self, node_id: int, name: str) -> None:
        """Unregister a SuperNode (what `flwr supernode unregister` does): it is offline from now on."""
        try:
            self._client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise DeployError(f"SuperLink at {self.address} refused to unregister {name} (node {node_id}): {exc}") from exc

    def start_run(self, app_dir: Path, overrides: dict[str, str | int | float | bool]) -> int:
        """Build the app's FAB and start it; returns Flower's run id."""
        fab_bytes = build_fab_from_disk(app_dir)
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        request = StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto(overrides))
        try:
            response = self._client.StartRun(request)
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise DeployError(f"SuperLink at {self.address} refused the run: {exc}") from exc
        if not response.HasField("run_id"):
            raise DeployError(f"SuperLink at {self.address} did not start the run")
        return int(response.run_id)

    def list_nodes(self) -> list:
        """The SuperLink's registered SuperNodes (NodeInfo: node_id, name, status, ...)."""
        try:
            return list(self._client.ListNodes(ListNodesRequest()).nodes_info)
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise ControlUnavailable(f"SuperLink at {self.address}: ListNodes: {exc}") from exc

    def run_status(self, run_id: int) -> FlowerRunStatus:
        try:
            run = self._client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
        except Exception as exc:  # the client raises transport and protocol errors of several types
            raise ControlUnavailable(f"SuperLink at {self.address}: ListRuns: {exc}") from exc
        return FlowerRunStatus(run.status.status, run.status.sub_status, run.status.details)

    def stop_run(self, run_id: int) -> None:
        self._client.StopRun(StopRunRequest(run_id=run_id))

    def close(self) -> None:
        self._client.close()
